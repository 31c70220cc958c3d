"""Ctrl-C and SIGTERM are held for a block and delivered after it."""

from __future__ import annotations

import signal

import pytest

from cellflow._signals import interrupts_deferred
from cellflow.errors import Terminated


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raising KeyboardInterrupt, as in a terminal. A process started as a background job of a
    non-interactive shell inherits SIGINT *ignored* (Python then installs no handler), and an ignored
    signal stays ignored through the block: the test sets the terminal's behaviour itself."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_ctrl_c_inside_the_block_arrives_after_it(ctrl_c_raises):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("first half")
            done.append("second half")  # not cut in two
    assert done == ["first half", "second half"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_sigterm_goes_to_the_handler_in_place_after_the_block():
    def terminate(signum, frame):
        raise Terminated("signal SIGTERM")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        done = []
        with pytest.raises(Terminated):
            with interrupts_deferred():
                signal.raise_signal(signal.SIGTERM)
                done.append("recorded")
        assert done == ["recorded"] and signal.getsignal(signal.SIGTERM) is terminate
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_nothing_held_means_nothing_delivered():
    with interrupts_deferred():
        value = 1 + 1
    assert value == 2


def test_an_ignored_ctrl_c_stays_ignored():
    """A run started with SIGINT ignored (nohup-like background jobs) is not interrupted by the block."""
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)
