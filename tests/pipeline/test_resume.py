"""Resumable runs: done units are skipped, changed parameters or inputs redo exactly their dependents,
a bad field is quarantined while the rest of the plate completes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellflow.cli import main
from cellflow.errors import StoreExistsError
from cellflow.pipeline import parse_spec, run_spec
from cellflow.pipeline.monitor import PlateView
from cellflow.pipeline.resume import TaskLog, field_id
from cellflow.screen import Screen
from cellflow.screen.store import chunk_digest


def _spec(tmp_path: Path, *, threshold: float | None = None, stages: tuple[str, ...] = ("illumination", "autolabel",
                                                                                       "score"), tables="tables"):
    autolabel = {"nuclear_channel": "DNA", "diameter_um": 16}
    if threshold is not None:
        autolabel["nuclei"] = {"threshold_correction": threshold}
    every = {
        "illumination": {"method": "polynomial"},
        "autolabel": autolabel,
        "score": {"pairs": [["truth_nuclei", "labels_nuclei"]]},
    }
    return parse_spec({
        "name": "resume",
        "input": {"store": str(tmp_path / "p.zarr"),
                  "synthetic": {"wells": ["A01", "B01"], "sites": 2, "shape_yx": [96, 128], "n_z": 1, "seed": 3,
                                "channels": ["DNA"]}},
        "stages": {name: every[name] for name in stages},
        "output": {"tables": str(tmp_path / tables)},
        "cluster": {"kind": "threads"},
    })


def _store_digests(screen: Screen, name: str) -> np.ndarray:
    """Digest of every chunk's bytes as stored (independent of the ledger)."""
    array = screen._array(name)
    grid = screen.ledger(name).grid_shape
    out = np.zeros(grid, np.uint64)
    for index in np.ndindex(*grid):
        region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, array.chunks, array.shape))
        out[index] = chunk_digest(np.asarray(array[region]))
    return out


def test_second_run_skips_everything_and_gives_the_same_tables(tmp_path, monkeypatch):
    import cellflow.pipeline.runner as runner

    spec = _spec(tmp_path)
    started = []
    real = runner.cluster_client

    def counted(*args, **kwargs):
        started.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "cluster_client", counted)
    first = run_spec(spec, progress=False)
    assert first.status == "ok" and first.exit_code == 0
    assert first.stages["autolabel"] == {**first.stages["autolabel"], "tasks": 4, "done": 4, "skipped": 0}
    assert len(started) == 1
    again = run_spec(spec, progress=False)
    assert len(started) == 1  # nothing to do: no cluster is started
    assert {name: (s["done"], s["skipped"]) for name, s in again.stages.items()} == {
        "illumination": (0, 1), "autolabel": (0, 4), "score": (0, 4)}
    pd.testing.assert_frame_equal(first.tables["labels_nuclei/fields"], again.tables["labels_nuclei/fields"])
    summary = json.loads((tmp_path / "tables" / "run.json").read_text())
    assert summary["status"] == "ok" and summary["exit_code"] == 0 and summary["stages"]["score"]["skipped"] == 4
    # the ledger matches the bytes on disk
    screen = again.screen
    np.testing.assert_array_equal(screen.ledger("labels_nuclei").digests(), _store_digests(screen, "labels_nuclei"))


def test_changed_parameter_redoes_exactly_its_stage_and_downstream(tmp_path):
    run_spec(_spec(tmp_path), progress=False)
    changed = run_spec(_spec(tmp_path, threshold=0.9), progress=False)
    assert {name: (s["done"], s["skipped"]) for name, s in changed.stages.items()} == {
        "illumination": (0, 1), "autolabel": (4, 0), "score": (4, 0)}
    # and back: the old parameters' records were superseded, so everything of autolabel is redone again
    back = run_spec(_spec(tmp_path), progress=False)
    assert back.stages["autolabel"]["done"] == 4


def test_changed_input_image_redoes_only_that_field(tmp_path):
    spec = _spec(tmp_path, stages=("autolabel", "score"))
    first = run_spec(spec, progress=False)
    screen = first.screen
    key = screen.fields()[2]
    image = screen.read("images", **key._asdict())
    records = screen.write("images", np.flip(image, axis=-1), **key._asdict())  # a re-acquired field
    screen.ledger("images").mark(records)
    again = run_spec(spec, progress=False)
    assert {name: (s["done"], s["skipped"]) for name, s in again.stages.items()} == {
        "autolabel": (1, 3), "score": (1, 3)}


