"""What the docs' examples run against: a two-worker Dask cluster and one user's HOME for the session."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.flows.conftest import BIN, clean_env


# package, not session: an idle cluster costs the rest of the suite CPU (see tests/distributed/conftest.py)
@pytest.fixture(scope="package")
def cluster() -> Iterator[str]:
    """A LocalCluster of 2 one-thread worker processes; examples reach it by DASK_SCHEDULER_ADDRESS."""
    from tests.distributed.helpers import local_cluster

    with local_cluster(2) as c:
        yield c.scheduler_address


@pytest.fixture(scope="package")
def reader_home(tmp_path_factory) -> Iterator[Path]:
    """The HOME of a reader who pastes the examples: the local Prefect server the first
    `nnpipe train` starts there serves the later ones, and is stopped at the end."""
    home = tmp_path_factory.mktemp("reader")
    yield home
    subprocess.run([str(BIN / "nnpipe"), "server", "stop"], env=clean_env(home), capture_output=True, timeout=60)
