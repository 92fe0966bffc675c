"""Configuration files written the way users write them: keys in either table, the CLI's own syntax."""

from __future__ import annotations

import pytest

from nnpipe.flows.config import ConfigError, build_config


def _file(tmp_path, text: str):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_pipeline_keys_in_the_train_table_are_taken(tmp_path):
    cfg = build_config(_file(tmp_path, '[train]\nhidden = [16, 8]\nactivation = "tanh"\n'
                                       'model_name = "from-train-table"\nepochs = 3\n'))
    assert (cfg.hidden, cfg.activation, cfg.model_name, cfg.train.epochs) == ([16, 8], "tanh", "from-train-table", 3)


def test_hidden_as_the_cli_writes_it(tmp_path):
    assert build_config(_file(tmp_path, 'hidden = "16,8"\n')).hidden == [16, 8]
    with pytest.raises(ConfigError, match=r"'hidden': expected comma-separated integers like 64,32, got '16,x'"):
        build_config(_file(tmp_path, 'hidden = "16,x"\n'))


def test_a_key_set_in_both_tables_differently_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"'hidden' is set twice, \[4\] at the top level and \[8\] in \[train\]"):
        build_config(_file(tmp_path, 'hidden = [4]\n[train]\nhidden = [8]\n'))


def test_task_classification_and_regression(tmp_path):
    assert build_config(None, {"task": "regression"}).task == "regression"
    assert build_config(None, {"task": "classification"}).task == "classification"
