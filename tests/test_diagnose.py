"""`diagnose` on a real server on 127.0.0.1 that went through every kind of trouble: timeouts, a request that kills its
worker, oversized and malformed bodies, a missing API key. It names each cause, the slowest requests by their ids, the
restart and its exit reason, and the log lines about them; while the server runs and after it stopped."""
import subprocess, time
from concurrent.futures import ThreadPoolExecutor
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("torch")
from prometheus_client.parser import text_string_to_metric_families

import aimass
from aimass import launcher as S
from aimass.core import AimassError
from aimass.observability import Diagnosis
from conftest import ROOT
from factory import QUIRKY_SPEC, make_version, shared_home

ROW, SLOW, DEADLY = [0.0] * 64, [1e6] + [0.0] * 63, [-1e6] + [0.0] * 63  # the recorder model sleeps 2.5 s on SLOW, exits on DEADLY


@shared_home(scope="module")
def home(folder):
    from aimass import models
    from aimass.registry import Registry
    with pytest.MonkeyPatch.context() as mp:  # the registry runs only code it recorded: this test's own, recorded below
        if hasattr(models, "_check_code"): mp.setattr(models, "_check_code", lambda *a: None)
        make_version(spec=QUIRKY_SPEC, name="recorder", epochs=1)
    if hasattr(Registry, "trust"): Registry().trust("recorder:v1")
    return {}


@pytest.fixture(scope="module")
def troubled(home):
    "A server after a mixed bag of requests: `(server, {what: request id})`."
    srv = S.serve("recorder", backend="torch", new=True, timeout=1.5, max_batch_size=1, max_payload=20_000, api_key="k3y")
    ids = {}
    def post(what, rows, headers=None, **kw):
        r = httpx.post(srv.url + "/predict", json={"instances": rows}, headers=headers or {**srv.headers, "X-Request-ID": what}, timeout=30, **kw)
        ids[what] = r.headers["x-request-id"]
        return r.status_code
    try:
        assert [post(f"ok-{i}", [ROW]) for i in range(5)] == [200] * 5
        with ThreadPoolExecutor(2) as pool:  # slow-1 holds the only worker past the timeout; queued-1 waits behind it and is dropped
            slow = pool.submit(post, "slow-1", [SLOW])
            time.sleep(0.3)
            assert (post("queued-1", [ROW]), slow.result()) == (504, 504)
        time.sleep(1.5)  # the worker gets to queued-1 (and says it was late) once slow-1 is done
        assert post("big-1", [ROW] * 100) == 413
        assert post("bad-1", [[1.0, 2.0]]) == 400
        assert post("nokey-1", [ROW], headers={"X-Request-ID": "nokey-1"}) == 401
        assert post("deadly-1", [DEADLY]) == 503
        t0 = time.monotonic()  # the worker is restarted (a torch worker takes longer than the 1.5 s timeout): wait until it is ready
        while httpx.get(srv.url + "/health", timeout=5).status_code != 200:
            assert time.monotonic() - t0 < 60, srv.logs(30)
            time.sleep(0.2)
        assert post("after", [ROW]) == 200
        time.sleep(0.6)  # the journals are saved 4 times a second
        yield srv, ids
    finally: srv.stop()


