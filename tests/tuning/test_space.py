"""Search spaces, settings and seeded sampling: no cluster, no store."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from nnpipe.config import TrainConfig
from nnpipe.tuning import SpaceError, TuneSettings, parse_space
from nnpipe.tuning.study import make_sampler


def test_entries_become_distributions_and_configs():
    space = parse_space(["lr=loguniform(1e-4,1e-1)", "hidden=choice(32;64,32;128,64)", "batch_size=int(16,256,log)",
                         "optimizer=choice(adam,sgd)", "l2=0,0.001"], base=TrainConfig())
    d = space.distributions
    assert d["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert d["batch_size"] == optuna.distributions.IntDistribution(16, 256, log=True)
    assert d["hidden"].choices == ("32", "64,32", "128,64") and d["l2"].choices == (0, 0.001)
    train, hidden, act = space.apply(TrainConfig(), [8], "relu",
                                     {"lr": 0.01, "hidden": "64,32", "batch_size": 20, "optimizer": "sgd", "l2": 0})
    assert (train.lr, train.batch_size, train.optimizer, hidden, act) == (0.01, 20, "sgd", [64, 32], "relu")
    assert parse_space(["hidden=int(16,256)"]).params[0].decode(40) == [40]


@pytest.mark.parametrize("entry, says", [
    ("lr=loguniform(1e-1,1e-4)", "low must be < high"),
    ("lr=uniform(-1,1)", "config field 'lr'"),
    ("width=choice(1,2)", "not a searchable field"),
    ("optimizer=choice(adam,bogus)", "'bogus'"),
    ("lr", "expected NAME=EXPR"),
    ("lr=loguniform(0,1)", "log scale needs low > 0"),
    ("batch_size=int(1.5,3)", "must be integers"),
    ("lr=gauss(1,2)", "unknown function 'gauss'"),
    ("hidden=choice(0;32)", "layer sizes"),
    ("epochs=choice(0,3)", "config field 'epochs'"),
])
def test_bad_entries_are_quoted(entry: str, says: str):
    with pytest.raises(SpaceError) as err:
        parse_space([entry], base=TrainConfig())
    message = str(err.value)
    assert message.startswith(repr(entry)) and says in message and "\n" not in message


def test_grid_needs_choices_and_settings_are_checked():
    with pytest.raises(SpaceError, match="'lr=loguniform"):
        parse_space(["lr=loguniform(1e-4,1e-1)", "optimizer=adam,sgd"]).grid()
    assert parse_space(["optimizer=adam,sgd"]).grid() == {"optimizer": ["adam", "sgd"]}
    s = TuneSettings.from_table({"trials": 4, "space": {"lr": "loguniform(1e-4,1e-1)"}}, "f.toml: [tune]")
    assert s.space == ["lr=loguniform(1e-4,1e-1)"] and s.override(trials=9, space=[]).trials == 9
    with pytest.raises(ValueError, match=r"f.toml: \[tune\]: unknown key"):
        TuneSettings.from_table({"trails": 4}, "f.toml: [tune]")
    with pytest.raises(ValueError, match="'pruner'"):
        TuneSettings(pruner="asha")


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_fixed_seed_gives_the_same_configurations(sampler: str):
    """The driver's sampling path (space.suggest on study.ask) with a seeded sampler, sequentially."""
    space = parse_space(["lr=loguniform(1e-4,1e-1)", "hidden=choice(32;64,32)", "batch_size=int(16,256,log)"])

    def sequence(seed: int) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, seed))
        out = []
        for _ in range(14):  # past TPE's 10 random start-up trials
            trial = study.ask()
            params = space.suggest(trial)
            study.tell(trial, -abs(math.log10(params["lr"]) + 2) - params["batch_size"] / 1000)
            out.append(params)
        return out

    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)


def test_cli_bad_space_is_one_line_and_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from nnpipe.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["tune", "--space", "lr=loguniform(1e-1,1e-4)", "--trials", "2"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: 'lr=loguniform(1e-1,1e-4)': low must be < high, got 0.1 and 0.0001"
    cfg = tmp_path / "tune.toml"
    cfg.write_text('epochs = 5\n[tune]\ntrials = 3\n[tune.space]\noptimizer = "choice(adam,adamw)"\n')
    result = CliRunner().invoke(app, ["tune", "--config", str(cfg)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "'optimizer=choice(adam,adamw)'" in result.output and "'adamw'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tune.toml"]  # no MLflow store, no study


def test_cli_refuses_a_large_source_saying_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pandas as pd

    from nnpipe.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lake").mkdir()
    for i in range(2):
        pd.DataFrame({"a": [0.0, 1.0, 2.0], "label": [0, 1, i]}).to_parquet(tmp_path / "lake" / f"part-{i}.parquet")
    result = CliRunner().invoke(app, ["tune", "--dataset", "lake", "--target", "label",
                                      "--space", "lr=loguniform(1e-4,1e-1)"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: lake: tuning trains every trial on rows held in memory")
    assert "nnpipe train --dataset lake" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lake"]  # no MLflow store, no study


def test_a_resumed_study_names_the_base_settings_that_changed():
    from nnpipe.tuning.api import _base, _base_changes

    first = _base(TrainConfig(epochs=40, seed=1), [16], "relu")
    assert _base_changes(first, _base(TrainConfig(epochs=40, seed=2), [16], "relu")) == []  # a reseed is fine
    assert _base_changes(first, _base(TrainConfig(epochs=100), [32], "relu")) == ["epochs=40 -> 100",
                                                                                  "hidden=[16] -> [32]"]


def test_a_resume_takes_the_stored_settings_and_the_same_space_in_any_spelling():
    from nnpipe.tuning.resume import resolve

    stored = {"nnpipe.space": ["lr=choice(0.01,0.001)", "optimizer=choice(adam,sgd)"], "nnpipe.sampler": "random",
              "nnpipe.pruner": "hyperband", "nnpipe.metric": "val/loss"}
    assert resolve("s", stored, space=[], sampler=None, pruner=None, metric=None) == {
        "space": stored["nnpipe.space"], "sampler": "random", "pruner": "hyperband", "metric": "val/loss"}
    same = resolve("s", stored, space=["optimizer=adam,sgd", "lr=0.01,0.001"], sampler="tpe", pruner=None, metric=None)
    assert same["space"] == ["optimizer=adam,sgd", "lr=0.01,0.001"] and same["sampler"] == "tpe"
    with pytest.raises(SpaceError, match=r"\('lr=0.01,0.1' where the study has 'lr=choice\(0.01,0.001\)'\)"):
        resolve("s", stored, space=["lr=0.01,0.1", "optimizer=adam,sgd"], sampler=None, pruner=None, metric=None)
    assert resolve(None, None, space=["lr=0.1"], sampler=None, pruner=None, metric=None)["sampler"] == "tpe"


def test_tune_refuses_an_unknown_setting_before_anything_starts(tmp_path, monkeypatch):
    from nnpipe.tuning import tune

    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['trialz'\]; settings are .*'trials'"):
        tune("iris", ["lr=loguniform(1e-4,1e-1)"], trialz=3)
    assert list(tmp_path.iterdir()) == []  # no store, no study, no run
