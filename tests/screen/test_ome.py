from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from cellflow.errors import IngestError, StoreExistsError
from cellflow.screen import DIMS_LABELS, Screen, ScreenLayout
from cellflow.screen.ome import OME_VERSION, export_ome_zarr, import_ome_zarr

# Tile (40, 50) does not divide the 96 x 128 field: edge chunks are partial.
LAYOUT = ScreenLayout(
    plates=("P1", "P2"), wells=("B07", "C02"), sites=(0, 1), channels=("DNA", "Cyto", "BF"),
    shape_yx=(96, 128), t_min=(0.0, 30.0), z_um=(-2.0, 0.0, 2.0), tile_yx=(40, 50), pixel_size_um=0.65,
)
NEVER = ("P2", "C02", 1)  # a site never acquired at any time
PARTIAL = ("P1", "C02", 1, 30.0)  # a site acquired at t=0 only


def _image(rng, layout, labels=False):
    if labels:
        return rng.integers(0, 50, layout.shape_yx, dtype=np.uint32)
    return rng.integers(0, 65535, (len(layout.channels), len(layout.z_um), *layout.shape_yx), dtype=np.uint16)


def _fill(screen, layout, seed=0, skip=()):
    """Write random images and truth labels for every field not in ``skip``; mark them acquired."""
    rng = np.random.default_rng(seed)
    screen.add_variable("truth_nuclei", dims=DIMS_LABELS, dtype="uint32")
    acquired = []
    for key in screen.fields(acquired_only=False):
        if key in skip or key[:3] in skip:
            continue
        where = dict(plate=key.plate, well=key.well, site=key.site, t=key.t)
        screen.write("images", _image(rng, layout), **where)
        screen.write("truth_nuclei", _image(rng, layout, labels=True), **where)
        acquired.append(key)
    screen.set_acquired(acquired)
    return screen


# The main screen is exported and imported once per module (about 5 s); tests only read them.
@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    screen = Screen.create(tmp_path_factory.mktemp("screen") / "screen.zarr", LAYOUT)
    return _fill(screen, LAYOUT, skip={NEVER, PARTIAL})


@pytest.fixture(scope="module")
def exported(screen):
    return export_ome_zarr(screen, screen.path.parent / "ome")


@pytest.fixture(scope="module")
def imported(exported):
    return import_ome_zarr(exported[0].parent, exported[0].parent.parent / "back.zarr")


TINY = ScreenLayout(plates=("T",), wells=("A01",), sites=(0,), channels=("DNA", "BF"), shape_yx=(35, 50),
                    tile_yx=(20, 20))


@pytest.fixture
def tiny(tmp_path):
    """A one-field screen whose odd height and tile exercise the pyramid edges."""
    return _fill(Screen.create(tmp_path / "tiny.zarr", TINY), TINY, seed=3)


def _attrs(path):
    return json.loads((path / "zarr.json").read_text())["attributes"]


def test_one_plate_per_folder_entry(exported):
    folder = exported[0].parent
    assert exported == [folder / "P1.ome.zarr", folder / "P2.ome.zarr"]
    assert all(_attrs(p)["ome"]["version"] == OME_VERSION for p in exported)
    assert zarr.open_array(exported[0] / "B" / "07" / "0" / "0", mode="r").metadata.zarr_format == 3


def test_reader_sees_plate_wells_fields_and_labels(exported):
    # ome-zarr is an optional extra of cellflow: export and import do not need it, this check does
    ome_io = pytest.importorskip("ome_zarr.io")
    ome_reader = pytest.importorskip("ome_zarr.reader")
    plate_path = exported[1]  # P2: C02 has site 0 only
    nodes = list(ome_reader.Reader(ome_io.parse_url(plate_path))())
    plate = nodes[0].first(ome_reader.Plate)
    assert plate is not None
    meta = nodes[0].metadata["metadata"]["plate"]
    assert meta["name"] == "P2" and meta["field_count"] == 2
    assert [r["name"] for r in meta["rows"]] == ["B", "C"]
    assert [c["name"] for c in meta["columns"]] == ["02", "07"]
    assert plate.well_paths == ["B/07", "C/02"]
    assert nodes[0].metadata["channel_names"] == ["DNA", "Cyto", "BF"]

    well = next(ome_reader.Reader(ome_io.parse_url(plate_path / "C" / "02"))()).first(ome_reader.Well)
    assert [image["path"] for image in well.well_data["images"]] == ["0"]  # site 1 never acquired

    field = list(ome_reader.Reader(ome_io.parse_url(plate_path / "B" / "07" / "1"))())
    image, labels_node = field[0], field[-1]
    assert [a["name"] for a in image.metadata["axes"]] == ["t", "c", "z", "y", "x"]
    assert [a.get("unit") for a in image.metadata["axes"]] == ["minute", None, "micrometer", "micrometer",
                                                               "micrometer"]
    assert image.metadata["coordinateTransformations"][0][0]["scale"] == [30.0, 1.0, 2.0, 0.65, 0.65]
    assert image.data[0].shape == (2, 3, 3, 96, 128)
    assert labels_node.first(ome_reader.Label) is not None
    assert labels_node.metadata["name"] == "truth_nuclei"
    assert labels_node.data[0].shape == (2, 1, 1, 96, 128)


