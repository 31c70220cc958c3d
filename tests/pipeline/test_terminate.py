"""SIGTERM (a Kubernetes eviction, a batch scheduler's limit) ends a run as Ctrl-C does.

Without a handler Python dies at once: no run.json (yesterday's "ok" stays on disk),
a plate view that keeps saying "running". The command line turns SIGTERM into an
interrupt: finished units recorded, run.json ``interrupted``, exit 130, and the
next run completes the plate exactly as a clean run does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cellflow.pipeline import parse_spec, run_spec
from cellflow.pipeline.resume import TaskLog
from cellflow.screen import Screen


def _spec(root: Path) -> dict:
    return {
        "name": "terminate",
        "input": {"store": str(root / "p.zarr"),
                  "synthetic": {"wells": ["A01", "A02", "B01", "B02"], "sites": 4, "shape_yx": [256, 256], "n_z": 1,
                                "seed": 4, "channels": ["DNA"]}},
        "stages": {"autolabel": {"nuclear_channel": "DNA", "diameter_um": 16},
                   "score": {"pairs": [["truth_nuclei", "labels_nuclei"]]}},
        "output": {"tables": str(root / "tables")},
        "cluster": {"kind": "threads", "n_workers": 1, "threads_per_worker": 1},
    }


def _done(store: Path) -> int:
    log = store / "_cellflow" / "tasks" / "autolabel.jsonl"
    return log.read_text().count('"status": "done"') if log.is_file() else 0


def test_sigterm_records_an_interrupted_run_that_the_next_run_completes(tmp_path):
    clean = run_spec(parse_spec(_spec(tmp_path / "clean")), progress=False)
    root = tmp_path / "run"
    root.mkdir()
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(root)))
    command = [sys.executable, "-c", "import sys; from cellflow.cli import main; sys.exit(main(sys.argv[1:]))",
               "run", str(spec), "--no-progress", "--no-report"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    while _done(root / "p.zarr") < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be terminated: make the plate bigger"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 130, out
    assert "terminated (SIGTERM)" in out and "Traceback" not in out
    summary = json.loads((root / "tables" / "run.json").read_text())
    assert summary["status"] == "interrupted" and summary["exit_code"] == 130
    screen = Screen.open(root / "p.zarr")
    recorded = sum(entry["status"] == "done" for entry in TaskLog(screen, "autolabel").load().values())
    assert summary["stages"]["autolabel"]["done"] == recorded >= 2

    resumed = run_spec(parse_spec(_spec(root)), progress=False)
    assert resumed.status == "ok" and resumed.stages["autolabel"]["skipped"] == recorded
    np.testing.assert_array_equal(resumed.screen.dataset()["labels_nuclei"].values,
                                  clean.screen.dataset()["labels_nuclei"].values)
    pd.testing.assert_frame_equal(resumed.tables["labels_nuclei/fields"], clean.tables["labels_nuclei/fields"])
