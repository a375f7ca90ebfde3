"""Canary and shadow on real servers on 127.0.0.1 (aimass.routing): the split by weight and by sticky header, a shadow's
answers compared and never returned, failures that leave the primary serving, bad options, and promote under load."""
import math, os, re, signal, threading, time
from pathlib import Path
import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

from aimass.core import AimassError
from aimass.registry import Registry
from aimass import launcher as S
from aimass.loadtesting import loadtest
from aimass.routing import to_canary
from factory import make_version, shared_home, wait_for


@shared_home(scope="module")
def home(folder):
    "digits v1 and v2 (different seeds, both exported); v3 and v4 exported, to be broken by the tests that need them."
    from aimass.exporting import export
    for seed in range(4):
        make_version("mlp", name="digits", epochs=1, seed=seed)
        export(f"digits:v{seed + 1}")
    reg = Registry()
    reg.set_alias("digits", "production", 1)
    reg.set_alias("digits", "candidate", 2)


def _rows(n=8, start=0):
    from aimass.data import load_data
    return load_data("digits").X[start:start + n].reshape(n, -1).tolist()


def _break(ref):
    "Overwrite a version's ONNX files with garbage: a worker that loads it from now on fails."
    mv = Registry().get(ref)
    for f in mv.card.export.files.values(): (Path(mv.path)/f).write_bytes(b"not an onnx model")


def _one_line(e): return "\n" not in str(e.value)


def test_canary_share_by_weight_and_sticky_users(home):
    srv = S.serve("digits@production", canary="digits@candidate", weight=0.25, sticky="X-User-Id")
    try:
        assert "canary digits@candidate at 25%" in repr(srv)
        body = {"instances": _rows(1)}
        with httpx.Client(base_url=srv.url) as c:
            versions = [c.post("/predict", json=body).headers["x-model-version"] for _ in range(400)]  # no header: drawn
            n = versions.count("digits:v2")
            assert set(versions) == {"digits:v1", "digits:v2"}
            assert abs(n - 100) < 6 * math.sqrt(400 * 0.25 * 0.75), n  # 6 standard deviations: never flakes
            users = [f"user-{i}" for i in range(20)]
            for _ in range(3):  # the same user, the same side, every time
                got = {u: c.post("/predict", json=body, headers={"X-User-Id": u}).headers["x-model-version"] for u in users}
                assert got == {u: "digits:v2" if to_canary(0.25, u.encode()) else "digits:v1" for u in users}
            counts = srv.canary()  # current at once: the answering process counts its own live requests, not its saved file
            assert counts["primary"]["requests"] + counts["canary"]["requests"] == 460
            assert counts == c.get("/canary").json()
            canary = counts["canary"]
            assert canary["versions"] == {"digits:v2": canary["requests"]} and canary["weight"] == 0.25 and canary["sticky"] == "X-User-Id"
            assert canary["requests"] == n + 3 * sum(to_canary(0.25, u.encode()) for u in users)
            assert counts["primary"]["errors"] == canary["errors"] == 0 and canary["p50_ms"] > 0
            from aimass.core import aimass_home
            from aimass.traffic import read_traffic
            logged = lambda v: sum(r.get("requests", 0) for r in read_traffic(aimass_home()/"traffic"/"digits"/v))
            wait_for(lambda: (logged("v1"), logged("v2")) == (counts["primary"]["requests"], canary["requests"]))  # each version's traffic, for monitor
            srv.set_canary(weight=0)  # ramp down: every request to the primary
            time.sleep(0.6)
            assert {c.post("/predict", json=body).headers["x-model-version"] for _ in range(30)} == {"digits:v1"}
            assert "canary digits@candidate at 0%" in repr(srv) and "digits@candidate (digits:v2) at 0%" in S._status_html(srv)
    finally:
        srv.stop()


def test_shadow_answers_never_reach_the_client_and_their_disagreement_is_recorded(home):
    srv = S.serve("digits@production", shadow="digits:v2")
    try:
        rows = [_rows(30, start=30 * i) for i in range(10)]
        with httpx.Client(base_url=srv.url) as c:
            answers = [c.post("/predict", json={"instances": r}) for r in rows]
            assert {(a.status_code, a.headers["x-model-version"]) for a in answers} == {(200, "digits:v1")}
            mine = [p["label"] for a in answers for p in a.json()["predictions"]]
            assert mine == [p["label"] for r in rows for p in srv.predict(r)]  # v1's answers (mirrored too: the same rows twice)
            theirs = [p["label"] for r in rows for p in c.post("/v1/models/digits--shadow:predict", json={"instances": r}).json()["predictions"]]
        mismatches = sum(a != b for a, b in zip(mine, theirs))
        assert 0 < mismatches < 300, "the two versions must disagree on some rows for this test to mean anything"
        wait_for(lambda: srv.canary()["shadow"]["compared_rows"] >= 600)
        shadow = srv.canary()["shadow"]
        assert (shadow["mirrored"], shadow["dropped"], shadow["compared_rows"], shadow["requests"], shadow["errors"]) == (20, 0, 600, 20, 0)
        assert shadow["versions"] == {"digits:v2": 20} and shadow["measure"] == "label mismatch rate"
        assert shadow["disagreement"] == pytest.approx(mismatches / 300)
        assert shadow["p50_ms"] > 0 and srv.canary()["primary"]["versions"] == {"digits:v1": 20}
        assert "label mismatch rate" in S._status_html(srv)  # the panel
    finally:
        srv.stop()


