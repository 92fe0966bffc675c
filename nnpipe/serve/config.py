"""The settings of one ``nnpipe serve``, checked once and passed to every worker process as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

ENV_CONFIG = "NNPIPE_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    """What to serve and the server's limits.

    Attributes
    ----------
    name : str
        Registered model name.
    alias : str
        The alias to follow (``champion``).
    shadow : str or None
        An alias whose version also scores every request, off the response path.
    poll : float
        Seconds between reads of the aliases (a move is served within about ``poll`` + load time).
    max_rows : int
        Rows per request; more is a 413.
    max_body : int
        Request body bytes; more is a 413.
    report_every : float
        Seconds between live metrics sent to MLflow.
    retry_after : float
        Seconds before a refused version is tried again.
    drift_halflife : float
        Rows after which an input counts half in the drift means.
    """

    name: str
    alias: str = "champion"
    shadow: str | None = None
    poll: float = 1.0
    max_rows: int = 10_000
    max_body: int = 8 * 1024 * 1024
    report_every: float = 60.0
    retry_after: float = 30.0
    drift_halflife: float = 1000.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"model name must be a non-empty string, got {self.name!r}")
        for alias in (self.alias, self.shadow):
            if alias is not None and (not alias.strip() or alias.startswith("@")):
                raise ValueError(f"alias must be a name like 'champion' (no '@'), got {alias!r}")
        if self.shadow is not None and self.shadow == self.alias:
            raise ValueError(f"--shadow {self.shadow!r} is the served alias itself; shadow another alias")
        for field, low in (("poll", 0.05), ("report_every", 1.0), ("retry_after", 0.0), ("drift_halflife", 1.0)):
            if not float(getattr(self, field)) >= low:
                raise ValueError(f"{field} must be at least {low}, got {getattr(self, field)!r}")
        for field in ("max_rows", "max_body"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{field} must be a positive integer, got {getattr(self, field)!r}")

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "ServeConfig":
        """The configuration the launcher put in ``NNPIPE_SERVE_CONFIG``."""
        raw = os.environ.get(ENV_CONFIG)
        if not raw:
            raise RuntimeError(f"{ENV_CONFIG} is not set: start the server with `nnpipe serve NAME`")
        return cls(**json.loads(raw))
