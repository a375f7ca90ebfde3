"Export to ONNX: parity per template and for a notebook-defined model, int8, re-export, error paths, safe loading."
import json
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from onnx import TensorProto, helper

from aimass.core import AimassError
from aimass.data import load_data
from aimass.registry import Registry
import aimass.exporting as ex
from factory import make_version


def assert_parity(rep, int8=True):
    assert rep.passed, rep
    fp32 = rep.parity[rep.parity.variant == "fp32"]
    assert set(fp32.batch_size) == {1, int(fp32.rows.max())} and fp32.rows.max() > 8
    assert fp32.max_abs.max() <= 1e-4
    key = "accuracy" if "accuracy" in rep.metrics["torch"] else "r2"
    assert abs(rep.metrics["fp32"][key] - rep.metrics["torch"][key]) < 1e-6
    if int8: assert rep.metrics["fp32"][key] - rep.metrics["int8"][key] <= 0.01


@pytest.mark.parametrize("model", ["mlp", pytest.param("cnn", marks=pytest.mark.slow)])
def test_template_parity_and_card(model):
    mv = make_version(model, **({"channels": (8, 16), "hidden": 32} if model == "cnn" else {}))  # a small cnn trains fast
    rep = ex.export(mv.ref, quantize="int8")
    assert_parity(rep)
    assert rep.exporter == "dynamo" and rep.io["inputs"] == "raw" and rep.io["input_shape"] == [None, 64]
    exp = Registry().get(mv.ref).card.export
    assert exp.passed and exp.inputs == "raw" and exp.files["int8"] == "onnx/model.int8.onnx"
    report = json.loads((mv.path/"onnx/report.json").read_text())
    assert report["opset"] == rep.opset and report["ir_version"] == rep.ir_version and report["passed"]
    # the graph takes the raw rows a user sends: same numbers as the registry's numpy + torch path
    raw = load_data("digits").X[:5].reshape(5, -1)
    sess = ex.load_onnx(rep.model_path)
    np.testing.assert_allclose(sess.run(None, {"input": raw})[0], Registry().load(mv.ref).outputs(raw), atol=1e-5)
    assert "passed" in repr(rep) and "<table" in rep._repr_html_() and "| fp32 |" in rep._repr_markdown_()


CELL = '''
import torch
from torch import nn
class CellNet(nn.Module):
    "A model defined in a notebook cell."
    def __init__(self, in_features, num_classes, width=32):
        super().__init__()
        self.in_features, self.num_classes, self.width = in_features, num_classes, width
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.GELU(), nn.Linear(width, num_classes))
    def forward(self, x): return self.body(x).tanh() * 3
'''


def test_notebook_defined_model_exports():
    "A class defined in an IPython cell: the registry stores its source, rebuilds it, and export traces the rebuilt one."
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    assert shell.run_cell(CELL).success
    assert shell.run_cell("from aimass.models import resolve_model\n_net, _spec = resolve_model(CellNet, (1, 8, 8), 10)").success
    spec = shell.user_ns["_spec"]
    assert spec["class"] == "__main__:CellNet" and "class CellNet" in spec["source"]
    mv = make_version(spec=spec, name="cell-net")
    rep = ex.export(mv.ref)
    assert_parity(rep, int8=False)
    assert "int8" not in rep.files and "fp32-opt" in rep.files


def test_tabular_regression_raw_inputs_with_missing_values():
    mv = make_version("mlp", "diabetes")
    rep = ex.export(mv.ref)
    assert_parity(rep, int8=False)
    assert rep.io["inputs"] == "raw" and rep.io["input_shape"] == [None, 10] and rep.io["output_name"] == "value"
    lm = Registry().load(mv.ref)
    raw = lm.preprocessor.state  # columns with fill values: NaN in the graph must equal the median fill
    row = np.array([[np.nan] + [c["mean"] for c in raw["columns"][1:]]], np.float32)
    out = ex.load_onnx(rep.model_path).run(None, {"input": row})[0]
    np.testing.assert_allclose(out, lm.outputs(pd.DataFrame(row.astype(float), columns=lm.preprocessor.columns)), rtol=1e-5)


def test_categorical_tabular_takes_preprocessed_features():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=300), "color": rng.choice(["red", "green", "blue"], 300)})
    df["y"] = np.where((df.a > 0) ^ (df.color == "red"), "yes", "no")
    mv = make_version("mlp", load_data(df, target="y"), name="cats")
    rep = ex.export(mv.ref)
    assert_parity(rep, int8=False)
    assert rep.io["inputs"] == "preprocessed" and rep.io["input_shape"] == [None, 4]
    assert "preprocessing" in Registry().get(mv.ref).card.export.note


