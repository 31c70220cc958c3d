"""A scheduled run over a folder the microscope keeps filling analyses what arrived since the last run.

Reference: one clean run over the complete folder. Two runs with files arriving in
between must leave the same results for every field (compared by coordinate labels),
on the threaded scheduler and on a cluster whose worker handles from the first run are
still cached when the store has grown.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from rich.console import Console

from cellflow.pipeline import parse_spec, run_spec
from cellflow.screen import Screen
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen


@pytest.fixture(scope="module")
def acquisition(tmp_path_factory):
    root = tmp_path_factory.mktemp("acq")
    source = write_synthetic_screen(root / "src.zarr", SyntheticSpec(
        plates=("P1", "P2"), wells=("A01", "B01"), sites=2, shape_yx=(128, 128), channels=("DNA",), n_z=1, seed=8))
    folder = root / "all"
    folder.mkdir()
    for key in source.fields():
        tifffile.imwrite(folder / f"{key.plate}_{key.well}_s{key.site}.tif",
                         source.read("images", **key._asdict())[0, 0])
    return folder


def _spec(root, folder, **input_extra):
    return parse_spec({
        "name": "grow",
        "input": {"store": str(root / "s.zarr"), "folder": str(folder), "pattern": "{plate}_{well}_s{site}.tif",
                  **input_extra},
        "stages": {"illumination": {"method": "polynomial"},
                   "autolabel": {"nuclear_channel": "image", "diameter_um": 16}},
        "output": {"tables": str(root / "tables")},
        "cluster": {"kind": "threads"},
    })


def test_files_added_between_runs_are_analysed_like_a_clean_run(tmp_path, acquisition, scheduler):
    clean = run_spec(_spec(tmp_path / "clean", acquisition), progress=False, scheduler=scheduler)
    live = tmp_path / "live" / "in"
    live.mkdir(parents=True)
    for path in sorted(acquisition.iterdir()):
        if path.name.startswith("P1_B01"):  # the first well imaged
            (live / path.name).write_bytes(path.read_bytes())
    console = Console(record=True, width=300)
    first = run_spec(_spec(tmp_path / "live", live), progress=False, scheduler=scheduler, console=console)
    assert first.status == "ok" and first.stages["autolabel"]["done"] == 2
    store = tmp_path / "live" / "s.zarr"  # making the store is announced, and what it holds when made
    said = console.export_text()
    assert f"creating {store} from {live}" in said and f"{store}: 2 fields in " in said
    for path in acquisition.iterdir():  # the rest of the plate, and a second plate
        (live / path.name).write_bytes(path.read_bytes())
    console = Console(record=True, width=300)
    second = run_spec(_spec(tmp_path / "live", live), progress=False, scheduler=scheduler, console=console)
    assert second.status == "ok"
    assert f"{live}: added 6 new fields to {tmp_path / 'live' / 's.zarr'}" in console.export_text()
    assert second.stages["autolabel"]["done"] + second.stages["autolabel"]["skipped"] == 8

    grown, reference = second.screen.dataset(), clean.screen.dataset()
    assert list(grown.well.values) == ["B01", "A01"]  # appended as they arrived
    for name in ("images", "acquired", "labels_nuclei", "illumination"):
        array = grown[name]
        picked = array.sel({d: reference[d] for d in ("plate", "well", "site", "t") if d in array.dims})
        np.testing.assert_array_equal(picked.values, reference[name].values, err_msg=name)
    third = run_spec(_spec(tmp_path / "live", live), progress=False, scheduler=scheduler)
    assert all(s["done"] == 0 for s in third.stages.values())  # nothing new: nothing redone


def test_add_new_files_false_keeps_the_store_as_it_is(tmp_path, acquisition):
    live = tmp_path / "in"
    live.mkdir()
    for path in sorted(acquisition.iterdir())[:2]:
        (live / path.name).write_bytes(path.read_bytes())
    run_spec(_spec(tmp_path, live), progress=False)
    for path in acquisition.iterdir():
        (live / path.name).write_bytes(path.read_bytes())
    again = run_spec(_spec(tmp_path, live, add_new_files=False), progress=False)
    assert len(Screen.open(tmp_path / "s.zarr").fields()) == 2 and again.stages["autolabel"]["done"] == 0
