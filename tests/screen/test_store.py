from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import zarr

from cellflow.errors import RegionError, SchemaError, StoreExistsError
from cellflow.screen import DIMS_LABELS, Screen, ScreenLayout, chunk_digest, open_screen

LAYOUT = ScreenLayout(
    plates=("P1", "P2"), wells=("A01", "B02"), sites=(0, 1, 2), channels=("DNA", "Cyto"),
    shape_yx=(70, 90), t_min=(0.0, 15.0), z_um=(-1.5, 0.0, 1.5), tile_yx=(32, 40), pixel_size_um=0.65,
)


@pytest.fixture
def screen(tmp_path):
    return Screen.create(tmp_path / "screen.zarr", LAYOUT)


def _field(seed, shape=(2, 3, 70, 90)):
    return np.random.default_rng(seed).integers(0, 65535, shape, dtype=np.uint16)


def test_create_writes_metadata_only(screen):
    # no pixel chunk exists until something is written: fields never acquired are never written
    assert not any(screen.path.glob("images/c/**/*.*")) and not (screen.path / "images" / "c").exists()
    ds = screen.dataset()
    assert ds.images.dims == ("plate", "well", "site", "t", "c", "z", "y", "x")
    assert ds.images.shape == LAYOUT.images_shape
    assert ds.images.data.chunksize == (1, 1, 1, 1, 1, 1, 32, 40)
    assert list(ds.well.values) == ["A01", "B02"] and list(ds.t.values) == [0.0, 15.0]
    assert ds.attrs["pixel_size_um"] == 0.65
    assert not ds.acquired.values.any()
    assert screen.layout == LAYOUT
    assert int(ds.images.sum().compute()) == 0  # unwritten chunks read as the fill value


def test_write_read_round_trip_by_label(screen):
    data = _field(1)
    screen.write("images", data, plate="P2", well="B02", site=1, t=15.0)
    ds = screen.dataset()
    got = ds.images.sel(plate="P2", well="B02", site=1, t=15.0).values
    np.testing.assert_array_equal(got, data)
    # a neighbouring field is untouched
    assert int(ds.images.sel(plate="P2", well="B02", site=0).sum().compute()) == 0
    np.testing.assert_array_equal(screen.read("images", plate="P2", well="B02", site=1, t=15, c="Cyto"), data[1])


def test_write_one_channel_plane_and_aligned_tile(screen):
    plane = _field(2, (70, 90))
    screen.write("images", plane[32:64, 40:80], plate="P1", well="A01", site=0, t=0, c="DNA", z=0.0,
                 y=slice(32, 64), x=slice(40, 80))
    # the last, partial chunk along y is aligned because it ends at the edge
    screen.write("images", plane[64:, :], plate="P1", well="A01", site=0, t=0, c="DNA", z=0.0, y=slice(64, None))
    got = screen.read("images", plate="P1", well="A01", site=0, t=0, c="DNA", z=0.0)
    expected = np.zeros_like(plane)
    expected[32:64, 40:80] = plane[32:64, 40:80]
    expected[64:, :] = plane[64:, :]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("where", "shape", "match"),
    [
        (dict(plate="P1", well="C03", site=0, t=0), (2, 3, 70, 90), r"well='C03' is not in .*\['A01', 'B02'\]"),
        (dict(plate="P1", well="A01", site=0, t=7.5), (2, 3, 70, 90), r"t=7.5 is not in"),
        (dict(plate="P1", well="A01", site=0), (2, 3, 70, 90), r"say which t to write"),
        (dict(plate="P1", well="A01", site=0, t=0), (2, 3, 70, 91), r"must have shape \(2, 3, 70, 90\), got \(2, 3, 70, 91\)"),
        (dict(plate="P1", well="A01", site=0, t=0, y=slice(10, 42)), (2, 3, 32, 90), r"y=10:42 is not aligned to its chunks of 32"),
        (dict(plate="P1", well="A01", site=0, t=0, y=slice(0, 40)), (2, 3, 40, 90), r"y=0:40 is not aligned"),
        (dict(plate="P1", well="A01", site=0, t=0, w=1), (2, 3, 70, 90), r"cannot select on \['w'\]"),
    ],
)
def test_bad_regions_are_refused(screen, where, shape, match):
    with pytest.raises(RegionError, match=match):
        screen.write("images", np.zeros(shape, np.uint16), **where)


