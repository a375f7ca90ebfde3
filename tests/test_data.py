"Bad inputs to the data layer get errors that name the problem."
import numpy as np, pandas as pd, pytest
from aimass.core import AimassError
from aimass.data import Preprocessor, load_data, split


def test_builtin_datasets_load_without_download():
    for name, task in [("digits", "classification"), ("iris", "classification"), ("wine", "classification"),
                       ("breast_cancer", "classification"), ("diabetes", "regression")]:
        ds = load_data(name)
        assert ds.task == task and len(ds) > 100


@pytest.mark.parametrize("make, match", [
    (lambda p: load_data("imagenet"), "Unknown dataset 'imagenet'"),
    (lambda p: load_data((np.zeros((5, 2)), np.zeros(4))), "5 rows but y has 4"),
    (lambda p: load_data(pd.DataFrame({"a": [1, 2], "b": [0, 1]}), target="c"), "No column 'c'"),
    (lambda p: load_data(pd.DataFrame({"a": [1., 2, 3], "b": ["x", "y", "z"]}), target="b", task="regression"), "non-numeric"),
    (lambda p: load_data(pd.DataFrame({"a": [1., 2, 3], "b": [1, 1, 1]}), target="b", task="classification"), "single class"),
    (lambda p: load_data(pd.DataFrame({"a": [1., 2, 3], "b": [0, None, 1]}), target="b"), "missing values"),
    (lambda p: load_data(pd.DataFrame({"a": [1., 2]}), target=None), "target="),
])
def test_bad_inputs_are_named(tmp_path, make, match):
    with pytest.raises(AimassError, match=match): make(tmp_path)


def test_empty_and_header_only_files(tmp_path):
    (tmp_path/"empty.csv").write_text("")
    (tmp_path/"header.csv").write_text("a,b,t\n")
    with pytest.raises(AimassError, match="is empty"): load_data(tmp_path/"empty.csv", target="t")
    with pytest.raises(AimassError, match="no rows"): load_data(tmp_path/"header.csv", target="t")
    with pytest.raises(AimassError, match="No file"): load_data(tmp_path/"missing.csv", target="t")
    (tmp_path/"data.xlsx").write_text("x")
    with pytest.raises(AimassError, match="reads .csv"): load_data(tmp_path/"data.xlsx", target="t")


def test_csv_and_parquet_with_categories_and_missing_values(tmp_path):
    df = pd.DataFrame({"age": [30, None, 50, 40, 35, 28], "city": ["Oslo", "Rome", None, "Oslo", "Lima", "Rome"],
                       "churn": ["yes", "no", "no", "yes", "no", "yes"]})
    df.to_csv(tmp_path/"d.csv", index=False); df.to_parquet(tmp_path/"d.parquet")
    a, b = load_data(tmp_path/"d.csv", target="churn"), load_data(tmp_path/"d.parquet", target="churn")
    assert a.classes == b.classes == ["no", "yes"]
    pre = Preprocessor.fit(a)
    np.testing.assert_array_equal(pre.transform(a.X), pre.transform(b.X))
    assert not np.isnan(pre.transform(a.X)).any()


def test_split_is_seeded_and_stratified():
    ds = load_data("iris")
    s1, s2, s3 = split(ds, seed=1), split(ds, seed=1), split(ds, seed=2)
    np.testing.assert_array_equal(s1.test.y, s2.test.y)
    assert not np.array_equal(s1.train.X.index, s3.train.X.index) or not s1.train.X.equals(s3.train.X)
    assert np.bincount(s1.test.y).min() >= 6  # every class in the test split


def test_wrong_shapes_at_inference():
    pre = Preprocessor.fit(load_data("digits"))
    with pytest.raises(AimassError, match="64 numbers"): pre.transform([[1, 2, 3]])
    with pytest.raises(AimassError, match="must be numbers"): pre.transform([["a"]*64])
    with pytest.raises(AimassError, match="NaN"): pre.transform([[float("nan")]*64])
