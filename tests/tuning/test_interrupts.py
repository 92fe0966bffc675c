"""Signals held while the study's driver writes to its stores, delivered once it waits (real signals, this process)."""

from __future__ import annotations

import signal

import pytest

from nnpipe.tuning.interrupts import deferred


@pytest.fixture(autouse=True)
def python_sigint():
    """Python's own SIGINT handler, whatever this process inherited (a background job inherits it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_bookkeeping_is_delivered_when_the_loop_waits():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with deferred() as signals:
            signal.raise_signal(signal.SIGINT)  # lands "inside a store write"
            reached.append("write finished")  # not cut short
            with signals.deliverable():
                reached.append("waiting")  # never: the held Ctrl-C is raised on entering the wait
    assert reached == ["write finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_signal_while_waiting_takes_effect_at_once_and_one_held_is_delivered_on_leaving():
    with pytest.raises(KeyboardInterrupt):
        with deferred() as signals:
            with signals.deliverable():
                signal.raise_signal(signal.SIGINT)
                raise AssertionError("the signal did not interrupt the wait")
    with pytest.raises(KeyboardInterrupt):
        with deferred():
            signal.raise_signal(signal.SIGINT)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with deferred():
            signal.raise_signal(signal.SIGTERM)  # a handler that does not raise (Prefect's raises) is called too
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
