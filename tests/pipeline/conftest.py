"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["threads", "cluster"])
def scheduler(request):
    """None (the threaded scheduler) or the address of an in-process cluster: the same tests run on both,
    and the in-process workers see the test's monkeypatches."""
    if request.param == "threads":
        yield None
        return
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster:
        yield cluster.scheduler_address
