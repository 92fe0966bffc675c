"""Scheduled deployments of the training pipeline: each binds its parameters and a cron schedule.

Serve them locally (no work pool, no infrastructure)::

    nnpipe schedule                    # all of DEPLOYMENTS, until Ctrl-C
    nnpipe schedule -d nightly-iris --interval 60

or register them with a Prefect server and a process work pool, to be run by
``prefect worker start --pool nnpipe-local`` (see ``deploy/stack.py``)::

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m nnpipe.deploy.deployments --pool nnpipe-local
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from nnpipe.flows.config import build_config

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/pipeline.py:training_flow"


# Overlaps: each deployment runs at most ``concurrency`` flow runs at once (1 by
# default). A run that comes due while the previous one still trains is
# cancelled (``CANCEL_NEW``), not queued: the next scheduled run retrains on
# newer data anyway, and a queue behind a slow training would only pile up
# "Late" runs. Runs of *different* deployments may overlap; their promotion
# gates take the store lock one after the other. Set ``overlap="ENQUEUE"`` on a
# deployment to queue instead.
OVERLAP_POLICIES = ("CANCEL_NEW", "ENQUEUE")


@dataclass(frozen=True)
class Scheduled:
    """One deployment: a name, a cron schedule (in ``timezone``) and the pipeline settings it binds.

    ``concurrency`` and ``overlap`` set the deployment's concurrency limit and
    what happens to a run that would exceed it (see ``OVERLAP_POLICIES``).
    """

    name: str
    cron: str
    settings: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    timezone: str = "UTC"
    concurrency: int = 1
    overlap: str = "CANCEL_NEW"

    def __post_init__(self) -> None:
        if self.overlap not in OVERLAP_POLICIES:
            raise ValueError(f"deployment {self.name!r}: overlap must be one of {OVERLAP_POLICIES}, got {self.overlap!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"deployment {self.name!r}: concurrency must be an integer >= 1, got {self.concurrency!r}")

    def schedule(self, interval: float | None = None) -> Any:
        """The Prefect schedule: the cron in its timezone, or every ``interval`` seconds."""
        from prefect.schedules import Cron, Interval

        return Interval(timedelta(seconds=interval)) if interval else Cron(self.cron, timezone=self.timezone)

    @property
    def concurrency_limit(self) -> dict[str, Any]:
        """As ``prefect.yaml`` writes it: ``{"limit": 1, "collision_strategy": "CANCEL_NEW"}``."""
        return {"limit": self.concurrency, "collision_strategy": self.overlap}

    def concurrency_config(self) -> Any:
        """The same, as Prefect's Python API takes it."""
        from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

        return ConcurrencyLimitConfig(limit=self.concurrency, collision_strategy=ConcurrencyLimitStrategy(self.overlap))

    def parameters(self, tracking_uri: str | None = None) -> dict[str, Any]:
        """The flow parameters, validated now so that a bad definition fails at deploy time, not at 2 a.m."""
        from nnpipe.redact import has_credentials, redact

        over = dict(self.settings)
        if tracking_uri:
            if has_credentials(tracking_uri):  # Prefect stores parameters in clear, and shows them in its UI
                raise ValueError(
                    f"tracking URI {redact(tracking_uri)} carries credentials, which would be stored as a Prefect "
                    "parameter; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD on the worker instead"
                )
            over["tracking_uri"] = tracking_uri
        return {"config": build_config(overrides=over).model_dump(mode="json")}


# Nightly retraining per dataset; times are UTC, staggered so they don't share the cluster.
DEPLOYMENTS: list[Scheduled] = [
    Scheduled("nightly-iris", "0 2 * * *", {"dataset": "iris", "epochs": 40},
              "Retrain the iris classifier every night."),
    Scheduled("nightly-wine", "20 2 * * *", {"dataset": "wine", "epochs": 60},
              "Retrain the wine classifier every night."),
    Scheduled("nightly-breast-cancer-sync", "40 2 * * *",
              {"dataset": "breast_cancer", "epochs": 30, "mode": "sync", "workers": 2},
              "Retrain the breast-cancer classifier on the Dask cluster (synchronous data parallel)."),
]


