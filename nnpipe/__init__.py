"""nnpipe: a distributed, asynchronous training pipeline for NumPy neural networks."""

from nnpipe.api import build_spec, train
from nnpipe.config import TrainConfig
from nnpipe.core.network import Network, NetworkSpec, init_params
from nnpipe.data.load import load_dataset, split_and_scale
from nnpipe.keras import Dense, Sequential
from nnpipe.model import Model
from nnpipe.results import DivergenceError, FitResult
from nnpipe.version import __version__

__all__ = [
    "Dense",
    "DivergenceError",
    "FitResult",
    "Model",
    "Network",
    "NetworkSpec",
    "Sequential",
    "TrainConfig",
    "__version__",
    "build_spec",
    "init_params",
    "load_dataset",
    "split_and_scale",
    "train",
]
