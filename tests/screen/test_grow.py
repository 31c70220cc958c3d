"""A store grows with the acquisition: Screen.extend and ``ingest(update=True)``.

Reference: the same files ingested (and analysed) in one go into a fresh store; the grown
store must hold the same pixels, acquisition flags and results for every field, compared
by coordinate labels (the grown store appends new wells/plates at the end).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

import cellflow.screen._ingest_write as ingest_write
from cellflow.errors import IngestError
from cellflow.screen import Screen
from cellflow.screen.ingest import FilenamePattern, ingest
from cellflow.screen.layout import ScreenLayout
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

PATTERN = "{plate}_{well}_s{site}_w{channel}.tif"


@pytest.fixture(scope="module")
def plate_files(tmp_path_factory):
    """24 TIFFs: plates P1, P2 x wells A01, A02, B01 x 2 sites x DNA, Cyto (a synthetic plate)."""
    root = tmp_path_factory.mktemp("grow")
    source = write_synthetic_screen(root / "src.zarr", SyntheticSpec(
        plates=("P1", "P2"), wells=("A01", "A02", "B01"), sites=2, shape_yx=(128, 160), channels=("DNA", "Cyto"),
        n_z=1, seed=11))
    folder = root / "all"
    folder.mkdir()
    for key in source.fields():
        pixels = source.read("images", **key._asdict())
        for c, channel in enumerate(("DNA", "Cyto")):
            tifffile.imwrite(folder / f"{key.plate}_{key.well}_s{key.site}_w{channel}.tif", pixels[c, 0])
    return folder


def _copy(files, folder, *names_like):
    folder.mkdir(exist_ok=True)
    for path in files.iterdir():
        if any(path.name.startswith(prefix) for prefix in names_like):
            (folder / path.name).write_bytes(path.read_bytes())


def _aligned(grown, reference, name):
    """``grown``'s variable selected at ``reference``'s coordinate labels (so orders may differ)."""
    array = grown[name]
    return array.sel({d: reference[d] for d in ("plate", "well", "site", "t") if d in array.dims}).values


def test_extend_keeps_every_existing_chunk_and_adds_empty_unacquired_fields(tmp_path):
    screen = write_synthetic_screen(tmp_path / "s.zarr", SyntheticSpec(wells=("A01", "B02"), sites=2,
                                                                      shape_yx=(64, 64), channels=("DNA",), seed=3))
    screen.add_variable("labels_nuclei", dims=("plate", "well", "site", "t", "y", "x"), dtype="uint32")
    labels = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64)
    screen.ledger("labels_nuclei").mark(screen.write("labels_nuclei", labels, plate="P1", well="B02", site=1, t=0.0))
    before = screen.dataset().load()
    ledger = screen.ledger("labels_nuclei").digests()

    grown = screen.extend(plates=["P2"], wells=["A01", "C03"], sites=[2])
    assert grown.layout.wells == ("A01", "B02", "C03") and grown.layout.plates == ("P1", "P2")
    after = Screen.open(grown.path).dataset().load()  # open validates the grown store against the schema
    for name in ("images", "acquired", "labels_nuclei"):
        np.testing.assert_array_equal(after[name].isel(plate=[0], well=[0, 1], site=[0, 1]).values,
                                      before[name].values)
    new = after.sel(plate="P2")
    assert not new["acquired"].values.any() and not new["images"].values.any()
    assert not after["acquired"].sel(well="C03").values.any() and not after["acquired"].sel(site=2).values.any()
    grid = grown.ledger("labels_nuclei").digests()
    assert grid.shape == (2, 3, 3, 1, 1, 1)
    np.testing.assert_array_equal(grid[:1, :2, :2], ledger)
    assert (grid != 0).sum() == (ledger != 0).sum() == 1
    # the new field is writable by its labels
    grown.write("labels_nuclei", labels, plate="P2", well="C03", site=2, t=0.0)
    np.testing.assert_array_equal(grown.read("labels_nuclei", plate="P2", well="C03", site=2, t=0.0), labels)


def test_extend_refuses_time_going_backwards_and_unknown_dims(tmp_path):
    layout = ScreenLayout(plates=("P1",), wells=("A01",), sites=(0,), channels=("DNA",), shape_yx=(32, 32),
                          t_min=(0.0, 30.0))
    screen = Screen.create(tmp_path / "t.zarr", layout)
    with pytest.raises(ValueError, match="must come after"):
        screen.extend(t_min=[15.0])
    with pytest.raises(ValueError, match="cannot grow"):
        screen.extend(channels=["GFP"])
    assert screen.extend(t_min=[60.0]).layout.t_min == (0.0, 30.0, 60.0)
    assert screen.extend(wells=["A01"]) is screen  # nothing new: unchanged


def test_a_handle_sent_after_the_store_grew_is_not_the_stale_one(tmp_path):
    screen = write_synthetic_screen(tmp_path / "s.zarr", SyntheticSpec(wells=("A01",), sites=1, shape_yx=(32, 32),
                                                                      channels=("DNA",), seed=0))
    old = pickle.loads(pickle.dumps(screen))  # a worker's cached handle
    assert len(old.fields(acquired_only=False)) == 1
    grown = screen.extend(wells=["A02"])
    fresh = pickle.loads(pickle.dumps(Screen(grown.path)))
    assert fresh is not old and len(fresh.fields(acquired_only=False)) == 2


def test_update_ingest_grows_the_store_to_equal_a_one_go_ingest(tmp_path, plate_files, monkeypatch):
    clean = ingest(plate_files, tmp_path / "clean.zarr", pattern=PATTERN, scheduler="threads")
    assert clean.n_fields_ingested == 12
    live = tmp_path / "live"
    _copy(plate_files, live, "P1_A02_s1", "P1_B01_s0")  # what was acquired by the first run
    first = ingest(live, tmp_path / "live.zarr", pattern=PATTERN, scheduler="threads")
    assert first.n_fields_ingested == 2

    _copy(plate_files, live, "P")  # the rest of the night's acquisition
    (live / "P2_A01_s0_wGFP.tif").write_bytes((plate_files / "P2_A01_s0_wDNA.tif").read_bytes())  # not a channel
    tifffile.imwrite(live / "P2_B02_s0_wDNA.tif", np.zeros((64, 64), np.uint16))  # another size: bad file
    reads: list[str] = []
    real = ingest_write.read_checked

    def counted(path, spec):
        reads.append(str(path))
        return real(path, spec)

    monkeypatch.setattr(ingest_write, "read_checked", counted)
    update = ingest(live, tmp_path / "live.zarr", pattern=PATTERN, update=True, scheduler="threads")
    assert update.n_fields_ingested == 10 and update.n_fields == 11  # 10 new good fields, P2/B02/0 bad
    assert not any("P1_A02_s1" in r or "P1_B01_s0" in r for r in reads)  # acquired fields are not read again
    bad = dict(update.failed)
    assert "channel 'GFP'" in bad[str(live / "P2_A01_s0_wGFP.tif")]
    assert "64x64" in bad[str(live / "P2_B02_s0_wDNA.tif")]

    grown = Screen.open(tmp_path / "live.zarr").dataset()
    reference = Screen.open(tmp_path / "clean.zarr").dataset()
    for name in ("images", "acquired"):
        np.testing.assert_array_equal(_aligned(grown, reference, name), reference[name].values)
    assert not grown["acquired"].sel(plate="P2", well="B02").values.any()  # its one file was bad
    again = ingest(live, tmp_path / "live.zarr", pattern=PATTERN, update=True, scheduler="threads")
    assert again.n_fields_ingested == 0 and set(dict(again.failed)) == set(bad)  # still reported, nothing re-read


def test_update_refuses_a_store_made_with_another_pattern(tmp_path, plate_files):
    ingest(plate_files, tmp_path / "s.zarr", pattern=PATTERN, scheduler="threads")
    renamed = FilenamePattern(PATTERN, channel_names={"DNA": "Hoechst"})  # same files, other channel names
    with pytest.raises(IngestError, match="not made by an ingest with this pattern"):
        ingest(plate_files, tmp_path / "s.zarr", pattern=renamed, update=True)
    with pytest.raises(IngestError, match="not both"):
        ingest(plate_files, tmp_path / "s.zarr", pattern=PATTERN, update=True, overwrite=True)
