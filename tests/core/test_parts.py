"""A folder or glob of parts read into memory (``--in-memory``): joined when it fits, refused when not, parts that differ named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnpipe.data import DataError
from nnpipe.sources import load_parts


@pytest.fixture
def lake(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=90), "b": rng.normal(size=90), "y": np.arange(90) % 3})
    for i in range(3):
        frame.iloc[i::3].to_parquet(tmp_path / f"part-{i}.parquet")
    return tmp_path, frame


def test_a_folder_and_a_glob_read_into_memory_say_how_much(lake):
    root, frame = lake
    for location in (str(root), str(root / "part-*.parquet")):
        ds = load_parts(location, "y")
        assert ds.X.shape == (90, 2) and sorted(ds.y.tolist()) == sorted(frame["y"].tolist())
        assert ds.notes == [f"read 3 parquet parts of {location} into memory: "
                            f"{ds.notes[0].split(': ', 1)[1].split(' on disk')[0]} on disk, 2 kB as arrays, 90 rows"]


def test_parts_too_large_for_memory_are_refused_with_the_way_out(lake):
    root, _ = lake
    with pytest.raises(DataError, match=r"3 parts, .* on disk \(about .* in memory\), more than half of the 10 kB "
                                        r"available; train it as a large source \(leave out --in-memory\)"):
        load_parts(str(root), "y", available=10 * 1024)


def test_a_part_with_other_columns_is_named(lake):
    root, frame = lake
    frame.drop(columns=["a"]).to_parquet(root / "part-9.parquet")
    with pytest.raises(DataError, match=r"part-9.parquet: its columns differ from .*part-0.parquet's; missing \['a'\]"):
        load_parts(str(root), "y")
    assert load_parts(str(root), "y", ["b"]).X.shape == (180, 1)  # naming the columns works
