"""Prometheus metrics of real servers on 127.0.0.1: /metrics counts right across several HTTP processes and inference
workers, follows the API-key rule, and a real Prometheus server scrapes it and answers a query about it."""
import os, shutil, signal, subprocess, time
from concurrent.futures import ThreadPoolExecutor
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("torch")
from prometheus_client.parser import text_string_to_metric_families

from aimass import launcher as S
from aimass.launcher import free_port
from factory import make_version, shared_home

ROW = [0.0] * 64


@shared_home(scope="module")
def home(folder):
    "A linear digits model exported to ONNX: the quickest server to start."
    from aimass.exporting import export
    make_version("linear", name="digits-linear", epochs=1)
    export("digits-linear")
    return {}


def _serve(**options):
    return S.serve("digits-linear", backend="onnx", new=True, **options)


def _scrape(srv, headers=None) -> dict:
    "`{(sample name, frozenset of labels): value}` of one GET /metrics, parsed by prometheus-client's own parser."
    r = httpx.get(srv.url + "/metrics", headers=srv.headers if headers is None else headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain") and r.headers["x-request-id"]
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(r.text) for s in f.samples}


def _value(samples, name, **labels) -> float:
    "The sum of `name`'s samples whose labels include `labels`."
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def _settled(srv, name, want, within=10.0, **labels) -> dict:
    "A scrape once `name` (with `labels`) reads `want`: each process hands its counts over every 0.25 s."
    t0 = time.monotonic()
    while True:
        m = _scrape(srv)
        if _value(m, name, **labels) == want or time.monotonic() - t0 > within: return m
        time.sleep(0.1)


@pytest.mark.slow
def test_metrics_add_up_across_processes(home):
    # two HTTP processes and two inference workers: whichever HTTP process answers the scrape, every process's counts are in it
    srv = _serve(api_servers=2, workers=2, api_key="k3y")
    try:
        def post(rows):
            with httpx.Client(headers=srv.headers, timeout=30) as c: return c.post(srv.url + "/predict", json={"instances": rows}).status_code
        with ThreadPoolExecutor(8) as pool: codes = list(pool.map(post, [[ROW]] * 60 + [[[1.0]]] * 7))
        assert (codes.count(200), codes.count(400)) == (60, 7)
        _settled(srv, "aimass_batch_size_sum", 67)  # the workers' counts, and the HTTP processes' (either may answer a scrape):
        _settled(srv, "aimass_request_duration_seconds_count", 67)
        for _ in range(6):  # several scrapes: each may be answered by either HTTP process
            m = _scrape(srv)
            assert _value(m, "aimass_requests_total", model="digits-linear", version="v1", status="200") == 60, m
            assert _value(m, "aimass_requests_total", model="digits-linear", status="400") == 7
            assert _value(m, "aimass_request_duration_seconds_count", model="digits-linear") == 67
            assert _value(m, "aimass_requests_in_flight") == 0
            assert _value(m, "aimass_batch_size_sum", model="digits-linear") == 67  # every request, bad ones too, went through a batch
            assert 1 <= _value(m, "aimass_batch_size_count") <= 67
            assert (_value(m, "aimass_processes", role="http"), _value(m, "aimass_processes", role="worker")) == (2, 2)
            assert _value(m, "aimass_process_resident_memory_bytes", role="worker") > 10e6
            assert _value(m, "aimass_process_cpu_seconds_total") > 0
        print(f"\nbatches: {_value(m, 'aimass_batch_size_count'):.0f} for 67 requests; CPU s by role: "
              f"{ {r: _value(m, 'aimass_process_cpu_seconds_total', role=r) for r in ('leader', 'http', 'worker', 'other')} }")
    finally: srv.stop()


def test_metrics_follow_the_api_key(home):
    srv = _serve(api_key="k3y")
    try:
        r = httpx.get(srv.url + "/metrics")
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"] and r.headers["x-request-id"]
        assert httpx.get(srv.url + "/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
        assert "aimass_processes" in httpx.get(srv.url + "/metrics", headers=srv.headers).text
        assert httpx.post(srv.url + "/predict", json={"instances": [ROW]}).status_code == 401  # the rest is still locked
    finally: srv.stop()


def test_request_ids(home):
    srv = _serve()
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            assert c.post("/predict", json={"instances": [ROW]}, headers={"X-Request-ID": "order-17"}).headers["x-request-id"] == "order-17"
            made = [c.post("/predict", json={"instances": [ROW]}).headers["x-request-id"] for _ in range(2)]
            assert len(set(made)) == 2 and all(len(i) == 32 for i in made)
            forged = c.post("/predict", json={"instances": [ROW]}, headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]
            assert len(forged) == 32  # not sane (too long): replaced
            assert c.get("/health").headers["x-request-id"] and c.get("/nowhere").headers["x-request-id"]
    finally: srv.stop()


def _prometheus() -> str:
    exe = shutil.which("prometheus")
    if exe is None: pytest.skip("Prometheus is not installed (bash tools/setup-prometheus.sh installs Debian's, as root)")
    return exe


def _query(url: str, q: str):
    "The value of a Prometheus instant query's only sample, or None while it has none."
    r = httpx.get(url + "/api/v1/query", params={"query": q}, timeout=10).json()
    assert r["status"] == "success", r
    return float(r["data"]["result"][0]["value"][1]) if r["data"]["result"] else None


@pytest.mark.slow
def test_a_real_prometheus_reads_the_counters(home, tmp_path):
    exe = _prometheus()
    srv = _serve(api_key="k3y", metrics_auth=False)  # Debian's Prometheus 2.42 cannot send an X-API-Key header
    prom, prom_port = None, free_port()
    try:
        assert httpx.post(srv.url + "/predict", json={"instances": [ROW]}).status_code == 401
        with httpx.Client(headers=srv.headers, timeout=30) as c:
            assert [c.post(srv.url + "/predict", json={"instances": [ROW]}).status_code for _ in range(25)] == [200] * 25
        (tmp_path/"prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs:\n  - job_name: aimass\n    static_configs: [{{targets: ['127.0.0.1:{srv.port}']}}]\n")
        prom = subprocess.Popen([exe, f"--config.file={tmp_path/'prometheus.yml'}", f"--storage.tsdb.path={tmp_path/'data'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path/"prometheus.log", "wb"), start_new_session=True)
        url, t0, got = f"http://127.0.0.1:{prom_port}", time.monotonic(), None
        while time.monotonic() - t0 < 90:
            assert prom.poll() is None, (tmp_path/"prometheus.log").read_text()[-3000:]
            try: got = _query(url, 'sum(aimass_requests_total{job="aimass",model="digits-linear",status="200"})')
            except httpx.HTTPError: got = None
            if got is not None: break
            time.sleep(0.5)
        print(f"\nPrometheus read aimass_requests_total = {got} after {time.monotonic() - t0:.1f} s")
        assert got == 25, (tmp_path/"prometheus.log").read_text()[-3000:]
        assert _query(url, 'sum(aimass_requests_total{status="401"})') == 1
        assert _query(url, 'up{job="aimass"}') == 1
    finally:
        if prom is not None:
            prom.terminate()
            try: prom.wait(timeout=20)
            except subprocess.TimeoutExpired: prom.kill(); prom.wait()
        srv.stop()
