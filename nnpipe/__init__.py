"""nnpipe: a distributed, asynchronous training pipeline for NumPy neural networks."""

from nnpipe.config import TrainConfig
from nnpipe.engine import train
from nnpipe.keras import Dense, Sequential
from nnpipe.model import Model
from nnpipe.network import Network, NetworkSpec, init_params
from nnpipe.training import DivergenceError, FitResult, fit

__version__ = "0.1.0"

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
    "fit",
    "init_params",
    "train",
]
