"""What a user sees in the MLflow UI, in a real browser (headless Chromium) against a real ``mlflow server``.

Skipped, saying why, where Debian's ``chromium`` and ``chromium-driver`` are not
installed (``.ci/run`` installs them when it can). Screenshots go to
``$NNPIPE_SCREENSHOTS`` if set, else the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from nnpipe import tracking
from tests.tracking.helpers import STRONG, WEAK, train_logged

pytestmark = pytest.mark.server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("no Chromium: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,1100", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    # the Debian driver, never Selenium Manager (it would download one)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver, *texts: str, timeout: float = 90) -> str:
    """The page's visible text once it contains every one of ``texts`` (the UI renders client-side)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            body = driver.find_element(By.TAG_NAME, "body").text
        except Exception:
            body = ""
        if all(t in body for t in texts):
            return body
        time.sleep(0.5)
    missing = [t for t in texts if t not in body]
    raise AssertionError(f"{driver.current_url} never showed {missing}; it shows:\n{body[:3000]}")


def shot(driver, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("NNPIPE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def test_model_pages_show_the_champions_story(browser, http_store, unique_name, iris_splits, tmp_path):
    ds, splits = iris_splits
    name = unique_name
    v1, _, _ = train_logged(name, ds, splits, experiment=name, **WEAK)
    tracking.promote_if_better(name, v1)
    v2, _, _ = train_logged(name, ds, splits, experiment=name, **STRONG)
    assert tracking.promote_if_better(name, v2).promoted
    # a move in the UI's alias dialog, as far as the server can tell: another client, no nnpipe
    from mlflow import MlflowClient

    MlflowClient(http_store, http_store).set_registered_model_alias(name, "champion", str(v1))
    assert tracking.sync_aliases(name)[0]["action"] == "outside"

    browser.get(tracking.links.model_url(http_store, name))
    text = wait_for_text(browser, "Champion history", "who", "why", "outside nnpipe", f"v{v2}")
    assert "Champion: v1" in text.replace("*", "") or "Champion:" in text
    assert "gate" in text and "test/accuracy" in text
    assert shot(browser, tmp_path, "registered-model").stat().st_size > 10_000

    browser.get(tracking.links.version_url(http_store, name, v2))
    text = wait_for_text(browser, "Final metrics", "Gate", "promoted", "champion")
    assert "test/accuracy" in text and f"replaced by v{v1}" in text
    assert shot(browser, tmp_path, "model-version").stat().st_size > 10_000