def runner_deployments(chosen: list[Scheduled], interval: float | None = None, tracking_uri: str | None = None) -> list:
    """``RunnerDeployment`` objects for ``flow.serve``/``prefect.serve``; ``interval`` replaces the cron schedule."""
    from nnpipe.flows.pipeline import training_flow

    return [training_flow.to_deployment(name=d.name, parameters=d.parameters(tracking_uri), description=d.description,
                                        tags=["nnpipe", "scheduled"], schedule=d.schedule(interval),
                                        concurrency_limit=d.concurrency_config())
            for d in chosen]


def table(chosen: list[Scheduled], interval: float | None = None) -> list[str]:
    """``nnpipe schedule --list``: one compact line per deployment (name, schedule, timezone, what it trains)."""
    rows = [("deployment", "schedule", "timezone", "runs at once", "trains")]
    for d in chosen:
        cfg = build_config(overrides=d.settings)
        what = f"{cfg.dataset}, {cfg.train.mode}" + (f" x{cfg.train.workers}" if cfg.distributed else "")
        what += f", {cfg.train.epochs} epochs"
        rows.append((d.name, d.cron if interval is None else f"every {interval:g}s", d.timezone,
                     f"{d.concurrency} ({d.overlap.lower().replace('_', '-')})", what))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def serve_deployments(chosen: list[Scheduled], interval: float | None = None, tracking_uri: str | None = None,
                      echo: Callable[[str], None] = print) -> None:
    """Serve ``chosen`` until interrupted.

    Prefect schedules runs only on a real server (an ephemeral API has no
    scheduler), so without ``PREFECT_API_URL`` this uses the user's local
    server (:mod:`nnpipe.deploy.local_prefect`), started if none is running.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

    api = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if not api:
        from nnpipe.deploy.local_prefect import ensure_server

        api = ensure_server(echo=echo)["api"]
    echo(f"Prefect API: {api}")
    # Flow runs are subprocesses of serve(): they read the API from the environment.
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api
    try:
        poll = min(PREFECT_RUNNER_POLL_FREQUENCY.value(), int(interval) if interval else 10)
        with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_RUNNER_POLL_FREQUENCY: max(poll, 1)}):
            deployments = runner_deployments(chosen, interval, tracking_uri)
            for d, dep in zip(chosen, deployments):
                echo(f"serving {d.name}: {f'every {interval:g}s' if interval else f'{d.cron} ({d.timezone})'}")
            # each deployment limits itself (Scheduled.concurrency); the runner takes one run per deployment
            stopped = serve_until_signal(deployments, limit=len(deployments))
            echo(f"{stopped}: stopping (runs in progress are cancelled) ...")
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


def serve_until_signal(deployments: list, limit: int | None = None, grace: float = 15.0) -> str:
    """Serve ``deployments`` with a Prefect ``Runner`` until the first SIGINT (Ctrl-C) or SIGTERM.

    ``prefect.serve`` needs a second Ctrl-C when a first one lands mid-poll,
    and its SIGTERM handler exits the process without the caller's cleanup;
    here either signal stops the runner (pausing the schedules, bounded by
    ``grace`` seconds) and returns the signal's name.
    """
    import asyncio
    import signal

    from prefect.runner import Runner

    runner = Runner(pause_on_shutdown=True, limit=limit)
    for dep in deployments:
        runner.add_deployment(dep)

    async def main() -> str:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[str] = loop.create_future()

        def on_signal(name: str) -> None:
            if not got.done():
                got.set_result(name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
        # Runner.start installs its own SIGTERM handler with signal.signal; route it here too.
        runner.handle_sigterm = lambda *_: loop.call_soon_threadsafe(on_signal, "SIGTERM")
        serving = asyncio.ensure_future(runner.start())
        done, _ = await asyncio.wait({serving, got}, return_when=asyncio.FIRST_COMPLETED)
        if serving in done:
            serving.result()  # the runner ended by itself: raise what ended it
            return "runner stopped"
        if runner.started:
            try:
                await asyncio.wait_for(runner.astop(), grace)
            except Exception:  # stopping is best effort; cancelling below ends it regardless
                pass
        try:
            await asyncio.wait_for(serving, grace)
        except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
            serving.cancel()
        return got.result()

    return asyncio.run(main())


def deploy_to_pool(pool: str, chosen: list[Scheduled] | None = None, source: Path = REPO,
                   tracking_uri: str | None = None, interval: float | None = None) -> list[str]:
    """Register ``chosen`` with the server at ``PREFECT_API_URL`` for a process work pool; returns deployment ids.

    The flow is loaded from ``source`` (a directory the worker can read; for a
    remote worker use a git URL) so no image is built. ``interval``: every so
    many seconds instead of the cron schedule (a drill, or a test).
    """
    from nnpipe.flows.pipeline import training_flow

    ids = []
    remote = training_flow.from_source(source=str(source), entrypoint=ENTRYPOINT)
    for d in chosen if chosen is not None else DEPLOYMENTS:
        ids.append(str(remote.deploy(name=d.name, work_pool_name=pool, schedule=d.schedule(interval),
                                     concurrency_limit=d.concurrency_config(), parameters=d.parameters(tracking_uri),
                                     description=d.description, tags=["nnpipe", "scheduled"], print_next_steps=False,
                                     build=False, push=False)))
    return ids


PREFECT_YAML = REPO / "deploy" / "prefect.yaml"
_YAML_HEADER = """\
# GENERATED from deploy/deployments.py (DEPLOYMENTS) by
#   python -m nnpipe.deploy.deployments --write-prefect-yaml
# Edit the Python definitions, not this file; a test checks that the two agree.
# `prefect deploy --prefect-file deploy/prefect.yaml --all` from the repository root registers them with a work pool.
# Local/process pool: run `python -m nnpipe.deploy.stack up`, or `prefect worker start --pool nnpipe-local`.
# Kubernetes pool: set work_pool.name to nnpipe-k8s and job_variables.image to your nnpipe image.
"""


def prefect_yaml(chosen: list[Scheduled] | None = None, pool: str = "nnpipe-local") -> str:
    """``prefect.yaml`` text for ``prefect deploy``: the same deployments, schedules and parameters as DEPLOYMENTS."""
    import yaml

    from nnpipe.flows.config import split_train_fields

    deployments = []
    for d in chosen if chosen is not None else DEPLOYMENTS:
        schedule: dict[str, Any] = {"cron": d.cron, "timezone": getattr(d, "timezone", "UTC")}
        entry: dict[str, Any] = {
            "name": d.name, "description": d.description, "entrypoint": ENTRYPOINT, "tags": ["nnpipe", "scheduled"],
            "schedules": [schedule], "parameters": {"config": split_train_fields(dict(d.settings))},
            "work_pool": {"name": pool, "job_variables": {"env": {
                "MLFLOW_TRACKING_URI": "{{ $MLFLOW_TRACKING_URI }}",
                "DASK_SCHEDULER_ADDRESS": "{{ $DASK_SCHEDULER_ADDRESS }}"}}},
        }
        limit = getattr(d, "concurrency_limit", None)
        if limit is not None:
            entry["concurrency_limit"] = limit
        deployments.append(entry)
    doc = {
        "name": "nnpipe", "prefect-version": "3",  # the major version the flows are written for
        # SET NNPIPE_HOME: where the worker finds this checkout (or replace with a git_clone step).
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $NNPIPE_HOME }}"}}],
        "deployments": deployments,
    }
    return _YAML_HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnpipe.deploy.deployments",
                                     description="Register the scheduled deployments with a Prefect server's work pool.")
    parser.add_argument("--pool", default="nnpipe-local", help="process work pool name")
    parser.add_argument("--name", action="append", default=[], help="only this deployment (repeatable)")
    parser.add_argument("--source", default=str(REPO), help="directory or git URL the worker loads the flow from")
    parser.add_argument("--write-prefect-yaml", action="store_true",
                        help=f"write {PREFECT_YAML.relative_to(REPO)} from these definitions and exit")
    args = parser.parse_args(argv)
    if args.write_prefect_yaml:
        PREFECT_YAML.write_text(prefect_yaml())
        print(f"wrote {PREFECT_YAML}")
        return 0
    chosen = [d for d in DEPLOYMENTS if not args.name or d.name in args.name]
    for d, dep_id in zip(chosen, deploy_to_pool(args.pool, chosen, Path(args.source) if "://" not in args.source else args.source)):
        print(f"{d.name}: {dep_id} ({d.cron} {d.timezone}, at most {d.concurrency} at once, {d.overlap})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
