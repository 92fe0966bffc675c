"""Large sources in one process: metadata, validation, the hash split, statistics, streaming."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler

import nnpipe
from nnpipe.api import source_spec
from nnpipe.config import TrainConfig
from nnpipe.core.problem import Problem
from nnpipe.core.training import fit
from nnpipe.data import DataError
from nnpipe.distributed.round_size import choose_round
from nnpipe.sources import is_large, open_source
from nnpipe.sources.evaluate import evaluate
from nnpipe.sources.prep import TEST, TRAIN, prepare, split_codes
from nnpipe.sources.streaming import RowStream, shard_arrays


def frame(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5)) * [1, 2, 3, 4, 5] + [0, 1, 2, 3, 4]
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)])
    df["rid"] = np.arange(n, dtype=np.float64)
    df["label"] = np.where(X[:, 0] + 0.5 * X[:, 1] > 0.5, "yes", "no")
    return df


def write_parts(df: pd.DataFrame, folder: Path, n_parts: int = 6, hive: bool = False) -> Path:
    folder.mkdir(parents=True)
    size = -(-len(df) // n_parts)
    for i in range(n_parts):
        d = folder / f"day={i // 3}" if hive else folder
        d.mkdir(exist_ok=True)
        df.iloc[i * size:(i + 1) * size].to_parquet(d / f"part-{i}.parquet", row_group_size=64, index=False)
    (folder / "_SUCCESS").write_text("")
    return folder


@pytest.fixture
def df():
    return frame()


def training_rows(df: pd.DataFrame, seed: int = 0, code: int = TRAIN) -> pd.DataFrame:
    return df[split_codes(0, len(df), seed, 0.2, 0.1) == code]


def test_split_depends_on_global_position_only():
    whole = split_codes(0, 10_000, 7, 0.2, 0.1)
    parts = np.concatenate([split_codes(0, 3001, 7, 0.2, 0.1), split_codes(3001, 6999, 7, 0.2, 0.1)])
    np.testing.assert_array_equal(whole, parts)
    shares = np.bincount(whole, minlength=3) / len(whole)
    np.testing.assert_allclose(shares, [0.7, 0.1, 0.2], atol=0.02)
    assert (split_codes(0, 10_000, 8, 0.2, 0.1) != whole).mean() > 0.3  # the seed matters


def test_locations_and_the_large_rule(tmp_path, df):
    parts = write_parts(df, tmp_path / "hive", hive=True)
    assert is_large(str(parts)) and is_large(str(tmp_path / "*.csv")) and is_large("s3://bucket/x")
    assert not is_large("iris")
    df.to_csv(tmp_path / "small.csv", index=False)
    assert not is_large(str(tmp_path / "small.csv")) and is_large(str(tmp_path / "small.csv"), 1000)
    src = open_source(str(parts), "label")
    assert src.fmt == "parquet" and len(src.files) == 6 and src.n_rows == len(df)  # _SUCCESS ignored
    assert src.features == [f"f{i}" for i in range(5)] + ["rid"]  # hive keys only when asked for
    assert open_source(str(parts), "label", ["f0", "day"]).features == ["f0", "day"]
    # The same data through a file:// URL: same pieces, same fingerprint (relative paths and sizes).
    url = open_source(f"file://{parts}", "label")
    assert url.fingerprint == src.fingerprint and len(url.pieces) == len(src.pieces)
    # A glob of CSV files, compressed ones too.
    for i in range(3):
        df.iloc[i * 400:(i + 1) * 400].to_csv(tmp_path / f"c{i}.csv", index=False)
    with open(tmp_path / "c2.csv", "rb") as f, gzip.open(tmp_path / "c3.csv.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    glob = open_source(str(tmp_path / "c*.csv*"), "label", ["f0", "f1"])
    assert glob.fmt == "csv" and len(glob.files) == 4 and glob.features == ["f0", "f1"]
    with pytest.raises(DataError, match="'nope' not found"):
        open_source(str(parts), "nope")
    with pytest.raises(DataError, match="no such file"):
        open_source(str(tmp_path / "missing"), "label")


def test_fingerprint_follows_the_content(tmp_path, df):
    a = write_parts(df, tmp_path / "a")
    b = write_parts(df, tmp_path / "b")
    assert open_source(str(a), "label").fingerprint == open_source(str(b), "label").fingerprint
    changed = df.iloc[200:400].copy()
    changed.iloc[5, 0] += 1.0
    changed.to_parquet(b / "part-1.parquet", row_group_size=64, index=False)
    assert open_source(str(a), "label").fingerprint != open_source(str(b), "label").fingerprint


def test_statistics_match_standard_scaler_for_any_block_size(tmp_path, df):
    parts = write_parts(df, tmp_path / "p")
    small = prepare(open_source(str(parts), "label", block_bytes=1), seed=3)  # one row group per piece
    big = prepare(open_source(str(parts), "label"), seed=3)
    assert len(small.source.pieces) > len(big.source.pieces)
    rows = training_rows(df, seed=3)
    ref = StandardScaler().fit(rows[small.source.features].to_numpy())
    for p in (small, big):
        np.testing.assert_allclose(p.mean, ref.mean_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(p.scale, ref.scale_, rtol=1e-9)
        assert p.rows(TRAIN) == len(rows) and p.classes.tolist() == ["no", "yes"] and p.task == "binary"
    # The shards' rows are the same rows in the same order, whatever the pieces
    # (the statistics differ in the last bits only: the reduction's order differs).
    kw = {"spec": source_spec(small, (4,), "relu", "float64").to_dict(), "code": TRAIN}
    got = [shard_arrays(p.segments(TRAIN, 0, p.rows(TRAIN)), 0, prep=_prep(p), read=p.read_kwargs(), **kw)["X"]
           for p in (small, big)]
    np.testing.assert_allclose(got[0], got[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[0], ref.transform(rows[small.source.features].to_numpy()), rtol=1e-12)


def _prep(p):
    from nnpipe.sources.evaluate import prep_fields

    return prep_fields(p)


def test_bad_values_name_file_column_row_and_value(tmp_path, df):
    parts = write_parts(df, tmp_path / "p")
    bad = pd.read_parquet(parts / "part-3.parquet")
    bad["f2"] = bad["f2"].astype(str)  # a part written with the column as text
    bad.loc[bad.index[16], "f2"] = "oops"
    bad.to_parquet(parts / "part-3.parquet", row_group_size=64, index=False)
    with pytest.raises(DataError) as err:
        prepare(open_source(str(parts), "label", block_bytes=1))
    msg = str(err.value)
    assert "part-3.parquet" in msg and "'f2'" in msg and "row 17" in msg and "'oops'" in msg, msg
    # A big CSV cut into byte blocks: the row is counted within the file, across blocks.
    csv = df.copy()
    csv.loc[1000, "f4"] = np.inf
    csv.to_csv(tmp_path / "big.csv", index=False)
    src = open_source(str(tmp_path / "big.csv"), "label", block_bytes=20_000)
    assert len(src.pieces) > 3
    with pytest.raises(DataError, match=r"big\.csv: column 'f4' row 1001 \(line 1002\) is infinite"):
        prepare(src)
    one = df.copy()
    one["label"] = "yes"
    one.to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(DataError, match="single class"):
        prepare(open_source(str(tmp_path / "one.csv"), "label"))


def test_single_in_memory_equals_fit_on_the_same_rows(tmp_path, df):
    p = prepare(open_source(str(write_parts(df, tmp_path / "p")), "label", block_bytes=1))
    cfg = TrainConfig(epochs=3, batch_size=50, dtype="float64", seed=1)
    out = nnpipe.train(p, cfg, hidden=(8,))
    assert out.info["data_path"] == "in-memory"
    rows = training_rows(df)
    model = out.model
    theta0 = nnpipe.core.network.init_params(model.spec, np.random.default_rng(np.random.SeedSequence(1).spawn(1)[0]))
    ref = fit(Problem(model.spec, theta0, model.transform(rows[p.source.features].to_numpy()),
                      model.encode_targets(rows["label"].to_numpy())), cfg)
    np.testing.assert_allclose(out.theta, ref.theta, rtol=1e-12)
    # Test metrics from sums equal the model's own evaluation of the test rows in memory.
    test = training_rows(df, code=TEST)
    metrics, confusion = evaluate(p, model.spec, model.theta, TEST)
    expect = model.evaluate(test[p.source.features].to_numpy(), test["label"].to_numpy())
    assert metrics == pytest.approx(expect, rel=1e-12)
    assert confusion.sum() == len(test)


def test_stream_visits_every_row_once_per_pass_with_bounded_reads(tmp_path, df):
    p = prepare(open_source(str(write_parts(df, tmp_path / "p")), "label", block_bytes=1))
    spec = source_spec(p, (4,), "relu", "float64")
    n = p.rows(TRAIN)
    stream = RowStream(p.segments(TRAIN, 0, n), 0, seed=5, code=TRAIN, spec=spec.to_dict(), prep=_prep(p),
                       read=p.read_kwargs())
    rid = p.source.features.index("rid")
    unscale = lambda X: np.rint(X[:, rid] * p.scale[rid] + p.mean[rid]).astype(int)  # noqa: E731
    passes = [np.concatenate([unscale(X) for X, _ in stream.epoch_batches(32)]) for _ in range(2)]
    expect = training_rows(df)["rid"].astype(int).to_numpy()
    for seen in passes:
        np.testing.assert_array_equal(np.sort(seen), expect)
    assert not np.array_equal(passes[0], passes[1])  # reshuffled each pass
    assert stream.segments_read == 2 * len(stream.segments)
    # Single mode on a stream trains and validates where the rows are.
    # Not the same batches as in memory (pieces are shuffled as blocks), so compare where it ends up.
    out = nnpipe.train(p, TrainConfig(epochs=8, stream=True, batch_size=32), hidden=(8,))
    ref = nnpipe.train(p, TrainConfig(epochs=8, stream=False, batch_size=32), hidden=(8,))
    assert out.info["data_path"] == "streaming" and ref.info["data_path"] == "in-memory"
    assert out.history["val/accuracy"][-1] > 0.8
    assert abs(out.history["val/accuracy"][-1] - ref.history["val/accuracy"][-1]) < 0.05


def test_round_size_pays_for_itself():
    cfg = TrainConfig(mode="local-sgd", auto_round=True)
    new, facts = choose_round(cfg, rtt_s=0.003, row_s=2e-6, n_train=1_000_000, workers=2)
    assert new.batch_size == 256 and facts["round/expected_coordination_share"] <= 0.1 + 1e-9
    assert new.sync_every == int(np.ceil(0.003 * 9 / 2e-6 / 256))
    sync, facts = choose_round(TrainConfig(mode="sync"), 0.003, 2e-6, 1_000_000, 2)
    assert facts["round/expected_coordination_share"] <= 0.1 + 1e-9 and sync.batch_size >= 27000
    # Capped by the data: a round never exceeds a pass over a shard.
    small, _ = choose_round(cfg, 0.003, 2e-6, 2000, 2)
    assert small.sync_every * small.batch_size <= 1000


def test_features_select_columns_of_a_small_file_too(tmp_path, df):
    from nnpipe.data import load_dataset

    df.to_csv(tmp_path / "small.csv", index=False)
    ds = load_dataset(tmp_path / "small.csv", target="label", features=["f1", "f0"])
    assert ds.feature_names == ["f1", "f0"] and ds.X.shape == (len(df), 2)
    with pytest.raises(DataError, match="'zz' not found"):
        load_dataset(tmp_path / "small.csv", target="label", features=["zz"])


def test_regression_source_matches_the_model_on_the_same_rows(tmp_path, df):
    data = df.drop(columns="label")
    data["y"] = 2.0 * data["f0"] - data["f1"] + 0.1
    p = prepare(open_source(str(write_parts(data, tmp_path / "p")), "y", block_bytes=1))
    assert p.task == "regression" and p.classes is None
    rows = training_rows(data)["y"].to_numpy()
    assert p.target_mean[0] == pytest.approx(rows.mean(), rel=1e-12)
    assert p.target_scale[0] == pytest.approx(rows.std(), rel=1e-12)
    out = nnpipe.train(p, TrainConfig(epochs=30, batch_size=32), hidden=(8,))
    test = training_rows(data, code=TEST)
    metrics, confusion = evaluate(p, out.model.spec, out.model.theta, TEST)
    expect = out.model.evaluate(test[p.source.features].to_numpy(), test["y"].to_numpy())
    # float32 forward passes over pieces rather than all rows at once: equal to float32 rounding.
    assert confusion is None and metrics == pytest.approx(expect, rel=1e-6)
    assert metrics["r2"] > 0.8


PEAK_SCRIPT = """
import sys
def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024
import pyarrow, pandas, fsspec
from nnpipe.sources.location import open_source, sample_rows
from nnpipe.sources.prep import prepare
source = open_source(sys.argv[2], "label")
before = peak()
if sys.argv[1] == "sample":
    rows = sample_rows(source)
    print(peak() - before)
    rows.to_csv(sys.argv[3], index=False)
