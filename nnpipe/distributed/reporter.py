"""The distributed loop's view of :class:`nnpipe.reporting.Reporter` (per-epoch bookkeeping).

The bookkeeping is the core's; this adapter only packs what a distributed
loop must add to a checkpoint (driver optimizer state, trainer states) and
unpacks it on resume.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnpipe import reporting
from nnpipe.distributed import checkpoint as ckpt
from nnpipe.distributed.wire import WireCounter
from nnpipe.results import FitResult


class Reporter(reporting.Reporter):
    """Per-epoch bookkeeping for the sync, local-sgd and async loops.

    With :attr:`wire` (the pool's :class:`~nnpipe.distributed.wire.WireCounter`)
    each epoch's logs gain ``dist/bytes_sent`` and ``dist/bytes_received``:
    the bytes the driver's calls to the trainers put on the wire in that epoch.
    """

    wire: WireCounter | None = None

    def resume(self) -> dict[str, Any] | None:  # type: ignore[override]
        """The newest checkpoint as one dict (see :func:`.checkpoint.unpack`), or None."""
        found = super().resume()
        return None if found is None else ckpt.unpack(*found)

    def end_epoch(self, epoch: int, theta: np.ndarray, logs: dict[str, float], *,  # type: ignore[override]
                  opt_state: dict | None = None, trainer_states: Any = None) -> bool:
        """Finish ``epoch``; ``trainer_states`` may be a callable, fetched only when a checkpoint is due."""
        if self.wire is not None and self.wire.measured:
            logs["dist/bytes_sent"], logs["dist/bytes_received"] = map(float, self.wire.since_mark())
        packed: list[tuple[dict, dict]] = []

        def fetch() -> tuple[dict, dict]:
            if not packed:  # one fetch from the trainers serves both parts
                states = trainer_states() if callable(trainer_states) else trainer_states
                packed.append(ckpt.pack(opt_state, states))
            return packed[0]

        return super().end_epoch(epoch, theta, logs, arrays=lambda: fetch()[0], meta=lambda: fetch()[1])

    def result(self, theta: np.ndarray, opt_state: dict, last_epoch: int,  # type: ignore[override]
               info: dict[str, Any]) -> FitResult:
        return super().result(theta, opt_state, info)
