"""Standard protocols on real servers, driven by real clients: KServe v1 in full (liveness, model list, readiness,
:predict) and the Open Inference Protocol (KServe v2: health, metadata with typed inputs and outputs, typed infer) with
the KServe Python SDK's InferenceRESTClient and tritonclient's HTTP client (binary tensor data too); wrong inputs get a
400 naming the input and the server keeps serving; raw text/plain bodies for text models (415 elsewhere); the API key
rule on the new routes; and a deployment bundle's server.py speaking both."""
import asyncio, base64, json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("torch")
kserve = pytest.importorskip("kserve")
th = pytest.importorskip("tritonclient.http")

from aimass import launcher as S
import aimass.exporting as ex
from aimass.data import load_data
from factory import make_version, shared_home, write_image_folder
from tiny_pixels import make_pixel_version
from tiny_tokens import make_token_version

ROWS = [{"age": 31.0, "city": "rome", "income": 52.5}, {"age": 58.0, "city": "oslo", "income": 47.0}, {"age": 44.0, "city": "paris", "income": 50.0}]


def _frame(n=150, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"age": rng.normal(40, 10, n).round(1), "city": rng.choice(["oslo", "paris", "rome"], n),
                       "income": rng.normal(50, 5, n).round(2)})
    df["label"] = np.where((df.age > 40) ^ (df.city == "rome"), "yes", "no")
    return df


@shared_home(scope="module")
def home(folder):
    "A table model (numbers and a category), a text model and an image model, each exported to ONNX."
    churn = make_version(data=load_data(_frame(), target="label"), name="churn", epochs=2)
    topics = make_token_version(name="topics", n=60, epochs=3)
    pixels = make_pixel_version(write_image_folder(folder/"digits", n_per_class=6), name="pixels", epochs=2)
    for mv in (churn, topics, pixels): ex.export(mv.ref)
    return {"churn": churn.ref, "topics": topics.ref, "pixels": pixels.ref, "images": folder/"digits"}


@pytest.fixture(scope="module")
def several(home):
    "One server of the three models, each at /v1/models/NAME:predict."
    srv = S.serve({"churn": home["churn"], "topics": home["topics"], "pixels": home["pixels"]}, backend="onnx", new=True)
    yield srv
    srv.stop()


def _kserve(protocol: str, **kw):
    return kserve.InferenceRESTClient(kserve.RESTConfig(protocol=protocol, **kw))


def _table_json(rows) -> dict:
    return {"inputs": [{"name": "age", "datatype": "FP32", "shape": [len(rows)], "data": [r["age"] for r in rows]},
                       {"name": "city", "datatype": "BYTES", "shape": [len(rows)], "data": [r["city"] for r in rows]},
                       {"name": "income", "datatype": "FP32", "shape": [len(rows)], "data": [r["income"] for r in rows]}]}


def _table_inputs(rows, datatype="FP32") -> list:
    return [kserve.InferInput("age", [len(rows)], datatype, [r["age"] for r in rows]),
            kserve.InferInput("city", [len(rows)], "BYTES", [r["city"] for r in rows]),
            kserve.InferInput("income", [len(rows)], "FP32", [r["income"] for r in rows])]


def test_kserve_v1_in_full(several):
    "The issue's findings, fixed: is_server_live, is_model_ready and infer with the SDK; GET /v1/models lists the models."
    async def run():
        async with _kserve("v1") as c:
            live = await c.is_server_live(several.url)
            ready = [await c.is_model_ready(several.url, n) for n in ("churn", "topics", "pixels")]
            out = await c.infer(several.url, {"instances": ROWS}, model_name="churn")
            return live, ready, out
    live, ready, out = asyncio.run(run())
    assert live is True and ready == [True, True, True]
    assert [p["label"] for p in out["predictions"]] == [p["label"] for p in several.predict(ROWS, model="churn")]
    with httpx.Client(base_url=several.url) as c:
        assert c.get("/").json() == {"status": "alive"}
        assert c.get("/v1/models").json() == {"models": ["churn", "topics", "pixels"]}
        assert c.get("/v1/models/churn").json() == {"name": "churn", "ready": True}
        assert c.get("/v1/models/nope").status_code == 404
        info = c.get("/v1/models/churn/info").json()  # the model's details: a path of their own
    assert info["ref"] == several.info("churn")["ref"] == home_ref(several, "churn")