def test_canary_and_shadow_on_litserve_s_own_routes(home):
    "Without fast_ipc the predict route is FastAPI's (no DirectPredict): the Router works the same."
    srv = S.serve("digits@production", canary="digits@candidate", weight=1.0, shadow="digits:v1", fast_ipc=False)
    try:
        r = httpx.post(srv.url + "/predict", json={"instances": _rows(3)})
        assert r.status_code == 200 and r.headers["x-model-version"] == "digits:v2" and len(srv.predict(_rows(3))) == 3
        with httpx.Client(base_url=srv.url) as c:
            assert {c.post("/predict", json={"instances": _rows(3)}).headers["x-model-version"] for _ in range(10)} == {"digits:v2"}
        wait_for(lambda: srv.canary()["shadow"]["compared_rows"] >= 36)
        counts = srv.canary()
        assert counts["canary"]["requests"] == 12 and counts["shadow"]["versions"] == {"digits:v1": 12} and counts["shadow"]["errors"] == 0
    finally:
        srv.stop()


def test_a_shadow_that_cannot_load_is_a_one_line_error(home):
    _break("digits:v3")
    with pytest.raises(AimassError, match="The shadow digits:v3 failed to load") as e: S.serve("digits@production", shadow="digits:v3")
    assert _one_line(e) and S.SERVERS == {}


def test_a_canary_and_shadow_failing_at_run_time_leave_the_primary_serving(home):
    srv = S.serve("digits@production", canary="digits:v4", weight=0.5, shadow="digits:v4")
    try:
        body = {"instances": _rows(4)}
        with httpx.Client(base_url=srv.url) as c:
            assert {c.post("/predict", json=body).headers["x-model-version"] for _ in range(40)} == {"digits:v1", "digits:v4"}
            _break("digits:v4")
            for role in ("canary", "shadow"):  # their workers die; restarted, they cannot load v4 any more
                os.kill(S.live_states(srv.run_dir/"state"/role)[0]["pid"], signal.SIGKILL)
            unloaded = lambda role: [st.get("load_error") for st in S.live_states(srv.run_dir/"state"/role)]
            wait_for(lambda: all(unloaded(role) and all(unloaded(role)) for role in ("canary", "shadow")))
            answers = [c.post("/predict", json=body) for _ in range(60)]
            assert {(a.status_code, a.headers["x-model-version"]) for a in answers} == {(200, "digits:v1")}
        wait_for(lambda: srv.canary()["primary"]["requests"] + srv.canary()["canary"]["requests"] == 100)  # saved every 0.25 s
        counts = srv.canary()
        assert counts["canary"]["fallbacks"] > 0 and counts["canary"]["errors"] == 0  # drawn for the canary, answered by the primary
        wait_for(lambda: srv.canary()["shadow"]["errors"] > 0)  # mirrors the shadow could not answer: counted, never sent
        assert srv.stats()["errors_by_status"].get(500, 0) == 0 and srv.health()
        assert "the shadow" in srv.logs(200) and "failed to load" in srv.logs(200)
    finally:
        srv.stop()


@pytest.mark.parametrize("options, message", [
    (dict(canary="digits@candidate", weight=1.5), "weight is a share of requests, from 0 to 1 (got 1.5)"),
    (dict(canary="digits@candidate", weight=-0.1), "weight is a share of requests"),
    (dict(shadow="digits@candidate", shadow_rate=2), "shadow_rate is a share of requests"),
    (dict(canary="digits@nowhere"), "no alias"),
    (dict(shadow="churn:v1"), "No model named 'churn'"),
    (dict(canary="digits@candidate", sticky=""), "sticky names a request header"),
])
def test_bad_options_are_refused_in_one_line(home, options, message):
    with pytest.raises(AimassError, match=re.escape(message)) as e: S.serve("digits@production", **options)
    assert _one_line(e) and S.SERVERS == {}


def test_bad_weight_from_the_magic(home, ip):
    from IPython.core.error import UsageError
    with pytest.raises((UsageError, AimassError), match="weight is a share of requests"):
        ip.run_line_magic("aimass", "serve digits@production --canary digits@candidate --weight 1.5")
    assert S.SERVERS == {}


@pytest.mark.slow
def test_promote_ends_a_canary_under_load_with_no_errors(home, ip):
    reg = Registry()
    reg.set_alias("digits", "production", 1)
    srv = ip.run_line_magic("aimass", "serve digits@production --canary digits@candidate --weight 0.3 --follow-interval 0.2")
    try:
        out = {}
        load = threading.Thread(target=lambda: out.update(r=loadtest(srv, concurrency=4, duration=8, requests=None, progress=False)))
        load.start()
        time.sleep(2.5)
        final = srv.end_canary(promote=True)  # production -> v2 (the canary's version), the primary follows, the split ends
        assert reg.get("digits@production").ref == "digits:v2" and srv.serving()["digits"] == "digits:v2"
        assert final["canary"]["weight"] == 0.0 and final["canary"]["requests"] > 0
        load.join(60)
        rep = out["r"]
        print(rep)
        assert rep.errors == {}, rep.errors
        assert set(rep.served_by) == {"digits:v1", "digits:v2"}
        seq = rep.versions[np.argsort(rep.started)]
        tenth = len(seq) // 10
        assert set(seq[-tenth:]) == {"digits:v2"}  # after the switch: v2 only, from the primary
        assert srv.stats()["errors"] == 0
    finally:
        srv.stop()
        reg.set_alias("digits", "production", 1)
