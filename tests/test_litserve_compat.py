"aimass.litserve_compat: the start-up check of the LitServe internals aimass relies on."
import subprocess, sys, textwrap, warnings
import pytest

import litserve
import litserve.loops.base, litserve.server
from aimass.core import AimassError
import aimass.litserve_compat as compat
from aimass.litserve_compat import CHECKED_VERSIONS, check_litserve


def test_installed_litserve_passes():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert check_litserve() == litserve.__version__
    assert [str(x.message) for x in w if "aimass was checked" in str(x.message)] == [] or litserve.__version__ not in CHECKED_VERSIONS


def test_missing_internal_is_named(monkeypatch):
    monkeypatch.delattr(litserve.loops.base, "_inject_context")
    with pytest.raises(AimassError) as e: check_litserve()
    msg = str(e.value)
    assert "litserve.loops.base._inject_context is gone (relied on by cache_hook_signatures)" in msg
    assert "aimass/litserve_compat.py" in msg and "nbs/09_litserve_compat.ipynb" in msg  # where to look
    assert "simple_loops" not in msg  # only what changed


def test_missing_class_is_named(monkeypatch):
    monkeypatch.delattr(litserve.server, "RegularRequestHandler")
    with pytest.raises(AimassError, match=r"litserve\.server\.RegularRequestHandler is gone \(relied on by _RawBodyHandler\)"):
        check_litserve()


def test_changed_shape_is_named(monkeypatch):
    def _init_manager(self, n): return None  # renamed parameter, no longer sets the queues it used to
    monkeypatch.setattr(litserve.server.LitServer, "_init_manager", _init_manager)
    with pytest.raises(AimassError) as e: check_litserve()
    msg = str(e.value)
    assert "litserve.server.LitServer._init_manager has no parameter 'num_api_servers' (relied on by FastLitServer)" in msg
    assert "litserve.server.LitServer._init_manager no longer uses 'litapi_request_queues'" in msg
    assert "no longer uses '_transport'" in msg


def test_new_queue_method_is_named(monkeypatch):
    monkeypatch.setattr(compat, "_request_queue_calls", lambda: {"get", "get_nowait", "qsize"})
    with pytest.raises(AimassError, match=r"request_queue\.qsize\(\), which PipeQueue lacks"):
        check_litserve()


def test_unchecked_version_warns(monkeypatch):
    monkeypatch.setattr(litserve, "__version__", "0.2.99")
    with pytest.warns(UserWarning, match=r"checked against LitServe .*0\.2\.19.*; 0\.2\.99 is installed"):
        assert check_litserve() == "0.2.99"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_survives_a_missing_base_class():
    # a LitServe without MessageTransport must not break `import aimass.litserve_compat`: check_litserve names it
    p = _run("""
        import litserve.transport.base as base
        del base.MessageTransport
        from aimass.litserve_compat import check_litserve
        check_litserve()
    """)
    assert p.returncode != 0
    assert "AimassError" in p.stderr and "litserve.transport.base.MessageTransport is gone (relied on by PipeTransport)" in p.stderr


def test_server_process_checks_at_start(tmp_path):
    # main() stops before building anything when LitServe lacks a piece
    from aimass.launcher import ServedModel, ServerConfig
    cfg = tmp_path/"config.json"
    ServerConfig(models=[ServedModel(name="m", model_dir=str(tmp_path/"nothing"))]).write(cfg)
    p = _run(f"""
        import litserve.loops.simple_loops as simple
        del simple._inject_context
        from aimass.server_process import main
        main({str(cfg)!r})
    """)
    assert p.returncode != 0
    assert "litserve.loops.simple_loops._inject_context is gone" in p.stderr
    assert "serving" not in p.stderr  # stopped before it logged what it would serve


def test_litserve_api_key_does_not_lock_health(monkeypatch, caplog):
    # LitServe would check LIT_SERVER_API_KEY on /health of a several-model server (no LitAPI's authorize applies there)
    from starlette.testclient import TestClient
    from aimass.launcher import ServedModel, ServerConfig, predict_path
    from aimass.server_process import build_server
    monkeypatch.setattr(litserve.server, "LIT_SERVER_API_KEY", "from-the-environment")
    cfg = ServerConfig(models=[ServedModel(name=n, model_dir=f"/nowhere/{n}", path=predict_path(n)) for n in "ab"])
    server = build_server(cfg)
    assert "LIT_SERVER_API_KEY is set and ignored" in caplog.text
    server.workers_setup_status = {}  # no workers run in this test: 503 "not ready", where LitServe's key check said 401
    assert TestClient(server.app).get("/health").status_code == 503
