"""Evaluation reports (aimass.reporting): numbers checked against scikit-learn and hand computations, a self-contained
HTML page, a JSON round trip, permutation importance, and `diff` of two versions through Python, %aimass and the CLI."""
import json, re
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from aimass.core import AimassError
from aimass.reporting import EvaluationReport, diff, evaluation_report, permutation_importance


def _multiclass(n=300, C=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    logits = rng.normal(size=(n, C)) + 2.0*np.eye(C)[y]
    p = np.exp(logits); p /= p.sum(1, keepdims=True)
    return p, y


def test_classification_numbers_agree_with_sklearn():
    p, y = _multiclass()
    rep = evaluation_report("classification", list("abcd"), p, y)
    P, R, F, S = skm.precision_recall_fscore_support(y, p.argmax(1))
    np.testing.assert_allclose(rep.per_class[["precision", "recall", "f1"]].values, np.c_[P, R, F])
    assert rep.per_class.support.tolist() == S.tolist()
    for c, name in enumerate("abcd"):
        assert rep.curves[name]["roc_auc"] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]))
        assert rep.curves[name]["average_precision"] == pytest.approx(skm.average_precision_score(y == c, p[:, c]))
    assert rep.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert rep.metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert rep.thresholds is None and rep.best_threshold is None  # thresholds: binary only


def test_ece_by_hand():
    # top-class probabilities 0.9 (right), 0.9 (wrong), 0.6 (right): bins (0.8, 0.9] and (0.5, 0.6]
    p = np.array([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6]])
    rep = evaluation_report("classification", None, p, np.array([0, 0, 1]))
    assert rep.calibration["ece"] == pytest.approx(2/3*abs(0.5 - 0.9) + 1/3*abs(1.0 - 0.6))
    assert rep.calibration["bins"].rows.tolist() == [1, 2]


def test_binary_thresholds_agree_with_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = np.clip(0.35*y + rng.uniform(0, 0.65, 500), 0, 1)
    rep = evaluation_report("classification", ["neg", "pos"], np.c_[1 - s, s], y)
    P, R, T = skm.precision_recall_curve(y, s)
    F = 2*P*R/np.maximum(P + R, 1e-12)
    assert rep.best_threshold["threshold"] == pytest.approx(T[np.argmax(F[:-1])])
    assert rep.best_threshold["f1"] == pytest.approx(F.max())
    for _, row in rep.thresholds.iterrows():
        assert row.precision == pytest.approx(skm.precision_score(y, s >= row.threshold, zero_division=0))
        assert row.recall == pytest.approx(skm.recall_score(y, s >= row.threshold))
    assert rep.metrics["best_threshold"] == rep.best_threshold["threshold"]


