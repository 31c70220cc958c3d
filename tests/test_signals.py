"""Ctrl-C and SIGTERM are held for a block and delivered after it."""

from __future__ import annotations

import signal

import pytest

from cellflow._signals import interrupts_deferred
from cellflow.errors import Terminated


def test_ctrl_c_inside_the_block_arrives_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)  # in this thread: os.kill may land in another thread, later
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
