"""Losing the dask scheduler mid-run stops the run; it does not quarantine the plate.

When the scheduler goes away (its pod evicted, its node lost) the client cancels every
future. Those units were never the fields' fault: before, each came back "quarantined"
(exit 3, the plate's report full of FutureCancelledError). Now the run stops: status
failed, exit 1, the finished units kept, the rest pending for the next run.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import dask
import pytest

from cellflow.pipeline import parse_spec, run_spec
from cellflow.pipeline.monitor import PlateView
from cellflow.pipeline.resume import TaskLog
from cellflow.screen import Screen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def remote_cluster():
    """A scheduler and one worker in their own processes; yields (address, scheduler process)."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", address.rsplit(":", 1)[1], "--dashboard-address", "127.0.0.1:0"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        yield address, scheduler
    finally:
        for process in (worker, scheduler):
            process.kill()
            process.wait(30)


def test_a_lost_scheduler_stops_the_run_and_blames_no_field(tmp_path, remote_cluster, monkeypatch):
    address, scheduler = remote_cluster
    spec = parse_spec({
        "name": "lost",
        "input": {"store": str(tmp_path / "p.zarr"),
                  "synthetic": {"wells": ["A01", "A02", "B01", "B02"], "sites": 3, "shape_yx": [128, 128], "n_z": 1,
                                "seed": 2, "channels": ["DNA"]}},
        "stages": {"autolabel": {"nuclear_channel": "DNA", "diameter_um": 16}},
        "output": {"tables": str(tmp_path / "tables")},
        "cluster": {"kind": "threads"},
    })
    update = PlateView.update
    finished: list[str] = []

    def lose_the_scheduler_after_two(self, stage, unit, result):
        update(self, stage, unit, result)
        finished.append(unit.id)
        if len(finished) == 2:
            scheduler.kill()

    monkeypatch.setattr(PlateView, "update", lose_the_scheduler_after_two)
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):  # give up reconnecting quickly
        result = run_spec(spec, progress=False, scheduler=address)
    assert result.status == "failed" and result.exit_code == 1
    assert result.quarantined == ()
    assert "scheduler" in result.error and "units are done and kept" in result.error
    summary = json.loads((tmp_path / "tables" / "run.json").read_text())
    assert summary["status"] == "failed" and summary["quarantined"] == []
    log = TaskLog(Screen.open(tmp_path / "p.zarr"), "autolabel").load()
    assert {u for u, e in log.items() if e["status"] == "done"} >= set(finished)
    assert all(e["status"] in ("done", "pending") for e in log.values())  # no unit marked failed

    monkeypatch.undo()
    again = run_spec(spec, progress=False)  # the threaded scheduler this time
    assert again.status == "ok" and again.stages["autolabel"]["done"] + again.stages["autolabel"]["skipped"] == 12
