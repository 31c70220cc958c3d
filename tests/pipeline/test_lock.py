"""One writing run per store: a second run is refused while one holds the store, never after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml

from cellflow.cli import main
from cellflow.errors import StoreBusyError
from cellflow.graph import AutolabelParams
from cellflow.pipeline import parse_spec, run_spec
from cellflow.pipeline.lock import LOCK_FILE, store_lock
from cellflow.pipeline.segment import segment
from cellflow.pipeline.spec import ClusterSpec

SPEC = {
    "name": "locked",
    "input": {"synthetic": {"wells": ["A01"], "sites": 1, "shape_yx": [64, 64], "n_z": 1, "seed": 2,
                            "channels": ["DNA"]}},
    "stages": {"autolabel": {"nuclear_channel": "DNA", "diameter_px": 10, "illumination": False}},
    "cluster": {"kind": "threads"},
}


@pytest.fixture
def spec(tmp_path):
    data = {**SPEC, "input": {**SPEC["input"], "store": str(tmp_path / "p.zarr")},
            "output": {"tables": str(tmp_path / "tables")}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, parse_spec(data)


def _holder(store):
    """Another process holding the store's lock until it is killed."""
    code = textwrap.dedent(f"""
        import time
        from cellflow.pipeline.lock import store_lock
        with store_lock({str(store)!r}, "the other run"):
            print("held", flush=True)
            time.sleep(120)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_on_a_busy_store_is_refused_and_a_killed_holder_leaves_no_stale_lock(spec, tmp_path, capsys):
    path, parsed = spec
    first = run_spec(parsed, progress=False)  # creates the store, then releases it
    assert first.status == "ok"
    store = tmp_path / "p.zarr"
    assert (store / LOCK_FILE).read_text() == ""  # released: no holder written
    holder = _holder(store)
    try:
        with pytest.raises(StoreBusyError, match=rf"in use by another cellflow run \(pid {holder.pid} on .*the other run"):
            run_spec(parsed, progress=False)
        with pytest.raises(StoreBusyError):
            segment(store, None, params=AutolabelParams(nuclear_channel="DNA", illumination=False),
                    cluster=ClusterSpec(kind="threads"), progress=False, overwrite=True)
        assert main(["run", str(path), "--no-progress"]) == 2
        assert "in use by another cellflow run" in capsys.readouterr().out
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    again = run_spec(parsed, progress=False)  # the kernel dropped the killed holder's lock
    assert again.status == "ok" and again.stages["autolabel"]["skipped"] == 1


def test_the_lock_is_per_store_and_released_when_the_block_raises(tmp_path):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    a.mkdir()
    b.mkdir()
    with store_lock(a, "one"), store_lock(b, "two"):  # two stores at once: no conflict
        assert "one" in (a / LOCK_FILE).read_text() and "two" in (b / LOCK_FILE).read_text()
    with pytest.raises(ValueError, match="inside"), store_lock(a, "three"):
        raise ValueError("inside")
    with store_lock(a, "four"):  # free again
        pass
