"""Every python and shell example of the README and the site, run as a reader would.

Page by page, README first, every block without a ``needs:`` mark runs in
order, as a reader who follows the README's tour and then reads the pages in
one folder: a shell block with ``bash -e``, a Python block as its own program.
They share that folder (so ``./mlflow.db`` is the store the tour's
``nnpipe train`` wrote, which the registry page loads from), one reader's HOME
(the local Prefect server the first ``nnpipe train`` starts), and a two-worker
cluster named by ``DASK_SCHEDULER_ADDRESS``. A block passes when it exits 0
within ``BLOCK_TIMEOUT``. Python blocks run as ``python -c``, the way a
notebook or a prompt runs them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docs.blocks import REPO, SHELL, Block, blocks, pages
from tests.flows.conftest import clean_env

BLOCK_TIMEOUT = 240  # seconds
RUNNABLE = [page for page in pages() if any(b.runs for b in blocks(page))]


def run(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    if block.lang in SHELL:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    else:
        # `python -c`, as pasted into a notebook or a prompt: a script file that starts a local
        # cluster needs an `if __name__ == "__main__":` guard (the library page says so).
        cmd = [sys.executable, "-c", block.text]
    # Its own process group, so that a block that never ends (a server) is stopped with all it started,
    # well under the suite's timeout, and fails naming itself.
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.server  # `nnpipe train` starts (or reuses) the reader's local Prefect server
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.relative_to(REPO).as_posix())
def test_page_examples_run(page: Path, reader_home: Path, cluster: str):
    folder = reader_home / "work"  # the reader's one folder, for every page
    folder.mkdir(exist_ok=True)
    env = clean_env(reader_home, DASK_SCHEDULER_ADDRESS=cluster, MPLBACKEND="Agg")
    ran = []
    for block in blocks(page):
        if not block.runs:
            continue
        try:
            done = run(block, folder, env)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{block.where}: still running after {e.timeout} s; a block that serves until stopped "
                        f"needs a '<!-- needs: server -->' mark\n{block.text}")
        assert done.returncode == 0, (f"{block.where}: the example exits {done.returncode}\n--- block\n{block.text}"
                                      f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
        ran.append(block.where)
    assert ran
    if page.name == "README.md":
        assert_tour_told_the_truth(folder)


def assert_tour_told_the_truth(folder: Path) -> None:
    """The tour says the gate keeps v1 and the rollback brings it back: the store agrees."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = sorted(int(v.version) for v in client.search_model_versions("name='nnpipe-iris'"))
    assert versions == [1, 2], versions
    assert int(client.get_model_version_by_alias("nnpipe-iris", "champion").version) == 1
    assert int(client.get_model_version_by_alias("nnpipe-iris", "candidate").version) == 2


def test_a_block_that_never_ends_is_stopped_with_what_it_started(tmp_path: Path, monkeypatch):
    """A server left unmarked would hang the suite: the runner stops the block's whole process group."""
    monkeypatch.setattr(sys.modules[__name__], "BLOCK_TIMEOUT", 2)
    page = tmp_path / "page.md"
    page.write_text("```bash\nsleep 300 &\necho $! > child.pid\nsleep 300\n```\n")
    (block,) = blocks(page)
    with pytest.raises(subprocess.TimeoutExpired):
        run(block, tmp_path, dict(os.environ))
    child = int((tmp_path / "child.pid").read_text())
    # Killed and reaped by init: /proc/<pid> goes away (or is a zombie for an instant).
    for _ in range(50):
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the block's background child {child} is still running")
