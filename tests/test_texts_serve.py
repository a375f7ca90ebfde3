"""Text versions after training: export (separate named int64 inputs with dynamic batch and sequence axes, parity at two
batch sizes and two lengths, int8 judged by accuracy), the Runner and batch predict over CSV/Parquet/JSONL (resumable,
key column kept), and the server (strings, {"text"} rows and pairs; label, probabilities and top_k; a number where
text belongs is a 400, an over-long text a 413, and it keeps serving; requests of different lengths batched together;
no torch in the ONNX server)."""
import json, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")
torch = pytest.importorskip("torch")

from aimass.core import AimassError
from aimass.registry import Registry
import aimass.exporting as ex
from aimass import launcher as S
from aimass.inference import Runner, pad_tokens, predict
from factory import shared_home, text_frame
from tiny_tokens import make_token_version

TESTS = str(Path(__file__).resolve().parent)  # tiny_tokens is importable from here (the torch backend rebuilds its class)


@shared_home(scope="module")
def home(folder):
    "A TinyTokens version on three topics' texts (max_length 32), exported with int8; and a pair version, exported."
    mv = make_token_version()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an int8 that lost accuracy warns; test_int8 checks what it says
        rep = ex.export(mv.ref, quantize="int8")
    pairs = make_token_version(name="topics-pairs", pair=True, n=60, epochs=30)
    ex.export(pairs.ref)
    with np.load(mv.file("heldout.npz")) as d: heldout = d["x"].tolist()
    with np.load(pairs.file("heldout.npz")) as d: pair_heldout = d["x"].tolist()
    return {"ref": mv.ref, "report": rep, "heldout": heldout, "pairs": pairs.ref, "pair_heldout": pair_heldout}


def _eval_outputs(ref, rows) -> np.ndarray:
    "Evaluation-time outputs: the registered net, eager, on the rows tokenised by the version's own Preprocessor."
    return Registry().load(ref).outputs(rows)


def _probs(preds, classes) -> np.ndarray: return np.array([[p["probabilities"][c] for c in classes] for p in preds])


# --- export -------------------------------------------------------------------------------------------------------