def test_regression_residuals_and_deciles():
    y = np.arange(200, dtype=float)
    pred = y + np.where(y >= 180, 10.0, 1.0)
    rep = evaluation_report("regression", None, pred, y)
    assert rep.metrics["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert rep.metrics["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert rep.error_by_decile.mae.tolist() == [1.0]*9 + [10.0]  # the worst decile shows
    assert rep.residuals["residual_mean"] == pytest.approx(-(180*1 + 20*10)/200)


def test_multilabel_per_label():
    rng = np.random.default_rng(2)
    Y = rng.integers(0, 2, (120, 3)); p = np.clip(0.5*Y + rng.uniform(0, 0.6, (120, 3)), 0, 1)
    rep = evaluation_report("multilabel", ["x", "y", "z"], p, Y)
    P, R, F, S = skm.precision_recall_fscore_support(Y, (p >= 0.5).astype(int))
    np.testing.assert_allclose(rep.per_class[["precision", "recall", "f1"]].values, np.c_[P, R, F])
    assert rep.curves["z"]["roc_auc"] == pytest.approx(skm.roc_auc_score(Y[:, 2], p[:, 2]))


def _report():
    p, y = _multiclass(C=2)
    hist = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_loss": [0.6, 0.5, 0.55], "val_accuracy": [0.7, 0.8, 0.79]})
    imp = pd.DataFrame({"column": ["a", "b"], "importance": [0.1, 0.0], "std": [0.01, 0.0]})
    return evaluation_report("classification", ["no", "yes"], p, y, history=hist, epoch=2, weights="best val_loss", importance=imp, title="demo:v1")


def test_html_is_one_self_contained_page(tmp_path):
    rep = _report()
    page = rep.save(tmp_path/"report.html").read_text()
    assert page.startswith("<!doctype html>") and "demo:v1" in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 5  # ROC/PR, calibration, thresholds, learning curves, importance
    assert not re.search(r'(src|href)="(https?:|//|[^"d])', page) and "<script" not in page
    assert "epoch 2" in page and "best val_loss" in page
    compact = rep._repr_html_()
    assert compact.count("<details>") == 6 and "data:image/png;base64," in compact


def test_json_round_trip():
    rep = _report()
    back = EvaluationReport.from_dict(json.loads(json.dumps(rep.to_dict(), allow_nan=False)))
    for name in ("per_class", "thresholds", "history", "importance"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(rep, name))
    pd.testing.assert_frame_equal(back.calibration["bins"], rep.calibration["bins"])
    assert (back.metrics, back.best_threshold, back.epoch, back.weights, back.curves) == (rep.metrics, rep.best_threshold, 2, "best val_loss", rep.curves)
    assert "data:image/png;base64," in back.to_html()  # plots redrawn from the numbers
    reg = evaluation_report("regression", None, np.arange(50.0) + 1, np.arange(50.0))
    pd.testing.assert_frame_equal(EvaluationReport.from_dict(json.loads(json.dumps(reg.to_dict()))).error_by_decile, reg.error_by_decile)


def test_bad_input_is_one_clear_error():
    with pytest.raises(AimassError, match="task is 'classification'"): evaluation_report("ranking", None, [1.0], [1.0])
    with pytest.raises(AimassError, match="same rows"): evaluation_report("classification", None, np.eye(2), [0])
    with pytest.raises(AimassError, match="must be 0..1"): evaluation_report("classification", None, np.eye(2), [0, 2])
    with pytest.raises(AimassError, match="0/1 matrix"): evaluation_report("multilabel", None, np.eye(3), np.eye(3)[:, :2])


def test_permutation_importance_finds_the_informative_column():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"noise": rng.normal(size=800), "signal": rng.normal(size=800), "color": rng.choice(["r", "g", "b"], 800)})
    y = 3*X.signal.values + (X.color == "r").values + rng.normal(0, 0.1, 800)
    model = lambda df: 3*df.signal.values + (df.color == "r").values  # uses signal and color, never noise
    imp = permutation_importance(model, X, y, "regression", repeats=3, seed=0, max_rows=500)
    assert imp.column.tolist() == ["signal", "color", "noise"]
    assert imp.importance.iloc[0] > 1.0 and abs(imp.set_index("column").loc["noise", "importance"]) < 1e-9
    assert imp.attrs["metric"] == "r2" and imp.attrs["rows"] == 500
    pd.testing.assert_frame_equal(permutation_importance(model, X, y, "regression", seed=0, max_rows=500), imp)  # deterministic
    cls = permutation_importance(lambda df: np.c_[-df.signal.values, df.signal.values], X, (X.signal > 0).astype(int).values, "classification")
    assert cls.column.iloc[0] == "signal" and cls.attrs["metric"] == "accuracy"


def _register(name, fingerprint, lr, test_mae, rows):
    from aimass.registry import Registry
    hist = [{"epoch": e, "train_loss": 1/e, "val_loss": 1/e + 0.1, "val_mae": 40/e, "val_r2": 1 - 1/(2*e)} for e in (1, 2)]
    card = {"task": "regression", "model": "mlp", "spec": {"template": "mlp", "kwargs": {"hidden": [32]}},
            "metrics": {"test": {"mae": test_mae, "r2": 0.8}, "val": {"mae": test_mae + 0.5}}, "hparams": {"lr": lr, "epochs": 2},
            "data": {"name": "house", "fingerprint": fingerprint, "rows": {"train": rows, "test": 20}}, "run": {"epoch": 2, "weights": "last"}}
    return Registry().save(name, card, files={"history.json": json.dumps(hist)})


