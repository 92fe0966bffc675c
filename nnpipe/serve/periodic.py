"""A daemon thread that calls one step every few seconds until stopped: the shape of every background duty."""

from __future__ import annotations

import threading


class Periodic:
    """Calls :meth:`step` every ``every`` seconds in a daemon thread named ``name``, from :meth:`start` to :meth:`stop`.

    A subclass implements :meth:`step`; an exception escaping it would end the
    thread, so steps catch and log their own.
    """

    def __init__(self, name: str, every: float):
        self.thread_name, self.every = name, float(every)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.every)

    def start(self):
        """Start the thread; returns self."""
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to stop and wait for it (at most 10 s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
