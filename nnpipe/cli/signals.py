"""SIGTERM for the long commands: a clean stop like Ctrl-C, and an end within a bounded time whatever happens.

:func:`sigterm_as_interrupt` makes SIGTERM raise ``KeyboardInterrupt`` in
the main thread, so ``kill PID`` ends a training the way Ctrl-C does (the
MLflow run KILLED, the cluster closed, exit 130). While a flow runs,
Prefect's engine installs its own SIGTERM handler and, before passing the
signal on, reports the crash to its API; with that API dead or hung, the
report retries for minutes and the command looked deaf to ``kill``.

So the signal is also seen below the handlers: Python writes every signal
it receives to the wakeup file descriptor, whichever handler runs. A thread
reading it starts a grace period at the first SIGTERM; if the command is
still closing after :data:`GRACE_S` seconds, it says so in one line and
exits 143 at once. (A second SIGTERM cannot shorten it: Prefect sends the
signal to its own process again once it has handled it, and the pipe cannot
tell the two apart.) A run cut off that way stays
RUNNING in MLflow only until the next nnpipe command ends it FAILED (its
driver is gone; see :mod:`nnpipe.tracking.orphans`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

GRACE_S = float(os.environ.get("NNPIPE_TERM_GRACE_S", "30"))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"terminated by {signal.Signals(signum).name}")


def _hard_exit(why: str) -> None:
    print(f"error: terminated by SIGTERM; {why}, so nnpipe stops now without closing its books: the MLflow run "
          "stays RUNNING until the next nnpipe command in that store ends it FAILED (its driver is gone)",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(143)


def _watch_wakeups(read_fd: int, stop: threading.Event) -> None:
    """Start the grace period at the first SIGTERM seen on the wakeup pipe; exit hard once it is over.

    The grace timer, once started, outlives the block: a process told to stop
    that then hangs at exit (Prefect's exit-time retries) still ends on time.
    """
    started = False
    try:
        while data := os.read(read_fd, 64):
            if started or stop.is_set() or signal.SIGTERM not in data:
                continue
            timer = threading.Timer(GRACE_S, _hard_exit, args=(f"still closing after {GRACE_S:g} s",))
            timer.daemon = True
            timer.start()
            started = True
    except OSError:
        pass
    finally:
        os.close(read_fd)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread, and ends the process within
    :data:`GRACE_S` seconds even if a handler it meets on the way never returns."""
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    stop = threading.Event()
    try:
        old_wakeup: int | None = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # no wakeup fd here: SIGTERM still interrupts, without the grace period's bound
        old_wakeup = None
    if old_wakeup is not None:
        threading.Thread(target=_watch_wakeups, args=(read_fd, stop), name="nnpipe-sigterm-watch",
                         daemon=True).start()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if old_wakeup is not None:
            stop.set()
            signal.set_wakeup_fd(old_wakeup)
        os.close(write_fd)  # the reader sees end of file, closes its end and returns
        if old_wakeup is None:
            os.close(read_fd)
