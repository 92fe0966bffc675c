"""Data at the boundary: loading, validating, splitting and scaling rows that fit in memory.

- :mod:`.load` — CSV/Parquet files and built-in datasets into a validated :class:`Dataset`, then
  :func:`split_and_scale`;
- :mod:`.builtin` — scikit-learn's toy datasets, cached as ``.npz``;
- :mod:`.targets` — encoding targets for a head and mapping predictions back to labels;
- :mod:`.checks` — checks of arrays handed to the API.

Sources too large for the driver live in :mod:`nnpipe.sources`.
"""

from nnpipe.data.load import (
    BUILTIN,
    TASKS,
    check_class_sizes,
    DataError,
    Dataset,
    Splits,
    check_source,
    infer_task,
    is_parts,
    load_dataset,
    split_and_scale,
)

__all__ = ["BUILTIN", "TASKS", "DataError", "Dataset", "Splits", "check_class_sizes", "check_source", "infer_task", "is_parts", "load_dataset",
           "split_and_scale"]
