"""What a user sees in the MLflow UI, in a real browser (headless Chromium) against a real ``mlflow server``.

Skipped, saying why, where Debian's ``chromium`` and ``chromium-driver`` are not
installed (``.ci/run`` installs them when it can). Screenshots go to
``$NNPIPE_SCREENSHOTS`` if set, else the test's tmp dir.
"""

from __future__ import annotations

import pytest

from nnpipe import tracking
from tests.browser import browser, shot, wait_for_text  # noqa: F401  (browser is a fixture)
from tests.tracking.helpers import weak_then_strong

pytestmark = pytest.mark.server


def test_model_pages_show_the_champions_story(browser, http_store, unique_name, iris_splits, tmp_path):
    ds, splits = iris_splits
    name = unique_name
    v1, v2 = weak_then_strong(name, ds, splits)
    # a move in the UI's alias dialog, as far as the server can tell: another client, no nnpipe
    from mlflow import MlflowClient

    MlflowClient(http_store, http_store).set_registered_model_alias(name, "champion", str(v1))
    assert tracking.sync_aliases(name)[0]["action"] == "outside"

    browser.get(tracking.links.model_url(http_store, name))
    text = wait_for_text(browser, "Champion history", "who", "why", "outside nnpipe", f"v{v2}")
    assert f"UTC: v{v1}" in text.replace("*", "")  # "Champion as of <time> UTC: v1": dated, never stale
    assert "gate" in text and "test/accuracy" in text
    assert shot(browser, tmp_path, "registered-model").stat().st_size > 10_000

    browser.get(tracking.links.version_url(http_store, name, v2))
    text = wait_for_text(browser, "Final metrics", "Gate", "promoted", "champion")
    assert "test/accuracy" in text and f"replaced by v{v1}" in text
    assert shot(browser, tmp_path, "model-version").stat().st_size > 10_000