def test_exported_pixels_equal_the_store(screen, exported):
    ds = screen.dataset()
    for key in screen.fields():
        path = exported[LAYOUT.plates.index(key.plate)] / key.well[0] / key.well[1:] / str(key.site)
        t = LAYOUT.t_min.index(key.t)
        image = zarr.open_array(path / "0", mode="r")
        labels = zarr.open_array(path / "labels" / "truth_nuclei" / "0", mode="r")
        assert image.chunks == (1, 1, 1, 40, 50)
        where = dict(plate=key.plate, well=key.well, site=key.site, t=key.t)
        np.testing.assert_array_equal(image[t], ds.images.sel(**where).values)
        np.testing.assert_array_equal(labels[t, 0, 0], ds.truth_nuclei.sel(**where).values)


def test_never_acquired_fields_stay_absent(screen, exported, imported):
    assert not (exported[1] / "C" / "02" / "1").exists()
    assert _attrs(exported[0] / "C" / "02" / "1")["cellflow"]["acquired_t"] == [0.0]
    assert imported.fields() == screen.fields()
    assert (*NEVER, 0.0) not in imported.fields() and PARTIAL not in imported.fields()
    assert not imported.dataset().acquired.sel(plate="P2", well="C02", site=1).values.any()


def test_round_trip_is_exact(screen, imported):
    assert imported.layout == LAYOUT
    original, copy = screen.dataset(), imported.dataset()
    for name in ("plate", "well", "site", "t", "c", "z"):
        np.testing.assert_array_equal(copy[name].values, original[name].values)
    assert copy.attrs["pixel_size_um"] == 0.65
    for name in ("images", "truth_nuclei", "acquired"):
        assert copy[name].dtype == original[name].dtype
        np.testing.assert_array_equal(copy[name].values, original[name].values)
    # every chunk of every imported field is recorded complete: fields x (t-plane: 3 c x 3 z) x 3 x 3 tiles
    assert imported.ledger("images").completed().sum() == len(screen.fields()) * 3 * 3 * 3 * 3


