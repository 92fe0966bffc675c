"""The Dask dashboard works (bokeh) and shows training rounds as they happen."""

from __future__ import annotations

import time
import urllib.request

import pytest

from nnpipe.config import TrainConfig
from nnpipe.core.problem import Problem
from nnpipe.distributed import fit_distributed
from nnpipe.distributed.progress import PREFIX, TOPIC, DashboardProgress
from tests.browser import browser, shot  # noqa: F401  (browser is a fixture)
from tests.distributed.helpers import small_net

pytestmark = pytest.mark.cluster


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200
        return r.read().decode()


def test_dashboard_status_page_loads_with_bokeh(client):
    page = get(client.dashboard_link)
    assert "Dask needs bokeh" not in page
    assert "bokeh" in page.lower() and "Task Stream" in page


def test_every_epoch_shows_on_the_dashboard(client, data):
    X, y = data
    spec, theta0 = small_net("float32")
    seen = []
    with DashboardProgress(client.scheduler.address, label="dashboard-test") as progress:
        cfg = TrainConfig(mode="local-sgd", workers=2, epochs=3, batch_size=50, sync_every=5, dtype="float32")
        fit_distributed(Problem(spec, theta0, X, y), cfg, callbacks=[progress, lambda e, logs: seen.append(dict(logs))],
                        client=client)
        # counted while the progress still holds the round tasks (closing it releases them)
        # one task per epoch, grouped as "nnpipe-epoch" in the task stream and progress bars;
        # the dashboard server's own /metrics counts them by prefix
        metrics_url = client.dashboard_link.replace("/status", "/metrics")
        deadline = time.monotonic() + 30
        done = 0.0
        while time.monotonic() < deadline:
            done = sum(float(x.rsplit(" ", 1)[1]) for x in get(metrics_url).splitlines()
                       if x.startswith("dask_scheduler_prefix_state_totals")
                       and f'task_prefix_name="{PREFIX}"' in x and 'state="memory"' in x)
            if done >= len(seen):
                break
            time.sleep(0.5)
        assert done >= len(seen), f"{done} {PREFIX} tasks counted at {metrics_url}, expected {len(seen)}"
    # the callbacks after it get the worker counts
    assert seen and all(s["dist/workers_live"] == 2 and s["dist/workers_lost"] == 0 for s in seen)
    # one scheduler event per epoch, with the epoch's logs
    deadline = time.monotonic() + 30
    events: list = []
    while len(events) < len(seen) and time.monotonic() < deadline:  # log_event does not wait for the scheduler
        events = [e for _, e in client.get_events(TOPIC) if e.get("label") == "dashboard-test"]
        time.sleep(0.2)
    assert [e["step"] for e in events] == list(range(1, len(seen) + 1))
    assert all("train/loss" in e for e in events)


def test_status_page_renders_the_rounds_in_a_browser(client, data, browser, tmp_path):
    """The page a user opens while training: bokeh draws it, the rounds so far are in its task stream and progress."""
    from selenium.webdriver.common.by import By

    X, y = data
    spec, theta0 = small_net("float32")
    browser.get(client.dashboard_link)
    deadline = time.monotonic() + 60
    roots = []
    while not roots and time.monotonic() < deadline:
        roots = browser.find_elements(By.CSS_SELECTOR, "[data-root-id], .bk-Root, .bk-root")
        time.sleep(0.5)
    assert roots, f"bokeh drew nothing at {client.dashboard_link}"
    shots = []

    def screenshot_mid_run(epoch: int, logs: dict) -> None:
        if epoch == 2:
            time.sleep(2)  # the page refreshes its plots about once a second
            shots.append(shot(browser, tmp_path, "dask-status"))

    with DashboardProgress(client.scheduler.address, label="browser") as progress:
        cfg = TrainConfig(mode="local-sgd", workers=2, epochs=5, batch_size=50, sync_every=5, dtype="float32")
        fit_distributed(Problem(spec, theta0, X, y), cfg, callbacks=[progress, screenshot_mid_run], client=client)
    assert shots and shots[0].stat().st_size > 10_000
