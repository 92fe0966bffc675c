"""How a training process uses the CPU: BLAS threads (one when products are small) and step memory.

NumPy's OpenBLAS starts a thread pool of one thread per core and hands any
product above ~262k multiply-adds to it (OpenBLAS's own threshold). A
training step of a small network is a few such products of a few hundred
thousand multiply-adds each: waking the pool costs more than it saves, and
when another process wants the same cores the pool's spinning threads fight
it. Measured on the project's 2-core machine, quiet (``flock /work/cpu.lock``),
40-64-32-10 relu at batch 256 (largest product 655k multiply-adds):

- alone: 1.06-1.25M samples/s with 2 threads against 1.39-1.45M with one,
  and 45% more CPU for the same work;
- next to one other busy process: 115-121k samples/s with 2 threads against
  1.2-1.4M with one (10x slower);
- larger products gain from threads: 1.24-1.38x from 8M multiply-adds up
  (64-256-256-10 at batch 256: 16.8M), and 2x slower at 2.1M.

So a step whose largest product is below :data:`GEMM_THREAD_MIN` runs with one
BLAS thread; larger ones keep the library's default. A user who sets
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` or ``MKL_NUM_THREADS`` decides
instead. Dask workers are pinned to one thread regardless (they share the
cores with each other).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any, Iterator

from nnpipe.core.network import NetworkSpec

log = logging.getLogger("nnpipe")

GEMM_THREAD_MIN = 4_000_000  # multiply-adds of a step's largest product below which threads do not pay
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def largest_product(spec: NetworkSpec, batch: int) -> int:
    """Multiply-adds of the largest matrix product in one step of ``batch`` rows (forward or backward)."""
    return int(batch) * max(a * b for a, b in zip(spec.sizes[:-1], spec.sizes[1:]))


def user_thread_setting() -> str | None:
    """``NAME=value`` of the first BLAS thread variable the user set, else None."""
    for name in THREAD_ENV:
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return None


@functools.cache
def blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once per process.

    ``threadpool_limits()`` walks every loaded shared library on each call:
    1-17 ms here (more with PyTorch loaded), a tenth of a whole 100-epoch
    training of the seed's iris network. NumPy's BLAS is loaded with NumPy,
    before the first call, so the cached list holds it.
    """
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def step_threads(spec: NetworkSpec, batch: int) -> Iterator[str]:
    """Limit BLAS to one thread while training a small network; yields what was decided (for the log).

    The limit applies to the whole process while the block runs (threadpoolctl)
    and is undone after it.
    """
    product = largest_product(spec, batch)
    user = user_thread_setting()
    if user is not None:
        decision = f"as set by {user}"
    elif product >= GEMM_THREAD_MIN:
        decision = f"library default (largest product {product:,} multiply-adds >= {GEMM_THREAD_MIN:,})"
    else:
        decision = f"1 thread (largest product {product:,} multiply-adds < {GEMM_THREAD_MIN:,}: threads cost more)"
    limiter = None
    if decision.startswith("1 thread"):
        try:
            limiter = blas_controller().limit(limits=1, user_api="blas")
        except Exception as exc:  # an optimisation only: train anyway
            decision = f"library default (threadpoolctl unavailable: {exc!r})"
    log.info("BLAS threads for training: %s", decision)
    try:
        yield decision
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def single_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread now; the returned context manager restores the old limit on exit.

    Used as a plain call it pins the process for good (a Dask worker that
    shares the cores with other workers); used in ``with`` it pins a block.
    """
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    except Exception:  # threadpoolctl is an optimisation, not a requirement
        return contextlib.nullcontext()


# glibc mallopt parameters.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_step_memory() -> bool:
    """Let glibc reuse freed step buffers instead of returning them to the OS.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which
    also pins glibc's mmap threshold at 128 kB: every activation buffer of a
    256-row step (256 x 256 float32 = 256 kB) is then a fresh ``mmap`` and a
    round of page faults, and a step costs ~40% more CPU than in a plain
    process (measured: 13.7 vs 9.4 us per sample). Raising both thresholds
    keeps a step's few MB of working set in the heap. Linux/glibc only; a
    no-op elsewhere.

    Only as high as a step needs (8 MB holds a 2048 x 1024 float32
    activation): arrays above it (pieces read from a source, shards,
    evaluation chunks) stay ``mmap``-ed and go back to the OS when freed.
    With 64 MB / 256 MB, set before the shards were read (the round-size
    probe calls this), the freed read buffers stayed in the heap and
    in-memory workers peaked tens of MB higher.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, 8 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 32 << 20)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def prepare_training_process() -> None:
    """Set up a worker process for training steps: one BLAS thread and heap-kept step buffers.

    Workers started by hand may not have ``OMP_NUM_THREADS=1`` in their
    environment, and they share the cores with each other.
    """
    single_thread()
    keep_step_memory()

