"""Bad inputs, table-driven, across the CLI, the API and the served (pyfunc) model.

Every case asserts the one-line message, the exit code (CLI) or exception
type (API, pyfunc), and that the registry is exactly as it was. The CLI
cases run in-process with Typer's runner and fail in the pre-flight checks,
before Prefect, an MLflow run or any training starts, so the whole table
takes seconds.
"""

from __future__ import annotations

import math
import re

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nnpipe import Dense, Sequential, TrainConfig, tracking
from nnpipe.api import build_spec, train
from nnpipe.cli import app
from tests.tracking.helpers import STRONG, scratch_store, train_logged

NAME = "bad-inputs"
runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory, sqlite_template, iris_splits):
    """A store holding one champion (v1) of NAME, and a folder of bad data files."""
    ds, splits = iris_splits
    with scratch_store(tmp_path_factory, sqlite_template, "bad-inputs") as (root, uri):
        version, model, _ = train_logged(NAME, ds, splits, experiment=NAME, **{**STRONG, "epochs": 5})
        assert tracking.promote_if_better(NAME, version).promoted
        tracking.reset()
    files = root / "data"
    files.mkdir()
    write = lambda name, text: (files / name).write_text(text)  # noqa: E731
    write("dup.csv", "a,b,a,y\n1,2,3,0\n4,5,6,1\n")
    write("const.csv", "a,b,y\n" + "".join(f"1,2,{i % 2}\n" for i in range(20)))
    write("huge.csv", "a,b,y\n" + "".join(f"{i},{'1e300' if i == 7 else i},{i % 2}\n" for i in range(20)))
    write("nan.csv", "a,b,y\n1,2,0\n3,,1\n5,6,0\n")
    write("inf.csv", "a,b,y\n1,2,0\n3,inf,1\n5,6,0\n")
    write("text.csv", "a,b,y\n1,2,0\n3,abc,1\n5,6,0\n")
    write("header.csv", "a,b,y\n")
    write("empty.csv", "")
    write("notarget.csv", "a,b,c\n1,2,0\n")
    write("onlytarget.csv", "y\n1\n0\n")
    write("one_class.csv", "a,b,y\n1,2,0\n3,4,0\n5,6,0\n")
    write("missing_y.csv", "a,b,y\n1,2,0\n3,4,\n5,6,1\n")
    write("data.json", '[{"a": 1, "y": 0}]')
    (files / "sheet.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    (files / "binary.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x81\n")
    write("cfg.json", "{}")
    write("bad.toml", "epochs = [\n")
    # a regression target stored as whole numbers: most values occur once
    write("counts.csv", "a,b,y\n" + "".join(f"{i},{i % 7},{25 + 3 * i}\n" for i in range(30)))
    (files / "lake").mkdir()  # parts whose columns differ
    pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "y": [0, 1]}).to_parquet(files / "lake" / "part-0.parquet")
    pd.DataFrame({"b": [3.0, 4.0], "y": [0, 1]}).to_parquet(files / "lake" / "part-1.parquet")
    write("abc.csv", "a,b,c,y\n" + "".join(f"{i},{i % 5},{i % 3},{i % 2}\n" for i in range(30)))
    yield {"uri": uri, "files": files, "model": model, "splits": splits}
    tracking.reset()