def home_ref(srv, name): return srv.models[name].version_ref


def test_v2_metadata_is_typed(several):
    with httpx.Client(base_url=several.url) as c:
        churn, topics, pixels = (c.get(f"/v2/models/{n}").json() for n in ("churn", "topics", "pixels"))
        assert c.get("/v2/health/live").json() == {"live": True} and c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2").json()["name"] == "aimass"
    assert [(i["name"], i["datatype"], i["shape"]) for i in churn["inputs"]] == [("age", "FP32", [-1]), ("city", "BYTES", [-1]), ("income", "FP32", [-1])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in churn["outputs"]] == [("label", "BYTES", [-1]), ("probabilities", "FP32", [-1, 2])]
    assert churn["outputs"][1]["parameters"]["classes"] == ["no", "yes"] and churn["versions"] == ["1"]
    assert [(i["name"], i["datatype"]) for i in topics["inputs"]] == [("text", "BYTES")]
    assert [(i["name"], i["datatype"]) for i in pixels["inputs"]] == [("image", "BYTES")]


def test_kserve_v2_sdk(several):
    "is_server_live, is_server_ready, is_model_ready and infer on v2 with the SDK; the answer is /predict's, as tensors."
    async def run():
        async with _kserve("v2") as c:
            flags = (await c.is_server_live(several.url), await c.is_server_ready(several.url), await c.is_model_ready(several.url, "churn"))
            res = await c.infer(several.url, kserve.InferRequest("churn", _table_inputs(ROWS), request_id="r-7"), model_name="churn")
            return flags, res
    flags, res = asyncio.run(run())
    assert flags == (True, True, True)
    want = several.predict(ROWS, model="churn")
    out = {o.name: o for o in res.outputs}
    assert res.id == "r-7" and res.model_name == "churn"
    assert list(out["label"].as_numpy()) == [p["label"] for p in want]
    probs = out["probabilities"].as_numpy()
    assert probs.shape == (3, 2) and out["probabilities"].datatype == "FP32"
    np.testing.assert_allclose(probs, [[p["probabilities"]["no"], p["probabilities"]["yes"]] for p in want], atol=1e-6)


def test_tritonclient_binary_tensors_and_nested_data(several):
    "tritonclient sends binary tensor data by default (numbers and BYTES); nested JSON data is row-major."
    c = th.InferenceServerClient(url=several.url.removeprefix("http://"))
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("churn")
    assert [i["name"] for i in c.get_model_metadata("churn")["inputs"]] == ["age", "city", "income"]
    age, city, income = th.InferInput("age", [3], "FP32"), th.InferInput("city", [3], "BYTES"), th.InferInput("income", [3, 1], "FP64")
    age.set_data_from_numpy(np.array([r["age"] for r in ROWS], np.float32))
    city.set_data_from_numpy(np.array([r["city"].encode() for r in ROWS], dtype=object))
    income.set_data_from_numpy(np.array([[r["income"]] for r in ROWS], np.float64))
    res = c.infer("churn", [age, city, income], outputs=[th.InferRequestedOutput("label", binary_data=False)])
    want = several.predict(ROWS, model="churn")
    assert [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("label")] == [p["label"] for p in want]
    assert res.as_numpy("probabilities") is None  # only what was asked for
    nested = {"inputs": [{"name": "age", "datatype": "FP32", "shape": [3, 1], "data": [[r["age"]] for r in ROWS]},
                         {"name": "city", "datatype": "BYTES", "shape": [3], "data": [r["city"] for r in ROWS]},
                         {"name": "income", "datatype": "FP32", "shape": [3], "data": [r["income"] for r in ROWS]}]}
    r = httpx.post(several.url + "/v2/models/churn/infer", json=nested)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [p["label"] for p in want]
    assert r.headers["X-Model-Version"] == home_ref(several, "churn")
    c.close()


