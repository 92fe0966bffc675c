"""Boundary validation: every bad input names the file, column and row, and quotes the value."""

import numpy as np
import pandas as pd
import pytest

from nnpipe.data import DataError, load_dataset, split_and_scale


def _csv(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name,shape,task", [
    ("iris", (150, 4), "multiclass"), ("wine", (178, 13), "multiclass"),
    ("breast_cancer", (569, 30), "binary"), ("digits", (1797, 64), "multiclass"),
])
def test_builtin_datasets(name, shape, task):
    ds = load_dataset(name)
    assert ds.X.shape == shape and ds.task == task and len(ds.content_hash) == 64
    assert load_dataset(name).content_hash == ds.content_hash


def test_csv_with_string_labels_and_parquet(tmp_path):
    rows = "a,b,label\n" + "\n".join(f"{i},{i % 3 * 2.5},{'cat' if i % 2 else 'dog'}" for i in range(20))
    path = _csv(tmp_path, rows)
    ds = load_dataset(path, target="label")
    assert ds.feature_names == ["a", "b"] and ds.task == "binary"
    assert ds.classes.tolist() == ["cat", "dog"]
    frame = pd.read_csv(path)
    frame.to_parquet(tmp_path / "data.parquet")
    pq = load_dataset(tmp_path / "data.parquet", target="label")
    np.testing.assert_array_equal(pq.X, ds.X)
    np.testing.assert_array_equal(pq.y, ds.y)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_dataset(tmp_path / "nope.csv", target="y")


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        load_dataset(_csv(tmp_path, "", "empty.csv"), target="y")
    with pytest.raises(DataError, match=r"header\.csv: file has a header but no data rows"):
        load_dataset(_csv(tmp_path, "a,b,y\n", "header.csv"), target="y")


def test_unknown_target_column(tmp_path):
    with pytest.raises(DataError, match=r"data\.csv: target column 'label' not found; columns are \['a', 'y'\]"):
        load_dataset(_csv(tmp_path, "a,y\n1,0\n2,1\n"), target="label")


def test_non_numeric_feature_names_column_row_and_value(tmp_path):
    text = "a,b,y\n1,2,0\n3,4,1\n5,oops,0\n"
    with pytest.raises(DataError, match=r"data\.csv: column 'b' row 3 \(line 4\): value 'oops' is not a number"):
        load_dataset(_csv(tmp_path, text), target="y")


@pytest.mark.parametrize("cell,what", [("", "is missing"), ("nan", "is missing"), ("inf", "is infinite")])
def test_nan_and_infinity(tmp_path, cell, what):
    text = f"a,b,y\n1,2,0\n3,{cell},1\n"
    with pytest.raises(DataError, match=rf"column 'b' row 2 \(line 3\) {what}"):
        load_dataset(_csv(tmp_path, text), target="y")


def test_missing_target_value(tmp_path):
    with pytest.raises(DataError, match=r"target column 'y' row 2 \(line 3\) is empty"):
        load_dataset(_csv(tmp_path, "a,y\n1,0\n2,\n3,1\n"), target="y")


def test_class_with_too_few_rows(tmp_path):
    rows = [f"{i},{'a' if i < 20 else 'b'}" for i in range(21)]
    ds = load_dataset(_csv(tmp_path, "x,y\n" + "\n".join(rows)), target="y")
    with pytest.raises(DataError, match=r"data\.csv: class 'b' of target column 'y' has only 1 row"):
        split_and_scale(ds)


def test_unknown_builtin_name():
    with pytest.raises(DataError, match="unknown dataset 'irs'"):
        load_dataset("irs")


def test_split_is_seeded_stratified_and_scaled_on_train_only():
    ds = load_dataset("wine")
    a, b = split_and_scale(ds, seed=3), split_and_scale(ds, seed=3)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 178
    np.testing.assert_allclose(a.X_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(a.X_train.std(axis=0), 1, atol=1e-12)
    assert abs(a.X_test.mean()) > 1e-6  # the test part was not used to fit the scaler
    assert set(np.unique(a.y_test)) == set(np.unique(ds.y))