def test_dtype_casting_rules(screen):
    where = dict(plate="P1", well="A01", site=0, t=0)
    screen.write("images", np.full((2, 3, 70, 90), 7, np.uint8), **where)  # lossless upcast
    assert screen.read("images", **where).dtype == np.uint16
    with pytest.raises(RegionError, match=r"values -1\.\.0 do not fit its dtype uint16"):
        screen.write("images", np.full((2, 3, 70, 90), -1, np.int64) * np.eye(1, 90, dtype=np.int64), **where)
    with pytest.raises(RegionError, match=r"holds uint16; cannot store float64 without loss"):
        screen.write("images", np.zeros((2, 3, 70, 90)), **where)


def test_derived_variable_and_extra_dim(screen):
    screen.add_variable("truth_nuclei", dims=DIMS_LABELS, dtype="uint32")
    screen.add_variable("probabilities", dims=("plate", "well", "site", "t", "class", "y", "x"), dtype="float32",
                        coords={"class": ["background", "interior", "boundary"]})
    labels = np.random.default_rng(3).integers(0, 2**32 - 1, (70, 90), dtype=np.uint32)
    screen.write("truth_nuclei", labels, plate="P1", well="B02", site=2, t=15.0)
    probs = np.random.default_rng(4).random((3, 70, 90), dtype=np.float32)
    screen.write("probabilities", probs, plate="P1", well="B02", site=2, t=15.0)
    ds = Screen.open(screen.path).dataset()
    np.testing.assert_array_equal(ds.truth_nuclei.sel(plate="P1", well="B02", site=2, t=15.0).values, labels)
    np.testing.assert_array_equal(ds.probabilities.sel(plate="P1", well="B02", site=2, t=15.0).values, probs)
    assert list(ds["class"].values) == ["background", "interior", "boundary"]
    assert ds.probabilities.data.chunksize == (1, 1, 1, 1, 3, 32, 40)
    assert set(screen.variables) == {"images", "acquired", "truth_nuclei", "probabilities"}
    screen.add_variable("truth_nuclei", dims=DIMS_LABELS, dtype="uint32", exist_ok=True)  # idempotent
    with pytest.raises(SchemaError, match=r"variable 'truth_nuclei' already exists"):
        screen.add_variable("truth_nuclei", dims=DIMS_LABELS, dtype="uint32")


@pytest.mark.parametrize(
    ("name", "dims", "dtype", "match"),
    [
        ("labels_cells", DIMS_LABELS, "int32", r"labels must be unsigned integers"),
        ("labels_cells", ("plate", "well", "site", "y", "x"), "uint32", r"expected dims"),
        ("Bad-Name", DIMS_LABELS, "uint32", r"must be a lower-case identifier"),
        ("masks", ("plate", "well", "site", "t", "k", "y", "x"), "uint8", r"dim 'k' is not a screen dim"),
    ],
)
def test_add_variable_checks_schema(screen, name, dims, dtype, match):
    with pytest.raises(SchemaError, match=match):
        screen.add_variable(name, dims=dims, dtype=dtype)


def test_acquired_and_fields(screen):
    assert screen.fields() == []
    screen.set_acquired([("P2", "A01", 2, 15.0), ("P1", "B02", 0, 0.0)])
    assert screen.fields() == [("P1", "B02", 0, 0.0), ("P2", "A01", 2, 15.0)]
    acquired = screen.dataset().acquired
    assert int(acquired.sum()) == 2 and bool(acquired.sel(plate="P2", well="A01", site=2, t=15.0))
    assert len(screen.fields(acquired_only=False)) == 2 * 2 * 3 * 2