@pytest.mark.slow
def test_reexport_replaces_atomically():
    mv = make_version("linear")
    ex.export(mv.ref, quantize="int8")
    first = Registry().get(mv.ref).card.export.created_at
    rep = ex.export(mv.ref, optimize=False)
    assert sorted(p.name for p in (mv.path/"onnx").iterdir()) == ["model.onnx", "report.json"]
    assert not [p for p in mv.path.iterdir() if p.name.startswith(".")], "staging/old folders left behind"
    exp = Registry().get(mv.ref).card.export
    assert set(exp.files) == {"fp32"} and exp.created_at >= first and rep.passed


@pytest.mark.slow
def test_failed_check_is_loud_and_saved(monkeypatch):
    mv = make_version("linear")
    monkeypatch.setattr(ex, "FP32_MAX_ABS", -1.0)
    with pytest.warns(UserWarning, match="failed its checks"):
        rep = ex.export(mv.ref, optimize=False)
    assert not rep.passed and "FAILED" in repr(rep)
    exp = Registry().get(mv.ref).card.export
    assert exp.passed is False and (mv.path/"onnx/model.onnx").exists()


def test_int8_falling_short_is_not_an_export_failure(monkeypatch):
    "int8 losing accuracy on a good fp32 export: the headline said FAILED and the warning 'failed its checks', while fp32 served."
    mv = make_version("linear")
    monkeypatch.setattr(ex, "INT8_MAX_DROP", -1.0)  # every int8 now falls short of its limit
    with pytest.warns(UserWarning, match=r"exported, fp32-opt serves; int8 accuracy .* never served") as caught:
        rep = ex.export(mv.ref, quantize="int8")
    assert not any("failed its checks" in str(w.message) for w in caught)
    assert rep.failed == ["int8"] and rep.int8_only_failed and rep.served == "fp32-opt"
    assert "passed; int8 not kept" in repr(rep) and "FAILED" not in repr(rep)
    assert Registry().get(mv.ref).card.export.checks["int8"] is False  # never served, as before


def test_legacy_fallback_is_recorded(monkeypatch, capsys):
    real = torch.onnx.export
    def no_dynamo(*a, dynamo=True, **kw):
        if dynamo: raise RuntimeError("simulated torch.export failure")
        kw.pop("external_data", None); kw.pop("dynamic_shapes", None)
        return real(*a, dynamo=False, **kw)
    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    mv = make_version("linear")
    rep = ex.export(mv.ref)
    assert rep.exporter == "legacy" and rep.passed
    assert "simulated torch.export failure" in rep.notes[0] and "legacy" in capsys.readouterr().out
    assert Registry().get(mv.ref).card.export.exporter == "legacy"


CUMMAX_SOURCE = '''
class Cumulative(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.lin = nn.Linear(in_features, num_classes)
    def forward(self, x): return torch.cummax(self.lin(x.flatten(1)), dim=1).values
'''


def test_unexportable_model_names_the_op():
    spec = {"class": "__main__:Cumulative", "kwargs": {"in_features": 64, "num_classes": 10}, "lightning": False, "source": CUMMAX_SOURCE}
    mv = make_version(spec=spec, name="cumulative", epochs=1)
    with pytest.raises(AimassError, match="aten.cummax") as e:
        ex.export(mv.ref)
    assert "Try:" in str(e.value)
    assert Registry().get(mv.ref).card.export is None and not (mv.path/"onnx").exists()


def test_unknown_ref_and_bad_arguments():
    with pytest.raises(AimassError, match="No model named"): ex.export("nope")
    mv = make_version("linear")
    with pytest.raises(AimassError, match="quantize"): ex.export(mv.ref, quantize="int4")
    with pytest.raises(AimassError, match="format"): ex.export(mv.ref, format="tflite")


def tiny_onnx(path, ir_version=8, external_location=None):
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    if external_location:
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1], data_location=TensorProto.EXTERNAL)
        w.external_data.add(key="location", value=external_location)
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = ir_version
    Path(path).write_bytes(m.SerializeToString())
    return Path(path)


def test_ir_version_too_new_is_an_aimass_error(tmp_path):
    with pytest.raises(AimassError, match="IR version"):
        ex.load_onnx(tiny_onnx(tmp_path/"new.onnx", ir_version=99))


