"""Image versions after training: export (uint8 NHWC pixels, normalisation in the graph, parity on held-out image files),
Runner and batch predict over folders and tables of paths (resumable, unreadable files skipped and listed), the server
(base64 and raw image bodies, 4xx for bad images while it keeps serving, served outputs equal to evaluation-time
outputs, no torch), the client's image rows, and bundles."""
import base64, io, json, os, sys, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")
torch = pytest.importorskip("torch")
from PIL import Image

from aimass.core import AimassError
from aimass.registry import Registry
import aimass.exporting as ex
from aimass import launcher as S
from aimass.inference import Runner, predict
from factory import shared_home, write_image_folder
from tiny_pixels import make_pixel_version

TESTS = str(Path(__file__).resolve().parent)  # tiny_pixels is importable from here (the torch backend rebuilds its class)


@shared_home(scope="module")
def home(folder):
    "Digits as 32x32 PNG files (3 classes, 40 each), a TinyPixels version trained on them, exported with int8."
    images = write_image_folder(folder/"digits", n_per_class=40)
    mv = make_pixel_version(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an int8 that lost accuracy warns; test_int8 checks what it says
        rep = ex.export(mv.ref, quantize="int8")
    with np.load(mv.file("heldout.npz")) as d: heldout = d["x"].tolist()
    return {"images": images, "ref": mv.ref, "report": rep, "heldout": heldout}


def _b64(data: bytes) -> str: return base64.b64encode(data).decode()


def _png(size=(32, 32), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO(); Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _eval_outputs(home, files) -> np.ndarray:
    "Evaluation-time outputs: the registered net, eager, on the files decoded by the version's own Preprocessor."
    return Registry().load(home["ref"]).outputs(files)


# --- export -------------------------------------------------------------------------------------------------------

def test_export_takes_uint8_nhwc_pixels_with_parity_at_batch_1_and_16(home):
    rep = home["report"]
    fp32 = rep.parity[rep.parity.variant == "fp32"]
    assert rep.checks["fp32"]["passed"] and rep.checks["fp32-opt"]["passed"]
    assert set(fp32.batch_size) == {1, 16} and fp32.rows.max() == len(home["heldout"]) > 16
    assert fp32.max_abs.max() <= 1e-4
    assert (rep.io["input_name"], rep.io["input_shape"], rep.io["dtype"], rep.io["layout"]) == ("pixels", [None, 32, 32, 3], "uint8", "NHWC")
    assert "uint8 NHWC" in repr(rep).splitlines()[0]
    import onnx
    graph = onnx.load(str(rep.model_path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # the normalisation is inside the graph
    card = Registry().get(home["ref"]).card
    assert (card.export.inputs, card.export.dtype, card.export.extra["layout"]) == ("pixels", "uint8", "NHWC")
    saved = json.loads((rep.path/"report.json").read_text())
    assert (saved["layout"], saved["input_shape"]) == ("NHWC", [None, 32, 32, 3])
    # the graph on the held-out files, decoded by the version's Preprocessor, gives what evaluation gives
    sess = ex.load_onnx(rep.model_path)
    x = Registry().get(home["ref"]).card.preprocessing().transform(home["heldout"][:5])
    assert np.allclose(sess.run(None, {"pixels": x})[0], _eval_outputs(home, home["heldout"][:5]), atol=1e-5)


def test_int8_kept_only_within_one_accuracy_point(home):
    rep = home["report"]
    drop = rep.metrics["fp32"]["accuracy"] - rep.metrics["int8"]["accuracy"]
    assert rep.checks["int8"]["passed"] == (drop <= 0.01)
    if not rep.checks["int8"]["passed"]: assert "lost accuracy" in rep.checks["int8"]["why"]


def test_int8_that_loses_accuracy_says_so_and_is_never_served(home, monkeypatch):
    import onnx
    from onnx import numpy_helper
    def ruined_int8(src, dst):  # as if quantization had wrecked the head: every image gets the same answer
        m = onnx.load(str(src))
        for t in m.graph.initializer:
            a = numpy_helper.to_array(t)
            if a.ndim == 2: t.CopyFrom(numpy_helper.from_array(np.zeros_like(a), t.name))
        onnx.save(m, str(dst))
    monkeypatch.setattr(ex, "quantize_int8", ruined_int8)
    mv = make_pixel_version(home["images"], name="ruined", epochs=40)
    with pytest.warns(UserWarning, match="int8 lost accuracy"):
        rep = ex.export(mv.ref, quantize="int8")
    assert not rep.checks["int8"]["passed"] and rep.checks["fp32"]["passed"] and "lost accuracy" in rep.checks["int8"]["why"]
    card = Registry().get(mv.ref).card
    assert "int8" not in card.export.usable and card.onnx_variant() == "fp32-opt"


def test_export_without_its_heldout_files_is_a_clear_error(home, tmp_path):
    gone = write_image_folder(tmp_path/"moved", n_per_class=12)
    mv = make_pixel_version(gone, name="moved", epochs=2)
    for f in gone.rglob("*.png"): f.unlink()
    with pytest.raises(AimassError, match="cannot read its held-out images .*put them back"):
        ex.export(mv.ref)


# --- Runner and batch predict ---------------------------------------------------------------------------------------

def test_runner_takes_anything_open_image_takes(home):
    r, f = Runner(Registry().get(home["ref"]).path), home["heldout"][0]
    want = _eval_outputs(home, [f])
    for row in (f, Path(f), Path(f).read_bytes(), {"b64": _b64(Path(f).read_bytes())}, {"image": {"b64": _b64(Path(f).read_bytes())}},
                Image.open(f), np.asarray(Image.open(f))):
        assert np.allclose(r.outputs([row]), want, atol=1e-5), type(row)
    pred = r.encode(r.outputs([f]))[0]
    assert [t["label"] for t in pred["top_k"]][0] == pred["label"] and len(pred["top_k"]) == 3 and len(pred["probabilities"]) == 3


def test_predict_folder_resumes_and_skips_unreadable_files(home, tmp_path):
    folder = tmp_path/"photos"
    write_image_folder(folder, n_per_class=12, seed=1)
    (folder/"notes.txt").write_text("not an image, and not an image file name: left out")
    (folder/"1"/"broken.png").write_bytes((folder/"1"/"1_0000.png").read_bytes()[:100])  # truncated
    files = sorted(str(p) for p in folder.rglob("*.png"))
    out = tmp_path/"preds.parquet"
    calls = []
    def stop_after_two_chunks(done, total):
        calls.append(done)
        if len(calls) == 2: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): predict(home["ref"], folder, output=out, batch_size=8, progress=stop_after_two_chunks)
    assert not out.exists() and len(list((tmp_path/"preds.parquet.parts").glob("part-*"))) == 2
    with pytest.warns(UserWarning, match="1 of 37 images could not be read"):
        p = predict(home["ref"], folder, output=out, batch_size=8, progress=False)
    assert p.resumed_from == 16 and p.rows == len(files) == 37
    f = p.frame
    assert f.columns.tolist() == ["path", "prediction", "prob_0", "prob_1", "prob_2", "error"] and f.path.tolist() == files
    bad = f.path == str(folder/"1"/"broken.png")
    assert f[bad].prediction.isna().all() and "truncated" in f[bad].error.iloc[0] and (f[~bad].error == "").all()
    assert p.skipped == [(str(folder/"1"/"broken.png"), f[bad].error.iloc[0])] and "1 image(s) could not be read" in p.summary()
    good = [x for x in files if "broken" not in x]
    assert np.allclose(f[~bad].filter(like="prob_").to_numpy(), _eval_outputs(home, good), atol=1e-5)
    assert pd.read_parquet(out).path.tolist() == files


def test_predict_table_of_relative_paths(home, tmp_path):
    folder = write_image_folder(tmp_path/"t", n_per_class=4)
    rel = sorted(str(p.relative_to(tmp_path)) for p in folder.rglob("*.png"))
    pd.DataFrame({"id": range(len(rel)), "file": rel}).to_csv(tmp_path/"list.csv", index=False)
    p = predict(home["ref"], tmp_path/"list.csv", image="file", keep=["id"], progress=False)
    assert p.frame.columns.tolist()[:3] == ["file", "id", "prediction"] and p.frame.file.tolist() == rel
    assert np.allclose(p.frame.filter(like="prob_").to_numpy(), _eval_outputs(home, [str(tmp_path/r) for r in rel]), atol=1e-5)
    with pytest.raises(AimassError, match="has no column 'image' of image paths: name the column"):
        predict(home["ref"], tmp_path/"list.csv", progress=False)
    mem = predict(home["ref"], [Image.open(tmp_path/rel[0]), np.asarray(Image.open(tmp_path/rel[1]))], progress=False)
    assert mem.frame.columns.tolist()[0] == "prediction" and len(mem.frame) == 2


# --- serving --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(home):
    srv = S.serve(home["ref"], backend="onnx", max_batch_size=4)
    yield srv
    srv.stop()


@pytest.mark.slow
def test_served_outputs_equal_evaluation_time_outputs(home, server):
    "The issue's check: on the same files, the server's answers are the evaluation-time outputs (same decode, resize, crop)."
    files = home["heldout"]
    served = server.predict(files)
    probs = np.array([[p["probabilities"][c] for c in ("0", "1", "2")] for p in served])
    want = _eval_outputs(home, files)
    assert np.allclose(probs, want, atol=1e-5)
    with np.load(Registry().get(home["ref"]).file("heldout.npz")) as d: y = d["y"]
    acc = np.mean([p["label"] == str(k) for p, k in zip(served, y)])
    assert acc == pytest.approx(Registry().get(home["ref"]).card.metrics["test"]["accuracy"])


@pytest.mark.slow
def test_served_by_the_torch_backend_too(home, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTS)  # the card's class lives in tests/tiny_pixels.py
    with S.serve(home["ref"], backend="torch", new=True) as srv:
        f = home["heldout"][:4]
        probs = np.array([[p["probabilities"][c] for c in ("0", "1", "2")] for p in srv.predict(f)])
        assert np.allclose(probs, _eval_outputs(home, f), atol=1e-5)


@pytest.mark.slow
def test_b64_instances_and_a_raw_image_body(home, server):
    f = home["heldout"][0]
    data, want = Path(f).read_bytes(), _eval_outputs(home, [f])[0]
    for body in ({"instances": [{"image": {"b64": _b64(data)}}]}, {"instances": [{"b64": _b64(data)}]}):
        r = httpx.post(server.url + "/predict", json=body)
        assert r.status_code == 200 and np.allclose(list(r.json()["predictions"][0]["probabilities"].values()), want, atol=1e-5)
    raw = httpx.post(server.url + "/predict", content=data, headers={"Content-Type": "image/png"})
    pred = raw.json()["predictions"][0]
    assert raw.status_code == 200 and np.allclose(list(pred["probabilities"].values()), want, atol=1e-5)
    assert pred["top_k"][0]["label"] == pred["label"] and np.allclose([t["probability"] for t in pred["top_k"]], sorted(want, reverse=True), atol=1e-5)
    assert raw.headers["x-model-version"] == home["ref"]


@pytest.mark.slow
def test_bad_images_get_4xx_and_the_server_keeps_serving(home, server):
    good = {"instances": [{"image": {"b64": _b64(Path(home["heldout"][0]).read_bytes())}}]}
    big = io.BytesIO(); Image.new("L", (8000, 6000)).save(big, format="PNG")  # 48 MP: over the 40 MP cap, 50 kB of PNG
    cases = [(httpx.post(server.url + "/predict", content=b"%PDF-1.4 not an image", headers={"Content-Type": "image/jpeg"}), 400, "not an image"),
             (httpx.post(server.url + "/predict", json={"instances": [{"b64": _b64(_png()[:60])}]}), 400, "truncated"),
             (httpx.post(server.url + "/predict", json={"instances": [{"b64": _b64(big.getvalue())}]}), 413, "over the cap"),
             (httpx.post(server.url + "/predict", json={"instances": [{"b64": "@@not base64@@"}]}), 400, "not valid base64"),
             (httpx.post(server.url + "/predict", json={"instances": [{"image": home["heldout"][0]}]}), 400, "not a base64 image"),
             (httpx.post(server.url + "/predict", content=b"", headers={"Content-Type": "image/png"}), 400, "empty")]
    for r, status, says in cases:
        assert r.status_code == status and says in r.json()["detail"], (status, r.text)
        assert httpx.post(server.url + "/predict", json=good).status_code == 200  # the next request is served
    assert server.alive


@pytest.mark.slow
def test_client_predict_takes_paths_pil_images_and_arrays(home, server):
    f = home["heldout"][:3]
    want = [np.argmax(o) for o in _eval_outputs(home, f)]
    label = lambda preds: [int(p["label"]) for p in preds]
    assert label(server.predict(f)) == want
    assert label(server.predict(f[0])) == want[:1] and label(server.predict(Path(f[0]))) == want[:1]
    assert label(server.predict([Image.open(x) for x in f])) == want
    arrays = np.stack([np.asarray(Image.open(x)) for x in f])
    assert label(server.predict(arrays)) == want and label(server.predict(arrays[0])) == want[:1]
    assert label(server.predict(Image.open(f[0]).convert("RGBA"))) == want[:1]
    with pytest.raises(AimassError, match="No file at"): server.predict("no/such/photo.jpg")


@pytest.mark.slow
def test_info_and_openapi_describe_images(home, server):
    info = server.info()
    assert info["input"]["layout"] == "NHWC" and info["input"]["dtype"] == "uint8" and info["input"]["shape"] == [None, 32, 32, 3]
    assert info["schema"]["kind"] == "image" and "b64" in json.dumps(info["request"]) and "top_k" in info["answer"]
    body = httpx.get(server.url + "/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/*"} <= set(body)


@pytest.mark.slow
def test_onnx_image_server_imports_no_torch_and_decodes_in_its_workers(home, server):
    import psutil
    server.predict(home["heldout"][:2])
    procs = [psutil.Process(server.pid)] + psutil.Process(server.pid).children(recursive=True)
    maps = {p.pid: Path(f"/proc/{p.pid}/maps").read_text() for p in procs}
    assert len(procs) >= 3 and not [p.cmdline() for p in procs if "libtorch" in maps[p.pid]]
    decoders = {pid for pid, m in maps.items() if "PIL/_imaging" in m}  # Pillow's decoder loaded
    workers = {pid for pid, m in maps.items() if "onnxruntime" in m}  # the inference workers
    assert decoders and decoders <= workers  # images are decoded in the workers, never in the HTTP processes


@pytest.mark.slow
def test_a_tabular_server_refuses_an_image_body(tmp_path):
    from factory import make_version
    make_version("linear", name="digits-linear", epochs=1)
    with S.serve("digits-linear", backend="torch", new=True) as srv:
        r = httpx.post(srv.url + "/predict", content=_png(), headers={"Content-Type": "image/png"})
        assert r.status_code == 415 and "takes JSON rows" in r.json()["detail"]


# --- bundles --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bundle_of_an_image_version_serves_images(home, tmp_path):
    from aimass.deployment import bundle
    from test_bundle import BundleServer
    b = bundle(home["ref"], tmp_path/"bundle", port=8123)  # its self-check runs the bundled runtime on an example image
    reqs = (b.path/"requirements.txt").read_text().lower()
    assert "pillow==" in reqs and "torch" not in reqs
    assert "b64" in (b.path/"example.json").read_text() and "image/jpeg" in b.readme
    (tmp_path/"cwd").mkdir(); (tmp_path/"tmp").mkdir()
    srv = BundleServer(sys.executable, b.path, tmp_path/"cwd", tmp_path/"tmp").wait_healthy()
    try:
        f = home["heldout"][0]
        r = httpx.post(srv.url + "/predict", content=Path(f).read_bytes(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200
        assert np.allclose(list(r.json()["predictions"][0]["probabilities"].values()), _eval_outputs(home, [f])[0], atol=1e-5)
        assert httpx.post(srv.url + "/predict", content=b"nope", headers={"Content-Type": "image/png"}).status_code == 400
    finally: assert srv.stop()


# --- a version made by aimass.train ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_made_hf_resnet_exports_and_serves_what_evaluation_gives(home, tmp_path):
    "The whole path on a version aimass.train made from a (tiny, real-architecture) Hugging Face ResNet checkpoint."
    from factory import make_tiny_hf_vision
    from aimass.training import train
    run = train(f"hf:{make_tiny_hf_vision(tmp_path/'tiny-resnet', 'resnet')}", home["images"], epochs=1, batch_size=16,
                progress=False, name="hf-resnet")
    rep = ex.export(run.version.ref)
    assert rep.passed and rep.io["input_shape"] == [None, 32, 32, 3] and set(rep.parity.batch_size) == {1, 16}
    with np.load(run.version.file("heldout.npz")) as d: files = d["x"].tolist()
    want = Registry().load(run.version.ref).outputs(files)  # evaluation-time outputs, on the held-out files
    with S.serve(run.version.ref, backend="onnx", new=True) as srv:
        served = srv.predict(files)
    probs = np.array([[p["probabilities"][c] for c in run.version.card.classes] for p in served])
    assert np.allclose(probs, want, atol=1e-5)
    assert np.mean([p["label"] == run.version.card.classes[k] for p, k in zip(served, np.load(run.version.file("heldout.npz"))["y"])]) \
        == pytest.approx(run.test_metrics["accuracy"])


@pytest.mark.slow
def test_loadtest_sends_the_versions_heldout_images(home, server):
    from aimass.loadtesting import loadtest
    rep = loadtest(server, concurrency=4, requests=60, progress=False)
    assert rep.requests == 60 and rep.errors == {}