def test_export_names_int64_inputs_with_dynamic_batch_and_sequence(home):
    import onnx
    rep = home["report"]
    assert rep.checks["fp32"]["passed"] and rep.checks["fp32-opt"]["passed"]
    assert rep.io["inputs"] == "tokens" and rep.io["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    graph = onnx.load(str(rep.model_path)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    for i in graph.input:
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        dims = i.type.tensor_type.shape.dim
        assert len(dims) == 2 and not dims[0].HasField("dim_value") and not dims[1].HasField("dim_value")  # both dynamic
    card = Registry().get(home["ref"]).card
    assert (card.export.inputs, card.export.dtype, card.export.extra["input_names"]) == ("tokens", "int64", rep.io["input_names"])
    assert "'input_ids', 'attention_mask', 'token_type_ids'" in repr(rep).splitlines()[0]


def test_parity_at_two_batch_sizes_and_two_lengths(home):
    fp32 = home["report"].parity[home["report"].parity.variant == "fp32"]
    assert set(fp32.batch_size) >= {1, 16} and set(fp32.length) == {"its own", "max_length 32", "longest in batch"}
    assert fp32.rows.max() == len(home["heldout"]) > 16 and fp32.max_abs.max() <= 1e-4
    # the graph fed by name, other tools' way, at two lengths, gives what evaluation gives
    sess, pre = ex.load_onnx(home["report"].model_path), Registry().get(home["ref"]).card.preprocessing()
    want = _eval_outputs(home["ref"], home["heldout"][:5])
    for length in (None, 32):
        x = pad_tokens([pre.transform(home["heldout"][:5])], pre.state["pad_id"], length)
        feed = {n: x[:, k] for k, n in enumerate(["input_ids", "attention_mask", "token_type_ids"])}
        assert np.allclose(sess.run(None, feed)[0], want, atol=1e-5)


def test_int8_kept_only_within_one_accuracy_point(home):
    rep = home["report"]
    drop = rep.metrics["fp32"]["accuracy"] - rep.metrics["int8"]["accuracy"]
    assert rep.checks["int8"]["passed"] == (drop <= 0.01)
    assert ("int8" in Registry().get(home["ref"]).card.export.usable) == rep.checks["int8"]["passed"]
    if not rep.checks["int8"]["passed"]: assert "lost accuracy" in rep.checks["int8"]["why"]


def test_pairs_export_and_run(home):
    r = Runner(Registry().get(home["pairs"]).path, backend="onnx")
    rows = home["pair_heldout"][:3]
    want = _eval_outputs(home["pairs"], rows)
    for given in (rows, [{"text": a, "text_pair": b} for a, b in rows]):
        assert np.allclose(r.outputs(given), want, atol=1e-5)


# --- Runner and batch predict ---------------------------------------------------------------------------------------

def test_pad_tokens_joins_batches_of_different_lengths_without_changing_outputs(home):
    r, texts = Runner(Registry().get(home["ref"]).path, backend="onnx"), home["heldout"]
    short, long_ = min(texts, key=len), max(texts, key=len)
    a, b = r.array([short]), r.array([long_, short])
    assert a.shape[2] < b.shape[2]
    joined = r.concat([a, b])
    assert joined.shape == (3, 3, b.shape[2]) and (joined[0, 0, a.shape[2]:] == r.pre.state["pad_id"]).all()
    assert np.allclose(r.model(joined), _eval_outputs(home["ref"], [short, long_, short]), atol=1e-5)


def test_runner_takes_strings_and_text_dicts_with_top_k(home):
    r, texts = Runner(Registry().get(home["ref"]).path), home["heldout"][:4]
    want = _eval_outputs(home["ref"], texts)
    for rows in (texts, [{"text": t} for t in texts], pd.Series(texts)):
        assert np.allclose(r.outputs(rows), want, atol=1e-5)
    pred = r.encode(r.outputs(texts[:1]))[0]
    assert pred["top_k"][0]["label"] == pred["label"] and len(pred["top_k"]) == 3 and len(pred["probabilities"]) == 3


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_predict_text_file_resumes_keeping_the_key_column(home, tmp_path, fmt):
    df = text_frame(40, seed=3).rename(columns={"text": "body"})
    df.insert(0, "ticket", [f"T{i:03d}" for i in range(len(df))])
    src = tmp_path/f"tickets.{fmt}"
    {"csv": lambda: df.to_csv(src, index=False), "parquet": lambda: df.to_parquet(src),
     "jsonl": lambda: df.to_json(src, orient="records", lines=True)}[fmt]()
    out, calls = tmp_path/"preds.parquet", []
    def stop_after_two_chunks(done, total):
        calls.append(done)
        if len(calls) == 2: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        predict(home["ref"], src, text="body", keep=["ticket"], output=out, batch_size=8, progress=stop_after_two_chunks)
    assert not out.exists() and len(list((tmp_path/"preds.parquet.parts").glob("part-*"))) == 2
    p = predict(home["ref"], src, text="body", keep=["ticket"], output=out, batch_size=8, progress=False)
    assert p.resumed_from == 16 and p.rows == 40
    f = pd.read_parquet(out)
    assert f.columns.tolist()[:2] == ["ticket", "prediction"] and f.ticket.tolist() == df.ticket.tolist()
    classes = Registry().get(home["ref"]).card.classes
    assert np.allclose(f[[f"prob_{c}" for c in classes]].to_numpy(), _eval_outputs(home["ref"], df.body.tolist()), atol=1e-5)


def test_predict_names_a_missing_text_column_and_bad_rows(home, tmp_path):
    df = pd.DataFrame({"id": [1, 2], "body": ["a ticket about plants", "leaf shapes"]})
    with pytest.raises(AimassError, match="has no column 'text' of texts: name the column"):
        predict(home["ref"], df, progress=False)
    assert predict(home["ref"], ["one text", "another one"], progress=False).frame.columns[0] == "prediction"
    (tmp_path/"bad.jsonl").write_text('{"body": "fine"}\n{"body": 42}\n')
    with pytest.raises(AimassError, match="row 1: int 42 is not text"):
        predict(home["ref"], tmp_path/"bad.jsonl", text="body", progress=False)


# --- serving --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(home):
    srv = S.serve(home["ref"], backend="onnx", max_batch_size=8)
    yield srv
    srv.stop()


@pytest.mark.slow
def test_served_outputs_equal_evaluation_time_outputs(home, server):
    texts, card = home["heldout"], Registry().get(home["ref"]).card
    served = server.predict(texts)
    assert np.allclose(_probs(served, card.classes), _eval_outputs(home["ref"], texts), atol=1e-5)
    with np.load(Registry().get(home["ref"]).file("heldout.npz")) as d: y = d["y"]
    assert np.mean([p["label"] == card.classes[k] for p, k in zip(served, y)]) == pytest.approx(card.metrics["test"]["accuracy"])
    assert served[0]["top_k"][0]["label"] == served[0]["label"]


@pytest.mark.slow
def test_text_rows_json_shapes(home, server):
    t = home["heldout"][0]
    want = _eval_outputs(home["ref"], [t])[0]
    for body in ({"instances": [t]}, {"instances": [{"text": t}]}):
        r = httpx.post(server.url + "/predict", json=body)
        assert r.status_code == 200 and np.allclose(list(r.json()["predictions"][0]["probabilities"].values()), want, atol=1e-5)
    assert server.predict(t)[0]["label"] == server.predict([t])[0]["label"]


@pytest.mark.slow
def test_concurrent_requests_of_different_lengths_are_batched_and_answered_right(home, server):
    "Requests the server batches together are padded to the longest text in the batch; each still gets its own answer."
    from concurrent.futures import ThreadPoolExecutor
    texts = sorted(home["heldout"], key=len)
    bodies = [[texts[i]] if i % 2 else texts[i:i+3] for i in range(len(texts) - 3)]
    with ThreadPoolExecutor(8) as pool: answers = list(pool.map(server.predict, bodies))
    classes = Registry().get(home["ref"]).card.classes
    for rows, got in zip(bodies, answers):
        assert np.allclose(_probs(got, classes), _eval_outputs(home["ref"], rows), atol=1e-5)


@pytest.mark.slow
def test_bad_text_requests_get_4xx_and_the_server_keeps_serving(home, server):
    from aimass.launcher import MAX_TEXT_CHARS
    good = {"instances": [home["heldout"][0]]}
    cases = [({"instances": [42]}, 400, "row 0"), ({"instances": ["fine", {"text": 3.5}]}, 400, "row 1"),
             ({"instances": [["a", "b", "c"]]}, 400, "row 0"),
             ({"instances": ["x " * (MAX_TEXT_CHARS // 2 + 1)]}, 413, "over the cap of 100,000 characters")]
    for body, status, says in cases:
        r = httpx.post(server.url + "/predict", json=body)
        assert r.status_code == status and says in r.json()["detail"].lower(), (body.__repr__()[:80], r.text[:300])
        assert httpx.post(server.url + "/predict", json=good).status_code == 200  # the next request is served
    assert server.alive


@pytest.mark.slow
def test_pairs_are_served(home):
    rows = home["pair_heldout"][:3]
    want = _eval_outputs(home["pairs"], rows)
    classes = Registry().get(home["pairs"]).card.classes
    with S.serve(home["pairs"], backend="onnx", new=True) as srv:
        assert np.allclose(_probs(srv.predict(rows), classes), want, atol=1e-5)
        r = httpx.post(srv.url + "/predict", json={"instances": [{"text": a, "text_pair": b} for a, b in rows]})
        assert r.status_code == 200 and np.allclose(_probs(r.json()["predictions"], classes), want, atol=1e-5)


@pytest.mark.slow
def test_info_describes_text_requests(home, server):
    info = server.info()
    assert info["schema"]["kind"] == "text" and info["input"]["inputs"] == "tokens" and info["input"]["dtype"] == "int64"
    assert "100,000 characters" in info["request"]["limits"] and "top_k" in info["answer"]


@pytest.mark.slow
def test_onnx_text_server_imports_neither_torch_nor_transformers(home, server):
    import psutil
    server.predict(home["heldout"][:2])
    procs = [psutil.Process(server.pid)] + psutil.Process(server.pid).children(recursive=True)
    maps = {p.pid: Path(f"/proc/{p.pid}/maps").read_text() for p in procs}
    assert len(procs) >= 3 and not [p.cmdline() for p in procs if "libtorch" in maps[p.pid]]
    assert not [p.cmdline() for p in procs if "/transformers/" in maps[p.pid]]
    tokenizers = {pid for pid, m in maps.items() if "tokenizers" in m}  # the tokenizers library's extension
    workers = {pid for pid, m in maps.items() if "onnxruntime" in m}
    assert tokenizers and tokenizers <= workers  # texts are tokenised in the workers


@pytest.mark.slow
def test_served_by_the_torch_backend_too(home, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTS)  # the card's class lives in tests/tiny_tokens.py
    with S.serve(home["ref"], backend="torch", new=True) as srv:
        t = home["heldout"][:4]
        assert np.allclose(_probs(srv.predict(t), Registry().get(home["ref"]).card.classes), _eval_outputs(home["ref"], t), atol=1e-5)


# --- a version made by aimass.train ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_made_hf_bert_exports_and_serves_what_evaluation_gives(home, tmp_path):
    "The whole path on a version aimass.train made from a (tiny, real-architecture) Hugging Face BERT checkpoint."
    from factory import make_tiny_hf_text
    from aimass.training import train
    run = train(f"hf:{make_tiny_hf_text(tmp_path/'tiny-bert')}", text_frame(90), text="text", target="label", epochs=1,
                batch_size=16, max_length=32, progress=False, name="hf-bert")
    rep = ex.export(run.version.ref)
    assert rep.passed and rep.io["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert set(rep.parity.batch_size) >= {1, 16} and rep.parity.max_abs.max() <= 1e-4
    with np.load(run.version.file("heldout.npz")) as d: texts, y = d["x"].tolist(), d["y"]
    want = Registry().load(run.version.ref).outputs(texts)  # evaluation-time outputs, on the held-out texts
    with S.serve(run.version.ref, backend="onnx", new=True) as srv:
        served = srv.predict(texts)
    assert np.allclose(_probs(served, run.version.card.classes), want, atol=1e-5)
    assert np.mean([p["label"] == run.version.card.classes[k] for p, k in zip(served, y)]) == pytest.approx(run.test_metrics["accuracy"])


@pytest.mark.slow
def test_bundle_of_a_text_version_serves_texts(home, tmp_path):
    import sys
    from aimass.deployment import bundle
    from test_bundle import BundleServer
    b = bundle(home["ref"], tmp_path/"bundle", port=8124)  # its self-check runs the bundled runtime on an example text
    reqs = (b.path/"requirements.txt").read_text().lower()
    assert "tokenizers==" in reqs and "torch" not in reqs and "transformers" not in reqs
    assert '{"text": "..."}' in b.readme
    (tmp_path/"cwd").mkdir(); (tmp_path/"tmp").mkdir()
    srv = BundleServer(sys.executable, b.path, tmp_path/"cwd", tmp_path/"tmp").wait_healthy()
    try:
        t = home["heldout"][0]
        r = httpx.post(srv.url + "/predict", json={"instances": [t]})
        assert r.status_code == 200
        assert np.allclose(list(r.json()["predictions"][0]["probabilities"].values()), _eval_outputs(home["ref"], [t])[0], atol=1e-5)
        assert httpx.post(srv.url + "/predict", json={"instances": [7]}).status_code == 400
    finally: assert srv.stop()


@pytest.mark.slow
def test_bench_times_a_text_version_at_max_length_on_each_backend(home):
    from aimass.benchmark import bench
    rep = bench(home["ref"], backends=("torch", "onnx", "onnx-int8"), batch_sizes=(1, 8), warmup=2, repeats=10, rounds=2, save=False)
    assert set(rep.table.backend) == {"torch", "onnx", "onnx-int8"} and set(rep.table.batch_size) == {1, 8}
    acc = rep.table.groupby("backend").metric.first()  # accuracy
    assert acc["onnx"] == pytest.approx(acc["torch"]) == pytest.approx(home["report"].metrics["torch"]["accuracy"])


@pytest.mark.slow
def test_multi_label_version_exports_predicts_and_serves_label_sets(home, tmp_path):
    from factory import make_tiny_hf_text
    from aimass.training import train
    run = train(f"hf:{make_tiny_hf_text(tmp_path/'tiny-bert')}", text_frame(60), text="text", target="tags", multi_label=True,
                epochs=1, batch_size=16, max_length=32, progress=False, name="hf-tags")
    mv, classes = run.version, run.version.card.classes
    rep = ex.export(mv.ref)
    assert rep.passed and rep.io["output_name"] == "probs" and "accuracy" in rep.metrics["fp32"]
    with np.load(mv.file("heldout.npz")) as d: texts = d["x"].tolist()
    want = Registry().load(mv.ref).outputs(texts)
    f = predict(mv.ref, texts, progress=False).frame
    assert np.allclose(f[[f"prob_{c}" for c in classes]].to_numpy(), want, atol=1e-5)
    assert f.prediction.tolist() == ["|".join(c for c, q in zip(classes, p) if q >= 0.5) for p in want]
    with S.serve(mv.ref, backend="onnx", new=True) as srv: served = srv.predict(texts[:4])
    assert np.allclose(_probs(served, classes), want[:4], atol=1e-5)
    assert [p["labels"] for p in served] == [[c for c, q in zip(classes, p) if q >= 0.5] for p in want[:4]]


@pytest.mark.slow
def test_loadtest_sends_the_versions_heldout_texts(home, server):
    from aimass.loadtesting import default_rows, loadtest
    assert default_rows(server.info(), n=3) == home["heldout"][:3]
    assert default_rows({**server.info(), "ref": "not-here:v1"}) == ["an example text"]  # from the schema
    rep = loadtest(server, concurrency=4, requests=40, progress=False)
    assert rep.requests == 40 and rep.errors == {}