def test_external_data_outside_the_folder_is_refused(tmp_path):
    d = tmp_path/"model"; d.mkdir()
    secret = tmp_path/"secret.bin"; secret.write_bytes(np.float32([7.0]).tobytes())
    for loc in ["../../etc/passwd", "../secret.bin", str(secret)]:
        with pytest.raises(AimassError, match="outside the model folder"):
            ex.load_onnx(tiny_onnx(d/"evil.onnx", external_location=loc))
    (d/"w.bin").symlink_to(secret)  # a symlink inside the folder that points out of it
    with pytest.raises(AimassError, match="outside the model folder"):
        ex.load_onnx(tiny_onnx(d/"link.onnx", external_location="w.bin"))
    (d/"model-link.onnx").symlink_to(tiny_onnx(tmp_path/"elsewhere.onnx"))
    with pytest.raises(AimassError, match="outside its model folder"):
        ex.load_onnx(d/"model-link.onnx")
    # a real file inside the folder is fine
    (d/"ok.bin").write_bytes(np.float32([3.0]).tobytes())
    sess = ex.load_onnx(tiny_onnx(d/"ok.onnx", external_location="ok.bin"))
    assert sess.run(None, {"x": np.ones((1, 1), np.float32)})[0].item() == 3.0
    with pytest.raises(AimassError, match="No ONNX file"): ex.load_onnx(d/"missing.onnx")


# --- texts: ONNX Runtime's transformer-fused graph ------------------------------------------------------------------

def _ops(path) -> set:
    import onnx
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    "A version aimass.train made from a tiny Hugging Face BERT, exported with int8, in a home of its own: `(home, ref, report)`."
    from factory import make_tiny_hf_text, text_frame
    from aimass.training import train
    home = tmp_path_factory.mktemp("hf-bert-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIMASS_HOME", str(home))
        run = train(f"hf:{make_tiny_hf_text(home/'tiny-bert')}", text_frame(90), text="text", target="label", epochs=1,
                    batch_size=16, max_length=32, progress=False, name="hf-bert")
        rep = ex.export(run.version.ref, quantize="int8")
    return home, run.version.ref, rep


@pytest.mark.slow
def test_text_encoder_serves_the_attention_fused_graph(hf_bert, monkeypatch):
    "fp32-opt is ONNX Runtime's transformer-fused graph, int8 quantizes it (QAttention); both are checked, and fp32-opt is served."
    from aimass.inference import onnx_export
    home, ref, rep = hf_bert
    monkeypatch.setenv("AIMASS_HOME", str(home))
    mv = Registry().get(ref)
    fused, int8 = _ops(mv.path/rep.files["fp32-opt"]), _ops(mv.path/rep.files["int8"])
    assert {"Attention", "EmbedLayerNormalization", "BiasGelu"} <= fused and "SkipLayerNormalization" not in fused
    assert "QAttention" in int8 and "SkipLayerNormalization" not in int8
    assert rep.passed and rep.served == "fp32-opt" and mv.card.onnx_variant() == "fp32-opt"
    assert onnx_export(mv.path, mv.card)[0].name == "model.opt.onnx"  # what serve, predict and bundle run
    opt = rep.parity[rep.parity.variant == "fp32-opt"]  # the served graph at two batch sizes and two lengths
    assert {1, 16} <= set(opt.batch_size) and opt.length.nunique() == 3 and opt.max_abs.max() <= 1e-4
    assert "made from a TorchScript export with eager attention" in " ".join(rep.notes) and "serve runs fp32-opt" in repr(rep)
    assert json.loads((mv.path/"onnx/report.json").read_text())["served"] == "fp32-opt"


@pytest.mark.slow
def test_fused_attention_takes_masks_as_given(hf_bert, monkeypatch):
    "Left padding and a gap in the mask give eager's outputs: the mask reaches Attention as it is, not as a right-padded length."
    home, ref, rep = hf_bert
    monkeypatch.setenv("AIMASS_HOME", str(home))
    lm = Registry().load(ref)
    x = lm.preprocessor.transform(["iris setosa petal width in centimetres", "faces", "a database of faces of forty people"])
    x = np.stack([np.roll(row, x.shape[-1] - int(row[1].sum()), axis=-1) for row in x])  # left padding: the tokens at the end
    x[2, 1, -3] = 0  # and a gap in one row's mask
    with torch.inference_mode(): want = lm.predictor(torch.from_numpy(x)).numpy()
    for v in ("fp32-opt", "int8"):
        got = ex._run_rows(ex.load_onnx(lm.version.path/rep.files[v]), x)
        np.testing.assert_allclose(got, want, atol=1e-5 if v == "fp32-opt" else 0.05)


