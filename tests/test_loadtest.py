"""The load generator against small local HTTP servers (no model needed): counting, errors, limits, refusals."""
import json, socket, subprocess, sys, textwrap, time
import numpy as np
import pytest

from aimass.core import AimassError
from aimass.loadtesting import loadtest, local_url, LoadTestReport, _rows_from_heldout

APP = textwrap.dedent('''
    import asyncio, sys, json
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    app = FastAPI()
    seen = []
    @app.post("/predict")
    async def predict(request: Request):
        body = await request.json()
        n = len(body["instances"])
        if request.headers.get("x-api-key") != "k": return JSONResponse({"detail": "key"}, status_code=401)
        seen.append(n)
        if body["instances"][0] == "fail": return JSONResponse({"detail": "no"}, status_code=503)
        if body["instances"][0] == "slow": await asyncio.sleep(0.5)
        return {"predictions": [0] * n}
    @app.get("/info")
    def info(): return {"ref": "nothing:v1", "schema": {"kind": "tensor", "shape": [3]}}
    @app.get("/seen")
    def get_seen(): return seen
    import uvicorn; uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
''')


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from aimass.launcher import free_port
    import httpx
    path = tmp_path_factory.mktemp("app")/"app.py"; path.write_text(APP)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(path), str(port)], start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(url + "/info", timeout=1).status_code == 200: break
            except httpx.HTTPError: time.sleep(0.05)
        yield url
    finally:
        proc.kill(); proc.wait()


def test_counts_and_rates(app_url):
    rep = loadtest(app_url, concurrency=8, requests=400, api_key="k", progress=False)
    assert rep.requests == 400 and rep.ok == 400 and rep.errors == {}
    assert rep.rps > 0 and 0 < rep.p50 <= rep.p90 <= rep.p99
    s = rep.summary()
    assert s["requests"] == 400 and s["concurrency"] == 8
    assert "req/s" in repr(rep) and "<table>" in rep._repr_html_()


def test_default_payload_from_schema(app_url):
    import httpx
    loadtest(app_url, concurrency=2, requests=5, api_key="k", progress=False)
    # rows built from /info's schema: 3 numbers each, one row per request
    assert httpx.get(app_url + "/seen").json()[-1] == 1


def test_rows_per_request_and_errors(app_url):
    rep = loadtest(app_url, concurrency=4, requests=20, payload=[[1, 2, 3]] * 10, rows_per_request=5, api_key="k", progress=False)
    assert rep.errors == {}
    rep = loadtest(app_url, concurrency=4, requests=20, payload={"instances": ["fail"]}, api_key="k", progress=False)
    assert rep.errors == {503: 20} and rep.ok == 0
    rep = loadtest(app_url, concurrency=4, requests=10, payload={"instances": [[1]]}, progress=False)  # no key
    assert rep.errors == {401: 10}


def test_duration_bounds_the_run(app_url):
    t0 = time.perf_counter()
    rep = loadtest(app_url, concurrency=4, duration=1.0, requests=None, payload={"instances": ["slow"]}, api_key="k", progress=False)
    assert time.perf_counter() - t0 < 3.0
    assert 4 <= rep.requests <= 16


def test_client_timeout_counts_as_no_answer(app_url):
    rep = loadtest(app_url, concurrency=2, requests=2, payload={"instances": ["slow"]}, api_key="k", timeout=0.1, progress=False)
    assert rep.errors == {0: 2} and rep.failures == {"TimeoutError": 2}


def test_connection_refused():
    from aimass.launcher import free_port
    rep = loadtest(f"http://127.0.0.1:{free_port()}", concurrency=2, requests=4, payload=[[1]], progress=False)
    assert rep.errors == {0: 4}


def test_refuses_remote_urls():
    for url in ("http://example.com", "http://10.0.0.1:8000", "https://8.8.8.8/"):
        with pytest.raises(AimassError, match="only loads servers on this machine"): loadtest(url, progress=False)
    assert local_url("http://localhost:8000/") == "http://localhost:8000"
    with pytest.raises(AimassError, match="requests=N"): loadtest("http://127.0.0.1:1", requests=None, duration=None)


def test_plot():
    import matplotlib
    matplotlib.use("Agg")
    rep = LoadTestReport("http://127.0.0.1:1", 2, 1.0, np.array([0.01, 0.02, 0.5]), np.array([0, .1, .2]), np.array([200, 200, 503]))
    fig = rep.plot()
    assert len(fig.axes) == 2


def test_rows_from_heldout_tabular(tmp_path):
    st = {"kind": "tabular", "columns": [{"name": "a", "kind": "number", "fill": 0.0, "mean": 10.0, "std": 2.0},
                                         {"name": "c", "kind": "category", "categories": ["x", "y", "z"]}]}
    x = np.array([[0.5, 0, 1, 0], [-1.0, 0, 0, 1]], np.float32)
    np.savez(tmp_path/"heldout.npz", x=x, y=np.array([0, 1]))
    rows = _rows_from_heldout(st, tmp_path, 10)
    assert rows == [{"a": 11.0, "c": "y"}, {"a": 8.0, "c": "z"}]
