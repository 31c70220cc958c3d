"""Tests of cellflow.screen.ingest: patterns, scanning, lazy reads, ingest and the nuclei pairs."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cellflow.errors import IngestError, StoreExistsError
from cellflow.screen import Screen, open_screen
from cellflow.screen.ingest import (
    FilenamePattern,
    IngestReport,
    ingest,
    ingest_nuclei_pairs,
    lazy_images,
    read_header,
    reduce_rgb,
    scan,
    well_names,
)
from tests.conftest import NUCLEI_DATA, forbid_compute

GUID = "D3D1A84C-0B6B-4A5B-9C53-2B5D1C5C9A6E"
SHAPE = (50, 70)  # not a multiple of TILE, so edge chunks are partial
TILE = (32, 40)
TEMPLATE = "{plate}_{well}_s{site}_t{t}_w{channel}.tif"
CHANNELS = {"1": "DNA", "2": "Cyto"}
INTERVAL = 15.0


# ---------------------------------------------------------------------------- patterns
@pytest.mark.parametrize(
    ("template", "name", "expected"),
    [
        ("{well}_s{site}_w{channel}.tif", "B07_s2_w1.tif",
         {"plate": "folder", "well": "B07", "site": 2, "t": 0.0, "channel": "DNA", "z": 0.0}),
        ("{row}{col}_s{site}_w{channel}.tif", "b7_s0_w3.tif",
         {"plate": "folder", "well": "B07", "site": 0, "t": 0.0, "channel": "3", "z": 0.0}),
        ("{plate}_{well:[A-P][0-9]{2}}_t{t}_z{z}_{channel}.tif", "Run_2_C11_t3_z2_GFP.tif",
         {"plate": "Run_2", "well": "C11", "site": 0, "t": 45.0, "channel": "GFP", "z": 1.0}),
        ("*_{well}_w{channel}.png", "scan 12 (copy)_H01_w2.png",
         {"plate": "folder", "well": "H01", "site": 0, "t": 0.0, "channel": "Cyto", "z": 0.0}),
        ("{plate}/{well}.tif", "P9/AF48.tif",
         {"plate": "P9", "well": "AF48", "site": 0, "t": 0.0, "channel": "image", "z": 0.0}),
    ],
)
def test_template_coordinates(template, name, expected):
    pattern = FilenamePattern(template, channel_names=CHANNELS, interval_min=INTERVAL, z_step_um=0.5)
    assert pattern.coordinates(name, default_plate="folder") == expected


def test_template_literals_match_exactly():
    pattern = FilenamePattern("{well}_s{site}.tif")
    assert pattern.match("A01_s1.tif") == {"well": "A01", "site": "1"}
    for name in ("A01_s1xtif", "A01_s1.tiff", "A01_s1.tif.bak", "_A01_s1.tif", "A01_sx.tif"):
        assert pattern.match(name) is None, name
    assert not pattern.matches_path and FilenamePattern("{plate}/{well}.tif").matches_path


@pytest.mark.parametrize(
    ("name", "plate", "well", "site", "channel"),
    [
        (f"IXMtest_A02_s1_w1{GUID}.tif", "IXMtest", "A02", 1, "1"),
        ("Week1_150607_B02_s4_w1E4A56DD0-9E45-4E14-A7B8-5C0F5F7F1A3E.tif", "Week1_150607", "B02", 4, "1"),
        (f"Week1_150607_B02_s4_w2{GUID.lower()}.TIF", "Week1_150607", "B02", 4, "2"),
        ("Plate_7_P24_s12_w3.tif", "Plate_7", "P24", 12, "3"),
        ("A01_s3_w2.tiff", "folder", "A01", 3, "2"),
        ("A01_w2.tif", "folder", "A01", 0, "2"),
    ],
)
@pytest.mark.parametrize("builtin", ["bbbc", "imagexpress"])
def test_bbbc_names(builtin, name, plate, well, site, channel):
    coords = FilenamePattern.named(builtin).coordinates(name, default_plate="folder")
    assert coords is not None
    assert (coords["plate"], coords["well"], coords["site"], coords["channel"]) == (plate, well, site, channel)


@pytest.mark.parametrize("name", [f"IXMtest_A02_s1_w1_thumb{GUID}.tif", "IXMtest_A02_s1_w1.png", "notes.txt"])
def test_bbbc_skips_thumbnails_and_other_files(name):
    assert FilenamePattern.named("bbbc").match(name) is None


def test_cellflow_named_and_from_regex():
    coords = FilenamePattern.named("cellflow", interval_min=10).coordinates("P_1_B07_s2_t3_z1_DNA.tif",
                                                                            default_plate="x")
    assert coords == {"plate": "P_1", "well": "B07", "site": 2, "t": 30.0, "channel": "DNA", "z": 1.0}
    pattern = FilenamePattern.from_regex(r"r(?P<row>\d\d)c(?P<col>\d\d)f(?P<site>\d+)-ch(?P<channel>\d)\.png")
    assert pattern.fields == ("row", "col", "site", "channel")
    with pytest.raises(IngestError, match="not a well name"):  # a numeric row is not a well row
        pattern.coordinates("r02c05f1-ch1.png", default_plate="x")
    pattern = FilenamePattern.from_regex(r"(?P<well>[A-P]\d+)-(?P<channel>\w+)\.png", plate="screen")
    assert pattern.coordinates("C3-dapi.png", default_plate="x") == {
        "plate": "screen", "well": "C03", "site": 0, "t": 0.0, "channel": "dapi", "z": 0.0}


def test_pattern_round_trips_and_replaces():
    pattern = FilenamePattern(TEMPLATE, channel_names=CHANNELS, interval_min=INTERVAL, rgb="max")
    assert FilenamePattern.from_dict(pattern.to_dict()) == pattern
    regex = FilenamePattern.named("bbbc")
    assert FilenamePattern.from_dict(regex.to_dict()) == regex
    assert dataclasses.replace(pattern, rgb="mean").rgb == "mean"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"template": "{well}_{stage}.tif"}, "unknown field 'stage'"),
        ({"template": "{well}_{site.tif"}, "never closed"),
        ({"template": "{well}}.tif"}, "unmatched"),
        ({"template": "{site}.tif"}, "must capture the well"),
        ({"template": "{well}_{row}{col}.tif"}, "either 'well' or both"),
        ({"template": "{row}_{site}.tif"}, "must capture the well"),
        ({"regex": r"(?P<well>\w+)_(?P<wavelength>\d)"}, "unknown field"),
        ({"regex": r"(?P<well>[A-"}, "not a valid regular expression"),
        ({"template": "{well}.tif", "rgb": "grey"}, "rgb must be one of"),
        ({"template": "{well}.tif", "interval_min": 0}, "interval_min must be a positive"),
        ({"template": "{well}.tif", "channel_names": {"1": "DNA", "2": "DNA"}}, "two values to one name"),
        ({}, "needs a template or a regex"),
    ],
)
def test_pattern_errors(kwargs, match):
    with pytest.raises(IngestError, match=match):
        FilenamePattern(**kwargs)


def test_named_unknown():
    with pytest.raises(ValueError, match="unknown built-in pattern 'operetta'"):
        FilenamePattern.named("operetta")


def test_reduce_rgb_methods():
    pixels = np.array([[[10, 20, 31, 7], [255, 255, 255, 0]]], np.uint8)
    assert reduce_rgb(pixels, "mean").tolist() == [[20, 255]]
    assert reduce_rgb(pixels, "max").tolist() == [[31, 255]]
    assert reduce_rgb(pixels, "blue").tolist() == [[31, 255]]
    # 0.2125*10 + 0.7154*20 + 0.0721*31 = 18.66 -> 19
    assert reduce_rgb(pixels, "luminance").tolist() == [[19, 255]]


# ---------------------------------------------------------------------------- synthetic folders
def _tiff(path: Path, data: np.ndarray, **kwargs) -> None:
    kwargs.setdefault("photometric", "rgb" if data.shape[-1] in (3, 4) and data.ndim == 3 else "minisblack")
    tifffile.imwrite(path, data, **kwargs)


def _pixels(rng, shape, dtype):
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 30, shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    weighted = 0.2125 * rgb[..., 0].astype(float) + 0.7154 * rgb[..., 1] + 0.0721 * rgb[..., 2]
    return np.rint(weighted).astype(rgb.dtype)


CASES = {
    # case: (file dtype, planes per file, samples per pixel)
    "uint16": ("uint16", 1, 1),
    "uint8": ("uint8", 1, 1),
    "float32": ("float32", 1, 1),
    "zstack": ("uint16", 3, 1),
    "rgb": ("uint8", 1, 3),
}


def write_screen_folder(folder: Path, case: str = "uint16", seed: int = 0) -> dict[tuple, np.ndarray]:
    """TIFFs named by TEMPLATE; returns the expected (z, y, x) planes by (plate, well, site, t_min, channel)."""
    dtype, planes, samples = CASES[case]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    files = [(p, w, s, t, c) for p in ("P1", "P2") for w in ("A01", "B03") for s in (0, 1) for t in (0, 2)
             for c in ("1", "2")]
    for i, (plate, well, site, t, ch) in enumerate(files):
        path = folder / f"{plate}_{well}_s{site}_t{t}_w{ch}.tif"
        shape = (planes, *SHAPE, samples) if samples > 1 else (planes, *SHAPE)
        data = _pixels(rng, shape, dtype)
        if case == "rgb":
            data = data[..., :4] if i % 5 else np.concatenate([data, data[..., :1]], axis=-1)  # some RGBA
            _tiff(path, data[0])
            expected[plate, well, site, t * INTERVAL, CHANNELS[ch]] = _luminance(data)
        elif case == "zstack" and i % 2:  # pages appended one by one: one series per page
            for plane in data:
                tifffile.imwrite(path, plane, append=True, photometric="minisblack")
        else:
            _tiff(path, data if planes > 1 else data[0])
        if case != "rgb":
            expected[plate, well, site, t * INTERVAL, CHANNELS[ch]] = data
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden_A01_s0_t0_w1.tif").write_bytes(b"")
    return expected


def pattern_for(case: str) -> FilenamePattern:
    return FilenamePattern(TEMPLATE, channel_names=CHANNELS, interval_min=INTERVAL, z_step_um=0.5,
                           rgb="luminance" if case == "rgb" else None)


def assert_store_holds(store: Path, expected: dict[tuple, np.ndarray], *, bad: tuple = ()) -> None:
    ds = open_screen(store)
    for key, planes in expected.items():
        plate, well, site, t, channel = key
        got = ds.images.sel(plate=plate, well=well, site=site, t=t, c=channel).values
        field_ok = (plate, well, site, t) not in bad
        assert bool(ds.acquired.sel(plate=plate, well=well, site=site, t=t)) == field_ok
        if field_ok:
            assert got.dtype == planes.dtype
            np.testing.assert_array_equal(got, planes, err_msg=str(key))
        else:
            assert not got.any()  # nothing of a bad field is written


@pytest.mark.parametrize("case", list(CASES))
def test_ingest_round_trips_pixel_exact(tmp_path, case):
    expected = write_screen_folder(tmp_path / "plate_folder", case)
    report = ingest(tmp_path / "plate_folder", tmp_path / "s.zarr", pattern=pattern_for(case),
                    tile_yx=TILE, pixel_size_um=0.65)
    assert report.failed == () and report.n_fields_ingested == report.n_fields == 16
    assert report.n_files == 32
    assert report.skipped == (str(tmp_path / "plate_folder" / "notes.txt"),)
    assert_store_holds(tmp_path / "s.zarr", expected)
    screen = Screen.open(tmp_path / "s.zarr")
    layout = screen.layout
    assert layout.channels == ("DNA", "Cyto") and layout.t_min == (0.0, 30.0) and layout.sites == (0, 1)
    assert layout.z_um == ((0.0, 0.5, 1.0) if case == "zstack" else (0.0,))
    assert layout.dtype == CASES[case][0] and layout.pixel_size_um == 0.65
    assert screen.ledger("images").completed().all()  # every field complete, every chunk recorded
    assert IngestReport.load(tmp_path / "s.zarr") == report


def test_a_decoders_warning_about_a_bad_file_goes_into_its_reason_not_the_console(tmp_path, caplog):
    from cellflow.screen._ingest_read import BadFile, read_header

    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\xff" * 12)  # a TIFF signature whose first-page offset points nowhere
    with caplog.at_level("WARNING"), pytest.raises(BadFile) as raised:
        read_header(bad)
    assert "cannot read header" in raised.value.reason and "tifffile: " in raised.value.reason
    assert "offset" in raised.value.reason  # what tifffile said about it
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
    # outside cellflow's reading, tifffile's own warnings are left alone
    with caplog.at_level("WARNING"):
        logging.getLogger("tifffile").warning("a warning of the user's own reading")
    assert [r.getMessage() for r in caplog.records] == ["a warning of the user's own reading"]


def test_truncated_and_wrong_files_are_reported(tmp_path):
    folder = tmp_path / "plate"
    expected = write_screen_folder(folder, "uint16", seed=3)
    truncated = folder / "P1_B03_s1_t2_w2.tif"
    size = truncated.stat().st_size
    with truncated.open("r+b") as handle:
        handle.truncate(size // 2)
    wrong_size = folder / "P2_A01_s0_t0_w1.tif"
    _tiff(wrong_size, np.ones((40, 70), np.uint16))
    nan_only = folder / "P2_B03_s0_t2_w1.tif"
    _tiff(nan_only, np.full(SHAPE, np.nan, np.float32))
    empty = folder / "P1_A01_s0_t0_w1.tif"  # the first file: size and dtype come from the next one
    empty.write_bytes(b"")
    report = ingest(folder, tmp_path / "s.zarr", pattern=pattern_for("uint16"), tile_yx=TILE)
    reasons = dict(report.failed)
    assert set(reasons) == {str(truncated), str(wrong_size), str(nan_only), str(empty)}
    assert "cannot read header" in reasons[str(empty)]
    assert "cannot read pixels" in reasons[str(truncated)]
    assert "is 40x70 pixels; expected 50x70" in reasons[str(wrong_size)]
    assert "only NaN" in reasons[str(nan_only)]
    assert report.n_fields_ingested == 12 and report.n_fields == 16
    bad = {("P1", "B03", 1, 30.0), ("P2", "A01", 0, 0.0), ("P2", "B03", 0, 30.0), ("P1", "A01", 0, 0.0)}
    assert_store_holds(tmp_path / "s.zarr", expected, bad=bad)
    # no chunk of a bad field is recorded complete; all chunks of the others are
    screen = Screen.open(tmp_path / "s.zarr")
    completed = screen.ledger("images").completed()
    acquired = screen.dataset().acquired.values
    assert completed.all(axis=(4, 5, 6, 7)).tolist() == acquired.tolist()
    assert not completed[~acquired].any()
    assert str(truncated) in report.summary()


def test_a_file_of_channels_is_not_read_as_a_z_stack(tmp_path):
    """Pages are z planes on the pattern path too: an ImageJ channel stack in a z-stack plate is refused, not averaged."""
    folder = tmp_path / "plate"
    expected = write_screen_folder(folder, "zstack", seed=5)
    channels = folder / "P2_B03_s1_t0_w2.tif"
    _tiff(channels, expected["P2", "B03", 1, 0.0, "Cyto"], imagej=True, metadata={"axes": "CYX"})
    report = ingest(folder, tmp_path / "s.zarr", pattern=pattern_for("zstack"), tile_yx=TILE)
    assert [path for path, _ in report.failed] == [str(channels)]
    assert dict(report.failed)[str(channels)].startswith("holds 3 planes along axis 'C' (channels)")
    assert_store_holds(tmp_path / "s.zarr", expected, bad={("P2", "B03", 1, 0.0)})
    # a channel stack as the first file of a plate of single planes sets nothing: only it is refused
    flat = tmp_path / "flat"
    expected = write_screen_folder(flat, "uint16", seed=6)
    first = flat / "P1_A01_s0_t0_w1.tif"
    _tiff(first, np.stack([expected["P1", "A01", 0, 0.0, "DNA"][0]] * 2), imagej=True, metadata={"axes": "CYX"})
    report = ingest(flat, tmp_path / "flat.zarr", pattern=pattern_for("uint16"), tile_yx=TILE)
    assert [path for path, _ in report.failed] == [str(first)]
    assert Screen.open(tmp_path / "flat.zarr").layout.z_um == (0.0,)
    assert_store_holds(tmp_path / "flat.zarr", expected, bad={("P1", "A01", 0, 0.0)})


def test_png_folder_mixed_dtypes_and_missing_planes(tmp_path):
    rng = np.random.default_rng(8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    expected = {}
    for i, (well, site, ch) in enumerate((w, s, c) for w in ("A01", "A02") for s in (1, 2) for c in ("1", "2")):
        if (well, site, ch) == ("A02", 2, "2"):
            continue  # a missing channel: the field still ingests, the plane stays 0
        dtype = np.uint16 if i % 3 == 0 else np.uint8  # 8-bit files go into the 16-bit store unchanged
        data = _pixels(rng, SHAPE, dtype)
        Image.fromarray(data).save(folder / f"{well}_s{site}_w{ch}.png")
        expected["pngs", well, site, 0.0, CHANNELS[ch]] = data[np.newaxis].astype(np.uint16)
    report = ingest(folder, tmp_path / "s.zarr", pattern=FilenamePattern("{well}_s{site}_w{channel}.png",
                                                                          channel_names=CHANNELS))
    assert report.ok and report.n_fields_ingested == 4 and report.n_files == 7
    assert report.notes == ("plate=pngs well=A02 site=2 t=0: 1 of 2 files missing; planes left 0",)
    assert_store_holds(tmp_path / "s.zarr", expected)
    assert not open_screen(tmp_path / "s.zarr").images.sel(well="A02", site=2, c="Cyto").any()


def test_wrong_number_of_pages_is_reported(tmp_path):
    folder = tmp_path / "plate"
    expected = write_screen_folder(folder, "zstack", seed=4)
    short = folder / "P1_A01_s1_t0_w2.tif"
    _tiff(short, np.zeros((2, *SHAPE), np.uint16))
    report = ingest(folder, tmp_path / "s.zarr", pattern=pattern_for("zstack"), tile_yx=TILE)
    assert report.failed == ((str(short), f"has 2 planes (pages); expected 3 like {folder / 'P1_A01_s0_t0_w1.tif'}"),)
    assert_store_holds(tmp_path / "s.zarr", expected, bad={("P1", "A01", 1, 0.0)})


def test_rgb_file_without_rgb_option(tmp_path):
    folder = tmp_path / "plate"
    write_screen_folder(folder, "rgb")
    report = ingest(folder, tmp_path / "s.zarr", pattern=pattern_for("uint16"))
    assert report.n_fields_ingested == 0 and len(report.failed) == 32
    assert all("set rgb= to one of" in reason for _, reason in report.failed)
    with pytest.raises(IngestError, match=r"is RGB\(A\) \([34] samples per pixel\); set rgb="):
        lazy_images(scan(folder, pattern_for("uint16")))[0, 0, 0, 0, 0].compute(scheduler="sync")


def test_scan_table_and_errors(tmp_path):
    folder = tmp_path / "plate"
    write_screen_folder(folder, "uint8")
    table = scan(folder, pattern_for("uint8"))
    assert list(table.files.columns) == ["path", "plate", "well", "site", "t", "channel", "z"]
    assert len(table) == 32 and table.skipped == (str(folder / "notes.txt"),)
    first = table.files.iloc[0]
    assert (first.plate, first.well, first.site, first.t, first.channel) == ("P1", "A01", 0, 0.0, "DNA")
    # a well in another folder level does not match a pattern without '/'... but the name does
    (folder / "sub").mkdir()
    _tiff(folder / "sub" / "P1_A01_s0_t0_w1.tif", np.zeros(SHAPE, np.uint8))
    with pytest.raises(IngestError, match=r"files .*P1_A01_s0_t0_w1.tif and .*sub/P1_A01_s0_t0_w1.tif have the same"):
        scan(folder, pattern_for("uint8"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match=r"no file in .*empty matches the pattern"):
        scan(empty, pattern_for("uint8"))
    with pytest.raises(IngestError, match="is not a folder"):
        scan(tmp_path / "missing", pattern_for("uint8"))
    with pytest.raises(IngestError, match="not a well name"):
        _tiff(empty / "P1_A123_s0_t0_w1.tif", np.zeros(SHAPE, np.uint8))
        scan(empty, FilenamePattern("{plate}_{well:[A-Z]+[0-9]+}_s{site}_t{t}_w{channel}.tif"))


def test_ingest_refuses_to_overwrite(tmp_path):
    folder = tmp_path / "plate"
    write_screen_folder(folder, "uint8")
    ingest(folder, tmp_path / "s.zarr", pattern=pattern_for("uint8"))
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        ingest(folder, tmp_path / "s.zarr", pattern=pattern_for("uint8"))
    report = ingest(folder, tmp_path / "s.zarr", pattern=pattern_for("uint8"), overwrite=True)
    assert report.ok
    (tmp_path / "other").mkdir()
    with pytest.raises(StoreExistsError, match="not a cellflow screen store"):
        ingest(folder, tmp_path / "other", pattern=pattern_for("uint8"), overwrite=True)


def test_lazy_images_reads_no_pixels(tmp_path, monkeypatch):
    folder = tmp_path / "plate"
    expected = write_screen_folder(folder, "zstack", seed=5)
    table = scan(folder, pattern_for("zstack"))
    reads = []
    real = tifffile.TiffPageSeries.asarray

    def counting(series, *args, **kwargs):  # every TIFF pixel read goes through here
        reads.append(series)
        return real(series, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", counting)
    with forbid_compute():
        images = lazy_images(table)
        images = images.sel(c="Cyto")  # selecting stays lazy too
    assert reads == []
    assert images.dims == ("plate", "well", "site", "t", "z", "y", "x")
    assert images.shape == (2, 2, 2, 2, 3, *SHAPE) and images.dtype == np.uint16
    assert images.data.numblocks == (2, 2, 2, 2, 1, 1, 1)  # one chunk = one file read
    got = images.sel(plate="P2", well="B03", site=1, t=30.0).values
    np.testing.assert_array_equal(got, expected["P2", "B03", 1, 30.0, "Cyto"])
    assert {series.parent.filename for series in reads} == {"P2_B03_s1_t2_w2.tif"}  # that file only


def test_ingest_with_distributed_cluster_matches_threads(tmp_path):
    distributed = pytest.importorskip("distributed")
    folder = tmp_path / "plate"
    write_screen_folder(folder, "uint16", seed=6)
    bad = folder / "P1_A01_s0_t2_w1.tif"
    bad.write_bytes(bad.read_bytes()[:200])
    threaded = ingest(folder, tmp_path / "threads.zarr", pattern=pattern_for("uint16"), tile_yx=TILE,
                      scheduler="threads")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster) as client:
        report = ingest(folder, tmp_path / "dist.zarr", pattern=pattern_for("uint16"), tile_yx=TILE,
                        scheduler=client)
    assert dataclasses.replace(report, store="") == dataclasses.replace(threaded, store="")
    assert report.failed[0][0] == str(bad)
    a, b = open_screen(tmp_path / "threads.zarr"), open_screen(tmp_path / "dist.zarr")
    np.testing.assert_array_equal(a.images.values, b.images.values)
    np.testing.assert_array_equal(a.acquired.values, b.acquired.values)
    digests = [Screen(p).ledger("images").digests() for p in (tmp_path / "threads.zarr", tmp_path / "dist.zarr")]
    np.testing.assert_array_equal(*digests)


# ---------------------------------------------------------------------------- paired nuclei
def _reference_image(path: str) -> np.ndarray:
    """The file read with a different library than ingest uses, RGB(A) -> rounded mean of RGB."""
    if path.endswith(".tif"):
        with Image.open(path) as image:  # ingest reads TIFF with tifffile
            data = np.asarray(image)
    else:
        data = iio.imread(path)  # ingest reads PNG with Pillow directly
    if data.ndim == 3:
        data = np.rint(data[..., :3].astype(float).sum(axis=-1) / 3)
    return data


@pytest.fixture(scope="module")
def nuclei_store(tmp_path_factory):
    if not (NUCLEI_DATA / "index.csv").is_file():
        pytest.skip(f"real nuclei data not found at {NUCLEI_DATA}")
    store = tmp_path_factory.mktemp("nuclei") / "nuclei.zarr"
    return store, ingest_nuclei_pairs(NUCLEI_DATA, store)


def test_nuclei_pairs_all_pixel_exact(nuclei_store):
    store, report = nuclei_store
    index = pd.read_csv(NUCLEI_DATA / "index.csv")
    assert len(index) == 89
    assert report.ok and report.n_fields_ingested == 89 and report.n_files == 178
    assert report.skipped == () and report.notes == ()
    ds = open_screen(store)
    assert ds.images.dtype == np.uint16 and ds.truth_nuclei.dtype == np.uint32
    assert ds.images.shape[-2:] == (1024, 1100)
    assert int(ds.acquired.sum()) == 89
    screen = Screen.open(store)
    names = ds.source_name.values[:, :, 0, 0]
    plates = [str(p) for p in ds.plate.values]
    for row in index.itertuples():
        i = plates.index(row.source)
        j = [str(n) for n in names[i]].index(row.name)
        assert bool(ds.acquired.values[i, j, 0, 0])
        height, width = int(ds.extent_y.values[i, j, 0, 0]), int(ds.extent_x.values[i, j, 0, 0])
        assert (height, width) == (row.height, row.width)
        assert str(ds.modality.values[i, j, 0, 0]) == row.modality
        where = {"plate": row.source, "well": str(ds.well.values[j])}
        truth = screen.read("truth_nuclei", **where)
        image = screen.read("images", **where)[0, 0]
        np.testing.assert_array_equal(truth[:height, :width], iio.imread(NUCLEI_DATA / row.mask), err_msg=row.name)
        np.testing.assert_array_equal(image[:height, :width], _reference_image(str(NUCLEI_DATA / row.image)),
                                      err_msg=row.name)
        assert not truth[height:].any() and not truth[:, width:].any()  # padding is 0
        assert not image[height:].any() and not image[:, width:].any()
    # every written chunk is in the ledger, of both variables
    for name in ("images", "truth_nuclei"):
        assert screen.ledger(name).completed().sum() == 89 * 2  # two x chunks: 1024 + 76


def test_nuclei_selection_by_modality_and_size(nuclei_store):
    store, _ = nuclei_store
    ds = open_screen(store)
    dsb = ds.sel(plate="dsb2018_stage1_test")
    assert int((dsb.modality == "fluorescence (gray)").sum()) == 53
    u2os = (ds.extent_y == 520) & (ds.extent_x == 696)
    assert int(u2os.sum()) == 10
    assert int(((ds.extent_y > 0) & ds.acquired).sum()) == 89


def test_nuclei_filters(tmp_path, nuclei_data):
    report = ingest_nuclei_pairs(nuclei_data, tmp_path / "s.zarr", sources=["stardist_examples"])
    ds = open_screen(tmp_path / "s.zarr")
    assert report.n_fields_ingested == 2 and ds.plate.values.tolist() == ["stardist_examples"]
    assert ds.source_name.values.ravel().tolist() == ["img2d", "tests_img2d"]
    assert ds.images.shape[-2:] == (512, 512)
    hela = "fluorescence H2B-GFP (HeLa), 16-bit"
    ingest_nuclei_pairs(nuclei_data, tmp_path / "h.zarr", modalities=[hela])
    ds = open_screen(tmp_path / "h.zarr")
    assert ds.plate.values.tolist() == ["ctc_fluo_n2dl_hela"] and int(ds.acquired.sum()) == 4
    assert int(ds.images.max()) == 36863  # the ~33000 offset survives
    with pytest.raises(IngestError, match="sources \\['nope'\\] are not in"):
        ingest_nuclei_pairs(nuclei_data, tmp_path / "x.zarr", sources=["nope"])
    with pytest.raises(IngestError, match="modalities \\['grey'\\] match nothing"):
        ingest_nuclei_pairs(nuclei_data, tmp_path / "x.zarr", modalities=["grey"])
    # shell patterns select every fluorescence modality (counted independently from index.csv)
    import csv

    with open(nuclei_data / "index.csv") as f:
        expected = sum(row["modality"].startswith("fluorescence") for row in csv.DictReader(f))
    report = ingest_nuclei_pairs(nuclei_data, tmp_path / "f.zarr", modalities=["fluorescence*"])
    assert report.n_fields_ingested == expected == 74


def test_nuclei_pairs_missing_and_bad_masks(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "pairs"
    for sub in ("src/images", "src/masks"):
        (root / sub).mkdir(parents=True)
    rgba = rng.integers(0, 255, (30, 40, 4), dtype=np.uint8, endpoint=True)
    iio.imwrite(root / "src/images/a.png", rgba)
    iio.imwrite(root / "src/masks/a.png", rng.integers(0, 9, (30, 40)).astype(np.uint16))
    grey = rng.integers(0, 65535, (50, 20), dtype=np.uint16, endpoint=True)
    _tiff(root / "src/images/b.tif", grey)  # no mask
    _tiff(root / "src/images/c.tif", grey)
    iio.imwrite(root / "src/masks/c.png", np.zeros((50, 21), np.uint16))  # wrong size
    iio.imwrite(root / "src/masks/orphan.png", np.zeros((5, 5), np.uint16))
    report = ingest_nuclei_pairs(root, tmp_path / "s.zarr")
    assert report.n_fields == 3 and report.n_fields_ingested == 2
    assert report.failed == ((str(root / "src/masks/c.png"),
                              f"is 50x21 pixels; expected 50x20 like {root / 'src/images/c.tif'}"),)
    assert report.notes == (f"{root / 'src/images/b.tif'} has no mask in masks/; ingested without truth",)
    assert report.skipped == (str(root / "src/masks/orphan.png"),)
    ds = open_screen(tmp_path / "s.zarr")
    assert "modality" not in ds  # no index.csv
    assert ds.images.shape[-2:] == (50, 40) and ds.well.values.tolist() == ["A01", "A02", "A03"]
    np.testing.assert_array_equal(ds.images.values[0, 0, 0, 0, 0, 0, :30, :40], reduce_rgb(rgba, "mean"))
    np.testing.assert_array_equal(ds.images.values[0, 1, 0, 0, 0, 0, :, :20], grey)
    assert ds.acquired.values.ravel().tolist() == [True, True, False]
    completed = Screen(tmp_path / "s.zarr").ledger("truth_nuclei").completed().ravel()
    assert completed.tolist() == [True, False, False]  # b has no mask, c's mask is bad


def test_well_names():
    names = well_names(1536)
    assert names[:2] == ("A01", "A02") and names[24] == "B01" and names[383] == "P24"
    assert names[384] == "AA01" and names[384 + 6 * 24 - 1] == "AF24" and names[-1] == "BV24"
    assert len(set(names)) == 1536
    with pytest.raises(IngestError, match="at most 1536"):
        well_names(1537)


def test_read_header_is_cheap_and_names_bad_files(tmp_path):
    path = tmp_path / "a.tif"
    _tiff(path, np.zeros((4, 30, 20), np.float32))
    header = read_header(path)
    assert (header.n_planes, header.shape_yx, header.dtype, header.samples) == (4, (30, 20), np.float32, 1)
    (tmp_path / "b.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(IngestError, match=r"b\.png: cannot read header"):
        read_header(tmp_path / "b.png")


def test_read_header_names_what_the_planes_run_along(tmp_path):
    import tifffile

    stack = np.zeros((3, 20, 30), np.uint16)
    cases = {"z": ({"imagej": True, "metadata": {"axes": "ZYX"}}, "Z"), "c": ({"imagej": True, "metadata": {
        "axes": "CYX"}}, "C"), "t": ({"metadata": {"axes": "TYX"}, "photometric": "minisblack"}, "T"),
             "plain": ({"photometric": "minisblack"}, "Q")}
    for name, (kwargs, axes) in cases.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", stack, **kwargs)
        header = read_header(tmp_path / f"{name}.tif")
        assert (header.n_planes, header.plane_axes) == (3, axes)
        assert (header.z_problem() is None) == (axes in "ZQ")
    # a one-channel hyperstack: the length-1 channel axis says nothing, its planes are z
    tifffile.imwrite(tmp_path / "zc.tif", np.zeros((4, 1, 20, 30), np.uint16), imagej=True,
                     metadata={"axes": "ZCYX"})
    header = read_header(tmp_path / "zc.tif")
    assert (header.n_planes, header.plane_axes, header.z_problem()) == (4, "Z", None)
    assert read_header(tmp_path / "plain.tif").n_planes == 3
    tifffile.imwrite(tmp_path / "one.tif", stack[0])
    assert (read_header(tmp_path / "one.tif").plane_axes, read_header(tmp_path / "one.tif").z_problem()) == ("", None)


def test_ingest_images_folder_of_z_stacks(tmp_path):
    """Multi-page files become the z planes of their field; the depth is the one most files have, the rest are named."""
    import tifffile

    from cellflow.screen import Screen
    from cellflow.screen.ingest import ingest_images

    rng = np.random.default_rng(12)
    folder = tmp_path / "stacks"
    folder.mkdir()
    written = {f"s{i}": rng.integers(0, 4000, (3, 24 + 8 * i, 40), dtype=np.uint16) for i in range(3)}
    for stem, array in written.items():
        tifffile.imwrite(folder / f"{stem}.tif", array, photometric="minisblack")
    tifffile.imwrite(folder / "flat.tif", written["s0"][0])
    tifffile.imwrite(folder / "time.tif", written["s0"], metadata={"axes": "TYX"}, photometric="minisblack")
    report = ingest_images(folder, tmp_path / "s.zarr")
    assert report.n_fields_ingested == 3
    reasons = dict(report.failed)
    assert sorted(reasons) == [str(folder / "flat.tif"), str(folder / "time.tif")]
    assert reasons[str(folder / "flat.tif")] == (
        f"has 1 planes (pages); expected 3 like {folder / 's0.tif'} (most images here are z-stacks of 3 planes; "
        "one ingest holds one z depth)")
    assert "(time points)" in reasons[str(folder / "time.tif")]
    ds = Screen.open(tmp_path / "s.zarr").dataset()
    assert ds.sizes["z"] == 3
    for well, stem in zip(("A02", "A03", "A04"), written):
        field = ds.sel(plate="stacks", well=well, site=0, t=0.0)
        assert str(field.source_name.values) == stem
        h, w = int(field.extent_y), int(field.extent_x)
        np.testing.assert_array_equal(field.images.sel(c="image").values[:, :h, :w], written[stem])


def test_ingest_images_flat_folder_of_mixed_sizes(tmp_path):
    """A flat folder (what `cellflow segment FOLDER OUT` reads): one field per file, padded, extents kept."""
    import tifffile

    from cellflow.screen import Screen
    from cellflow.screen.ingest import ingest_images

    rng = np.random.default_rng(11)
    folder = tmp_path / "plate7"
    folder.mkdir()
    written = {
        "img10": rng.integers(0, 65535, (40, 70), dtype=np.uint16),
        "img2": rng.integers(0, 255, (64, 32), dtype=np.uint8),
    }
    for stem, array in written.items():
        tifffile.imwrite(folder / f"{stem}.tif", array)
    (folder / "notes.txt").write_text("not an image")
    report = ingest_images(folder, tmp_path / "s.zarr")
    assert report.n_fields_ingested == 2 and not report.failed
    assert report.skipped == (str(folder / "notes.txt"),)
    screen = Screen.open(tmp_path / "s.zarr")
    ds = screen.dataset()
    assert ds.images.shape[-2:] == (64, 70) and "truth_nuclei" not in ds
    # natural order: img2 before img10
    assert [str(v) for v in ds.source_name.values.ravel()[:2]] == ["img2", "img10"]
    for well, stem in (("A01", "img2"), ("A02", "img10")):
        field = ds.sel(plate="plate7", well=well, site=0, t=0.0)
        h, w = int(field.extent_y), int(field.extent_x)
        assert (h, w) == written[stem].shape
        image = field.images.sel(c="image", z=0.0).values
        np.testing.assert_array_equal(image[:h, :w], written[stem])
        assert not image[h:, :].any() and not image[:, w:].any()