@pytest.mark.slow
def test_distilbert_fuses_too(tmp_path):
    "DistilBERT (no token_type_ids) fuses with the same optimizer and is served fused."
    from factory import make_tiny_hf_text, text_frame
    from aimass.training import train
    run = train(f"hf:{make_tiny_hf_text(tmp_path/'tiny-distilbert', arch='distilbert')}", text_frame(60), text="text",
                target="label", epochs=1, batch_size=16, max_length=32, progress=False, name="hf-distilbert")
    rep = ex.export(run.version.ref)
    assert rep.passed and rep.served == "fp32-opt" and "Attention" in _ops(run.version.path/rep.files["fp32-opt"])


def test_sessions_leave_out_the_slow_skip_layer_norm_fusion(tmp_path):
    "Add + LayerNormalization stay apart in aimass's sessions: ORT's fused SkipLayerNormalization CPU kernel is the slower one."
    import onnxruntime as ort
    nodes = [helper.make_node("Add", ["x", "s"], ["t"]), helper.make_node("LayerNormalization", ["t", "g", "b"], ["y"], axis=-1)]
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8])
    g = helper.make_graph(nodes, "g", [io("x"), io("s")], [io("y")],
                          [helper.make_tensor("g", TensorProto.FLOAT, [8], [1.0]*8), helper.make_tensor("b", TensorProto.FLOAT, [8], [0.0]*8)])
    path = tmp_path/"ln.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    def seen(make):
        so = ex.session_options(1); so.optimized_model_filepath = str(tmp_path/"seen.onnx")
        make(so)
        return _ops(tmp_path/"seen.onnx")
    assert "SkipLayerNormalization" in seen(lambda so: ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]))
    assert "SkipLayerNormalization" not in seen(lambda so: ex.load_onnx(path, options=so))


# --- images: the in-graph normalisation leaves the BatchNorms folded ------------------------------------------------

@pytest.mark.slow
def test_image_graph_folds_batchnorm_after_the_in_graph_normalisation(tmp_path):
    "uint8 pixels, then the mean/std multiply-add, then convolutions with their BatchNorms folded in; the served copy checked at batch 1 and 16."
    from factory import make_tiny_hf_vision, write_image_folder
    from aimass.training import train
    run = train(f"hf:{make_tiny_hf_vision(tmp_path/'tiny-resnet', 'resnet')}", write_image_folder(tmp_path/"photos", n_per_class=12),
                epochs=1, batch_size=16, progress=False, name="hf-resnet")
    rep = ex.export(run.version.ref)
    for v in ("fp32", "fp32-opt"):
        ops = _ops(run.version.path/rep.files[v])
        assert "Conv" in ops and "BatchNormalization" not in ops, (v, ops)
    assert rep.passed and rep.served == "fp32-opt" and rep.io["dtype"] == "uint8"
    assert set(rep.parity[rep.parity.variant == "fp32-opt"].batch_size) == {1, 16}


@pytest.mark.slow
def test_image_int8_is_static_calibrated_on_training_images(tmp_path):
    "quantize='int8' on an image version: QDQ int8 convolutions calibrated on its training files (the split travels with it); without them, dynamic, and the report says why."
    from factory import make_tiny_hf_vision, write_image_folder
    from aimass.training import train
    photos = write_image_folder(tmp_path/"photos", n_per_class=12)
    run = train(f"hf:{make_tiny_hf_vision(tmp_path/'tiny-resnet', 'resnet')}", photos, epochs=2, batch_size=16, progress=False, name="hf-resnet-q")
    mv = run.version
    split = json.loads(mv.file("split.json").read_text())
    pixels, why = ex.calibration_pixels(mv, run.model.preprocessor, n=5)
    assert why is None and pixels.dtype == np.uint8 and len(pixels) == 5 and len(split["train"]) > 5
    rep = ex.export(mv.ref, quantize="int8")
    ops = _ops(mv.path/rep.files["int8"])
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops, ops
    n = min(ex.CALIBRATION_IMAGES, len(split["train"]))
    assert f"int8 is static (int8 convolutions), calibrated on {n} of its training images" in rep.notes
    assert rep.checks["int8"]["passed"] == (rep.metrics["fp32"]["accuracy"] - rep.metrics["int8"]["accuracy"] <= 0.01)
    photos.rename(tmp_path/"moved")  # the training files are gone: the held-out ones too, so export says so
    with pytest.raises(AimassError, match="cannot read its held-out images"): ex.export(mv.ref, quantize="int8")
    assert ex.calibration_pixels(mv, run.model.preprocessor) == (None, f"they are no longer in {photos}")