def test_version_qualified_v2_paths(several):
    "tritonclient names the version: /v2/models/NAME/versions/V[/ready|/infer] answers as the unversioned route for the version served, 404 naming it otherwise."
    c = th.InferenceServerClient(url=several.url.removeprefix("http://"))
    served = home_ref(several, "churn").rsplit(":v", 1)[1]
    assert c.is_model_ready("churn", served) and c.get_model_metadata("churn", served)["versions"] == [served]
    inputs = [th.InferInput("age", [3], "FP32"), th.InferInput("city", [3], "BYTES"), th.InferInput("income", [3], "FP32")]
    inputs[0].set_data_from_numpy(np.array([r["age"] for r in ROWS], np.float32))
    inputs[1].set_data_from_numpy(np.array([r["city"].encode() for r in ROWS], dtype=object))
    inputs[2].set_data_from_numpy(np.array([r["income"] for r in ROWS], np.float32))
    res = c.infer("churn", inputs, model_version=served)
    want = [p["label"] for p in several.predict(ROWS, model="churn")]
    assert [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("label")] == want
    assert not c.is_model_ready("churn", "99")
    with pytest.raises(Exception, match=f"churn serves version {served} here, not 99"): c.infer("churn", inputs, model_version="99")
    c.close()
    r = httpx.post(f"{several.url}/v2/models/nosuch/versions/1/infer", json=_table_json(ROWS))
    assert r.status_code == 404 and "No model 'nosuch' here" in r.json()["error"]
    def counted():  # aimass_requests_total of churn's 200s, summed over versions
        text = httpx.get(several.url + "/metrics").text
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("aimass_requests_total{") and 'model="churn"' in l and 'status="200"' in l)
    before, end = counted(), time.monotonic() + 10
    assert httpx.post(f"{several.url}/v2/models/churn/versions/{served}/infer", json=_table_json(ROWS)).status_code == 200
    while counted() < before + 1 and time.monotonic() < end: time.sleep(0.1)
    assert counted() == before + 1  # counted as churn's request in /metrics


