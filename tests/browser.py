"""Headless Chromium for the browser tests (Debian's chromium + chromium-driver, driven by Selenium).

Tests that use the ``browser`` fixture skip, saying why, where Chromium is not
installed (``.ci/run`` installs it when it can). Screenshots go to
``$NNPIPE_SCREENSHOTS`` if set, else the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

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
