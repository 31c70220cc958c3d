"""Worker plugins cellflow installs on the clusters it starts (:func:`cellflow.cluster.cluster_client`)."""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["QuietCancellation"]

_LOGGER = "distributed.worker.state_machine"


class _CancelledNoise(logging.Filter):
    """Drops "Async instruction for <Task cancelled ...> ended with CancelledError" records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith("ended with CancelledError")


class QuietCancellation(WorkerPlugin):
    """A stopped run's cancelled tasks, without one worker warning each.

    A run that stops (Ctrl-C, SIGTERM, a full disk) cancels the tasks still running, and each
    worker then logs ``Async instruction for <Task cancelled ...> ended with CancelledError``
    per task, under the run's own one-line message: expected, and noise. This drops exactly
    those records on the workers of the clusters cellflow starts on this machine (their output
    is the user's console); every other worker message stays.
    """

    name = "cellflow-quiet-cancellation"

    def setup(self, worker: Any) -> None:
        logger = logging.getLogger(_LOGGER)
        if not any(isinstance(f, _CancelledNoise) for f in logger.filters):
            logger.addFilter(_CancelledNoise())
