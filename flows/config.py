"""The pipeline's one typed, validated configuration.

A pydantic model so that the Prefect UI renders a form for the flow's
parameter and so that a bad value fails at the flow's boundary, before any
data is read or any MLflow run is opened. The training fields are
:class:`nnpipe.config.TrainConfig` itself (a nested dataclass), not a copy.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nnpipe import metrics
from nnpipe.config import OPTIMIZER_FIELDS, SCHEDULE_FIELDS, TrainConfig

TRAIN_FIELDS = frozenset(f.name for f in dc_fields(TrainConfig))

# The pipeline trains until validation loss stops improving, so its defaults
# differ from the library's Keras-like ones: a 100-epoch budget with early
# stopping serves both a 150-row table and a large one.
# Checkpoints every 10 epochs are logged to the MLflow run, so any run (a
# failed one too) can be resumed with ``resume_from``.
PIPELINE_TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 100, "patience": 10, "checkpoint_every": 10}


# Run tags of a pipeline run: the settings it ran with (what --resume-from restores) and the run it resumed.
CONFIG_TAG = "nnpipe.config"
RESUMED_FROM_TAG = "nnpipe.resumed_from"
# Settings a resumed run cannot change: its checkpoint holds this network, for this data, in this mode.
CHECKPOINT_FIELDS = ("dataset", "target", "features", "task", "hidden", "activation", "train.mode")
# Not restored by a resume: where this run happens and what it resumes are this command's own.
NOT_RESTORED = ("tracking_uri", "scheduler_address", "resume_from", "metrics_port")


class ConfigError(ValueError):
    """A bad pipeline configuration value or file; the message quotes it."""


class PipelineConfig(BaseModel):
    """Everything one training pipeline run needs: data, network, training, tracking, promotion."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dataset: str = Field("iris", description="Built-in dataset name (iris, wine, breast_cancer, digits, diabetes) or a CSV/Parquet path.")
    target: str | None = Field(None, description="Target column (required for CSV/Parquet files).")
    task: Literal["classification", "multiclass", "binary", "regression"] | None = Field(
        None, description="Override the inferred task: classification (binary or multiclass by class count) or regression.")
    features: list[str] | None = Field(None, description="Feature columns of a file source; default every column but the target.")
    large: bool | None = Field(None, description="Treat the dataset as a large source read on the workers (True) or load it in memory (False); unset: a directory, glob or URL, or a file over large_file_mb, is large.")
    large_file_mb: float = Field(256, gt=0, description="A single file bigger than this (MB) is a large source.")
    block_mb: float = Field(16, gt=0, description="Large sources: uncompressed MB per piece a worker reads at once.")
    hidden: list[int] = Field(default_factory=lambda: [64, 32], description="Hidden layer sizes.")
    activation: str = Field("relu", description="Hidden activation.")
    model_name: str | None = Field(None, description="Registered model name; default nnpipe-<dataset name>.")
    experiment: str = Field("nnpipe", description="MLflow experiment.")
    test_size: float = Field(0.2, gt=0, lt=1, description="Held-out test fraction.")
    val_size: float = Field(0.1, ge=0, lt=1, description="Validation fraction (early stopping, val metrics).")
    promotion_metric: str | None = Field(None, description="Test metric the gate compares; default accuracy (classification) or mse (regression).")
    greater_is_better: bool | None = Field(None, description="Direction of the promotion metric; inferred from its name when unset.")
    scheduler_address: str | None = Field(None, description="Dask scheduler address; unset: a local cluster is started for the run.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; unset: MLFLOW_TRACKING_URI or sqlite:///mlflow.db.")
    resume_from: str | None = Field(None, description="MLflow run id whose logged checkpoints this run continues from.")
    warm_start: Literal["champion"] | None = Field(None, description="Start from the registered champion's weights when its network has this run's shape (tag nnpipe.warm_start names the version).")
    metrics_port: int | None = Field(None, ge=0, lt=65536, description="Serve live training metrics for Prometheus on this port (0: a free one) while training; unset: NNPIPE_METRICS_PORT, else off.")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(**PIPELINE_TRAIN_DEFAULTS), description="Optimisation, stopping and distributed coordination.")

    @field_validator("hidden", mode="before")
    @classmethod
    def _hidden_as_the_cli_writes_it(cls, value: Any) -> Any:
        # "16,8" in a file means what --hidden 16,8 means on the command line
        if isinstance(value, str):
            try:
                return [int(part) for part in value.replace(" ", "").split(",") if part]
            except ValueError:
                raise ValueError(f"expected comma-separated integers like 64,32, got {value!r}") from None
        return value

    @field_validator("features")
    @classmethod
    def _features_are_unique(cls, value: list[str] | None) -> list[str] | None:
        # a column named twice would train, then fail while MLflow logs the model's input schema
        if value is not None:
            seen: set[str] = set()
            for name in value:
                if name in seen:
                    raise ValueError(f"column {name!r} is named twice, got {value!r}")
                seen.add(name)
        return value

    @model_validator(mode="after")
    def _columns_only_for_files(self) -> "PipelineConfig":
        # a built-in dataset has its own target and features: a flag naming columns would be ignored
        from nnpipe.data import BUILTIN

        if self.dataset in BUILTIN:
            for name in ("target", "features"):
                if getattr(self, name) is not None:
                    raise ValueError(f"config field {name!r}: built-in dataset {self.dataset!r} has its own "
                                     f"target and features; {name} selects columns of a CSV/Parquet file, "
                                     f"got {getattr(self, name)!r}")
        return self

    @field_validator("model_name")
    @classmethod
    def _model_name_is_valid(cls, value: str | None) -> str | None:
        # MLflow's naming rules, checked now rather than at registration after training
        from nnpipe.names import check_model_name

        return None if value is None else check_model_name(value)

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials_in_the_uri(cls, value: str | None) -> str | None:
        # This object becomes a Prefect flow-run parameter (stored and shown in clear): the user and
        # password of an http(s) URI move to MLflow's credential variables and only the clean URI stays.
        from nnpipe.redact import move_credentials_to_env

        return move_credentials_to_env(value)

    @field_validator("experiment")
    @classmethod
    def _experiment_is_valid(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"experiment name must not be empty, got {value!r}")
        return value

    @model_validator(mode="after")
    def _network_is_valid(self) -> "PipelineConfig":
        # The network's own checks (layer sizes, activation names), not a copy of them.
        from nnpipe.core.network import NetworkSpec

        if not self.hidden:
            raise ValueError(f"hidden layer sizes must be a non-empty list of integers >= 1, got {self.hidden!r}")
        NetworkSpec(1, tuple(self.hidden), self.activation, 1)
        return self

    @model_validator(mode="after")
    def _sizes_leave_training_rows(self) -> "PipelineConfig":
        if self.test_size + self.val_size >= 1:
            raise ValueError(f"test_size + val_size must be < 1, got {self.test_size} + {self.val_size}")
        return self

    @property
    def large_source(self) -> bool:
        """Whether the dataset trains as a large source (see :func:`nnpipe.sources.is_large`)."""
        from nnpipe.sources.location import is_large

        if self.large is not None:
            return self.large
        return is_large(self.dataset, int(self.large_file_mb * (1 << 20)))

    @property
    def distributed(self) -> bool:
        return self.train.mode != "single"

    def metric_for(self, task: str) -> tuple[str, bool]:
        """The promotion metric (without the ``test/`` prefix) and its direction for ``task``."""
        metric = (self.promotion_metric or metrics.default_metric(task)).removeprefix("test/")
        greater = self.greater_is_better
        return metric, metrics.greater_is_better(metric) if greater is None else greater

    def mlflow_params(self) -> dict[str, Any]:
        """The MLflow run's parameters: every setting with the value training really uses.

        Optimizer and schedule options show their effective values (``lr``
        0.001 for Adam, not None); settings that do not apply to the mode
        (``workers`` on a single-process run, ``max_staleness`` outside
        ``async``), unset options and where things ran (tracking URI, scheduler
        address: tags and links say that) are left out. The promotion metric
        depends on the task, known once the data is loaded: :meth:`promotion_params`.
        """
        skip = {"train", "tracking_uri", "scheduler_address", "promotion_metric", "greater_is_better", "metrics_port"}
        params = {k: v for k, v in self.model_dump(exclude=skip).items() if v is not None}
        from nnpipe.redact import redact

        if isinstance(params.get("dataset"), str):  # never a password in a param
            params["dataset"] = redact(params["dataset"])
        if self.tracking_uri:  # where the run was tracked, as given (credentials redacted)
            params["tracking_uri"] = redact(self.tracking_uri)
        params["hidden"] = ",".join(map(str, self.hidden))
        params.update(self.train.applicable())
        return params

    def resume_values(self) -> dict[str, Any]:
        """The settings a later ``--resume-from`` of this run restores (JSON-ready; see :data:`CONFIG_TAG`)."""
        values = self.model_dump(mode="json", exclude=set(NOT_RESTORED))
        values["train"] = {k: v for k, v in values["train"].items() if k != "checkpoint_dir"}
        return values

    def promotion_params(self, task: str) -> dict[str, Any]:
        """``promotion_metric`` (as logged, ``test/...``) and ``greater_is_better`` resolved for ``task``."""
        metric, greater = self.metric_for(task)
        return {"promotion_metric": f"test/{metric}", "greater_is_better": greater}