else:
    print(prepare(source).n_rows, peak() - before)
"""


def peak_growth(what: str, *args: str) -> list[int]:
    """The numbers PEAK_SCRIPT prints for ``what``: the process's own peak resident memory growth comes last.

    A subprocess, because pyarrow decodes outside Python's allocator (tracemalloc would not see it).
    """
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, what, *args], capture_output=True, text=True, check=True)
    return [int(v) for v in out.stdout.split()]


@pytest.mark.parametrize("hive", [False, True])
def test_sample_rows_reads_a_few_pages_not_the_whole_row_group(tmp_path, hive):
    # One part, one row group of 400k rows x 41 columns (~130 MB): the model's input example needs 5 rows.
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((400_000, 40)), columns=[f"x{i}" for i in range(40)])
    df["label"] = rng.integers(0, 3, len(df))
    folder = tmp_path / ("day=1" if hive else "data")
    folder.mkdir()
    df.to_parquet(folder / "part-0.parquet", row_group_size=len(df), index=False)
    (grew,) = peak_growth("sample", str(tmp_path if hive else folder), str(tmp_path / "rows.csv"))
    rows = pd.read_csv(tmp_path / "rows.csv")
    np.testing.assert_allclose(rows[[f"x{i}" for i in range(40)]].to_numpy(), df.iloc[:5, :40].to_numpy())
    assert rows["label"].tolist() == df["label"].head(5).tolist()
    assert grew < 40e6, f"sampling 5 rows grew the process by {grew / 1e6:.0f} MB"


def batch_lengths(piece, column: str) -> list[int]:
    from nnpipe.sources import location

    columns = location.iter_columns(piece, [column])  # held: the file stays open while its batches are read
    name, batches = next(columns)
    assert name == column
    return [len(b) for b in batches]


@pytest.mark.parametrize("code", [None, TRAIN, TEST])
def test_piece_rows_in_batches_equal_the_whole_piece_read_at_once(tmp_path, code, monkeypatch):
    from nnpipe.sources import location, prep

    # Two parts of two row groups each; batches of 7 rows cut across row groups' ends.
    df = frame(300)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(2):
        df.iloc[150 * i : 150 * (i + 1)].to_parquet(folder / f"p{i}.parquet", row_group_size=100, index=False)
    source = open_source(str(folder), "label")
    read = dict(features=source.features, target="label", columns=source.columns, storage_options={},
                seed=3, test_size=0.2, val_size=0.1)
    monkeypatch.setattr(location, "PIECE_BATCH_ROWS", 7)
    monkeypatch.setattr(location, "WHOLE_PIECE_BYTES", 0)  # small pieces are read at once otherwise
    row0 = 0
    for piece in source.pieces:
        whole = location.read_piece(piece, [*source.features, "label"])
        X, y = prep.piece_rows(piece, row0, code, **read)
        assert batch_lengths(piece, "label")[:2] == [7, 7]
        keep = np.ones(len(whole), bool) if code is None else split_codes(row0, len(whole), 3, 0.2, 0.1) == code
        np.testing.assert_array_equal(X, whole[source.features].to_numpy(np.float64)[keep])
        np.testing.assert_array_equal(y, whole["label"].to_numpy().astype(str)[keep])
        # A segment of those rows (what a shard takes of the piece) holds only its own rows, the same values.
        a, b = 3, len(y) - 5
        Xs, ys = prep.piece_rows(piece, row0, code, **read, span=(a, b))
        assert len(Xs) == b - a
        np.testing.assert_array_equal(Xs, X[a:b])
        np.testing.assert_array_equal(ys, y[a:b])
        row0 += piece.rows


@pytest.mark.parametrize("target", ["label", "rid"])
def test_checks_and_statistics_read_in_batches_give_the_whole_piece_figures(tmp_path, target, monkeypatch):
    from nnpipe.sources import location, prep

    df = frame(300) if target == "label" else frame(300).drop(columns="label")  # "rid": a numeric target
    folder = tmp_path / "parts"
    folder.mkdir()
    df.to_parquet(folder / "p0.parquet", row_group_size=300, index=False)
    source = open_source(str(folder), target)
    piece = source.pieces[0]
    kw = dict(features=source.features, target=target, columns=source.columns, storage_options={})
    monkeypatch.setattr(location, "PIECE_BATCH_ROWS", 7)
    monkeypatch.setattr(location, "WHOLE_PIECE_BYTES", 0)  # small pieces are read at once otherwise
    assert len(batch_lengths(piece, target)) == 43  # the piece really is read in 43 batches

    chk = prep.scan_piece((piece, None), **kw)  # rows unknown to the split: the checks only
    assert chk["rows"] == 300 and chk["error"] is None and "x" not in chk
    if target == "label":
        assert chk["integral"] and chk["labels"].tolist() == ["no", "yes"]
    else:  # 300 distinct integral values: still a possible classification target, collected across batches
        assert chk["integral"] and chk["labels"].tolist() == list(range(300))

    stats = prep.scan_piece((piece, 5), seed=3, test_size=0.2, val_size=0.1, **kw)  # checks and statistics
    assert {k: stats[k] for k in ("rows", "error", "integral")} == {k: chk[k] for k in ("rows", "error", "integral")}
    codes = split_codes(5, 300, 3, 0.2, 0.1)
    assert stats["counts"] == np.bincount(codes, minlength=3).tolist()
    X = df[source.features].to_numpy(np.float64)[codes == TRAIN]
    n, mean, m2 = stats["x"]
    assert n == len(X)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m2, ((X - X.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-12)
    if target == "rid":
        y = df["rid"].to_numpy()[codes == TRAIN]
        np.testing.assert_allclose(stats["y"][1], [y.mean()], rtol=1e-12)
    else:
        assert stats["y"] is None  # text labels have no moments
    assert stats["train_labels"].tolist() == sorted(set(df[target][codes == TRAIN]))


def test_a_bad_value_in_a_later_batch_names_its_row_in_the_file(tmp_path, monkeypatch):
    from nnpipe.sources import location

    df = frame(300)
    df.loc[250, "f3"] = np.inf
    folder = tmp_path / "parts"
    folder.mkdir()
    df.to_parquet(folder / "p0.parquet", row_group_size=300, index=False)
    monkeypatch.setattr(location, "PIECE_BATCH_ROWS", 7)
    monkeypatch.setattr(location, "WHOLE_PIECE_BYTES", 0)  # small pieces are read at once otherwise
    with pytest.raises(DataError, match=r"p0\.parquet: column 'f3' .*row 251.*inf"):
        prepare(open_source(str(folder), "label"))


def test_validating_and_reducing_statistics_never_hold_a_whole_row_group(tmp_path):
    # One row group of 400k rows x 41 columns (~130 MB in Parquet, 131 MB as float64): whole, the checks held
    # the Arrow table, a frame and a float64 copy at once (several hundred MB); in 64k-row batches, a few tens.
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((400_000, 40)), columns=[f"x{i}" for i in range(40)])
    df["label"] = rng.integers(0, 3, len(df))
    folder = tmp_path / "data"
    folder.mkdir()
    df.to_parquet(folder / "part-0.parquet", row_group_size=len(df), index=False)
    n_rows, grew = peak_growth("prepare", str(folder))
    assert n_rows == 400_000
    assert grew < 100e6, f"preparing one 400k-row group grew the process by {grew / 1e6:.0f} MB"


def test_a_regression_on_a_text_target_names_the_target(tmp_path):
    folder = tmp_path / "parts"
    write_parts(frame(120), folder, n_parts=2)
    with pytest.raises(DataError, match=r"target 'label' holds text; a regression needs numbers"):
        prepare(open_source(str(folder), "label"), task="regression")