def test_ledger_records_exactly_the_written_chunks(screen):
    data = _field(5)
    records = screen.write("images", data, plate="P1", well="A01", site=1, t=0)
    # 2 channels x 3 z x ceil(70/32)=3 x ceil(90/40)=3 tiles
    assert len(records) == 2 * 3 * 3 * 3
    ledger = screen.ledger("images")
    assert ledger.grid_shape == (2, 2, 3, 2, 2, 3, 3, 3)
    assert not ledger.completed().any()
    assert ledger.mark(records) == 54
    done = ledger.completed()
    assert done.sum() == 54 and done[0, 0, 1, 0].all()
    # each digest is the digest of the stored chunk, recomputed independently from the store
    stored = zarr.open_array(screen.path / "images", mode="r")
    for r in records[:: 7]:
        block = stored.blocks[r.index]
        assert ledger.digests()[r.index] == chunk_digest(np.asarray(block))
    # a ledger survives reopening, and clearing forgets chunks
    again = Screen.open(screen.path).ledger("images")
    again.clear([records[0].index])
    assert again.completed().sum() == 53
    again.clear()
    assert not again.completed().any()


def test_a_ledger_chunk_holds_a_plates_wells_up_to_a_bound(screen, monkeypatch):
    """One read-modify-write per plate for units finishing in different wells, however they group."""
    import cellflow.screen.store as store

    records = screen.write("images", _field(6), plate="P2", well="B02", site=2, t=15.0)
    records += screen.write("images", _field(7), plate="P2", well="A01", site=0, t=0)
    ledger = screen.ledger("images")
    ledger.mark(records)
    stored = zarr.open_group(screen.path, mode="r")["_cellflow/ledger/images"]
    assert stored.chunks == (1, 2, *ledger.grid_shape[2:])  # both wells of a plate in one chunk
    expected = np.zeros(ledger.grid_shape, np.uint64)
    for r in records:
        expected[r.index] = r.digest
    np.testing.assert_array_equal(ledger.digests(), expected)
    # a grid too large for one chunk per plate is cut along wells, never below one well
    monkeypatch.setattr(store, "_LEDGER_CHUNK_ENTRIES", 2 * math.prod(ledger.grid_shape[2:]) - 1)
    other = Screen.create(screen.path.parent / "other.zarr", LAYOUT).ledger("images")
    other.mark(records)
    assert zarr.open_group(other.screen.path, mode="r")["_cellflow/ledger/images"].chunks[:2] == (1, 1)
    np.testing.assert_array_equal(other.digests(), expected)


def test_a_ledger_written_with_the_former_one_well_chunks_still_marks_and_reads(screen):
    """Stores made before the plate-wide ledger chunks keep their own layout."""
    grid = screen.ledger("images").grid_shape
    group = zarr.open_group(screen.path, mode="r+")
    group.create_array("_cellflow/ledger/images", shape=grid, chunks=(1, 1, *grid[2:]), dtype="uint64", fill_value=0)
    records = screen.write("images", _field(8), plate="P1", well="B02", site=1, t=0)
    ledger = Screen.open(screen.path).ledger("images")
    assert ledger.mark(records) == len(records)
    assert ledger.digests()[0, 1, 1, 0].all() and ledger.completed().sum() == len(records)
    assert group["_cellflow/ledger/images"].chunks == (1, 1, *grid[2:])


def test_chunk_digest_sees_content_dtype_and_shape():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert chunk_digest(a) == chunk_digest(a.copy())
    assert chunk_digest(a) != chunk_digest(a.astype(np.uint32))
    assert chunk_digest(a) != chunk_digest(a.reshape(4, 3))
    b = a.copy()
    b[2, 3] += 1
    assert chunk_digest(a) != chunk_digest(b)