def split_train_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Move flat training keys (``epochs = 30`` at top level) into the ``train`` table.

    The reverse too: pipeline keys written in a ``[train]`` table (``hidden``,
    ``activation``, ``model_name``) move to the top level, so either place works.
    """
    out = {k: v for k, v in values.items() if k not in TRAIN_FIELDS}
    train = out.pop("train", None) or {}
    if not isinstance(train, dict):
        raise ConfigError(f"'train' must be a table of training fields, got {train!r}")
    train = dict(train)
    for key in [k for k in train if k not in TRAIN_FIELDS and k in PipelineConfig.model_fields and k != "train"]:
        if key in out and out[key] != train[key]:
            raise ConfigError(f"{key!r} is set twice, {out[key]!r} at the top level and {train[key]!r} in [train]")
        out[key] = train.pop(key)
    for key in [k for k in values if k in TRAIN_FIELDS]:  # file order, so output is stable
        train[key] = values[key]
    if train:
        out["train"] = train
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw values of a TOML (``.toml``) or YAML (``.yaml``/``.yml``) configuration file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text()) or {}
        else:
            raise ConfigError(f"{path}: expected a .toml, .yaml or .yml configuration file, got {suffix or 'no suffix'!r}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except Exception as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level, got {type(data).__name__}")
    return data


def build_config(
    file: str | Path | None = None, overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> PipelineConfig:
    """File values (if any), then ``overrides`` on top (CLI flags win), validated into a config.

    ``base`` (a resumed run's :meth:`PipelineConfig.resume_values`) lies under both:
    whatever the file and the flags leave unset keeps the earlier run's value.

    Raises
    ------
    ConfigError
        One line naming the field, the bad value and (if any) the file.
    """
    values: dict[str, Any] = split_train_fields(read_config_file(file)) if file else {}
    values.pop("tune", None)  # the [tune] table is nnpipe tune's (nnpipe.tuning.TuneSettings.from_table)
    over = split_train_fields({k: v for k, v in (overrides or {}).items() if v is not None})
    below = split_train_fields(dict(base or {}))
    below_train = dict(below.pop("train", {}))
    if {"batch_size", "sync_every"} & (values.get("train", {}).keys() | over.get("train", {}).keys()):
        below_train.pop("auto_round", None)  # a round size given now wins over the earlier run's chosen one
    values = {**below, **values}
    train = {**PIPELINE_TRAIN_DEFAULTS, **below_train, **values.get("train", {}), **over.pop("train", {})}
    # Round size left to us: a large source's distributed run chooses it (an explicit value always wins).
    if not {"batch_size", "sync_every", "auto_round"} & train.keys():
        train["auto_round"] = True
    values.update(over)
    values["train"] = train
    try:
        return PipelineConfig.model_validate(values)
    except ValidationError as exc:
        where = f"{file}: " if file else ""
        raise ConfigError(where + describe_validation_error(exc)) from None


def values_from_params(params: dict[str, str]) -> dict[str, Any]:
    """A run's settings rebuilt from its MLflow params (runs logged before :data:`CONFIG_TAG` existed).

    Params are strings and hold effective values; the optimizer, schedule and
    outer-loop options are left out (they are the defaults resolved, and would
    clash with an ``--optimizer`` given now), the rest is parsed back.
    """
    import ast

    skip = {*NOT_RESTORED, "promotion_metric", "greater_is_better", "outer_optimizer", "outer_lr", "outer_momentum",
            "warmup_epochs", "checkpoint_dir"}
    skip.update(OPTIMIZER_FIELDS + SCHEDULE_FIELDS)
    values: dict[str, Any] = {}
    for key, text in params.items():
        if key in skip or (key not in TRAIN_FIELDS and key not in PipelineConfig.model_fields) or key == "train":
            continue
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a name: adam, relu, iris, a path
        values[key] = text if key in ("dataset", "target", "model_name", "experiment", "hidden") else value
    return split_train_fields(values)


def explicit_values(file: str | Path | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """What the file and the flags set themselves, flattened to ``key`` / ``train.key`` (defaults left out)."""
    values = split_train_fields(read_config_file(file)) if file else {}
    values.pop("tune", None)
    over = split_train_fields({k: v for k, v in (overrides or {}).items() if v is not None})
    train = {**values.pop("train", {}), **over.pop("train", {})}
    flat = {**values, **over}
    flat.update({f"train.{k}": v for k, v in train.items()})
    return flat


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, joined: ``field 'train.lr': <reason> (got -1)``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("dataclass-arguments",))
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        # TrainConfig's own messages already quote the value; pydantic's type errors don't.
        quoted = "" if "got" in msg or isinstance(got, dict) else f" (got {got!r})"
        if not loc or msg.startswith("config field"):
            parts.append(msg if loc else f"config: {msg}")
        else:
            parts.append(f"config field {loc!r}: {msg}{quoted}")
    return "; ".join(parts)
