"""One writing run per store: an advisory lock held for the whole run.

A run is the store's single writer (its ledgers and task logs are read-modify-written by
the client), so two runs on one store at once — last night's job still going when
tonight's starts, or a manual run next to the scheduled one — would lose each other's
records. :func:`store_lock` takes an exclusive ``flock`` on ``_cellflow/run.lock`` inside
the store for the duration of the run and writes who holds it there; a second run is
refused with that information instead of waiting or interleaving. The kernel drops the
lock when its process ends, however it ends (a SIGKILLed run leaves no stale lock).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cellflow.errors import StoreBusyError

__all__ = ["LOCK_FILE", "command_line", "store_lock"]

#: The lock file, relative to the store.
LOCK_FILE = Path("_cellflow") / "run.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS: runs are not locked
    fcntl = None  # type: ignore[assignment]


@contextmanager
def store_lock(store: str | Path, what: str) -> Iterator[None]:
    """Hold the run lock of ``store`` (an existing store folder) for the block.

    Parameters
    ----------
    store : str or Path
        The screen store.
    what : str
        What this run is (e.g. ``"cellflow run specs/nightly.yaml"``), written into the lock
        file for whoever finds the store busy.

    Raises
    ------
    StoreBusyError
        Another process holds the lock; the message says which (pid, host, since, what).
    """
    path = Path(store) / LOCK_FILE
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise StoreBusyError(
                f"{store} is in use by another cellflow run ({_describe(handle.read())}); "
                "wait for it to finish or stop it, then run again (it resumes where the other left off)"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "what": what}))
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}: {holder['what']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def command_line() -> str:
    """This process's command line, for :func:`store_lock`'s ``what``."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
