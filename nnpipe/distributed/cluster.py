"""Connecting to a Dask cluster, or starting a local one for the length of a call.

:func:`connect` is the one way in, shared by training and by the Prefect flows
so that a flow and the training it runs use the same cluster. Its rule: use
the ``client`` given; else the ``address``; else ``DASK_SCHEDULER_ADDRESS``;
else start a :class:`distributed.LocalCluster` of ``workers`` processes with
one thread each and BLAS pinned to one thread, and close it on exit. A cluster
this module did not start is never closed.

TLS is configuration, as everywhere in Dask: a ``tls://`` scheduler address
is reached with the certificates of ``distributed.comm.tls.*`` (e.g.
``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``, ``..._CLIENT__CERT``,
``..._CLIENT__KEY``), or with an explicit ``security=``. With
``distributed.comm.require-encryption: true`` the local cluster nnpipe
starts listens on ``tls://`` too, with the configured certificates or, if
none, throwaway ones made for that cluster (``Security.temporary()``); for
as long as it runs they are this process's client certificates, so the flow
and training reach it by address like any other cluster.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from typing import Iterator

import dask
from distributed import Client, LocalCluster
from distributed.security import Security

log = logging.getLogger("nnpipe.distributed")

# Workers are one-thread processes: a BLAS pool per worker would oversubscribe
# the cores and make every step slower, not faster.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def encryption_required() -> bool:
    """Dask's ``distributed.comm.require-encryption`` setting."""
    return bool(dask.config.get("distributed.comm.require-encryption", False))


def local_security() -> Security | None:
    """TLS for a local cluster when encryption is required: the configured certificates, else temporary ones."""
    if not encryption_required():
        return None
    configured = Security()
    if configured.tls_ca_file and configured.tls_scheduler_cert and configured.tls_worker_cert:
        return configured
    return Security.temporary()


def start_local_cluster(workers: int, security: Security | None = None) -> LocalCluster:
    """A local cluster of ``workers`` single-threaded worker processes (on ``tls://`` with ``security``).

    The dashboard takes a free port (``:0``) so that parallel runs never clash.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    tls = {} if security is None else {"security": security, "protocol": "tls://", "host": "127.0.0.1"}
    # Ctrl-C in a terminal reaches the worker processes too; the driver handles it (see .interrupts)
    preload = [*(dask.config.get("distributed.worker.preload", None) or []), "nnpipe.distributed.interrupts"]
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        env=dict(SINGLE_THREAD_ENV),
        dashboard_address=":0",
        preload=preload,
        **tls,
    )


def _as_client_config(security: Security) -> dict[str, object]:
    """Dask config entries that make ``Client(address)`` in this process use ``security``'s certificates."""
    return {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": security.tls_ca_file,
        "distributed.comm.tls.client.cert": security.tls_client_cert,
        "distributed.comm.tls.client.key": security.tls_client_key,
    }


def _log_dashboard(client: Client, how: str) -> None:
    link = None
    try:
        link = client.dashboard_link
    except Exception:  # no dashboard (bokeh missing) is not an error for training
        pass
    log.info("dask cluster (%s) at %s; dashboard: %s", how, client.scheduler.address, link or "not available")


@contextmanager
def connect(address: str | None = None, client: Client | None = None, workers: int = 2,
            security: Security | None = None) -> Iterator[Client]:
    """A Dask client for the duration of a ``with`` block.

    Parameters
    ----------
    address : str, optional
        Scheduler address (``tcp://host:port``); defaults to ``DASK_SCHEDULER_ADDRESS``.
    client : distributed.Client, optional
        An existing client: yielded as is and left open.
    workers : int
        Size of the local cluster started when neither is given.
    security : distributed.Security, optional
        TLS certificates; default: Dask's configuration (``distributed.comm.tls.*``).

    Yields
    ------
    distributed.Client
    """
    if client is not None:
        yield client
        return
    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address:
        c = Client(address, security=security)
        _log_dashboard(c, f"existing, {address}")
        try:
            yield c
        finally:
            c.close()  # our connection only; the cluster keeps running
        return
    security = security or local_security()
    cluster = start_local_cluster(workers, security)
    try:
        with dask.config.set(_as_client_config(security) if security is not None else {}):
            c = Client(cluster, security=security)
            try:
                _log_dashboard(c, f"local, {workers} worker processes started for this run")
                yield c
            finally:
                c.close()
    finally:
        cluster.close()


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError (one line) unless a scheduler listens at ``address`` within ``timeout`` s.

    A TCP connect only (also for ``tls://``, before any handshake): it tells a
    wrong or dead address in milliseconds, where ``Client(address)`` waits for
    its full connect timeout.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address, strict=False)
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"Dask scheduler address {address!r} is not host:port (e.g. tcp://10.0.0.5:8786): {exc}") from None
    if scheme not in ("tcp", "tls", "ws", "wss"):
        return  # inproc:// and others: nothing to probe from here
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        why = "no answer within %g s" % timeout if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConnectionError(f"Dask scheduler {address} is not reachable: {why}") from None


def worker_addresses(client: Client) -> list[str]:
    """Addresses of the workers the scheduler currently knows, sorted for determinism."""
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


def wait_for_workers(client: Client, n: int, timeout: float = 60.0) -> list[str]:
    """Wait until at least ``n`` workers have registered (or ``timeout`` s), then list them.

    A client handed over right after its cluster started may see no workers
    yet; this waits for them (saying so), continues with fewer after the
    timeout, and fails with a plain message if none came.
    """
    import time

    deadline = time.monotonic() + timeout
    said = False
    while True:
        have = worker_addresses(client)
        if len(have) >= n:
            return have
        if time.monotonic() >= deadline:
            break
        if not said:
            log.info("waiting up to %.0f s for %d Dask worker(s) at %s (%d registered so far)", timeout, n,
                     client.scheduler.address, len(have))
            said = True
        time.sleep(0.2)
    if not have:
        raise RuntimeError(f"no Dask workers registered at {client.scheduler.address} within {timeout:.0f} s; start "
                           f"some (`dask worker {client.scheduler.address}`) or pass a client whose cluster has workers")
    log.warning("asked for %d workers, %d registered after %.0f s; continuing with those", n, len(have), timeout)
    return have
