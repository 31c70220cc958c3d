"""Where dask graphs run: the threaded scheduler, local processes, or an existing cluster.

This first version covers what ingest, synthesis and export need: a scheduler name
for ``dask.compute`` or the address of a running ``distributed`` scheduler. The
spec-driven clusters (LocalCluster, LocalCUDACluster, Kubernetes) grow here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cellflow.errors import SpecError

__all__ = ["LOCAL_SCHEDULERS", "scheduler_context"]

#: Scheduler names dask understands without a cluster.
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")


@contextmanager
def scheduler_context(scheduler: str | None) -> Iterator[str | None]:
    """Yield what to pass as ``dask.compute(..., scheduler=...)``.

    Parameters
    ----------
    scheduler : str or None
        ``None`` or one of ``'threads'``, ``'processes'``, ``'synchronous'``; or the
        address of a running distributed scheduler (``'tcp://host:8786'``), to which
        a client is connected for the duration of the block.

    Raises
    ------
    SpecError
        Anything else.
    """
    if scheduler is None or scheduler in LOCAL_SCHEDULERS:
        yield scheduler
        return
    if "://" not in scheduler:
        raise SpecError(
            f"scheduler must be one of {LOCAL_SCHEDULERS} or an address like 'tcp://127.0.0.1:8786', "
            f"got {scheduler!r}"
        )
    from distributed import Client

    # While a Client is open it is dask's default scheduler, so callers pass None.
    with Client(scheduler):
        yield None
