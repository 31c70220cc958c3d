"""A full (or read-only) disk stops the run instead of quarantining the rest of the plate.

Every later field would fail the same way, so quarantining them would turn one
environment problem into thousands of "bad fields" (and an overnight of retries).
The run stops with a message that says what happened and what to do; the units
that finished are kept, the others are left to the next run, which — once there is
space again — completes the plate exactly as a clean run does.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cellflow.cli import main
from cellflow.pipeline import parse_spec, run_spec
from cellflow.pipeline.resume import TaskLog
from cellflow.screen import Screen


def _spec(root: Path):
    return parse_spec({
        "name": "disk-full",
        "input": {"store": str(root / "p.zarr"),
                  "synthetic": {"wells": ["A01", "A02", "B01"], "sites": 2, "shape_yx": [96, 128], "n_z": 1,
                                "seed": 5, "channels": ["DNA"]}},
        "stages": {"autolabel": {"nuclear_channel": "DNA", "diameter_um": 16},
                   "score": {"pairs": [["truth_nuclei", "labels_nuclei"]]}},
        "output": {"tables": str(root / "tables")},
        "cluster": {"kind": "threads"},
    })


def _fill_disk_after(monkeypatch, writes: int) -> list[str]:
    """Make the store's label writes fail with ENOSPC after ``writes`` of them (the disk filled up)."""
    real = Screen.write
    calls: list[str] = []

    def write(self, name, data, **where):
        if name == "labels_nuclei":
            calls.append(name)
            if len(calls) > writes:
                raise OSError(errno.ENOSPC, "No space left on device", str(Path(self.path) / name))
        return real(self, name, data, **where)

    monkeypatch.setattr(Screen, "write", write)
    return calls