@pytest.mark.slow
def test_diagnose_names_every_cause(troubled):
    srv, ids = troubled
    d = aimass.diagnose(srv, minutes=5)
    print("\n" + repr(d))
    assert isinstance(d, Diagnosis) and d.status == "running"
    causes = {g["status"]: g for g in d.causes}
    assert {504, 413, 400, 401, 503} <= set(causes)
    assert "timeout of 1.5 s" in causes[504]["cause"] and (causes[504]["count"], causes[504]["last_id"]) == (2, "queued-1")
    assert "larger than this server's limit" in causes[413]["cause"] and causes[413]["last_id"] == "big-1"
    assert causes[400]["last_id"] == "bad-1" and causes[401]["last_id"] == "nokey-1"
    assert "worker handling this request died" in causes[503]["cause"] and causes[503]["last_id"] == "deadly-1"
    assert (d.timeouts, d.rejected) == (2, 2)  # 413 and 400
    assert {e["id"] for e in d.slowest[:2]} == {"slow-1", "queued-1"} and d.slowest[0]["status"] == 504
    assert [(r["model"], r["reason"]) for r in d.restarts] == [("recorder", "exit status 3")]
    log = "\n".join(d.log_lines)
    assert "[request slow-1]" in log and "[request deadly-1]" in log  # the server's lines about them name them
    late = [l for l in d.log_lines if "waiting in the queue for too long" in l]  # LitServe's worker names its queue item: linked
    assert late and all("[request queued-1]" in l for l in late), late
    assert "inference worker 0" in log and "died (exit code 3)" in log
    html = d._repr_html_()
    assert "<h4>Errors by cause</h4>" in html and "slow-1" in html and "exit status 3" in html


@pytest.mark.slow
def test_every_log_line_about_a_request_names_it(troubled):
    srv, ids = troubled
    text = srv.log_path.read_text()
    for what in ("slow-1", "queued-1", "deadly-1"):
        lines = [l for l in text.splitlines() if f"[request {what}]" in l]
        assert lines and all("answered" in l for l in lines), lines
    assert "[request ok-" not in text  # a request that went well is not logged at this log level


@pytest.mark.slow
def test_restarts_and_errors_in_metrics(troubled):
    srv, _ = troubled
    time.sleep(0.5)  # each process hands its counts over every 0.25 s
    text = httpx.get(srv.url + "/metrics", headers=srv.headers, timeout=10).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("aimass_worker_restarts_total", (("model", "recorder"), ("reason", "exit status 3")))] == 1
    assert samples[("aimass_requests_total", (("model", "recorder"), ("status", "504"), ("version", "")))] == 2
    assert samples[("aimass_requests_total", (("model", "recorder"), ("status", "200"), ("version", "v1")))] >= 6
    # the dead worker's batches still count: 5 good, the slow one, the bad one, the deadly one, and one after (queued-1 was
    # dropped before its batch)
    assert sum(v for (n, _), v in samples.items() if n == "aimass_batch_size_count") >= 9


@pytest.mark.slow
def test_diagnose_from_the_command_line_and_after_stop(troubled):
    srv, _ = troubled
    from aimass.commands import run
    d, _ = run(["diagnose", srv.name, "--minutes", "5"])
    assert d.by_status.get(504) == 2
    cli = subprocess.run([str(ROOT/".venv"/"bin"/"aimass"), "diagnose", srv.name, "--minutes", "5"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "slow-1" in cli.stdout and "exit status 3" in cli.stdout, cli.stdout + cli.stderr
    srv.stop()
    after = aimass.diagnose(str(srv.run_dir), minutes=5)  # a stopped server: its run folder
    assert after.status == "stopped" and after.by_status.get(504) == 2 and after.restarts


def test_diagnose_says_what_it_needs(home):
    with pytest.raises(AimassError, match="No server matches 'nothing-here'"): aimass.diagnose("nothing-here")
    with pytest.raises(AimassError, match="minutes must be more than 0"): aimass.diagnose("nothing-here", minutes=0)


def test_diagnose_right_after_a_request_includes_it(home):
    "The request just answered is in the diagnosis at once (the journals are saved 4 times a second: diagnose waits for them)."
    srv = S.serve("recorder", backend="torch", new=True)
    try:
        r = httpx.post(srv.url + "/predict", json={"instances": [[1.0, 2.0]]}, timeout=30)
        assert r.status_code == 400
        d = aimass.diagnose(srv)
        assert d.by_status.get(400) == 1 and r.headers["x-request-id"] in repr(d)
    finally: srv.stop()
