"Bad inputs to the data layer get errors that name the problem."
import numpy as np, pandas as pd, pytest
from aimass.core import AimassError
import warnings
from aimass.data import Preprocessor, RowError, UnseenCategories, UnseenCategoryWarning, load_data, split


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
    (lambda p: load_data(pd.DataFrame({"a": [1., 2], "b": [None, None]}), target="b"), "has no values"),
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


def test_rows_without_a_target_are_left_out_and_counted():
    df = pd.DataFrame({"a": [1., 2, 3, 4, 5], "b": ["x", None, "y", np.nan, "x"]})
    with pytest.warns(UserWarning, match="Left out 2 of 5 rows: their target column 'b' is missing"):
        ds = load_data(df, target="b")
    assert (len(ds), ds.dropped, ds.classes, ds.X.a.tolist()) == (3, 2, ["x", "y"], [1., 3, 5])
    assert "2 rows without a target left out" in repr(ds)
    with pytest.warns(UserWarning, match="Left out 1 of 3"):
        assert load_data((np.arange(3.), np.array([0.5, np.nan, 1.5]))).dropped == 1


def test_a_missing_file_names_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AimassError, match=f"No file at data.csv \\(relative to the working directory, {tmp_path}\\)"):
        load_data("data.csv", target="t")


def _fitted():
    "age and city had missing values in training (optional); size did not."
    df = pd.DataFrame({"age": [30, None, 50, 40], "city": ["Oslo", "Rome", None, "Oslo"], "size": [1., 2, 3, 4], "y": [0, 1, 0, 1]})
    return Preprocessor.fit(load_data(df, target="y"))


def test_object_rows_must_hold_the_columns_the_model_needs():
    pre = _fitted()
    with pytest.raises(RowError, match=r"Row 1: missing column\(s\) 'size'; the model takes: age, city, size") as e:
        pre.transform([{"age": 1, "city": "Oslo", "size": 2}, {"city": "Oslo"}])
    assert e.value.row == 1 and "Only age, city may be left out" in str(e.value)
    assert [c["optional"] for c in pre.schema["columns"]] == [True, True, False]
    with pytest.raises(RowError, match="none of the model's columns"): pre.transform([{"agee": 1, "town": "Oslo"}])
    left_out = pre.transform([{"size": 2}, {"size": 2, "id": "extra fields are ignored"}])
    np.testing.assert_array_equal(left_out, pre.transform([{"age": None, "city": None, "size": 2}] * 2))
    np.testing.assert_array_equal(left_out, pre.transform([[None, None, 2]] * 2))  # null is accepted in every column
    with pytest.raises(AimassError, match=r"Missing column\(s\) 'city'"): pre.transform(pd.DataFrame({"age": [1], "size": [2]}))
    old = Preprocessor({"kind": "tabular", "columns": [{k: v for k, v in c.items() if k != "optional"} for c in pre.state["columns"]]})
    with pytest.raises(RowError, match=r"missing column\(s\) 'city'"):  # a card from before `optional`: every column needed
        old.transform([{"age": 1, "size": 2}])


def test_infinite_values_are_errors_naming_row_and_column():
    pre = _fitted()
    for rows in ([{"age": 1, "city": "Oslo", "size": 1}, {"age": 1, "city": "Oslo", "size": float("inf")}],
                 [[1, "Oslo", 1], [1, "Oslo", "-inf"]],
                 pd.DataFrame({"age": [1, 1], "city": ["Oslo"] * 2, "size": [1, np.inf]})):
        with pytest.raises(RowError, match=r"Row 1: column 'size' holds '?-?inf'?: values must be finite"):
            pre.transform(rows)
    assert np.isfinite(pre.transform([{"age": float("nan"), "city": None, "size": 1}])).all()  # NaN is a missing value


def test_unseen_categories_encode_as_zeros_and_are_reported():
    pre = _fitted()
    rows = [{"age": 1, "city": "Paris", "size": 1}, {"age": 1, "city": "Paris", "size": 1}, {"age": 1, "city": "Oslo", "size": 1}]
    with pytest.warns(UnseenCategoryWarning, match=r"2 value\(s\) of categories not seen in training, encoded as all zeros: city: 2 \('Paris'\)"):
        x = pre.transform(rows)
    np.testing.assert_array_equal(x[0], pre.transform([{"age": 1, "city": None, "size": 1}])[0])
    seen = UnseenCategories()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # counted where the caller asks, without a warning
        pre.transform(rows, unseen=seen)
        pre.transform(rows[:2], unseen=seen)
    assert seen.to_dict() == {"city": 4} and str(seen) == "city: 4 ('Paris')"
    assert pre.schema["unseen_categories"].startswith("encoded as all zeros")
