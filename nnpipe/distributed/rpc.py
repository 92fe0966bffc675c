"""One call to a trainer actor, straight to its worker: :func:`call_actor`.

The fast path sends the same ``actor_execute`` message ``distributed.Actor``
sends, minus the proxy hop through the scheduler that ``Actor`` takes when
``direct_to_workers`` is off: on this 2-core machine a round to two trainers
with 340 kB of parameters each way measured 2.6 ms, against 5.5 ms through
``Actor`` and ~11 ms for a ``client.submit`` round trip.

``actor_execute`` is a worker handler, not public API. It was checked against
the ``distributed`` versions in :data:`CHECKED_DISTRIBUTED`; a test pins that
range, so an upgrade past it is noticed. If the handler is missing or its
signature or reply changes, calls fall back to the public ``distributed.Actor``
proxy (slower, same results) and a warning says so once.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import distributed
from distributed.protocol import to_serialize

try:  # not public API either: should it move, calls still go through, uncounted (wire_measured False)
    from distributed.core import send_recv
except ImportError:  # pragma: no cover
    send_recv = None

from nnpipe.distributed.wire import WireCounter, tcp_totals

log = logging.getLogger("nnpipe.distributed")

# [lowest, highest) ``distributed`` release the direct call was checked against.
CHECKED_DISTRIBUTED = ("2024.1.0", "2027.0.0")
_HANDLER_ARGS = {"actor", "function", "args", "kwargs"}


class WorkerLost(Exception):
    """A trainer's worker stopped answering."""


def direct_path_available() -> bool:
    """True when the worker has ``actor_execute`` with the arguments this module sends."""
    handler = getattr(distributed.Worker, "actor_execute", None)
    if handler is None:
        return False
    try:
        return _HANDLER_ARGS <= set(inspect.signature(handler).parameters)
    except (TypeError, ValueError):
        return False


_direct = {"ok": direct_path_available(), "warned": False}


def _give_up_direct(reason: str) -> None:
    _direct["ok"] = False
    if not _direct["warned"]:
        _direct["warned"] = True
        log.warning("direct actor calls unavailable with distributed %s (%s); using distributed.Actor",
                    distributed.__version__, reason)


async def call_actor(client: distributed.Client, address: str, key: str, cls: type, method: str, args: tuple,
                     inline: bool = False, counter: WireCounter | None = None) -> Any:
    """``actor.method(*args)`` on the actor ``key`` at ``address``; runs on the client's event loop.

    ``inline`` runs the method on the worker's event loop, skipping a thread
    hop: only for calls that take milliseconds, so the worker's heartbeats
    keep going (direct path only). Raises :class:`WorkerLost` when the worker
    is gone or no longer holds the actor; the method's own errors propagate.
    With ``counter`` (direct path), the call's bytes on the wire are added to it.
    """
    if not _direct["ok"]:
        if not _direct["warned"]:
            _give_up_direct("no actor_execute handler with the expected arguments")
        return await _call_public(client, address, key, cls, method, args)
    try:
        msg = await _counted_call(client, address, counter, function=method, actor=key,
                                  args=[to_serialize(a) for a in args],
                                  kwargs={"separate_thread": False} if inline else {})
    except OSError as exc:  # CommClosedError is an OSError
        raise WorkerLost(f"worker {address} unreachable: {exc!r}") from exc
    except KeyError as exc:  # the worker restarted and no longer has this actor
        raise WorkerLost(f"actor {key} gone from {address}: {exc!r}") from exc
    if not isinstance(msg, dict) or "status" not in msg:
        _give_up_direct(f"unexpected reply {type(msg).__name__}")
        return await _call_public(client, address, key, cls, method, args)
    if msg["status"] != "OK":
        exc = msg["exception"]
        if isinstance(exc, RuntimeError) and "after shutdown" in str(exc):
            # The worker is closing (its executor already shut down): as good as lost.
            raise WorkerLost(f"worker {address} is shutting down: {exc!r}") from exc
        raise exc
    return msg["result"]


async def _counted_call(client: distributed.Client, address: str, counter: WireCounter | None, **msg: Any) -> Any:
    """``client.rpc(address).actor_execute(**msg)``, reading the connection's byte counts around it.

    The same exchange the pooled rpc makes (a pooled comm, ``send_recv``, the
    comm back to the pool); holding the comm ourselves is what lets the
    kernel's counts be read for exactly this call.
    """
    if counter is None or send_recv is None:
        reply = await client.rpc(address).actor_execute(**msg)
        if counter is not None:
            counter.add(None, None)  # a call made, its bytes unknown
        return reply
    pool = client.rpc
    comm = await pool.connect(address)
    before = tcp_totals(comm)
    try:
        reply = await send_recv(comm=comm, op="actor_execute", serializers=pool.serializers,
                                deserializers=pool.deserializers, **msg)
        counter.add(before, tcp_totals(comm))  # before the comm goes back to the pool: only this call used it
        return reply
    finally:  # a failed call counts nothing: its worker is lost and the call is made again elsewhere
        pool.reuse(address, comm)


async def _call_public(client: distributed.Client, address: str, key: str, cls: type, method: str,
                       args: tuple) -> Any:
    actor = distributed.Actor(cls, address, key)
    try:
        return await getattr(actor, method)(*args)
    except OSError as exc:
        raise WorkerLost(f"worker {address} unreachable: {exc!r}") from exc
    except KeyError as exc:
        raise WorkerLost(f"actor {key} gone from {address}: {exc!r}") from exc
