"""Follow an alias: poll the registry, load a moved-to version beside the old one, swap atomically.

Every ``poll`` seconds (1 s by default, so a move is picked up well within
5 s) the watcher reads where the alias points. When that differs from the
version being served, it loads the new version in this background thread:
digests checked, nnpipe's own files read, a smoke prediction on the logged
input example. Only then is :attr:`AliasWatcher.current` replaced, by one
reference assignment, which is atomic in Python: a request sees the old
version or the new one, never a half-loaded one, and no request waits.

The last ``KEEP`` versions served stay in memory, already verified and
tested, so a rollback to one of them (the usual case: back to the previous
champion) swaps at the next poll without downloading anything.

A version that fails any step is *refused*: the old version keeps serving,
the refusal is logged and counted, and the version is tried again only after
``retry_after`` seconds (a transient store error may heal; a tampered file
will not, and is not re-downloaded every second).

Why polling and not MLflow's registry webhooks: a webhook needs the tracking
server to reach every serving process (and a shared secret), it is not
available on a SQLite or file store, and a missed delivery leaves a server
silently stale. One cheap read per second per process works with every store.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from nnpipe.serve.periodic import Periodic
from nnpipe.serve.served import ServedVersion
from nnpipe.tracking.serving import alias_target

log = logging.getLogger("nnpipe.serve")

KEEP = 3  # versions kept loaded: the current one and the last two it replaced

#: ``on_change(alias, old, new)``: the alias moved in the registry (old/new are versions or None)
AliasCallback = Callable[[str, "int | None", "int | None"], None]


class AliasWatcher(Periodic):
    """Keeps :attr:`current` on the version ``alias`` of ``name`` points to.

    Parameters
    ----------
    name, alias : str
    poll : float
        Seconds between reads of the alias.
    retry_after : float
        Seconds before a refused version is tried again.
    load : callable, optional
        ``load(name, version) -> ServedVersion``; raises to refuse (default :meth:`ServedVersion.load`).
    on_change : list of callables, optional
        Called as ``f(alias, old, new)`` from the watcher thread whenever the alias is seen to move,
        before loading (a hook for whoever wants to react, e.g. recording the move).
    on_swap, on_refuse : callables, optional
        ``on_swap(old_served, new_served)``; ``on_refuse(version, reason)``.
    on_error : callable, optional
        ``on_error()`` after a failed read of the registry.
    """

    def __init__(self, name: str, alias: str, poll: float = 1.0, retry_after: float = 30.0,
                 load: Callable[[str, int], ServedVersion] | None = None,
                 on_change: list[AliasCallback] | None = None,
                 on_swap: Callable[[ServedVersion | None, ServedVersion], None] | None = None,
                 on_refuse: Callable[[int, str], None] | None = None,
                 on_error: Callable[[], None] | None = None):
        super().__init__(f"nnpipe-serve-watch-{alias}", poll)
        self.name, self.alias = name, alias
        self.poll, self.retry_after = float(poll), float(retry_after)
        self._load = load or ServedVersion.load
        self.on_change = list(on_change or [])
        self._on_swap, self._on_refuse, self._on_error = on_swap, on_refuse, on_error
        self.current: ServedVersion | None = None
        self.target: int | None = None  # where the alias pointed at the last successful read
        self.seen_once = False
        self.refused: dict[int, tuple[float, str]] = {}  # version -> (when, why)
        self.last_error: str | None = None
        self._kept: dict[int, ServedVersion] = {}  # version -> loaded, most recently served last

    def status(self) -> str:
        """One line for ``/ping`` and ``/version`` when nothing is served, saying why."""
        if self.current is not None:
            return f"serving {self.name!r} v{self.current.version} ({self.alias})"
        if self.last_error and not self.seen_once:
            return f"cannot read the registry for {self.name!r}: {self.last_error}"
        if self.target is None:
            return (f"model {self.name!r} has no alias {self.alias!r} yet (or is not registered); "
                    f"this server answers as soon as it is set, e.g. `nnpipe promote {self.name} VERSION`")
        if self.target in self.refused:
            return f"{self.name!r} @{self.alias} -> v{self.target} was refused: {self.refused[self.target][1]}"
        return f"loading {self.name!r} v{self.target} ({self.alias})"

    def check(self) -> None:
        """One poll: read the alias, and load and swap in a new target (called by the thread; public for tests)."""
        try:
            target = alias_target(self.name, self.alias)
        except Exception as exc:  # the store is down or refuses us: keep serving what we have
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise
        self.last_error = None
        if not self.seen_once or target != self.target:
            old, self.target = self.target, target
            if self.seen_once:
                log.info("alias %s of %r moved: %s -> %s", self.alias, self.name,
                         "none" if old is None else f"v{old}", "none" if target is None else f"v{target}")
                for callback in self.on_change:
                    try:
                        callback(self.alias, old, target)
                    except Exception:  # a hook must not stop the watcher
                        log.exception("alias-change callback %r failed", callback)
            self.seen_once = True
        if target is None:
            return  # alias removed: keep serving the last good version (the on-call decides), or wait for one
        if self.current is not None and self.current.version == target:
            return
        when = self.refused.get(target)
        if when is not None and time.monotonic() - when[0] < self.retry_after:
            return
        self._swap_to(target)

    def _swap_to(self, version: int) -> None:
        started = time.monotonic()
        try:
            new = self._kept.pop(version, None) or self._load(self.name, version)
        except Exception as exc:  # digest mismatch, load error, smoke failure: refuse, keep the old one
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.refused[version] = (time.monotonic(), reason)
            keeping = "nothing (no version loaded yet)" if self.current is None else f"v{self.current.version}"
            log.error("refused %r v%d (%s): %s; still serving %s", self.name, version, self.alias, reason, keeping)
            if self._on_refuse:
                self._on_refuse(version, reason)
            return
        old, self.current = self.current, new  # the atomic swap
        self._kept[version] = new
        while len(self._kept) > KEEP:
            del self._kept[next(iter(self._kept))]
        self.refused.pop(version, None)
        log.info("now serving %r v%d (%s), was %s; ready in %.2f s", self.name, version, self.alias,
                 "none" if old is None else f"v{old.version}", time.monotonic() - started)
        if self._on_swap:
            self._on_swap(old, new)

    def step(self) -> None:
        """One poll from the thread: a failed read is logged and counted, and serving goes on."""
        try:
            self.check()
        except Exception as exc:
            if self._on_error:
                self._on_error()
            log.warning("could not read alias %s of %r: %s (still serving %s)", self.alias, self.name,
                        self.last_error or exc, "nothing" if self.current is None else f"v{self.current.version}")
