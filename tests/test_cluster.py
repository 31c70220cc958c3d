from __future__ import annotations

import dask
import pytest
from distributed import LocalCluster

from cellflow.cluster import scheduler_context
from cellflow.errors import SpecError


@pytest.mark.parametrize("name", [None, "threads", "synchronous"])
def test_local_schedulers_pass_through(name):
    with scheduler_context(name) as sched:
        assert sched == name
        assert dask.compute(dask.delayed(sum)([1, 2, 3]), scheduler=sched) == (6,)


def test_rejects_unknown_scheduler():
    with pytest.raises(SpecError, match=r"scheduler must be one of .* got 'gpu-please'"):
        with scheduler_context("gpu-please"):
            pass


def test_address_connects_a_client_for_the_block():
    import os

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster:
        with scheduler_context(cluster.scheduler_address) as sched:
            assert sched is None  # the open client is dask's default scheduler
            # the task runs in the worker of this in-process cluster, not a fresh thread pool
            (pid,) = dask.compute(dask.delayed(os.getpid)())
            assert pid == os.getpid()
            assert len(cluster.scheduler.task_groups) >= 1