def snapshot(uri: str) -> list:
    """Every registered model with its versions and aliases, and the number of runs."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    models = sorted((m.name, sorted(m.aliases.items()),
                     sorted(int(v.version) for v in c.search_model_versions(f"name='{m.name}'")))
                    for m in c.search_registered_models())
    runs = sum(len(c.search_runs([e.experiment_id])) for e in c.search_experiments())
    return [models, runs]


# (id, argv after `nnpipe train`, exit code, message fragment). {d} is the data folder.
CLI_CASES = [
    ("unknown-dataset", ["--dataset", "mnist"], 1, "unknown dataset 'mnist'"),
    ("xlsx", ["--dataset", "{d}/sheet.xlsx", "--target", "y"], 1, "unsupported format '.xlsx'"),
    ("json", ["--dataset", "{d}/data.json", "--target", "y"], 1, "unsupported format '.json'"),
    ("missing-file", ["--dataset", "{d}/nope.csv", "--target", "y"], 1, "nope.csv: file not found"),
    ("missing-parquet", ["--dataset", "{d}/nope.pq", "--target", "y"], 1, "nope.pq: file not found"),
    ("empty-file", ["--dataset", "{d}/empty.csv", "--target", "y"], 1, "empty.csv: file is empty"),
    ("binary", ["--dataset", "{d}/binary.csv", "--target", "y"], 1, "not a UTF-8 text CSV file"),
    ("no-target-flag", ["--dataset", "{d}/dup.csv"], 1, "a target column is required"),
    ("duplicate-columns", ["--dataset", "{d}/dup.csv", "--target", "y"], 1, "duplicate column name 'a' (column 3)"),
    ("target-not-found", ["--dataset", "{d}/notarget.csv", "--target", "y"], 1, "target column 'y' not found"),
    ("only-target", ["--dataset", "{d}/onlytarget.csv", "--target", "y"], 1, "no feature columns besides the target"),
    ("model-name-empty", ["--model-name", ""], 1, "model name must not be empty"),
    ("model-name-slash", ["--model-name", "a/b"], 1, "must not contain '/'"),
    ("model-name-colon", ["--model-name", "a:b"], 1, "must not contain ':'"),
    ("model-name-long", ["--model-name", "x" * 1000], 1, "1000 characters long (MLflow allows at most 256)"),
    ("model-name-dots", ["--model-name", ".."], 1, "would resolve to the path '..'"),
    ("model-name-space", ["--model-name", " lead"], 1, "must not start or end with whitespace"),
    ("lr-inf", ["--lr", "inf"], 1, "'lr': expected a positive finite number, got inf"),
    ("lr-nan", ["--lr", "nan"], 1, "'lr': expected a positive finite number, got nan"),
    ("lr-negative", ["--lr", "-0.1"], 1, "'lr': expected a positive finite number, got -0.1"),
    ("epochs-zero", ["--epochs", "0"], 1, "'epochs': expected an integer >= 1, got 0"),
    ("batch-zero", ["--batch-size", "0"], 1, "'batch_size': expected an integer >= 1, got 0"),
    ("epochs-text", ["--epochs", "many"], 2, "Invalid value for '--epochs'"),
    ("mode", ["--mode", "turbo"], 1, "'train.mode': Input should be 'single', 'sync', 'local-sgd' or 'async' (got 'turbo')"),
    ("workers-zero", ["--workers", "0"], 1, "'workers': expected an integer >= 1, got 0"),
    ("hidden-text", ["--hidden", "a,b"], 2, "expected comma-separated integers"),
    ("activation", ["--activation", "swish2"], 1, "swish2"),
    ("optimizer", ["--optimizer", "adamw9"], 1, "'optimizer': expected one of"),
    ("dtype", ["--dtype", "float16"], 1, "'train.dtype': Input should be 'float32' or 'float64' (got 'float16')"),
    ("config-missing", ["--config", "{d}/none.toml"], 1, "configuration file not found"),
    ("config-json", ["--config", "{d}/cfg.json"], 1, "expected a .toml, .yaml or .yml configuration file"),
    ("config-broken", ["--config", "{d}/bad.toml"], 1, "not valid TOML"),
    ("dead-tracking-server", ["--tracking-uri-env", "http://alice:S3cretPW@127.0.0.1:9"], 1,
     "tracking server http://127.0.0.1:9 is not reachable"),
    ("dead-scheduler", ["--mode", "sync", "--scheduler", "tcp://127.0.0.1:9"], 1,
     "Dask scheduler tcp://127.0.0.1:9 is not reachable"),
    ("features-twice", ["--dataset", "{d}/abc.csv", "--target", "y", "--features", "a,a,b"], 1,
     "'features': column 'a' is named twice"),
    ("target-on-builtin", ["--dataset", "iris", "--target", "species"], 1,
     "built-in dataset 'iris' has its own target and features; target selects columns"),
    ("features-on-builtin", ["--dataset", "wine", "--features", "a"], 1, "built-in dataset 'wine' has its own target"),
    ("task-unknown", ["--task", "clustering"], 2, "Invalid value for '--task'"),
    ("integer-regression-target", ["--dataset", "{d}/counts.csv", "--target", "y"], 1,
     "class 25 of target column 'y' has only 1 row(s); need at least 3 so the train, validation and test parts "
     "each get one; if the target is a quantity to predict, pass --task regression"),
    ("parts-columns-differ", ["--dataset", "{d}/lake", "--target", "y"], 1,
     "{d}/lake/part-1.parquet: its columns differ from {d}/lake/part-0.parquet's; missing ['a']"),
    ("parts-in-memory-columns-differ", ["--dataset", "{d}/lake/*.parquet", "--target", "y", "--in-memory"], 1,
     "{d}/lake/part-1.parquet: its columns differ"),
    ("sqlite-path-typo", ["--tracking-uri-env", "sqlite:///{d}/typo/sub/mlflow.db"], 1,
     "directory {d}/typo/sub does not exist (a typo?)"),
    ("metrics-port-busy", ["--metrics-port", "{busy}"], 1, "metrics port {busy} on 127.0.0.1 is in use"),
    ("bad-scheduler-address", ["--mode", "sync", "--scheduler", "tcp://a:b:c"], 1, "is not host:port"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_input_before_any_work(case, store, monkeypatch):
    import socket

    _, argv, code, message = case
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()  # a port another process serves on
    fill = lambda s: s.replace("{d}", str(store["files"])).replace("{busy}", str(busy.getsockname()[1]))  # noqa: E731
    argv, message = [fill(a) for a in argv], fill(message)
    uri = store["uri"]
    if argv[:1] == ["--tracking-uri-env"]:
        uri, argv = argv[1], argv[2:]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("NNPIPE_PREFECT_SERVER", "ephemeral")  # should a case get past pre-flight, leave no server
    monkeypatch.chdir(store["files"])
    before = snapshot(store["uri"])
    result = runner.invoke(app, ["train", *argv])
    assert result.exit_code == code, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output and "S3cretPW" not in result.output
    if code == 1:
        assert result.output.count("\n") == 1, "one line"
    assert snapshot(store["uri"]) == before
    assert not (store["files"] / "typo").exists()  # nothing created for a mistyped store path
    busy.close()


# Data files whose rows are bad: found when the file is loaded (by the CLI's pre-flight for files up to
# 64 MiB, else the flow's first step; before training either way).
DATA_CASES = [
    ("constant-features", "const.csv", "every feature column is constant"),
    ("overflow", "huge.csv", "column 'b' row 8 (line 9): value 1e+300 is too large (|value| > 1e+100)"),
    ("nan", "nan.csv", "column 'b' row 2 (line 3) is missing (NaN)"),
    ("inf", "inf.csv", "column 'b' row 2 (line 3) is infinite (inf)"),
    ("text", "text.csv", "column 'b' row 2 (line 3): value 'abc' is not a number"),
    ("header-only", "header.csv", "header but no data rows"),
    ("one-class", "one_class.csv", "has a single class"),
    ("missing-target", "missing_y.csv", "target column 'y' row 2 (line 3) is empty"),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_rows_are_named_by_column_and_row(case, store, monkeypatch):
    from nnpipe.data import DataError, load_dataset

    _, name, message = case
    before = snapshot(store["uri"])
    with pytest.raises(DataError) as err:
        load_dataset(store["files"] / name, target="y")
    assert message in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    result = runner.invoke(app, ["train", "--dataset", str(store["files"] / name), "--target", "y"])
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1, result.output
    assert snapshot(store["uri"]) == before


def _seq():
    m = Sequential(seed=0)
    m.add(Dense(4, input_dim=4, activation="relu"))
    m.add(Dense(3, activation="softmax"))
    m.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    return m


X4 = np.random.default_rng(0).normal(size=(12, 4))
Y3 = np.arange(12) % 3
SPEC = build_spec("multiclass", 4, 3, (4,))


def _nan(X, row=3, col=2, value=math.nan):
    X = X.copy()
    X[row, col] = value
    return X


API_CASES = [
    ("config-epochs-bool", lambda: TrainConfig(epochs=True), ValueError, "'epochs': expected an integer >= 1, got True"),
    ("config-l2-nan", lambda: TrainConfig(l2=math.nan), ValueError, "'l2': expected a finite number, got nan"),
    ("config-l2-bool", lambda: TrainConfig(l2=True), ValueError, "'l2': expected a finite number, got True"),
    ("config-lr-inf", lambda: TrainConfig(lr=math.inf), ValueError, "'lr': expected a positive finite number"),
    ("config-clip-nan", lambda: TrainConfig(clip_norm=math.nan), ValueError, "'clip_norm': expected a finite number"),
    ("config-seed-bool", lambda: TrainConfig(seed=False), ValueError, "'seed': expected an integer >= 0, got False"),
    ("config-patience-bool", lambda: TrainConfig(patience=True), ValueError, "'patience'"),
    ("train-nan", lambda: train((_nan(X4), Y3), TrainConfig(epochs=1), spec=SPEC), ValueError,
     "data X column 2 row 3 is NaN"),
    ("train-inf", lambda: train((_nan(X4, 5, 0, math.inf), Y3), TrainConfig(epochs=1), spec=SPEC), ValueError,
     "data X column 0 row 5 is inf"),
    ("train-lengths", lambda: train((X4, Y3[:7]), TrainConfig(epochs=1), spec=SPEC), ValueError,
     "data X has 12 rows but data Y has 7"),
    ("train-columns", lambda: train((X4[:, :3], Y3), TrainConfig(epochs=1), spec=SPEC), ValueError,
     "data X has 3 columns, expected 4"),
    ("train-1d", lambda: train((X4[:, 0], Y3), TrainConfig(epochs=1), spec=SPEC), ValueError, "must be 2-D"),
    ("train-validation-nan", lambda: train((X4, Y3), TrainConfig(epochs=1), spec=SPEC, validation=(_nan(X4), Y3)),
     ValueError, "validation X column 2 row 3 is NaN"),
    ("train-config-type", lambda: train((X4, Y3), {"epochs": 1}, spec=SPEC), TypeError, "config must be a TrainConfig"),
    ("fit-batch-zero", lambda: _seq().fit(X4, Y3, batch_size=0, verbose=0), ValueError,
     "'batch_size': expected an integer >= 1, got 0"),
    ("fit-epochs-bool", lambda: _seq().fit(X4, Y3, epochs=True, verbose=0), ValueError, "'epochs'"),
    ("fit-nan", lambda: _seq().fit(_nan(X4), Y3, verbose=0), ValueError, "x column 2 row 3 is NaN"),
    ("fit-lengths", lambda: _seq().fit(X4, Y3[:5], verbose=0), ValueError, "x has 12 rows but y has 5"),
    ("fit-columns", lambda: _seq().fit(X4[:, :2], Y3, verbose=0), ValueError, "x has 2 columns, expected 4"),
    ("fit-label-nan", lambda: _seq().fit(X4, np.where(Y3 == 1, np.nan, Y3), verbose=0), ValueError,
     "y row 1 is not finite"),
]


def _fitted():
    m = _seq()
    m.fit(X4, Y3, epochs=1, verbose=0)
    return m


def _model_predict(X):
    from nnpipe.core.network import init_params
    from nnpipe.model import Model

    return Model(SPEC, init_params(SPEC, 0), classes=np.arange(3), feature_names=list("abcd")).predict(X)


API_CASES += [
    ("predict-nan", lambda: _model_predict(_nan(X4, 4, 1)), ValueError, "X column 'b' row 4 is NaN"),
    ("predict-columns", lambda: _model_predict(X4[:, :3]), ValueError, "X has 3 columns, expected 4"),
    ("predict-too-large", lambda: _model_predict(_nan(X4, 1, 2, 1e39)), ValueError,
     "X column 'c' row 1 is 1e+39, too large for this float32 model"),
    ("predict-complex", lambda: _model_predict(np.where(np.arange(4) == 3, 1 + 2j, X4)), ValueError,
     "X column 3 row 0 is (1+2j), not a real number"),
    ("keras-predict-inf", lambda: _fitted().predict(_nan(X4, 0, 3, -math.inf)), ValueError, "x column 3 row 0 is -inf"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_bad_arrays_and_settings(case, store):
    _, call, exc_type, message = case
    before = snapshot(store["uri"])
    with pytest.raises(exc_type) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
    assert snapshot(store["uri"]) == before


def _frame(splits, rows=4):
    return pd.DataFrame(splits.raw_test[:rows], columns=splits.feature_names)


PYFUNC_CASES = [
    ("nan-row", lambda f: f.assign(**{f.columns[2]: [1.0, math.nan, 2.0, 3.0]}), "column 'petal length (cm)' row 1 is NaN"),
    ("inf-row", lambda f: f.assign(**{f.columns[0]: [1.0, 2.0, math.inf, 3.0]}), "column 'sepal length (cm)' row 2 is inf"),
    ("neg-inf-row", lambda f: f.assign(**{f.columns[3]: [-math.inf, 2.0, 1.0, 3.0]}), "column 'petal width (cm)' row 0 is -inf"),
    ("missing-column", lambda f: f.drop(columns=[f.columns[1]]), "missing column(s) ['sepal width (cm)']"),
    ("all-columns-missing", lambda f: f.rename(columns=str.upper), "missing column(s) ['sepal length (cm)'"),
    ("text-value", lambda f: f.assign(**{f.columns[1]: ["3.0", "abc", "2", "3"]}),
     "column 'sepal width (cm)' row 1 is 'abc', not a number"),
    ("boolean-column", lambda f: f.assign(**{f.columns[0]: [True, False, True, True]}),
     "column 'sepal length (cm)' row 0 is True, not a number"),
    ("too-large-for-float32", lambda f: f.assign(**{f.columns[0]: [1.0, 1e39, 2.0, 3.0]}),
     "input column 'sepal length (cm)' row 1 is 1e+39, too large for this float32 model"),
    ("complex-value", lambda f: f.assign(**{f.columns[2]: [1.0, 2.0, 1 + 2j, 3.0]}),
     "column 'petal length (cm)' row 2 is (1+2j), not a number"),
    ("list-in-a-cell", lambda f: f.assign(**{f.columns[3]: [1.0, 2.0, [1.0], 3.0]}),
     "column 'petal width (cm)' row 2 is [1.0], not a number"),
    # MLflow's schema check, before the model's code, puts the name of a column sent twice in its 2 rows
    ("column-twice-two-rows", lambda f: pd.concat([f.iloc[:2], f.iloc[:2, :1]], axis=1),
     "input column 'sepal length (cm)' holds its own name in every row: it was sent twice"),
]


@pytest.mark.parametrize("case", PYFUNC_CASES, ids=[c[0] for c in PYFUNC_CASES])
def test_served_model_refuses_rows_it_cannot_predict(case, store, monkeypatch):
    _, make, message = case
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    tracking.configure(store["uri"])
    before = snapshot(store["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    with pytest.raises(Exception) as err:
        model.predict(make(_frame(store["splits"])))
    text = str(err.value)
    assert message in text and "\n" not in text and len(text) < 200, text
    assert snapshot(store["uri"]) == before


def test_a_column_sent_twice_is_named(store, monkeypatch):
    # MLflow's schema check runs before the model's own: nnpipe's loader checks first; the model itself too
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    tracking.configure(store["uri"])
    frame = _frame(store["splits"])
    twice = pd.concat([frame, frame.iloc[:, :1]], axis=1)
    message = "input column 'sepal length (cm)' is given twice; send each column once"
    with pytest.raises(ValueError, match=re.escape(message)):
        tracking.load_model(NAME, "@champion").predict(twice)
    from nnpipe.tracking.pyfunc import NnpipePyfunc

    with pytest.raises(ValueError, match=re.escape(message)):
        NnpipePyfunc(store["model"]).predict(twice)


def test_served_model_takes_integers_and_numeric_text(store, monkeypatch):
    # MLflow's own check would refuse int64 for a double column; nnpipe converts what is a number.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    tracking.configure(store["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    frame = _frame(store["splits"])
    expected = model.predict(frame.round())
    assert (model.predict(frame.round().astype(int)) == expected).all()
    assert (model.predict(frame.round().astype(str)) == expected).all()


def test_the_table_is_at_least_forty_inputs():
    assert len(CLI_CASES) + len(DATA_CASES) + len(API_CASES) + len(PYFUNC_CASES) >= 40
