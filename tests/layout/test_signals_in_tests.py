"""A test that sends SIGINT to a child gives the child its default SIGINT handler first.

A suite started from a background job (``cmd &``, many CI runners) inherits
SIGINT as ignored, and so does every child it starts: the signal would then do
nothing, and the test would hang until pytest-timeout instead of failing.
``tests.flows.conftest.default_sigint`` is the ``preexec_fn`` that restores it.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SENDS_SIGINT = re.compile(r"(os\.kill|os\.killpg|send_signal)\([^)]*SIGINT|SIGINT[^\n]*\]\s*,\s*ids=")


def test_every_test_that_sends_sigint_restores_the_childs_handler():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        text = path.read_text()
        if path.name != "conftest.py" and SENDS_SIGINT.search(text) and "preexec_fn=default_sigint" not in text:
            offenders.append(str(path.relative_to(TESTS.parent)))
    assert not offenders, f"these send SIGINT to a child started without preexec_fn=default_sigint: {offenders}"


def test_the_check_finds_a_sender():
    assert SENDS_SIGINT.search("os.killpg(proc.pid, signal.SIGINT)")
    assert SENDS_SIGINT.search('@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["a", "b"])')
    assert not SENDS_SIGINT.search("signal.signal(signal.SIGINT, signal.SIG_DFL)")
