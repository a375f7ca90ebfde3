"""The server's traffic log and aimass.monitor, on real servers on 127.0.0.1: sampled requests and predictions,
statistics-only mode, refused requests counted, and a log that cannot be written never stopping the serving."""
import json, logging, time
from pathlib import Path
from types import SimpleNamespace as NS
import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

import aimass
from aimass import launcher as S
from aimass.core import AimassError, aimass_home
from aimass.traffic import TrafficLog, read_traffic
from drift_data import churn, churn_version
from factory import shared_home

@shared_home(scope="module")
def home(folder):
    churn_version()


def _post(srv, rows, chunk=50):
    "Send `rows` (a DataFrame) in requests of `chunk` rows; every answer must be a prediction."
    for i in range(0, len(rows), chunk):
        body = json.loads(rows.iloc[i:i + chunk].to_json(orient="records"))
        r = httpx.post(srv.url + "/predict", json={"instances": body}, timeout=30)
        assert r.status_code == 200, r.text


def _wait(check, limit=30.0):
    "Poll `check()` until it returns a true value (the writer thread flushes twice a second)."
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if got := check(): return got
        time.sleep(0.2)
    raise AssertionError("the traffic log did not show the requests in time")


def _folder(home): return Path(home["dir"])/"traffic"/"churn"/"v1"


def _report_since(home, t0, rows, refused=0, **kwargs):
    "monitor's report on the traffic logged since `t0`, once it holds `rows` rows and predictions and `refused` refusals."
    def logged():
        recs = read_traffic(_folder(home), since=t0)
        got = lambda k: sum(len(r.get(k, ())) for r in recs) + (sum(r.get("n", 0) for r in recs) if k == "rows" else 0)
        return got("rows") >= rows and got("pred") >= rows and sum(sum(r["rejected"].values()) for r in recs if "rejected" in r) >= refused
    _wait(logged)
    return aimass.monitor("churn", minutes=(time.time() - t0) / 60 + 0.01, **kwargs)


@pytest.mark.slow  # starts a server
def test_server_samples_traffic_and_monitor_flags_a_shift(home):
    srv = S.serve("churn", sample_traffic=1.0)
    try:
        t0 = time.time()
        _post(srv, churn(400, seed=7, older=15).X)
        bad = httpx.post(srv.url + "/predict", json={"instances": [{"age": "old", "income": 1, "plan": "pro"}]}, timeout=30)
        assert bad.status_code == 400
        assert httpx.post(srv.url + "/predict", json={"rows": []}, timeout=30).status_code == 422
        r = _report_since(home, t0, 400, refused=2)
    finally: srv.stop()
    assert r.drifted == ["age"], r
    assert r.predictions["drifted"] and r.rejected == {"400": 1, "422": 1} and r.requests == 10, r
    assert "<img" in r._repr_html_()


@pytest.mark.slow  # starts a server
def test_unshifted_traffic_is_not_flagged(home):
    srv = S.serve("churn", sample_traffic=1.0)
    try:
        t0 = time.time()
        _post(srv, churn(600, seed=8).X)
        r = _report_since(home, t0, 600)
    finally: srv.stop()
    assert r.drifted == [] and not r.predictions["drifted"], r


@pytest.mark.slow  # starts a server
def test_statistics_only_mode_keeps_no_raw_values(home):
    rows = churn(300, seed=9, older=15).X
    srv = S.serve("churn", sample_traffic=1.0, log_inputs=False)
    try:
        t0 = time.time()
        _post(srv, rows)
        r = _report_since(home, t0, 300)
        recs = [x for x in read_traffic(_folder(home), since=t0) if "n" in x or "rows" in x]
    finally: srv.stop()
    assert all("rows" not in x and set(x["stats"]) == {"age", "income", "plan"} for x in recs)
    text = "".join(f.read_text() for f in _folder(home).glob("*.jsonl") if f.stat().st_mtime >= t0 - 1)
    assert not any(f"{v:.2f}".rstrip("0").rstrip(".") in text for v in rows.income[:20])  # no income value was kept
    age = next(f for f in r.features if f["feature"] == "age")
    assert "age" in r.drifted and age["test"] == "chi2 (bins)", r


