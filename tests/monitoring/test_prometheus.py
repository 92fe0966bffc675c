"""The driver's Prometheus endpoint answers mid-run with the training's live metrics."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import nnpipe
from nnpipe.config import TrainConfig
from nnpipe.data import load_dataset, split_and_scale
from nnpipe.tracking.prometheus import ENV_PORT, TrainingExporter, port_from_env


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_endpoint_answers_mid_run():
    splits = split_and_scale(load_dataset("iris"), test_size=0.2, val_size=0.2, seed=0)
    scraped = {}
    with TrainingExporter(0, info={"run": "prom-test", "mode": "single"}) as exporter:
        def scrape_at_epoch_3(epoch: int, logs: dict) -> None:
            if epoch == 2:
                scraped.update(scrape(exporter.url))

        nnpipe.train(splits, TrainConfig(epochs=6, batch_size=16), hidden=(8,),
                     callbacks=[exporter.callback, scrape_at_epoch_3])
    assert scraped, "the endpoint was not scraped during training"
    assert scraped[("nnpipe_epoch", ())] == 3 and scraped[("nnpipe_epochs_total", ())] == 3
    assert scraped[("nnpipe_train_loss", ())] > 0 and scraped[("nnpipe_samples_per_second", ())] > 0
    assert 0 <= scraped[("nnpipe_validation", (("metric", "accuracy"),))] <= 1
    assert scraped[("nnpipe_validation", (("metric", "loss"),))] > 0
    assert scraped[("nnpipe_epoch_latency_seconds", ())] > 0
    assert scraped[("nnpipe_workers_live", ())] == 1 and scraped[("nnpipe_workers_lost", ())] == 0
    assert scraped[("nnpipe_training_info", (("mode", "single"), ("run", "prom-test")))] == 1
    # closed with the training: nothing listens any more
    with pytest.raises(OSError):
        scrape(exporter.url)


def test_port_from_env_quotes_a_bad_value(monkeypatch):
    monkeypatch.delenv(ENV_PORT, raising=False)
    assert port_from_env() is None
    monkeypatch.setenv(ENV_PORT, "0")
    assert port_from_env() == 0
    monkeypatch.setenv(ENV_PORT, "nine")
    with pytest.raises(ValueError, match="NNPIPE_METRICS_PORT must be a port number .*got 'nine'"):
        port_from_env()
