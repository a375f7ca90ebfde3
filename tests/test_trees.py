"""A LightGBM model is a registered version like any other: loaded, exported (with parity), benchmarked, predicted,
served and bundled by the same verbs; images and texts are refused."""
import numpy as np, pandas as pd, pytest
import aimass
from aimass.core import AimassError
from aimass.registry import Registry
from aimass.trees import fit_tree, TreeModel
from factory import shared_home


@shared_home()
def home(folder):
    "Three trees: binary, multiclass, regression (small, few rounds)."
    runs = {d: fit_tree(d, n_estimators=40, early_stopping=10) for d in ("breast_cancer", "wine", "diabetes")}
    return {"runs": runs}


@pytest.mark.parametrize("data", ["breast_cancer", "wine", "diabetes"])
def test_loads_and_predicts_as_the_booster(home, data):
    run = home["runs"][data]
    lm = aimass.load(run.ref)
    assert isinstance(lm.net, TreeModel) and lm.card.model == "lightgbm" and "source" not in lm.card.spec
    rows = aimass.load_data(data).X.head(30)
    raw = lm.net.booster.predict(lm.preprocessor.transform(rows))  # LightGBM's own probabilities / values
    out = lm.outputs(rows)
    if data == "breast_cancer": out = out[:, 1]
    np.testing.assert_allclose(out, raw, rtol=1e-5, atol=1e-6)
    assert run.test_metrics and run.epoch >= 1 and run.weights == "best val_loss"


@pytest.mark.parametrize("data", ["breast_cancer", "wine", "diabetes"])
def test_export_passes_parity(home, data):
    rep = aimass.export(home["runs"][data].ref, quantize="int8")
    assert rep.passed and rep.exporter == "onnxmltools" and rep.io["input_name"] == "input", rep
    assert set(rep.checks) == {"fp32", "fp32-opt", "int8"}  # int8: a documented no-op (no weights to quantize)


def test_predict_csv_and_bench(home, tmp_path):
    ref = home["runs"]["wine"].ref
    aimass.export(ref)
    df = aimass.load_data("wine").X.head(10); df.iloc[0, 0] = np.nan  # imputed
    df.to_csv(tmp_path/"rows.csv", index=False)
    preds = aimass.predict(ref, str(tmp_path/"rows.csv"))
    assert len(preds.frame if hasattr(preds, "frame") else preds) == 10
    rep = aimass.bench(ref, backends=("torch", "onnx"), batch_sizes=(1, 8), warmup=2, repeats=10, rounds=2)
    assert set(rep.table.backend) == {"torch", "onnx"}


def test_unregistered_then_registered(home):
    run = fit_tree("iris", n_estimators=20, early_stopping=5, register=False)
    assert run.version is None and run.model.predict(aimass.load_data("iris").X.head(3)).shape == (3,)
    mv = run.register("iris-tree")
    assert mv.ref == "iris-tree:v1" and aimass.load(mv.ref).net.objective == "multiclass"


def test_refuses_images_and_texts(home):
    with pytest.raises(AimassError, match="not image-like arrays"): fit_tree("digits")
    texts = pd.DataFrame({"text": ["good", "bad"] * 10, "label": ["p", "n"] * 10})
    with pytest.raises(AimassError, match="not texts"):
        from aimass.trees import tree_dataset
        import aimass.data as D
        ds = D.load_data(texts, target="label", text="text")
        fit_tree(ds)


@pytest.mark.slow
def test_served_and_bundled(home, tmp_path):
    ref = home["runs"]["breast_cancer"].ref
    aimass.export(ref)
    rows = aimass.load_data("breast_cancer").X.head(2)
    with aimass.serve(ref) as srv:
        got = srv.predict(rows.values.tolist())
        assert [p["label"] for p in got] == list(aimass.load(ref).predict(rows))
    assert not srv.alive
    b = aimass.bundle(ref, tmp_path/"bundle")
    assert (tmp_path/"bundle").exists(), b


@pytest.mark.parametrize("data", ["wine", "diabetes"])
def test_keeps_training_statistics_for_drift_checks(home, data):
    "A tree version keeps reference.json like a trained network: drift and monitor work on it without reference= data."
    run = home["runs"][data]
    X = aimass.load_data(data).X
    assert (run.version.path/"reference.json").exists()
    assert aimass.drift(run.ref, data=X.sample(min(300, len(X)), random_state=1)).drifted == []
    shifted = X.assign(**{X.columns[0]: X[X.columns[0]] + 10 * X[X.columns[0]].std()})
    assert X.columns[0] in aimass.drift(run.ref, data=shifted, predictions=False).drifted
