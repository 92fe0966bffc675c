"""What keeping the registry pages true costs: a sweep when nothing moved, and after an outside move.

A scratch SQLite store with one registered model (two iris versions, gated).
Printed, as medians:

- ``search``: one ``search_registered_models`` call, the reference;
- ``sweep, nothing moved``: :func:`nnpipe.tracking.pages.sweep` when every
  model's aliases match its ``nnpipe.recorded_aliases`` tag (what every
  nnpipe command and every watcher tick pay), and its ratio to ``search``;
- ``sweep after a move``: the same right after another client moved
  ``champion`` (the move recorded, the descriptions rewritten under the lock).

Run it alone on the machine: ``flock /work/cpu.lock python bench/bench_pages.py``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    from mlflow import MlflowClient

    from nnpipe import TrainConfig, tracking
    from nnpipe.api import train
    from nnpipe.data import load_dataset, split_and_scale
    from nnpipe.tracking import pages

    with tempfile.TemporaryDirectory(prefix="nnpipe-bench-pages-") as tmp:
        os.chdir(tmp)
        uri = tracking.configure(f"sqlite:///{tmp}/mlflow.db")
        ds = load_dataset("iris")
        splits = split_and_scale(ds, test_size=0.2, val_size=0.1, seed=0)
        name = "bench-pages"
        for epochs in (1, 20):
            cfg = TrainConfig(epochs=epochs, lr=1e-2, batch_size=16)
            with tracking.training_run(name, cfg) as run:
                model = train(splits, cfg, hidden=(8,)).model
                tracking.log_final_metrics(run.info.run_id, model.evaluate(splits.raw_test, splits.y_test))
                uri_model = tracking.log_model(run.info.run_id, model, splits.raw_test[:5])
            tracking.promote_if_better(name, tracking.register_model(uri_model, name, run.info.run_id))
        c = MlflowClient(uri, uri)
        pages.sweep()
        search = _median_ms(lambda: c.search_registered_models(max_results=100), 20)
        quiet = _median_ms(pages.sweep, 20)
        moved = []
        for i in range(6):
            c.set_registered_model_alias(name, "champion", str(1 + i % 2))
            moved.append(_median_ms(pages.sweep, 1))
        print(f"search                 {search:7.1f} ms")
        print(f"sweep, nothing moved   {quiet:7.1f} ms  ({quiet / search:.2f}x search)")
        print(f"sweep after a move     {statistics.median(moved):7.1f} ms  ({statistics.median(moved) / search:.1f}x search)")


if __name__ == "__main__":
    main()
