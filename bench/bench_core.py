"""Single-process training throughput, side by side with its references.

Run: ``python bench/bench_core.py`` (``--quick`` for a smoke run).

Prints, in one run on this machine with one BLAS thread:
- nnpipe samples/s on make_classification(200k x 64, 10 classes), 64-256-256-10
  relu, batch 256, Adam, float32, one epoch after a warm-up, median of 3;
- scikit-learn's MLPClassifier on the same task (float64, its only dtype);
- the float32 matmul rate of this machine (GFLOP/s) and the share of it that
  nnpipe's training reaches;
- the Keras seed example (iris, 4-relu-3-softmax, batch 10, 100 epochs):
  nnpipe's wall time against MLPClassifier's with the same settings.
Targets from the foundation issue: >= 2.5x MLPClassifier, >= 50% of the matmul
peak, seed example >= 5x faster than MLPClassifier.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from sklearn.datasets import load_iris, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_info, threadpool_limits

from nnpipe import NetworkSpec, TrainConfig, init_params
from nnpipe.core.problem import Problem
from nnpipe.core.training import fit

warnings.simplefilter("ignore", ConvergenceWarning)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """float32 GEMM rate on square matrices: the machine's BLAS peak for one thread."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    A @ B
    return 2 * n**3 / median_time(lambda: A @ B, repeats) / 1e9


def training_flops_per_sample(sizes: tuple[int, ...]) -> float:
    """Forward (2*fi*fo), weight gradient (2*fi*fo), input gradient (2*fi*fo, not for the first layer)."""
    total = 0.0
    for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        total += (4 if i == 0 else 6) * fi * fo
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k rows, one repeat: a smoke run")
    args = parser.parse_args()
    n = 20_000 if args.quick else 200_000
    repeats = 1 if args.quick else 5

    with threadpool_limits(limits=1):
        blas = {i.get("internal_api"): i.get("version") for i in threadpool_info()}
        print(f"BLAS: {blas}, threads limited to 1")
        X, y = make_classification(n_samples=n, n_features=64, n_informative=32, n_classes=10, random_state=0)
        X = StandardScaler().fit_transform(X)
        X32 = X.astype(np.float32)
        spec = NetworkSpec(64, (256, 256), ("relu", "relu"), 10)
        theta = init_params(spec, 0)
        cfg = TrainConfig(optimizer="adam", batch_size=256, epochs=1, seed=0)
        fit(Problem(spec, theta, X32[:20_000], y[:20_000]), cfg)  # warm-up
        # Built (and checked) once, outside the timings: they measure training as before.
        problem = Problem(spec, theta, X32, y)
        MLPClassifier((256, 256), batch_size=256, max_iter=1).fit(X[:5000], y[:5000])  # warm-up
        flops = training_flops_per_sample(spec.sizes)
        ours, theirs, peaks, shares = [], [], [], []
        # Interleaved: this VM's speed drifts by tens of percent within a minute,
        # so each ratio compares measurements made moments apart.
        for _ in range(repeats):
            peaks.append(matmul_gflops())
            ours.append(n / median_time(lambda: fit(problem, cfg, train_metrics=False), 1))
            shares.append(ours[-1] * flops / 1e9 / peaks[-1])
            theirs.append(n / median_time(
                lambda: MLPClassifier((256, 256), batch_size=256, max_iter=1, random_state=0, tol=0).fit(X, y), 1))
        med = statistics.median
        ratio = med(o / t for o, t in zip(ours, theirs))

        print(f"\n== throughput: {n} x 64, 64-256-256-10 relu, batch 256, Adam, one epoch, {repeats} interleaved runs (medians) ==")
        print(f"{'nnpipe (float32)':<28}{med(ours):>12,.0f} samples/s")
        print(f"{'MLPClassifier (float64)':<28}{med(theirs):>12,.0f} samples/s   nnpipe / MLPClassifier = {ratio:.2f}x (target >= 2.5x)")
        print(f"{'float32 matmul peak':<28}{med(peaks):>12.1f} GFLOP/s")
        print(f"{'nnpipe training rate':<28}{med(ours) * flops / 1e9:>12.1f} GFLOP/s   share of peak = {med(shares):.0%} (target >= 50%)")

        Xi, yi = load_iris(return_X_y=True)
        Xtr, _, ytr, _ = train_test_split(Xi, yi, test_size=0.2, random_state=42)
        Xtr = StandardScaler().fit(Xtr).transform(Xtr)
        ispec = NetworkSpec(4, (4,), ("relu",), 3)
        itheta = init_params(ispec, 0, init="glorot_uniform")
        icfg = TrainConfig(optimizer="adam", batch_size=10, epochs=100, seed=0)
        seed_repeats = 3 if args.quick else 15
        iris = Problem(ispec, itheta, Xtr.astype(np.float32), ytr)
        ours_s, theirs_s = [], []
        # Interleaved pairs: this VM's speed drifts by tens of percent within a
        # minute, so each ratio compares runs made moments apart.
        for _ in range(seed_repeats):
            ours_s.append(median_time(lambda: fit(iris, icfg), 1))
            theirs_s.append(median_time(
                lambda: MLPClassifier((4,), batch_size=10, max_iter=100, tol=0, n_iter_no_change=1000,
                                      random_state=0).fit(Xtr, ytr), 1))
        ratio = statistics.median(t / o for t, o in zip(theirs_s, ours_s))
        print(f"\n== seed example: iris, 4-relu-3-softmax, batch 10, 100 epochs, {seed_repeats} interleaved pairs ==")
        print(f"{'nnpipe':<28}{statistics.median(ours_s):>12.3f} s (median)")
        print(f"{'MLPClassifier':<28}{statistics.median(theirs_s):>12.3f} s (median)   "
              f"median pairwise ratio = {ratio:.1f}x faster (target >= 5x)")

if __name__ == "__main__":
    main()