def test_overwrite_rules(screen, tmp_path):
    with pytest.raises(StoreExistsError, match=r"already exists; pass overwrite=True"):
        Screen.create(screen.path, LAYOUT)
    other = tmp_path / "not_a_store"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(StoreExistsError, match=r"is not a cellflow screen store; refusing to overwrite"):
        Screen.create(other, LAYOUT, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    old_id = screen.screen_id
    screen.write("images", _field(6), plate="P1", well="A01", site=0, t=0)
    fresh = Screen.create(screen.path, LAYOUT, overwrite=True)
    assert fresh.screen_id != old_id
    assert int(fresh.dataset().images.sum().compute()) == 0


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no screen store at .*missing\.zarr"):
        Screen.open(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(SchemaError, match=r"plain\.zarr is not a cellflow screen store"):
        Screen.open(tmp_path / "plain.zarr")


def test_open_validates(screen):
    # break the store behind the API's back: store labels as signed ints
    group = zarr.open_group(screen.path, mode="r+")
    group.create_array("labels_nuclei", shape=(2, 2, 3, 2, 70, 90), dtype="int32",
                       dimension_names=DIMS_LABELS)
    with pytest.raises(SchemaError, match=r"labels must be unsigned integers, got dtype int32"):
        open_screen(screen.path)
    assert "labels_nuclei" in Screen.open(screen.path, validate=False).variables


def test_handle_pickles_as_path_and_store_id(screen):
    screen.coords()  # fill the cache; it must not travel
    payload = pickle.dumps(screen)
    assert len(payload) < 400  # path + id: every dask task carries one
    clone = pickle.loads(payload)
    assert clone is not screen and clone.path == screen.path and clone._coords is None
    assert clone.screen_id == screen.screen_id


def test_a_process_keeps_one_handle_per_store_and_never_reuses_it_for_a_new_store(tmp_path, screen):
    # workers unpickle the screen once per task: they must share one handle (its open arrays)
    clone = pickle.loads(pickle.dumps(screen))
    assert pickle.loads(pickle.dumps(screen)) is clone
    assert pickle.loads(pickle.dumps(Screen.open(screen.path))) is clone
    other = Screen.create(tmp_path / "other.zarr", LAYOUT)
    assert pickle.loads(pickle.dumps(other)) is not clone
    # a store re-created at the same path is another store (new id), never the old handle's arrays
    clone.read("images", plate="P1", well="A01", site=0, t=0.0, c="DNA")
    recreated = Screen.create(screen.path, LAYOUT, overwrite=True)
    fresh = pickle.loads(pickle.dumps(recreated))
    assert fresh is not clone and fresh.screen_id == recreated.screen_id != clone.screen_id


def test_a_long_lived_handle_sees_dims_added_after_it_read_the_coordinates(screen):
    clone = pickle.loads(pickle.dumps(screen))
    assert "class" not in clone.coords()
    dims = ("plate", "well", "site", "t", "class", "y", "x")
    screen.add_variable("probabilities", dims=dims, dtype="float32", coords={"class": ["bg", "in", "edge"]},
                        chunks={"class": 1})
    data = np.random.default_rng(3).random((70, 90), dtype=np.float32)
    clone.write("probabilities", data, plate="P2", well="B02", site=1, t=15.0, **{"class": "edge"})
    got = screen.dataset().probabilities.sel(plate="P2", well="B02", site=1, t=15.0)
    np.testing.assert_array_equal(got.sel({"class": "edge"}).values, data)
    assert not got.sel({"class": ["bg", "in"]}).values.any()


def test_open_and_reduce_is_lazy(screen, no_compute):
    screen.write("images", _field(7), plate="P1", well="A01", site=0, t=0)
    with no_compute():
        ds = Screen.open(screen.path).dataset()
        mean = ds.images.mean(dim=("site", "y", "x"))  # builds a graph only
    assert mean.shape == (2, 2, 2, 2, 3)
    expected = _field(7).reshape(2, 3, -1).mean(axis=-1) / 3  # one of three sites written
    np.testing.assert_allclose(mean.sel(plate="P1", well="A01", t=0.0).values, expected, rtol=1e-12)
