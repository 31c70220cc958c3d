"""Holding Ctrl-C and SIGTERM for the few lines that must not be cut in two.

A run records each finished unit in two places (the task log line, the counts that go
into ``run.json``); an interrupt between the two would leave them disagreeing by one.
:func:`interrupts_deferred` delays SIGINT and SIGTERM until its block has run, then
delivers the first one to the handler that was in place (which raises
``KeyboardInterrupt`` or :class:`~cellflow.errors.Terminated`, or ends the process).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["interrupts_deferred"]

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run the block with SIGINT/SIGTERM held; deliver the first that came once it is done.

    Only the main thread can handle signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append((signum, frame))

    previous = {sig: signal.signal(sig, hold) for sig in _HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signum, frame = caught[0]
            handler = previous[signal.Signals(signum)]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)  # the default action, now that the block is done
