"""``nnpipe tune`` (an Optuna study on the cluster) and ``nnpipe sweep`` (the same flow: grid sampler, no pruner).

Both build the pipeline's configuration as ``nnpipe train`` does (file, then
flags), read the study's options from the file's ``[tune]`` table with flags
on top, check the search space, and only then run the Prefect flow, so a bad
entry ends with one line on stderr and creates no run and no study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from nnpipe.cli.common import (
    build_config,
    default_tracking_uri,
    fail,
    parse_hidden,
    prefect_api,
    quiet_console,
    run_flow,
)
from nnpipe.cli.options import (
    BestModelName,
    Parallel,
    Scheduler,
    Study,
    Target,
    TrialDataset,
    TrialWorkers,
    Verbose,
)
from nnpipe.cli.preflight import preflight
from nnpipe.cli.signals import sigterm_as_interrupt


def _settings(config: Optional[Path], flags: dict[str, Any]) -> Any:
    """The ``[tune]`` table of ``config`` (if any) with the flags that were given on top."""
    from nnpipe.flows.config import ConfigError, read_config_file
    from nnpipe.tuning import TuneSettings

    try:
        table = read_config_file(config).get("tune", {}) if config else {}
        return TuneSettings.from_table(table, where=f"{config}: [tune]").override(**flags)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


def _run(cfg: Any, settings: Any, verbose: bool) -> None:
    """Check the space, run the tune flow with one line per finished trial, print the outcome."""
    from nnpipe.flows.progress import trial_listener
    from nnpipe.flows.tune import check_space, tune_flow
    from nnpipe.tuning import SpaceError

    options = {k: v for k, v in settings.to_dict().items() if k not in ("space", "seed")}
    try:
        check_space(cfg, settings.space, **options)
    except (SpaceError, ValueError) as exc:
        fail(str(exc))
    preflight(cfg, default_tracking_uri, fail)  # data, store, scheduler: seconds, before any start
    if not verbose:
        from nnpipe.tuning.study import quiet_optuna

        quiet_optuna()

    def on_trial(r: Any) -> None:
        value = "" if r.value is None else f" {r.value:.4f}"
        note = f"  ({r.reason})" if r.reason and r.state != "COMPLETE" else ""
        typer.echo(f"  trial {r.number:>3} {r.state:<8}{value:>8}  {r.epochs:>4} epochs  {r.params}{note}")

    with sigterm_as_interrupt(), prefect_api(), quiet_console(verbose), trial_listener(on_trial):
        out = run_flow(tune_flow, cfg, settings.space or None, **options, on_interrupt=(
            "the study's run and every open trial run are marked KILLED; the best trial so far is kept: "
            "run the same command (same --study) to resume the study and register it"))
    for note in out["notes"]:
        typer.echo(f"note:        {note}")
    counts = {s: sum(t["state"] == s for t in out["trials"]) for s in ("COMPLETE", "PRUNED", "FAIL")}
    typer.echo(f"study:       {out['study']}{' (resumed)' if out['resumed'] else ''} in {out['storage']} "
               f"(sampler {out['sampler']}, pruner {out['pruner']})")
    typer.echo(f"trials:      {len(out['trials'])} this run: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
               f"{counts['FAIL']} failed; {out['epochs_trained']} epochs in {out['wall_s']:.1f} s")
    typer.echo(f"MLflow run:  {out['parent_run_id']} (the study; one nested run per trial)")
    best, reg = out["best"], out["registered"]
    if best is None:
        typer.echo("best:        no trial completed; nothing registered")
    else:
        typer.echo(f"best:        trial {best['number']} {out['metric']}={best['value']:.4f} {best['params']}")
        if reg is None:
            typer.echo("model:       the best trial's model was not kept (its invocation stopped early); nothing registered")
        else:
            typer.echo(f"model:       {out['model_name']} version {reg['version']}")
            verdict = "promoted to champion" if reg["promoted"] else "not promoted"
            typer.echo(f"promotion:   {verdict}: {reg['decision']}")
    from nnpipe.flows.pipeline import mlflow_ui_command

    typer.echo(f"MLflow UI:   {mlflow_ui_command(out['tracking_uri'])}")
    typer.echo(f"resume:      nnpipe tune --study {out['study']} --trials N")


def register(app: typer.Typer) -> None:
    """Add ``tune`` and ``sweep`` to the ``nnpipe`` app."""

    @app.command()
    def tune(
        space: list[str] = typer.Option([], "--space", metavar="NAME=EXPR", help="A searched field, e.g. 'lr=loguniform(1e-4,1e-1)', 'hidden=choice(32;64,32)', 'batch_size=int(16,256,log)', 'optimizer=choice(adam,sgd)'. Repeatable; or [tune.space] in --config. Omit it to resume a --study with its own space."),
        trials: Optional[int] = typer.Option(None, "--trials", metavar="N", help="New trials to run (default 20; grid: the whole grid). A resumed study adds N more."),
        timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Start no new trial after this long (running ones finish)."),
        sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe (default; a resumed study: its own) | random | grid."),
        pruner: Optional[str] = typer.Option(None, "--pruner", help="median (default; a resumed study: its own) | hyperband | none."),
        parallel: Parallel = None,
        study: Study = None,
        storage: Optional[str] = typer.Option(None, "--storage", metavar="URL", help="Optuna storage: a journal file (default: optuna.log next to the MLflow store) or an RDB URL (sqlite:///optuna.db, postgresql://...)."),
        metric: Optional[str] = typer.Option(None, "--metric", help="Validation metric to optimise (default val/accuracy, or val/loss for regression)."),
        dataset: TrialDataset = None,
        target: Target = None,
        hidden: Optional[str] = typer.Option(None, "--hidden", help="Base hidden layer sizes, e.g. 64,32."),
        optimizer: Optional[str] = typer.Option(None, "--optimizer", help="Base optimizer."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Base learning rate."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epoch budget of every trial."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Base rows per step."),
        workers: TrialWorkers = None,
        seed: Optional[int] = typer.Option(None, "--seed", help="Seeds the split, the trainings and the sampler."),
        model_name: BestModelName = None,
        scheduler: Scheduler = None,
        config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help="TOML or YAML base configuration, with an optional [tune] table."),
        verbose: Verbose = False,
    ) -> None:
        """Search hyperparameters with Optuna: trials in parallel on Dask, pruned mid-training; register and gate the best."""
        overrides = {"dataset": dataset, "target": target, "hidden": parse_hidden(hidden), "optimizer": optimizer,
                     "lr": lr, "epochs": epochs, "batch_size": batch_size, "workers": workers, "seed": seed,
                     "model_name": model_name, "scheduler_address": scheduler}
        cfg = build_config(config, overrides)
        cfg.tracking_uri = default_tracking_uri(cfg.tracking_uri)
        settings = _settings(config, {"space": list(space), "trials": trials, "timeout": timeout, "sampler": sampler,
                                      "pruner": pruner, "parallel": parallel, "study": study, "storage": storage,
                                      "metric": metric})
        _run(cfg, settings, verbose)

    @app.command()
    def sweep(
        grid: list[str] = typer.Option([], "--grid", metavar="NAME=V1,V2", help="A searched field and its values, e.g. lr=0.01,0.001 or hidden=32;64,32. Repeatable."),
        trials: Optional[int] = typer.Option(None, "--trials", metavar="N", help="Run N combinations of the grid (seeded order) instead of all."),
        parallel: Parallel = None,
        study: Study = None,
        dataset: TrialDataset = None,
        target: Target = None,
        workers: TrialWorkers = None,
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per trial."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seeds the split, the trials and the grid's order."),
        model_name: BestModelName = None,
        scheduler: Scheduler = None,
        config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help="TOML or YAML base configuration."),
        verbose: Verbose = False,
    ) -> None:
        """Train every combination of a grid (or N of them) in parallel; register and gate the best.

        The same flow as ``nnpipe tune --sampler grid --pruner none``.
        """
        overrides = {"dataset": dataset, "target": target, "workers": workers, "epochs": epochs, "seed": seed,
                     "model_name": model_name, "scheduler_address": scheduler}
        cfg = build_config(config, overrides)
        cfg.tracking_uri = default_tracking_uri(cfg.tracking_uri)
        if not grid:
            fail("the grid is empty; give at least one --grid NAME=V1,V2")
        from nnpipe.tuning import TuneSettings

        _run(cfg, TuneSettings(space=list(grid), trials=trials, sampler="grid", pruner="none", parallel=parallel,
                               study=study), verbose)