def test_a_full_disk_stops_the_run_and_the_next_run_completes_it(tmp_path, monkeypatch, scheduler):
    clean = run_spec(_spec(tmp_path / "clean"), progress=False, scheduler=scheduler)
    assert clean.status == "ok"

    calls = _fill_disk_after(monkeypatch, writes=2)
    stopped = run_spec(_spec(tmp_path / "full"), progress=False, scheduler=scheduler)
    assert stopped.status == "failed" and stopped.exit_code == 1
    assert stopped.quarantined == ()  # the fields are not to blame
    assert "No space left on device" in stopped.error and "run `cellflow run" in stopped.error
    assert len(calls) < 6  # it stopped: not every field tried (and retried) against the full disk
    summary = json.loads((tmp_path / "full" / "tables" / "run.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    screen = Screen.open(tmp_path / "full" / "p.zarr")
    log = TaskLog(screen, "autolabel").load()
    done = {unit for unit, entry in log.items() if entry["status"] == "done"}
    # the two units whose writes went through are done, except that on the threaded scheduler the second one's
    # completion can reach the recorder after the third unit's ENOSPC has stopped the run (seen under load): then
    # it is left pending and redone below, never lost
    assert len(done) in ((1, 2) if scheduler is None else (2,)), done
    assert all(entry["status"] in ("done", "pending") for entry in log.values())

    monkeypatch.undo()  # space freed
    resumed = run_spec(_spec(tmp_path / "full"), progress=False, scheduler=scheduler)
    assert resumed.status == "ok"
    assert resumed.stages["autolabel"]["skipped"] == len(done) and resumed.stages["autolabel"]["done"] == 6 - len(done)
    np.testing.assert_array_equal(resumed.screen.dataset()["labels_nuclei"].values,
                                  clean.screen.dataset()["labels_nuclei"].values)
    pd.testing.assert_frame_equal(resumed.tables["labels_nuclei/fields"], clean.tables["labels_nuclei/fields"])


def test_a_bad_field_is_still_quarantined_and_the_run_goes_on(tmp_path, monkeypatch):
    """Only a full or read-only disk stops the run; another OSError stays the field's problem."""
    real = Screen.write
    tries: list[dict] = []

    def write(self, name, data, **where):
        if name == "labels_nuclei" and where.get("well") == "A02" and where.get("site") == 0:
            tries.append(where)
            raise OSError(errno.EIO, "Input/output error")
        return real(self, name, data, **where)

    monkeypatch.setattr(Screen, "write", write)
    result = run_spec(_spec(tmp_path), progress=False)
    assert result.status == "quarantined" and result.error is None
    assert {q["field"] for q in result.quarantined} == {"P1/A02/0/0"}
    assert len(tries) == 3  # retried: a network file system may recover
    assert result.stages["autolabel"]["done"] == 5


def test_cli_says_the_disk_is_full_and_how_to_go_on(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(_spec(tmp_path).model_dump(mode="json")))
    _fill_disk_after(monkeypatch, writes=0)
    assert main(["run", str(spec), "--no-report", "--no-progress"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "stopped: the file system cannot take more writes" in out and "No space left on device" in out
    assert "quarantined" not in out and "status: failed" in out


def _image_folder(root: Path, n: int = 4) -> Path:
    """``n`` synthetic nuclei images as TIFFs."""
    import tifffile

    from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

    screen = write_synthetic_screen(root / "src.zarr", SyntheticSpec(wells=("A01",), sites=n, shape_yx=(96, 128),
                                                                     channels=("DNA",), n_z=1, seed=9))
    folder = root / "in"
    folder.mkdir()
    for key in screen.fields():
        tifffile.imwrite(folder / f"img{key.site}.tif", screen.read("images", **key._asdict())[0, 0])
    return folder


def test_segment_folder_on_a_full_disk_leaves_only_whole_label_files(tmp_path, monkeypatch, capsys):
    import tifffile

    import cellflow.pipeline.segment as segment_module

    folder = _image_folder(tmp_path)
    assert main(["segment", str(folder), str(tmp_path / "clean"), "--classical", "--workers", "0"]) == 0
    real = tifffile.imwrite
    written: list[str] = []

    def imwrite(path, data, **kwargs):
        if len(written) >= 2:  # the third file fills the disk half-way through
            with open(path, "wb") as handle:
                handle.write(b"II*\0")
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(str(path))
        return real(path, data, **kwargs)

    monkeypatch.setattr(segment_module.tifffile, "imwrite", imwrite)
    out = tmp_path / "full"
    capsys.readouterr()
    assert main(["segment", str(folder), str(out), "--classical", "--workers", "0"]) == 1
    message = " ".join(capsys.readouterr().out.split())
    assert "stopped:" in message and "No space left on device" in message and "2 of 4 label files" in message
    assert "Traceback" not in message
    left = sorted(p.name for p in out.iterdir())
    assert len(left) == 2 and all(not name.startswith(".") for name in left)  # no partial file anywhere
    for name in left:  # and those are complete
        np.testing.assert_array_equal(tifffile.imread(out / name), tifffile.imread(tmp_path / "clean" / name))

    monkeypatch.undo()  # space freed: the same command with --overwrite completes the folder
    assert main(["segment", str(folder), str(out), "--classical", "--workers", "0", "--overwrite"]) == 0
    for name in sorted(p.name for p in (tmp_path / "clean").iterdir()):
        np.testing.assert_array_equal(tifffile.imread(out / name), tifffile.imread(tmp_path / "clean" / name))


def test_tables_on_a_full_disk_keep_the_work_and_the_next_run_only_writes_them(tmp_path, monkeypatch, capsys):
    import yaml

    import cellflow.metrics._screen as screen_tables

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(tmp_path).model_dump(mode="json")))

    def full(path, frame):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(screen_tables, "write_parquet", full)
    assert main(["run", str(spec), "--no-progress", "--no-report"]) == 1
    message = " ".join(capsys.readouterr().out.split())
    assert "stopped:" in message and "No space left on device" in message and "skips what is done" in message
    assert json.loads((tmp_path / "tables" / "run.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    again = run_spec(_spec(tmp_path), progress=False)
    assert again.status == "ok" and all(s["done"] == 0 for s in again.stages.values())
    assert (tmp_path / "tables" / "labels_nuclei" / "scores_fields.parquet").is_file()


def test_ingest_on_a_full_disk_says_the_store_is_incomplete(tmp_path, monkeypatch, capsys):
    folder = _image_folder(tmp_path)
    for path in folder.iterdir():  # ImageXpress-like names: well, site, channel
        path.rename(folder / f"A01_s{path.stem[-1]}_w1.tif")
    real = Screen.write

    def write(self, name, data, **where):
        if name == "images" and where.get("site") == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, data, **where)

    monkeypatch.setattr(Screen, "write", write)
    store = tmp_path / "s.zarr"
    command = ["ingest", str(folder), str(store), "--pattern", "{well}_s{site}_w{channel}.tif"]
    assert main(command) == 1
    message = " ".join(capsys.readouterr().out.split())
    assert "No space left on device" in message and "incomplete" in message and "--overwrite" in message
    monkeypatch.undo()
    assert main([*command, "--overwrite"]) == 0
    assert len(Screen.open(store).fields()) == 4