def test_diff_two_versions():
    _register("house", "f" * 16, 1e-3, 3.0, 80)
    _register("house", "e" * 16, 1e-2, 2.0, 90)
    _register("house", "e" * 16, 1e-2, 2.0, 90)
    d = diff("house:v1", "house:v2")
    m = d.metrics.set_index(["split", "metric"])
    assert m.loc[("test", "mae"), "delta"] == -1.0 and m.loc[("test", "mae"), "better"] == "b"  # lower mae is better
    assert m.loc[("val", "mae"), "better"] == "b" and m.loc[("test", "r2"), "better"] == "="
    assert d.hparams.parameter.tolist() == ["lr"] and d.data["changed"] is True
    text = repr(d)
    assert "data CHANGED" in text and "80 train / 20 test -> 90 train / 20 test" in text and "house:v2" in text
    assert "data:image/png;base64," in d._repr_html_() and set(d.histories) == {"house:v1", "house:v2"}
    same = diff("house:v2", "house:v3")
    assert same.data["changed"] is False and same.hparams.empty and "hyperparameters: same" in repr(same)
    with pytest.raises(AimassError, match="no version v7"): diff("house:v1", "house:v7")


def test_diff_through_the_magic_and_the_cli(ip, capsys):
    _register("shop", "a" * 16, 1e-3, 3.0, 80)
    _register("shop", "b" * 16, 1e-3, 2.5, 80)
    d = ip.run_line_magic("aimass", "diff shop:v1 shop:v2 -o d")
    assert ip.user_ns["d"] is d and d.a == "shop:v1" and d.data["changed"] is True
    from aimass.cli import main
    assert main(["diff", "shop:v1", "shop:v2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("diff shop:v1 -> shop:v2") and "data CHANGED" in out
    assert main(["diff", "shop:v1", "shop:v9"]) == 2 and "no version v9" in capsys.readouterr().err


@pytest.mark.slow  # trains two tiny versions (torch)
def test_diff_of_versions_from_the_factory():
    from factory import make_version
    make_version("linear", epochs=1, name="dig"); make_version("linear", epochs=1, name="dig", seed=1)
    d = diff("dig:v1", "dig:v2")
    assert d.data["changed"] is None and "unknown" in repr(d)  # the factory records no fingerprint
    assert d.histories == {"dig:v1": None, "dig:v2": None} and d.plot() is None


def test_regression_dashboard_puts_each_scale_on_its_own_axis():
    from aimass.widgets import TrainingDashboard
    dash = TrainingDashboard("house")
    dash.rows = [{"epoch": e, "train_loss": 1/e, "val_loss": 1.1/e, "val_mse": 2500/e, "val_mae": 50/e, "val_r2": 1 - 1/e} for e in (1, 2, 3)]
    charts = re.findall(r"<svg.*?</svg>", dash._charts())
    titles = [re.search(r'font-weight="bold">([^<]*)<', c)[1] for c in charts]
    assert titles == ["loss", "val mse", "val mae", "val r2"]
    assert "train" in charts[0] and "mse" not in charts[0]  # losses (~1) apart from the MSE (~1000)


@pytest.mark.slow
def test_every_trained_version_keeps_its_report_and_report_reads_it_back(tmp_path):
    from aimass.training import train
    from aimass.reporting import report
    import pandas as pd
    from sklearn.datasets import load_breast_cancer
    df = load_breast_cancer(as_frame=True).frame
    run = train("linear", df, target="target", epochs=2, name="cancer", progress=False)
    rep = run.report
    assert (rep.epoch, rep.weights) == (run.epoch, run.weights) and rep.best_threshold is not None
    assert set(rep.importance.column) == set(df.columns) - {"target"}  # raw columns, not one-hot codes
    assert rep.metrics["accuracy"] == pytest.approx(run.test_metrics["accuracy"])
    again = report("cancer:v1", save=tmp_path/"r.html")
    assert again.title.startswith("cancer:v1: linear") and again.metrics == pytest.approx(rep.metrics)
    page = (tmp_path/"r.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and 'src="http' not in page
    from aimass.cli import main
    assert main(["report", "cancer", "--save", str(tmp_path/"cli.html")]) == 0 and (tmp_path/"cli.html").exists()