def test_refuses_to_overwrite_an_export(screen, exported, tiny, tmp_path):
    with pytest.raises(StoreExistsError, match="already exists; pass overwrite=True"):
        export_ome_zarr(screen, exported[0].parent)
    [first] = export_ome_zarr(tiny, tmp_path / "ome")
    tiny.write("images", np.full((2, 1, 35, 50), 9, np.uint16), well="A01", site=0)
    assert export_ome_zarr(tiny, tmp_path / "ome", overwrite=True) == [first]
    assert (zarr.open_array(first / "A" / "01" / "0" / "0", mode="r")[...] == 9).all()
    foreign = tmp_path / "other" / "T.ome.zarr"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(StoreExistsError, match="is not an OME-Zarr plate"):
        export_ome_zarr(tiny, foreign.parent, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(StoreExistsError, match="already exists"):
        import_ome_zarr(first, tiny.path)


def test_export_selected_labels_and_bad_arguments(screen, tiny, tmp_path):
    [plate] = export_ome_zarr(tiny, tmp_path / "none", labels=[])
    assert not (plate / "A" / "01" / "0" / "labels").exists()
    with pytest.raises(ValueError, match=r"labels \['labels_cells'\] are not labels_\*/truth_\* variables"):
        export_ome_zarr(screen, tmp_path / "x", labels=["labels_cells"])
    with pytest.raises(TypeError, match="sequence of variable names"):
        export_ome_zarr(screen, tmp_path / "x", labels="truth_nuclei")
    with pytest.raises(ValueError, match="levels must be a positive integer, got 0"):
        export_ome_zarr(screen, tmp_path / "x", levels=0)
    with pytest.raises(ValueError, match="below one pixel"):
        export_ome_zarr(screen, tmp_path / "x", levels=9)
    empty = Screen.create(tmp_path / "empty.zarr", TINY)
    with pytest.raises(ValueError, match="no acquired field"):
        export_ome_zarr(empty, tmp_path / "x")
    with pytest.raises(IngestError, match="neither an OME-Zarr HCS plate"):
        import_ome_zarr(screen.path, tmp_path / "y.zarr")
    with pytest.raises(FileNotFoundError, match="no OME-Zarr plate"):
        import_ome_zarr(tmp_path / "missing", tmp_path / "y.zarr")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y.zarr").exists()


def test_pyramid_levels(tiny, tmp_path):
    [plate] = export_ome_zarr(tiny, tmp_path / "ome", levels=2)
    field = plate / "A" / "01" / "0"
    full, half = (zarr.open_array(field / k, mode="r")[...] for k in ("0", "1"))
    assert half.shape == (1, 2, 1, 17, 25)  # the odd last row is dropped
    blocks = full[..., :34, :].reshape(1, 2, 1, 17, 2, 25, 2).astype(np.float64).mean(axis=(4, 6))
    np.testing.assert_array_equal(half, np.round(blocks).astype(np.uint16))
    labels = zarr.open_array(field / "labels" / "truth_nuclei" / "1", mode="r")[...]
    full_labels = zarr.open_array(field / "labels" / "truth_nuclei" / "0", mode="r")[...]
    np.testing.assert_array_equal(labels, full_labels[..., :34:2, ::2])  # nearest: no invented ids
    datasets = _attrs(field)["ome"]["multiscales"][0]["datasets"]
    assert datasets[1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0, 1.0, 2.0, 2.0]},
        {"type": "translation", "translation": [0.0, 0.0, 0.0, 0.5, 0.5]},
    ]
    back = import_ome_zarr(plate, tmp_path / "back.zarr")  # level 0 comes back
    np.testing.assert_array_equal(back.dataset().images.values, tiny.dataset().images.values)


def test_metadata_validates_against_ome_zarr_models(exported, tiny, tmp_path):
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.hcs import HCS
    from ome_zarr_models.v05.image import ImageAttrs
    from ome_zarr_models.v05.image_label import ImageLabelAttrs
    from ome_zarr_models.v05.labels import LabelsAttrs

    # The whole hierarchy (plate, wells, images, arrays). Without labels: ome-zarr-models 1.6 fails
    # on any label group that has no 'colors' (optional in the spec) when it walks a hierarchy.
    [plate] = export_ome_zarr(tiny, tmp_path / "ome", labels=[], levels=2)
    hcs = HCS.from_zarr(zarr.open_group(plate, mode="r"))
    assert [w.path for w in hcs.attributes.ome.plate.wells] == ["A/01"]
    field = exported[0] / "B" / "07" / "0"
    image = ImageAttrs.model_validate(_attrs(field)["ome"])
    assert [c["label"] for c in image.omero["channels"]] == ["DNA", "Cyto", "BF"]
    labels = LabelsAttrs.model_validate(_attrs(field / "labels")["ome"])
    assert labels.labels == ["truth_nuclei"]
    label = ImageLabelAttrs.model_validate(_attrs(field / "labels" / "truth_nuclei")["ome"])
    assert label.image_label.source.image == "../../"


# ome-zarr 0.18's writer module builds a deprecated Scaler as a default argument at import time.
@pytest.mark.filterwarnings("ignore:Call to deprecated class Scaler:DeprecationWarning")
def test_metadata_matches_ome_zarr_writer(exported, tmp_path):
    writer = pytest.importorskip("ome_zarr.writer")
    mine = _attrs(exported[0])["ome"]["plate"]
    group = zarr.open_group(tmp_path / "ref.zarr", mode="w", zarr_format=3)
    writer.write_plate_metadata(group, ["B", "C"], ["02", "07"], ["B/07", "C/02"], name="P1", field_count=2)
    assert mine == dict(group.attrs)["ome"]["plate"]
    writer.write_well_metadata(group, [{"path": "0"}, {"path": "1"}])
    assert _attrs(exported[0] / "B" / "07")["ome"] == dict(group.attrs)["ome"]


def _channel(label):
    return {"label": label, "color": "FFFFFF", "window": {"min": 0, "max": 4095, "start": 0, "end": 4095}}