def test_an_interrupted_run_keeps_every_unit_that_finished(tmp_path, monkeypatch):
    """Each unit is recorded as it finishes, so Ctrl-C keeps exactly the finished ones (none is redone)."""
    spec = _spec(tmp_path, stages=("autolabel", "score"))
    finished: list[tuple[str, str]] = []
    update = PlateView.update

    def interrupt_after_three(self, stage, unit, result):
        update(self, stage, unit, result)
        finished.append((stage, unit.id))
        if len(finished) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(PlateView, "update", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_spec(spec, progress=False)
    monkeypatch.undo()
    screen = Screen.open(tmp_path / "p.zarr")
    recorded = {(stage, unit) for stage in ("autolabel", "score")
                for unit, entry in TaskLog(screen, stage).load().items() if entry["status"] == "done"}
    assert recorded == set(finished)
    summary = json.loads((tmp_path / "tables" / "run.json").read_text())  # says so, with what was done
    assert summary["status"] == "interrupted" and summary["exit_code"] == 130
    assert "interrupted (Ctrl-C): 3 of 8 units are done" in summary["error"]
    assert sum(s["done"] for s in summary["stages"].values()) == 3
    from cellflow.report import build_report

    page = build_report(tmp_path / "tables").read_text()
    assert "status-interrupted" in page.split("</style>")[-1]  # the badge, not just the stylesheet
    assert "interrupted (Ctrl-C): 3 of 8 units are done" in page
    resumed = run_spec(spec, progress=False)
    assert sum(s["skipped"] for s in resumed.stages.values()) == 3
    assert sum(s["done"] for s in resumed.stages.values()) == 8 - 3


def test_interrupted_run_redoes_only_unrecorded_and_corrupted_units(tmp_path):
    spec = _spec(tmp_path, stages=("autolabel", "score"))
    clean = run_spec(spec, progress=False)
    screen = clean.screen
    reference = _store_digests(screen, "labels_nuclei")
    log = TaskLog(screen, "autolabel")
    lines = log.path.read_text().splitlines(keepends=True)
    done = [line for line in lines if '"done"' in line]
    # as if killed: the last field's done line never made it, and a torn half line was left behind
    log.path.write_text("".join(line for line in lines if line != done[-1]) + done[-1][: len(done[-1]) // 2])
    # and a chunk another field wrote was overwritten behind the ledger's back
    dropped = json.loads(done[-1])["unit"]
    victim = next(key for key in screen.fields() if field_id(key) != dropped)  # a second, different field
    screen.write("labels_nuclei", np.zeros(screen.layout.shape_yx, np.uint32), **victim._asdict())
    resumed = run_spec(spec, progress=False, verify=True)
    assert resumed.stages["autolabel"]["done"] == 2 and resumed.stages["autolabel"]["skipped"] == 2
    np.testing.assert_array_equal(_store_digests(screen, "labels_nuclei"), reference)


def test_bad_field_is_quarantined_and_the_rest_of_the_plate_completes(tmp_path):
    spec = _spec(tmp_path)
    from cellflow.pipeline.runner import prepare_input

    screen = prepare_input(spec.input)
    bad = screen.fields()[1]
    blank = np.zeros_like(screen.read("images", **bad._asdict()))
    screen.ledger("images").mark(screen.write("images", blank, **bad._asdict()))
    result = run_spec(spec.model_copy(update={"input": spec.input.model_copy(update={"reuse": True})}),
                      progress=False)
    assert result.status == "quarantined" and result.exit_code == 3
    assert result.stages["autolabel"]["done"] == 3 and result.stages["autolabel"]["quarantined"] == 1
    by_stage = {q["stage"]: q for q in result.quarantined}
    assert set(by_stage) == {"autolabel", "score"}
    assert by_stage["autolabel"]["field"] == field_id(bad)
    assert "is blank: every pixel is 0" in by_stage["autolabel"]["error"]
    assert by_stage["score"]["error"].startswith("not run: autolabel failed")
    # every other field has its labels and scores
    fields = result.tables["labels_nuclei/fields"]
    assert len(fields) == 3 and field_id(bad) not in {f"{r.plate}/{r.well}/{r.site}/{r.t:g}" for r in fields.itertuples()}
    summary = json.loads((tmp_path / "tables" / "run.json").read_text())
    assert summary["status"] == "quarantined" and summary["quarantined"][0]["well"] == bad.well
    # the plate view counted it
    progress = json.loads((tmp_path / "tables" / "progress.json").read_text())
    assert sum(w["quarantined"] for w in progress["wells"]) == 1
    assert sum(w["finished"] for w in progress["wells"]) == 3


def test_cli_exit_status_for_quarantined_fields(tmp_path, capsys):
    import yaml

    spec = _spec(tmp_path)
    from cellflow.pipeline.runner import prepare_input

    screen = prepare_input(spec.input)
    bad = screen.fields()[0]
    saturated = np.full_like(screen.read("images", **bad._asdict()), np.iinfo(np.uint16).max)
    saturated[..., 0, 0] = 0
    screen.ledger("images").mark(screen.write("images", saturated, **bad._asdict()))
    data = spec.model_dump(mode="json")
    data["input"]["reuse"] = True
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--no-progress"]) == 3
    out = capsys.readouterr().out
    assert "1 quarantined" in out.replace("\n", " ") or "quarantined" in out
    assert "saturated" in out


def test_refuses_to_overwrite_another_screen_or_its_tables(tmp_path):
    run_spec(_spec(tmp_path), progress=False)
    other = _spec(tmp_path).model_copy(deep=True)
    data = other.model_dump(mode="json")
    data["input"]["synthetic"]["seed"] = 4  # another screen at the same path
    data["input"]["reuse"] = False
    with pytest.raises(StoreExistsError, match="holds another screen"):
        run_spec(parse_spec(data), progress=False)
    data["input"]["store"] = str(tmp_path / "q.zarr")  # a new store, but the tables folder of the first
    with pytest.raises(StoreExistsError, match="tables of a run on another store"):
        run_spec(parse_spec(data), progress=False)
    assert not (tmp_path / "q.zarr").exists()


@pytest.mark.slow
def test_killing_a_worker_mid_run_gives_the_clean_store(tmp_path):
    """The issue's bar: on a real multi-process LocalCluster, SIGKILL one worker process mid-run;
    the run finishes and the store equals a clean run's, chunk hash for chunk hash."""
    import os
    import signal
    import threading
    import time

    from distributed import Client, LocalCluster

    def spec_at(folder: Path):
        data = _spec(folder).model_dump(mode="json")
        data["input"]["synthetic"].update(sites=4, shape_yx=[160, 192])
        return parse_spec(data)

    clean = run_spec(spec_at(tmp_path / "clean"), progress=False)
    killed_pids: list[int] = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        spec = spec_at(tmp_path / "killed")
        log = Path(spec.input.store) / "_cellflow" / "tasks" / "autolabel.jsonl"

        def kill_when_running() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if log.exists() and log.read_text().count('"done"') >= 1:
                    os.kill(pids[0], signal.SIGKILL)
                    killed_pids.append(pids[0])
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_when_running, daemon=True)
        killer.start()
        result = run_spec(spec, scheduler=cluster.scheduler_address, progress=False)
        killer.join(timeout=5)
    assert killed_pids, "the worker was never killed: the run finished before any unit was recorded"
    assert result.status == "ok", result.quarantined
    assert result.stages["autolabel"]["done"] == 8
    for name in ("illumination", "labels_nuclei"):
        np.testing.assert_array_equal(_store_digests(result.screen, name), _store_digests(clean.screen, name))
        np.testing.assert_array_equal(result.screen.ledger(name).digests(), clean.screen.ledger(name).digests())
    pd.testing.assert_frame_equal(result.tables["labels_nuclei/fields"], clean.tables["labels_nuclei/fields"])


def test_screen_report_lists_every_run_on_the_store(tmp_path):
    from cellflow.report import build_report

    spec = _spec(tmp_path, stages=("autolabel", "score"))
    run_spec(spec, progress=False)
    run_spec(spec, progress=False)  # resumed: nothing to do, still a run of this screen
    ids = [json.loads(line)["run_id"] for line in (Path(spec.input.store) / "_cellflow" / "runs.jsonl")
           .read_text().splitlines()]
    assert len(ids) == 2 and ids[0] != ids[1]
    page = build_report(spec.input.store)
    assert page == Path(spec.input.store) / "report.html"
    html = page.read_text()
    assert "Runs of this screen" in html and all(run_id in html for run_id in ids)


def test_a_stage_never_takes_over_another_stages_variable_silently(tmp_path):
    """autolabel wrote labels_cells; a later spec's `cells` stage (same default output) stops before running."""
    first = parse_spec({
        "name": "autolabel",
        "input": {"store": str(tmp_path / "p.zarr"),
                  "synthetic": {"wells": ["A01"], "sites": 2, "shape_yx": [96, 128], "n_z": 1, "seed": 3,
                                "channels": ["DNA", "Cyto"]}},
        "stages": {"autolabel": {"nuclear_channel": "DNA", "cytoplasm_channel": "Cyto", "diameter_um": 16}},
        "output": {"tables": str(tmp_path / "t1")}, "cluster": {"kind": "threads"},
    })
    screen = run_spec(first, progress=False).screen
    before = [screen.read("labels_cells", **k._asdict()) for k in screen.fields()]
    second = parse_spec({
        "name": "cells", "input": {"store": str(tmp_path / "p.zarr")},
        "stages": {"cells": {"channel": "Cyto", "territory_px": 3}},
        "output": {"tables": str(tmp_path / "t2")}, "cluster": {"kind": "threads"},
    })
    with pytest.raises(StoreExistsError, match=r"'labels_cells' .* written by the 'autolabel' stage; the 'cells' stage"):
        run_spec(second, progress=False)
    for key, labels in zip(screen.fields(), before):  # untouched
        np.testing.assert_array_equal(screen.read("labels_cells", **key._asdict()), labels)
    assert json.loads((tmp_path / "t2" / "run.json").read_text())["status"] == "failed"
    replaced = run_spec(second, progress=False, overwrite=True)  # asked for: the cells stage owns it now
    assert replaced.status == "ok"
    assert screen.variable_attrs("labels_cells")["cellflow_stage"] == "cells"
    assert any(not np.array_equal(screen.read("labels_cells", **k._asdict()), b)
               for k, b in zip(screen.fields(), before))
