"""Hyperparameter tuning with Optuna: search spaces, pruning mid-training, trials in parallel on Dask.

The only package that imports optuna. It sits above the core,
:mod:`nnpipe.distributed` and :mod:`nnpipe.tracking`, and below the flows::

    from nnpipe.tuning import tune

    result = tune("digits", ["lr=loguniform(1e-4,1e-1)", "hidden=int(16,256,log)", "optimizer=choice(adam,sgd)"],
                  trials=20, parallel=2, pruner="median", study="digits-lr")
    result.best, result.registered

Modules: :mod:`.space` (the ``NAME=EXPR`` grammar), :mod:`.study` (storage,
samplers, pruners), :mod:`.worker` (a trial on a worker), :mod:`.runner` (the
driver loop), :mod:`.report` (parent-run artefacts, registration),
:mod:`.settings` (options and the ``[tune]`` table), :mod:`.api` (``tune``),
:mod:`.resume` (a study's stored settings), :mod:`.interrupts` (Ctrl-C only between store writes).
"""

from importlib import import_module
from typing import Any

# Resolved on first use, so that a Dask worker importing nnpipe.tuning.worker loads
# optuna and the core only (not mlflow, which the driver alone talks to).
_EXPORTS = {
    "tune": "api", "TuneResult": "api", "TrialResult": "runner", "TuneSettings": "settings",
    "DEFAULT_TRIALS": "settings", "SEARCHABLE": "space", "Space": "space", "SpaceError": "space",
    "parse_entry": "space", "parse_space": "space", "PRUNERS": "study", "SAMPLERS": "study",
    "default_storage": "study",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nnpipe.tuning' has no attribute {name!r}")
    return getattr(import_module(f"nnpipe.tuning.{_EXPORTS[name]}"), name)