@pytest.mark.filterwarnings("ignore:Call to deprecated class Scaler:DeprecationWarning")
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_import_a_plate_written_by_ome_zarr(tmp_path, version):
    """A plate from another tool: 4-D czyx images, well 'B/7', int32 labels named 'nuclei'."""
    writer = pytest.importorskip("ome_zarr.writer")
    from ome_zarr.format import format_from_version

    fmt = format_from_version(version)  # 0.4 is zarr v2 with top-level attributes, 0.5 zarr v3 under 'ome'
    rng = np.random.default_rng(7)
    root = zarr.open_group(tmp_path / "ext.ome.zarr", mode="w", zarr_format=fmt.zarr_format)
    writer.write_plate_metadata(root, ["B"], ["7"], ["B/7"], name="ext", fmt=fmt)
    well = root.require_group("B").require_group("7")
    writer.write_well_metadata(well, [{"path": "0"}, {"path": "2"}], fmt=fmt)
    scale = {"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.5}
    units = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    pixels, labels = {}, {}
    for site in (0, 2):
        pixels[site] = rng.integers(0, 4096, (2, 3, 40, 50), dtype=np.uint16)
        labels[site] = rng.integers(0, 9, (1, 1, 40, 50), dtype=np.int32)
        image = well.require_group(str(site))
        writer.write_image(pixels[site], image, scale_factors=[], axes="czyx", scale=scale, axes_units=units,
                           storage_options={"chunks": (1, 1, 20, 25)}, fmt=fmt,
                           omero={"channels": [_channel("DAPI"), _channel("GFP")]})
        writer.write_labels(labels[site], image, name="nuclei", scaler=None, scale_factors=[], axes="czyx",
                            scale=scale, fmt=fmt)
    assert (tmp_path / "ext.ome.zarr" / (".zattrs" if version == "0.4" else "zarr.json")).is_file()
    back = import_ome_zarr(tmp_path / "ext.ome.zarr", tmp_path / "back.zarr")
    layout = back.layout
    assert (layout.plates, layout.wells, layout.sites, layout.channels) == (("ext",), ("B07",), (0, 2),
                                                                            ("DAPI", "GFP"))
    assert (layout.z_um, layout.t_min, layout.pixel_size_um, layout.tile_yx) == ((0.0, 2.0, 4.0), (0.0,),
                                                                                 0.5, (20, 25))
    assert len(back.fields()) == 2
    ds = back.dataset()
    for site in (0, 2):
        np.testing.assert_array_equal(ds.images.sel(site=site).values[0, 0, 0], pixels[site])
        np.testing.assert_array_equal(ds.labels_nuclei.sel(site=site).values[0, 0, 0], labels[site][0, 0])


@pytest.mark.slow
def test_bar_plate_round_trip_1024(tmp_path):
    """The issue's bar: a synthetic plate, 2 wells x 4 sites x 3 channels x 3 z at 1024 x 1024, round-trips
    through the store and through OME-Zarr export/import with identical pixels (images and both truths)."""
    from cellflow.screen.synthetic import SyntheticSpec, synthesize_field, write_synthetic_screen

    spec = SyntheticSpec(plates=("BAR",), wells=("A01", "B02"), sites=4, shape_yx=(1024, 1024),
                         channels=("DNA", "Cyto", "BF"), n_z=3, seed=7)
    screen = write_synthetic_screen(tmp_path / "bar.zarr", spec)
    exported = export_ome_zarr(screen, tmp_path / "ome")
    back = import_ome_zarr(exported[0], tmp_path / "back.zarr")
    stored, imported = screen.dataset(), back.dataset()
    fields = screen.fields()
    assert len(fields) == 8
    for key in fields:
        expected = synthesize_field(spec, plate=key.plate, well=key.well, site=key.site)  # independent re-synthesis
        where = dict(plate="BAR", well=key.well, site=key.site)
        np.testing.assert_array_equal(stored.images.sel(**where).values, expected.images)
        field = exported[0] / key.well[0] / key.well[1:] / str(key.site)
        np.testing.assert_array_equal(zarr.open_array(field / "0", mode="r")[...], expected.images)
        np.testing.assert_array_equal(imported.images.sel(**where).values, expected.images)
        for truth in ("truth_nuclei", "truth_cells"):
            np.testing.assert_array_equal(imported[truth].sel(**where).values, getattr(expected, truth))
    assert back.fields() == screen.fields() and back.layout == screen.layout