@pytest.mark.slow  # starts a server
def test_an_unwritable_log_stops_sampling_with_one_warning_and_serving_goes_on(tmp_path, monkeypatch):
    import shutil
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path/"home"))
    churn_version(n=600, epochs=1)
    (tmp_path/"home"/"traffic").write_text("a file where the log's folder would go")  # mkdir fails: OSError
    srv = S.serve("churn", sample_traffic=1.0)
    try:
        _post(srv, churn(200, seed=1).X, chunk=10)
        _wait(lambda: "sampling for drift checks stopped" in srv.log_path.read_text())
        _post(srv, churn(100, seed=2).X, chunk=10)  # still serving
        time.sleep(1.0)  # two more flush periods: no second warning
        assert srv.log_path.read_text().count("sampling for drift checks stopped") == 1
    finally: srv.stop()


@pytest.mark.slow  # starts a server
@pytest.mark.parametrize("rate", [0, 0.0])
def test_sampling_off_writes_nothing(tmp_path, monkeypatch, rate):
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path/"home"))
    churn_version(n=600, epochs=1)
    srv = S.serve("churn", sample_traffic=rate)
    try: _post(srv, churn(50, seed=1).X)
    finally: srv.stop()
    assert not (tmp_path/"home"/"traffic").exists()
    assert "no traffic logged" in repr(aimass.monitor("churn"))


@pytest.mark.parametrize("bad", [{"sample_traffic": 1.5}, {"sample_traffic": -0.1}, {"traffic_mb": 0}])
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(AimassError) as e: S.serve("churn", **bad)
    assert "\n" not in str(e.value)


def test_a_full_disk_stops_sampling_with_one_warning(tmp_path, caplog):
    "/dev/full answers every write with ENOSPC, as a full disk does."
    runner = NS(ref="m:v1", model_dir=tmp_path, task="classification", pre=NS(kind="tabular"))
    log = TrafficLog(tmp_path/"traffic", rate=1.0, interval=0.05)
    (tmp_path/"traffic"/"m"/"v1").mkdir(parents=True)
    log.files["m:v1"] = tmp_path/"traffic"/"m"/"v1"/"0-full.jsonl"
    log.files["m:v1"].symlink_to("/dev/full")
    log.file_bytes = 1 << 40
    with caplog.at_level(logging.WARNING, logger="aimass.server"):
        _wait(lambda: log.rows(runner, [{"x": 1}]) or log.off, limit=10)
        for _ in range(5): log.rows(runner, [{"x": 1}]); log.predictions(runner, np.eye(2)); log.rejected(runner, 422)
        time.sleep(0.3)
    msgs = [r.getMessage() for r in caplog.records if "sampling for drift checks stopped" in r.getMessage()]
    assert len(msgs) == 1 and "No space left on device" in msgs[0] and not log.queue


def test_monitor_is_a_verb_and_a_report_outside_a_kernel(ip):
    r = ip.run_line_magic("aimass", "monitor churn --psi-threshold 0.5")
    assert isinstance(r, aimass.DriftReport) and r.thresholds["psi"] == 0.5


def test_the_log_stays_under_its_cap(tmp_path):
    runner = NS(ref="m:v1", model_dir=tmp_path, task="classification", pre=NS(kind="tabular"))
    log = TrafficLog(tmp_path/"traffic", rate=1.0, max_mb=0.05, interval=3600)  # the thread waits: flush by hand
    for i in range(400):
        log.rows(runner, [{"x": i, "pad": "y" * 100}] * 5); log.flush()
    files = sorted((tmp_path/"traffic"/"m"/"v1").glob("*.jsonl"))
    assert len(files) > 2 and sum(f.stat().st_size for f in files) <= 0.05 * 2**20 + log.file_bytes
    kept = [r["rows"][0]["x"] for r in read_traffic(files[0].parent) if "rows" in r]
    assert kept[-1] == 399 and kept[0] > 0  # the newest kept, the oldest gone


def test_the_live_view_refreshes_from_the_log_until_stopped():
    from aimass.monitoring import MonitorView
    from aimass.registry import Registry
    mv = Registry().get("churn")
    log = TrafficLog(aimass_home()/"traffic", rate=1.0, interval=3600)
    runner = NS(ref=mv.ref, model_dir=mv.path, task="classification", pre=NS(kind="tabular"))
    view = MonitorView(lambda: aimass.monitor("churn", last=300, watch=0), refresh=0.1, watch=60)
    try:
        rows = json.loads(churn(300, seed=11, older=20).X.to_json(orient="records"))
        log.rows(runner, rows); log.flush()
        _wait(lambda: view.report.rows >= 300 and "age" in view.report.drifted)
        assert "age" in view.body.value and "live" in view.status.value
    finally: view.stop()
    view.thread.join(5)
    assert not view.thread.is_alive() and "stopped" in view.status.value and view.button.disabled
    assert "<img" in view._display_data()["text/html"]
