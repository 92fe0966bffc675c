"""The driver of a study: K trials at once on the Dask cluster, each a nested MLflow run.

The driver asks the study for a configuration (Optuna's ask-and-tell
interface), opens the trial's MLflow run, and submits the trial as one Dask
task (:func:`nnpipe.tuning.worker.run_trial`); it keeps ``parallel`` of them
in flight and, as each ends, tells the study the outcome, refills the freed
worker, and hands the trial's MLflow run (per-epoch history, test metrics,
final state) to one bookkeeping thread, so that the next trial never waits on
MLflow writes. Only the driver samples, so a fixed seed with ``parallel=1``
gives the same sequence of configurations every time.

Worker loss: a trial whose worker dies is recorded FAIL (Optuna) and FAILED
(MLflow), and its configuration is enqueued once as a new trial (user
attribute ``nnpipe.retry_of``), as Optuna's ``RetryFailedTrialCallback`` does
for stale trials; a retry that dies too stays FAIL. The study goes on either
way. An exception inside training (divergence, a combination the optimizer
rejects) is FAIL without a retry: running it again would fail again.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import optuna

from nnpipe import tracking
from nnpipe.config import TrainConfig
from nnpipe.data.load import Splits
from nnpipe.distributed.jobs import place, wait_first, worker_lost
from nnpipe.tuning.interrupts import deferred
from nnpipe.tuning.space import Space
from nnpipe.tuning.worker import run_trial

RUN_ATTR = "nnpipe.mlflow_run_id"
RETRY_ATTR = "nnpipe.retry_of"
EPOCHS_ATTR = "nnpipe.epochs"
FAILURE_ATTR = "nnpipe.failure"


@dataclass
class TrialResult:
    """One finished trial as the driver saw it."""

    number: int
    params: dict[str, Any]
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None
    epochs: int
    run_id: str
    retry_of: int | None = None
    reason: str | None = None


@dataclass
class _Running:
    trial: optuna.Trial
    params: dict[str, Any]
    run_id: str
    retry_of: int | None


class StudyRunner:
    """Runs trials of ``study`` on ``client``'s cluster; see the module docstring."""

    def __init__(self, study: optuna.Study, space: Space, splits: Splits, train: TrainConfig, hidden: list[int],
                 activation: str, client: Any, *, storage: str, pruner: str, metric: str, parallel: int,
                 parent_run_id: str, on_result: Callable[[TrialResult], None] | None = None,
                 grid_size: int | None = None):
        self.study, self.space, self.splits = study, space, splits
        self.train, self.hidden, self.activation = train, hidden, activation
        self.client, self.storage, self.pruner, self.metric = client, storage, pruner, metric
        self.parallel, self.parent_run_id, self.grid_size = parallel, parent_run_id, grid_size
        self.on_result = on_result or (lambda r: None)
        self.results: list[TrialResult] = []
        self._retries: list[tuple[dict[str, Any], int]] = []
        self._data: Any = None
        self.best_model: tuple[int, Any] | None = None
        self._open: set[str] = set()  # trial runs started and not yet ended

    # ------------------------------------------------------------ loop

    def run(self, trials: int, timeout: float | None = None) -> list[TrialResult]:
        """Start ``trials`` new configurations (retries not counted), stop starting after ``timeout`` s."""
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._trials, self._started = trials, 0
        # The data goes to the cluster once, as a future Dask can rebuild; trials refer to it.
        self._data = place(self.client, self.splits, "tune-data")
        pending: dict[Any, _Running] = {}
        # Each trial's MLflow run is filled and ended by one bookkeeping thread (in order), so the
        # loop is back waiting for the next trial at once: with short trials the driver's MLflow
        # writes, not the workers, were what every trial waited for.
        self._books = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nnpipe-tune-mlflow")
        self._booked: list[Future] = []
        try:
            # An interrupt lands only while the loop waits, never inside a store write (see .interrupts).
            with deferred() as signals:
                self._top_up(pending)
                while pending:
                    with signals.deliverable():
                        done = wait_first(pending)
                    # Tell the study first (the sampler and the pruner see the outcome), refill the freed
                    # workers, and only then hand the finished trials' MLflow bookkeeping over.
                    settled = [self._settle(running, self._outcome(future, running))
                               for future, running in ((f, pending.pop(f)) for f in done)]
                    self._top_up(pending)
                    for running, result, history, model in settled:
                        self._record(running, result, history, model)
                    self._check_books()
                with signals.deliverable():
                    self._books.shutdown(wait=True)
                self._check_books()
        except BaseException:
            with sigint_ignored():  # a second Ctrl-C must not leave half of this undone
                self._stop(pending)
            raise
        return self.results

    def _stop(self, pending: dict[Any, "_Running"]) -> None:
        """Interrupted: end every open trial run KILLED (nothing left RUNNING) and keep the best model so far."""
        self._books.shutdown(wait=True)  # finished trials' runs are ended before the study stops
        for future, running in pending.items():
            future.cancel()
            self._tell(running, optuna.trial.TrialState.FAIL, None, "interrupted")
        # every run opened and not yet ended: the pending ones, and any caught between settling and booking
        for run_id in sorted(self._open):
            try:
                tracking.nested.end_run(run_id, "KILLED", {"nnpipe.tune.state": "FAIL"},
                                        failure="interrupted: the study stopped")
            except Exception:  # the store itself may be what failed; end the others
                continue
            self._open.discard(run_id)
        try:  # and any the interrupt caught between the store creating it and this loop learning its id
            for run_id in tracking.nested.running_children(self.parent_run_id):
                tracking.nested.end_run(run_id, "KILLED", {"nnpipe.tune.state": "FAIL"},
                                        failure="interrupted: the study stopped")
        except Exception:  # the store itself may be what failed
            pass
        if self.best_model is not None:  # logged to its run, so that resuming the study registers it
            number, model = self.best_model
            try:
                kept_model(self.study, number, model, self.splits.raw_test[:5])
            except Exception:
                pass

    def _record(self, running: _Running, result: TrialResult, history: dict[str, list[float]], model: Any) -> None:
        """A finished trial: in the results (and reported) now, its MLflow run written by the bookkeeping thread."""
        self.results.append(result)
        self._booked.append(self._books.submit(self._log, running, result, history, model))
        self.on_result(result)

    def _check_books(self) -> None:
        """Raise the error of a failed MLflow write here, in the driver's loop."""
        for future in [f for f in self._booked if f.done()]:
            self._booked.remove(future)
            future.result()

    def _top_up(self, pending: dict[Any, "_Running"]) -> None:
        """Launch trials (retries first) until ``parallel`` run, the budget is spent or the time is up."""
        while len(pending) < self.parallel:
            if self._retries:
                params, of = self._retries.pop(0)
                self.study.enqueue_trial(params, user_attrs={RETRY_ATTR: of})
            elif self._started >= self._trials or self._grid_exhausted() or (
                    self._deadline is not None and time.monotonic() >= self._deadline):
                return
            else:
                self._started += 1
            launched = self._launch()
            if launched is not None:
                pending[launched[0]] = launched[1]

    def _grid_exhausted(self) -> bool:
        if self.grid_size is None:
            return False
        taken = {t.system_attrs["grid_id"] for t in self.study.get_trials(deepcopy=False)
                 if "grid_id" in t.system_attrs and t.state != optuna.trial.TrialState.WAITING}
        return len(taken) >= self.grid_size

    def _launch(self) -> tuple[Any, _Running] | None:
        trial = self.study.ask()
        params = self.space.suggest(trial)
        retry_of = trial.user_attrs.get(RETRY_ATTR)
        tags = {"nnpipe.tune.study": self.study.study_name, "nnpipe.tune.trial": trial.number,
                "nnpipe.tune.retry_of": retry_of}
        running = _Running(trial, params, "", retry_of)
        try:
            train, hidden, activation = self.space.apply(self.train, self.hidden, self.activation, params)
        except (ValueError, TypeError) as exc:  # only this combination is invalid: the study goes on
            running.run_id = tracking.nested.start_child_run(self.parent_run_id, f"trial-{trial.number}", params, tags)
            trial.set_user_attr(RUN_ATTR, running.run_id)
            outcome = {"status": "failed", "epochs": 0, "reason": f"invalid configuration: {exc}"}
            self._record(*self._settle(running, outcome))
            return None
        future = self.client.submit(
            run_trial, self._data, train, hidden, activation, self.storage, self.study.study_name, trial.number,
            self.pruner, self.metric, pure=False, key=f"nnpipe-trial-{self.study.study_name}-{trial.number}")
        # The run is opened once the trial is on its way (its worker does not need the run id).
        # the settings that apply, as a `train` run logs them: no `beta1 None` to show up as a difference
        config = {**train.applicable(), "hidden": ",".join(map(str, hidden)), "activation": activation}
        running.run_id = tracking.nested.start_child_run(self.parent_run_id, f"trial-{trial.number}", config, tags)
        self._open.add(running.run_id)
        trial.set_user_attr(RUN_ATTR, running.run_id)
        return future, running

    # ------------------------------------------------------------ outcomes

    def _outcome(self, future: Any, running: _Running) -> dict[str, Any]:
        """What the worker returned, or ``lost``/``failed`` when the future raised."""
        try:
            return future.result()
        except Exception as exc:
            if worker_lost(exc):
                return {"status": "lost", "worker": f"({type(exc).__name__}: {exc})"}
            return {"status": "failed", "epochs": 0, "reason": f"{type(exc).__name__}: {exc}"}

    def _settle(self, running: _Running, out: dict[str, Any]) -> tuple[_Running, TrialResult, dict, Any]:
        """Tell the study how the trial ended (and queue a retry for a lost worker)."""
        status, history, model = out["status"], out.get("history", {}), None
        value, epochs, reason = None, int(out.get("epochs", 0)), out.get("reason")
        if status == "lost":
            retry = running.retry_of is None
            reason = f"worker {out.get('worker')} died during the trial" + (
                "; retrying its configuration once as a new trial" if retry else "; already a retry, not retried again")
            if retry:
                self._retries.append((running.trial.params, running.trial.number))
            state = "FAIL"
        elif status == "failed":
            state = "FAIL"
        elif status == "pruned":
            state = "PRUNED"
        else:
            state, value, model = "COMPLETE", out["value"], out["model"]
            # Only this invocation's best model stays in memory: the study's best is logged and
            # registered at the end (logging a pyfunc model takes seconds; most trials never need it).
            if self._is_new_best(value):
                self.best_model = (running.trial.number, model)
        running.trial.set_user_attr(EPOCHS_ATTR, epochs)
        self._tell(running, getattr(optuna.trial.TrialState, state), value, reason)
        result = TrialResult(running.trial.number, dict(running.params), state, value, epochs, running.run_id,
                             running.retry_of, reason)
        return running, result, history, model

    def _is_new_best(self, value: float) -> bool:
        done = [t.value for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.value is not None]
        if not done:
            return True
        maximize = self.study.direction == optuna.study.StudyDirection.MAXIMIZE
        return value > max(done) if maximize else value < min(done)

    def _tell(self, running: _Running, state: optuna.trial.TrialState, value: float | None, reason: str | None) -> None:
        if reason and state != optuna.trial.TrialState.COMPLETE:
            running.trial.set_user_attr(FAILURE_ATTR, reason[:2000])
        try:
            self.study.tell(running.trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        except RuntimeError as exc:
            # GridSampler calls Study.stop() once the grid is covered, which only works inside
            # Study.optimize; the state is already stored by then (Optuna sets it in a finally).
            if "Study.stop" not in str(exc):
                raise

    def _log(self, running: _Running, result: TrialResult, history: dict[str, list[float]], model: Any) -> None:
        """The trial's MLflow run: per-epoch history, test metrics, final state (one batch, then the status)."""
        tags = {"nnpipe.tune.state": result.state, "nnpipe.tune.epochs": result.epochs}
        if result.state == "COMPLETE":
            metrics = model.evaluate(self.splits.raw_test, self.splits.y_test)
            tracking.nested.end_run(running.run_id, "FINISHED", tags, history=history,
                                    metrics={**{f"test/{k}": float(v) for k, v in metrics.items()},
                                             "tune/objective": result.value})
        elif result.state == "PRUNED":
            # A pruned trial did what it was asked: stopped early on the pruner's word. MLflow has no
            # "pruned" status and KILLED read as "someone stopped it", so the run ends FINISHED and its
            # name says pruned, where the runs table and compare show it; the tags keep the why.
            name = f"trial-{result.number} (pruned after epoch {result.epochs})"
            tracking.nested.end_run(running.run_id, "FINISHED",
                                    {**tags, "pruned": "true", "nnpipe.tune.pruned": result.reason,
                                     "mlflow.runName": name}, history=history)
        else:
            tracking.nested.end_run(running.run_id, "FAILED", tags, failure=result.reason, history=history)
        self._open.discard(running.run_id)


# Where a trial's logged model is recorded on the study (``models:/`` or ``runs:/`` URI).
MODEL_ATTR = "nnpipe.model_uri.trial_{}"


def kept_model(study: optuna.Study, number: int, model: Any, raw_example: Any) -> str:
    """Log trial ``number``'s ``model`` to its run and record the URI on the study; returns the URI.

    An interrupted study keeps its best model this way: resuming it finds the URI and registers it.
    """
    uri = study.user_attrs.get(MODEL_ATTR.format(number))
    if uri is None:
        run_id = next(t.user_attrs[RUN_ATTR] for t in study.get_trials(deepcopy=False) if t.number == number)
        run_name = tracking.client().get_run(run_id).data.tags.get("mlflow.runName", f"trial-{number}")
        # named like a `train` run's model (study and trial), not MLflow's default "model"
        uri = tracking.log_model(run_id, model, raw_example, name=f"{study.study_name}-{run_name}"[:200])
        study.set_user_attr(MODEL_ATTR.format(number), uri)
    return uri


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT (main thread only) while an interrupted study closes its books; restore it after."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
