"""aimass.drift: a batch check of new rows against a version's training statistics (reference.json)."""
import json
import numpy as np
import pytest
import aimass
from aimass.core import AimassError
from drift_data import churn, churn_version
from factory import make_version, shared_home


@shared_home(scope="module")
def home(folder):
    churn_version()


def test_rows_from_the_training_distribution_are_not_flagged():
    r = aimass.drift("churn", data=churn(1000, seed=1).X)
    assert r.drifted == [] and not r.predictions["drifted"], r
    assert r.rows == 1000 and {f["feature"] for f in r.features} == {"age", "income", "plan"}


def test_shifted_numbers_are_flagged_with_ks_and_psi():
    r = aimass.drift("churn", data=churn(1000, seed=2, older=15).X)
    assert r.drifted == ["age"], r
    age = next(f for f in r.features if f["feature"] == "age")
    assert age["test"] == "KS" and age["p_value"] < 0.01 and age["psi"] > 0.2
    assert r.predictions["drifted"]  # older customers: the model answers "leave" more often


def test_shifted_categories_and_missing_values_are_flagged(tmp_path):
    path = tmp_path/"march.csv"
    churn(1000, seed=3, plans=(0.2, 0.3, 0.5), missing_income=0.3).X.to_csv(path, index=False)
    r = aimass.drift("churn", data=str(path), predictions=False)
    assert set(r.drifted) == {"plan", "income"}, r
    plan, income = (next(f for f in r.features if f["feature"] == k) for k in ("plan", "income"))
    assert plan["test"] == "chi2" and plan["p_value"] < 0.01
    assert "missing 0% → 3" in income["why"] and r.predictions is None


def test_thresholds_are_configurable():
    data = churn(1000, seed=2, older=3).X  # a small shift
    assert "age" not in aimass.drift("churn", data=data, psi_threshold=5, p_threshold=1e-30, predictions=False).drifted
    assert "age" in aimass.drift("churn", data=data, psi_threshold=0.01, predictions=False).drifted


def test_report_renders_and_serializes():
    r = aimass.drift("churn", data=churn(500, seed=4, older=15).X)
    html = r._repr_html_()
    assert "<img" in html and "age" in html
    d = json.loads(json.dumps(r.to_dict(), default=float))
    assert d["ref"] == "churn:v1" and d["thresholds"] == {"psi": 0.2, "p_value": 0.01, "missing": 0.1}
    assert repr(r).startswith("DriftReport(churn:v1") and "age: " in repr(r)
    assert list(r.frame().feature[:1]) == ["age"]


def test_a_version_without_training_statistics_is_a_one_line_error():
    make_version("mlp", data=churn(300), name="old", epochs=1)
    with pytest.raises(AimassError, match="retrain it, or pass reference=") as e:
        aimass.drift("old", data=churn(100, seed=1).X)
    assert "\n" not in str(e.value)
    r = aimass.drift("old", data=churn(1000, seed=1, older=15).X, reference=churn(2000).X, predictions=False)
    assert r.drifted == ["age"]


def test_drift_is_a_verb(ip, tmp_path):
    path = tmp_path/"new.csv"; churn(500, seed=5, older=15).X.to_csv(path, index=False)
    r = ip.run_line_magic("aimass", f"drift churn --data {path} --no-predictions")
    assert r.drifted == ["age"]


@pytest.mark.slow
def test_train_keeps_training_statistics_with_the_version():
    ds = churn(600)
    df = ds.X.assign(left=ds.y)
    run = aimass.train("mlp", data=df, target="left", epochs=1, name="trained", progress=False)
    ref = json.loads((run.version.path/"reference.json").read_text())
    assert set(ref["features"]) == {"age", "income", "plan"} and ref["features"]["plan"]["type"] == "category"
    assert len(ref["features"]["age"]["edges"]) >= 5 and ref["predictions"]["type"] == "classes"
    assert aimass.drift("trained", data=churn(500, seed=1, older=20).X, predictions=False).drifted == ["age"]


def test_text_models_compare_text_lengths_and_empty_texts():
    from aimass.monitoring import reference_files
    from factory import text_frame
    from tiny_tokens import make_token_version
    mv = make_token_version(n=300, epochs=5)
    train = text_frame(300)["text"].tolist()
    (mv.path/"reference.json").write_text(reference_files(train, mv.card.preprocessing(), "classification", mv.card.classes, None)["reference.json"])
    same = aimass.drift(mv.ref, data=text_frame(300, seed=5)["text"].tolist(), predictions=False)
    assert same.drifted == [], same
    long = [" ".join([t] * 4) for t in text_frame(200, seed=6)["text"]]
    assert aimass.drift(mv.ref, data=long, predictions=False).drifted == ["text_length"]
    empty = [t if i % 3 else "" for i, t in enumerate(text_frame(300, seed=7)["text"])]
    r = aimass.drift(mv.ref, data=empty, predictions=False)
    assert r.drifted == ["text_length"] and "missing 0% → 33%" in r.features[0]["why"], r


def test_numbers_with_few_distinct_values_compare_equal_values():
    "A two-valued number that is not round (scikit-learn's diabetes 'sex': 0.0507 and -0.0446) was flagged with PSI 4.5 on its own rows."
    from aimass.monitoring import reference_files
    from aimass.data import Preprocessor, load_data
    ds = load_data("diabetes")
    train, new = ds.X.iloc[:300], ds.X.iloc[300:]
    ref = json.loads(reference_files(train, Preprocessor.fit(ds), "regression", None, None)["reference.json"])
    assert ref["features"]["sex"]["edges"][0] in set(train["sex"])  # an edge is a training value, exactly
    mv = make_version("linear", epochs=1, data=ds, name="diab")
    (mv.path/"reference.json").write_text(json.dumps(ref))
    r = aimass.drift("diab", data=new, predictions=False)
    sex = next(f for f in r.features if f["feature"] == "sex")
    assert sex["psi"] < 0.05 and sex["p_value"] > 0.05, sex
