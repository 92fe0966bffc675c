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


@dataclass(frozen=True)
class Scheduled:
    """One deployment: a name, a cron schedule and the pipeline settings it binds."""

    name: str
    cron: str
    settings: dict[str, Any] = field(default_factory=dict)
    description: str = ""

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

    out = []
    for d in chosen:
        schedule: dict[str, Any] = {"interval": timedelta(seconds=interval)} if interval else {"cron": d.cron}
        out.append(training_flow.to_deployment(name=d.name, parameters=d.parameters(tracking_uri),
                                               description=d.description, tags=["nnpipe", "scheduled"], **schedule))
    return out


def serve_deployments(chosen: list[Scheduled], interval: float | None = None, tracking_uri: str | None = None,
                      echo: Callable[[str], None] = print) -> None:
    """Serve ``chosen`` until interrupted.

    Prefect schedules runs only on a real server (an ephemeral API has no
    scheduler), so without ``PREFECT_API_URL`` this uses the user's local
    server (:mod:`nnpipe.deploy.local_prefect`), started if none is running.
    """
    from prefect import serve
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
                echo(f"serving {d.name}: {f'every {interval:g}s' if interval else d.cron}")
            serve(*deployments, print_starting_message=False, limit=1)  # one training at a time per store
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


def deploy_to_pool(pool: str, chosen: list[Scheduled] | None = None, source: Path = REPO,
                   tracking_uri: str | None = None) -> list[str]:
    """Register ``chosen`` with the server at ``PREFECT_API_URL`` for a process work pool; returns deployment ids.

    The flow is loaded from ``source`` (a directory the worker can read; for a
    remote worker use a git URL) so no image is built.
    """
    from nnpipe.flows.pipeline import training_flow

    ids = []
    remote = training_flow.from_source(source=str(source), entrypoint=ENTRYPOINT)
    for d in chosen if chosen is not None else DEPLOYMENTS:
        ids.append(str(remote.deploy(name=d.name, work_pool_name=pool, cron=d.cron, parameters=d.parameters(tracking_uri),
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
        print(f"{d.name}: {dep_id} ({d.cron})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