def test_binary_outputs_when_asked(several):
    "Outputs asked for as binary come after the JSON (tritonclient asks so by default); others stay JSON; both read the same."
    c = th.InferenceServerClient(url=several.url.removeprefix("http://"))
    age, city, income = th.InferInput("age", [3], "FP32"), th.InferInput("city", [3], "BYTES"), th.InferInput("income", [3], "FP32")
    age.set_data_from_numpy(np.array([r["age"] for r in ROWS], np.float32))
    city.set_data_from_numpy(np.array([r["city"].encode() for r in ROWS], dtype=object))
    income.set_data_from_numpy(np.array([r["income"] for r in ROWS], np.float32))
    want = several.predict(ROWS, model="churn")
    probs = [[p["probabilities"]["no"], p["probabilities"]["yes"]] for p in want]
    for outputs in (None, [th.InferRequestedOutput("label", binary_data=False), th.InferRequestedOutput("probabilities", binary_data=True)]):
        res = c.infer("churn", [age, city, income], outputs=outputs)
        assert [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("label")] == [p["label"] for p in want]
        np.testing.assert_allclose(res.as_numpy("probabilities"), probs, atol=1e-6)
        sizes = {o["name"]: (o.get("parameters") or {}).get("binary_data_size") for o in res.get_response()["outputs"]}
        label_bytes = sum(4 + len(p["label"]) for p in want)  # each BYTES element: its 4-byte length, then itself
        assert sizes == ({"label": label_bytes, "probabilities": 24} if outputs is None else {"label": None, "probabilities": 24}), sizes
    c.close()
    r = httpx.post(several.url + "/v2/models/churn/infer", json={**_table_json(ROWS), "parameters": {"binary_data_output": True}})
    n = int(r.headers["Inference-Header-Content-Length"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream" and len(r.content) == n + label_bytes + 24
    r = httpx.post(several.url + "/v2/models/churn/infer", json=_table_json(ROWS))
    assert "Inference-Header-Content-Length" not in r.headers and r.json()["outputs"][1]["data"] == pytest.approx([x for p in probs for x in p], abs=1e-6)


@pytest.mark.parametrize("inputs, status, says", [
    ([{"name": "age", "datatype": "BYTES", "shape": [1], "data": ["old"]}], 400, "'age' has datatype 'BYTES'"),
    ([{"name": "age", "datatype": "FP32", "shape": [2], "data": [1.0]}], 400, "'age' has shape [2]"),
    ([{"name": "age", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}], 400, "'age' has shape [1, 3]"),
    ([{"name": "agee", "datatype": "FP32", "shape": [1], "data": [1.0]}], 400, "Unknown input 'agee'"),
    ([{"name": "city", "datatype": "BYTES", "shape": [1], "data": ["rome"]}], 400, "Missing input 'age'"),
    ([{"name": "age", "datatype": "FP32", "shape": [1], "data": ["x"]}], 400, "'age': element 0 is 'x'"),
    ([{"name": "age", "datatype": "FP32", "shape": [1], "data": [1.0]}, {"name": "city", "datatype": "BYTES", "shape": [1], "data": ["rome"]},
      {"name": "income", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}],
     400, "different numbers of rows"),
])
def test_v2_bad_input_names_it_and_keeps_serving(several, inputs, status, says):
    r = httpx.post(several.url + "/v2/models/churn/infer", json={"inputs": inputs})
    assert r.status_code == status and says in r.json()["error"], r.text
    with pytest.raises(httpx.HTTPStatusError, match="age"):  # the SDK shows the server's reason
        asyncio.run(_infer_v2(several.url, kserve.InferRequest("churn", _table_inputs(ROWS[:1], datatype="BYTES")), "churn"))
    assert httpx.post(several.url + "/v2/models/churn/infer", json=_table_json(ROWS)).status_code == 200


async def _infer_v2(url, request, name):
    async with _kserve("v2") as c: return await c.infer(url, request, model_name=name)


def test_v2_refuses_what_is_not_a_request(several):
    for body, says in ((b"{nope", "not JSON"), (b'{"inputs": []}', 'no "inputs"')):
        r = httpx.post(several.url + "/v2/models/churn/infer", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and says in r.json()["error"]
    r = httpx.post(several.url + "/v2/models/churn/infer", json={"inputs": [{"name": "age", "datatype": "FP32", "shape": [1], "data": [1.0]},
                   {"name": "city", "datatype": "BYTES", "shape": [1], "data": ["atlantis"]}, {"name": "income", "datatype": "FP32", "shape": [1], "data": [3]}],
                   "outputs": [{"name": "proba"}]})
    assert r.status_code == 400 and "Unknown output 'proba'" in r.json()["error"]
    assert httpx.post(several.url + "/v2/models/nope/infer", json={"inputs": []}).status_code == 404


def test_text_model_v2_and_text_plain(several):
    "A text model takes one BYTES input on v2, and one text as a text/plain body; a table model answers that with 415."
    texts = ["the face of a smiling child", "green leaves and roots"]
    want = several.predict(texts, model="topics")
    res = asyncio.run(_infer_v2(several.url, kserve.InferRequest("topics", [kserve.InferInput("text", [2], "BYTES", texts)]), "topics"))
    assert [x.decode() if isinstance(x, bytes) else x for x in res.outputs[0].as_numpy()] == [p["label"] for p in want]
    with httpx.Client(base_url=several.url) as c:
        r = c.post("/v1/models/topics:predict", content=texts[0].encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == want[0]["label"]
        r = c.post("/v1/models/churn:predict", content=b"a text", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415 and "text/plain" in r.json()["detail"]
        r = c.post("/v1/models/topics:predict", content=b"\xff\xfe", headers={"Content-Type": "text/plain"})
        assert r.status_code == 400 and "UTF-8" in r.json()["detail"]
        assert "raw" in c.get("/v1/models/topics/info").json()["request"]  # /info says so
        doc = c.get("/openapi.json").json()["paths"]
        assert "text/plain" in doc["/v1/models/topics:predict"]["post"]["requestBody"]["content"]
        assert "/v2/models/churn/infer" in doc
        assert c.post("/v1/models/topics:predict", json={"instances": texts}).status_code == 200  # still serving


def test_image_model_v2_base64_and_binary(several, home):
    png = sorted((home["images"]/"1").glob("*.png"))[0].read_bytes()
    want = several.predict([png], model="pixels")[0]["label"]
    r = httpx.post(several.url + "/v2/models/pixels/infer",
                   json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [want]
    c = th.InferenceServerClient(url=several.url.removeprefix("http://"))
    image = th.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png], dtype=object))  # the file's raw bytes, as binary tensor data
    assert [x.decode() if isinstance(x, bytes) else x for x in c.infer("pixels", [image]).as_numpy("label")] == [want]
    c.close()


def test_readiness_follows_a_restarting_worker(several):
    "A killed worker makes its model (and the server) not ready until its replacement has loaded; the others stay ready."
    from aimass.launcher import live_states
    index = list(several.models).index("topics")
    pid = live_states(several.run_dir/"state"/str(index))[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    seen, end = [], time.monotonic() + 30
    with httpx.Client(base_url=several.url) as c:
        while time.monotonic() < end:
            seen.append((c.get("/v2/models/topics/ready").status_code, c.get("/v1/models/churn").status_code))
            if seen[-1][0] == 200 and any(s == 503 for s, _ in seen): break
            time.sleep(0.005)
    assert (503, 200) in seen and seen[-1] == (200, 200), seen[-10:]


def test_single_model_server_answers_v1_under_its_name_and_the_api_key_rule(home):
    "A one-model server answers /v1/models/NAME:predict as /predict; with a key, only liveness and readiness are open."
    with S.serve(home["churn"], backend="onnx", new=True, api_key="s3cret") as srv:
        key = {"X-API-Key": "s3cret"}
        with httpx.Client(base_url=srv.url) as c:
            a = c.post("/predict", json={"instances": ROWS}, headers=key).json()
            b = c.post("/v1/models/churn:predict", json={"instances": ROWS}, headers=key).json()
            assert a == b and c.get("/info", headers=key).json() == c.get("/v1/models/churn/info", headers=key).json()
            for path in ("/", "/v2/health/live", "/v2/health/ready", "/health"): assert c.get(path).status_code == 200, path
            for path in ("/v1/models", "/v1/models/churn", "/v2/models/churn", "/v2/models/churn/ready"): assert c.get(path).status_code == 401, path
            assert c.post("/v2/models/churn/infer", json={"inputs": []}).status_code == 401  # the key first: nothing parsed
            for path in ("/v2/models/churn/versions/1/infer", "/v2/models/churn/versions/9/infer"):  # served or not: the key first
                assert c.post(path, json={"inputs": []}).status_code == 401, path
            assert c.post("/v2/models/churn/versions/1/infer", json=_table_json(ROWS), headers=key).status_code == 200
            assert c.post("/v1/models/churn:predict", json={"instances": ROWS}).status_code == 401
        async def run():
            async with _kserve("v2") as c:
                return (await c.is_model_ready(srv.url, "churn", headers=key),
                        await c.infer(srv.url, kserve.InferRequest("churn", _table_inputs(ROWS)), model_name="churn", headers=key))
        ready, res = asyncio.run(run())
        assert ready and list(res.outputs[0].as_numpy()) == [p["label"] for p in a["predictions"]]
        end = time.monotonic() + 10  # counters reach /stats within 0.25 s
        while srv.stats()["by_path"].get("/v2/models/churn/infer") != 2 and time.monotonic() < end: time.sleep(0.05)
        assert srv.stats()["by_path"].get("/v2/models/churn/infer") == 2  # counted by Guard, as a predict (the versioned path too)


@pytest.mark.slow
def test_bundle_server_speaks_both_protocols(home, tmp_path):
    "A deployment bundle's server.py (run with this environment's python) answers KServe v1 and v2 like serve()."
    from aimass import deployment as B
    b = B.bundle(home["churn"], tmp_path/"bundle", check=False)
    port = S.free_port()
    log = tmp_path/"server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(b.path/"server.py"), "--port", str(port)], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        async def run():
            async with _kserve("v2", retries=0) as c:
                end = time.monotonic() + 120
                while True:
                    assert proc.poll() is None, log.read_text()[-3000:]
                    try:
                        if await c.is_server_ready(url): break
                    except (httpx.HTTPError, OSError): pass
                    assert time.monotonic() < end, log.read_text()[-3000:]
                    await asyncio.sleep(0.1)
                res = await c.infer(url, kserve.InferRequest("churn", _table_inputs(ROWS)), model_name="churn")
            async with _kserve("v1") as c:
                return res, await c.is_server_live(url), await c.is_model_ready(url, "churn"), await c.infer(url, {"instances": ROWS}, model_name="churn")
        res, live, ready, v1 = asyncio.run(run())
        assert live and ready and list(res.outputs[0].as_numpy()) == [p["label"] for p in v1["predictions"]]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_v2_and_text_plain_on_litserve_own_route(home):
    "With fast_ipc=False (LitServe's own predict route, no DirectPredict) v2 infer and text/plain take the same path."
    with S.serve(home["topics"], backend="onnx", new=True, fast_ipc=False) as srv:
        want = srv.predict(["green leaves and roots"])[0]["label"]
        r = httpx.post(srv.url + "/v2/models/topics/infer", json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["green leaves and roots"]}]})
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [want]
        r = httpx.post(srv.url + "/predict", content="green leaves and roots".encode(), headers={"Content-Type": "text/plain"})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == want
