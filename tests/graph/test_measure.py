from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import ndimage
from skimage.measure import regionprops_table
from skimage.segmentation import expand_labels

from cellflow.errors import RegionError
from cellflow.graph import MeasureParams, build_measure, measure_tables, read_objects
from cellflow.graph.illumination import ILLUMINATION_DIMS
from cellflow.graph.measure import object_part_path
from cellflow.readouts import z_prime
from cellflow.screen.layout import DIMS_LABELS, ScreenLayout
from cellflow.screen.store import FieldKey, Screen
from cellflow.screen.synthetic import SyntheticSpec, synthesize_field, true_illumination, write_synthetic_screen

SHAPE = (40, 52)
TILE = (16, 24)  # chunks split every field and divide neither side
OFFSET = 100.0
POSITIVE = tuple(f"A{i:02d}" for i in range(1, 17))
NEGATIVE = tuple(f"B{i:02d}" for i in range(1, 17))
CONTROLS = {"positive": list(POSITIVE), "negative": list(NEGATIVE)}


def _field_truth(rng: np.random.Generator, well_mean: float) -> tuple[np.ndarray, dict[int, float]]:
    """Disks on a jittered 3 x 4 grid (none touches the border) and their DNA contents."""
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    labels = np.zeros(SHAPE, np.uint32)
    contents = {}
    label = 0
    for cy in (7, 20, 33):
        for cx in (7, 19, 32, 45):
            label += 1
            y, x = cy + rng.uniform(-1, 1), cx + rng.uniform(-1, 1)
            labels[(yy - y) ** 2 + (xx - x) ** 2 <= rng.uniform(3.0, 5.0) ** 2] = label
            contents[label] = well_mean * (1 + 0.05 * rng.standard_normal())
    return labels, contents


def _illumination() -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]] / np.array(SHAPE)[:, None, None]
    flat = 1.0 - 0.3 * ((yy - 0.5) ** 2 + (xx - 0.4) ** 2)
    return (flat / flat.mean()).astype(np.float32)


@pytest.fixture(scope="module")
def control_plate(tmp_path_factory) -> tuple[Screen, dict[FieldKey, dict[int, float]]]:
    """16 positive wells (DNA content ~2000 per nucleus) and 16 negative (~1000), drawn directly.

    Each well's mean is drawn around its group mean (well-to-well SD 4 %); nuclei vary 5 %
    around their well. Pixels = offset + illumination x content / area + read noise, 2 z planes.
    """
    rng = np.random.default_rng(42)
    layout = ScreenLayout(plates=("P1",), wells=POSITIVE + NEGATIVE, sites=(0,), channels=("DNA", "Cyto"),
                          shape_yx=SHAPE, z_um=(0.0, 1.0), tile_yx=TILE, attrs={"camera_offset_adu": OFFSET})
    screen = Screen.create(tmp_path_factory.mktemp("measure") / "plate.zarr", layout)
    for name in ("labels_nuclei", "labels_cells"):
        screen.add_variable(name, dims=DIMS_LABELS, dtype="uint32")
    screen.add_variable("illumination", dims=ILLUMINATION_DIMS, dtype="float32", fill_value=float("nan"))
    flat = _illumination()
    records = []
    for c in ("DNA", "Cyto"):
        records += screen.write("illumination", np.stack([flat, flat]), plate="P1", c=c)
    truth = {}
    for well in layout.wells:
        key = FieldKey("P1", well, 0, 0.0)
        labels, contents = _field_truth(rng, rng.normal(2000.0 if well in POSITIVE else 1000.0, 60.0))
        cells = expand_labels(labels, 2)
        area = ndimage.sum_labels(np.ones(SHAPE), labels, np.arange(labels.max() + 1))
        per_px = np.array([0.0] + [contents[k] / area[k] for k in range(1, labels.max() + 1)])
        dna = per_px[labels] + 40.0 * ((cells > 0) & (labels == 0))  # cytoplasmic haze, outside nuclei
        planes = [OFFSET + flat * dna + rng.normal(0, 3.0, SHAPE) for _ in range(2)]
        cyto = [OFFSET + flat * 300.0 * (cells > 0) + rng.normal(0, 3.0, SHAPE) for _ in range(2)]
        images = np.round(np.stack([planes, cyto])).astype(np.uint16)
        where = key._asdict()
        records += screen.write("images", images, **where)
        records += screen.write("labels_nuclei", labels, **where)
        records += screen.write("labels_cells", cells, **where)
        truth[key] = contents
    for name in {r.variable for r in records}:
        screen.ledger(name).mark(records)
    screen.set_acquired(list(truth))
    return screen, truth


def run_measure(screen: Screen, params: MeasureParams, tables: Path):
    graph = build_measure(screen, params)
    results = dask.compute(*graph.tasks, scheduler="synchronous")
    rows = [row for result in results for row in result.rows]
    return measure_tables(rows, tables, params)


@pytest.fixture(scope="module")
def measured(control_plate, tmp_path_factory):
    screen, _ = control_plate
    params = MeasureParams(labels=("labels_nuclei", "labels_cells"), controls=CONTROLS)
    return run_measure(screen, params, tmp_path_factory.mktemp("tables"))


def _corrected(screen: Screen, key: FieldKey, channel: str) -> np.ndarray:
    """Eager reference: read the whole field and correct it with plain NumPy."""
    planes = screen.read("images", **key._asdict(), c=channel).astype(np.float64)
    flat = screen.read("illumination", plate=key.plate, c=channel).astype(np.float64)
    return ((planes - OFFSET) / flat).mean(axis=0)


def test_objects_agree_with_eager_regionprops_on_split_chunks(control_plate, measured):
    screen, truth = control_plate
    assert screen.dataset()["images"].data.chunks[-2:] == ((16, 16, 8), (24, 24, 4))
    for labels_name in ("labels_nuclei", "labels_cells"):
        objects = read_objects(screen, labels_name)
        assert objects.groupby(["plate", "well", "site", "t"]).ngroups == len(truth)
        for key in list(truth)[::7]:
            labels = screen.read(labels_name, **key._asdict())
            images = {c: _corrected(screen, key, c) for c in ("DNA", "Cyto")}
            ref = regionprops_table(labels, np.stack([images["DNA"], images["Cyto"]], -1),
                                    properties=("label", "area", "perimeter", "eccentricity", "solidity",
                                                "centroid", "bbox", "intensity_max"))
            got = objects[(objects["well"] == key.well) & (objects["site"] == key.site)]
            np.testing.assert_array_equal(got["label"], ref["label"])
            for ours, theirs in [("area", "area"), ("perimeter", "perimeter"), ("eccentricity", "eccentricity"),
                                 ("solidity", "solidity"), ("centroid_y", "centroid-0"), ("bbox_x1", "bbox-3"),
                                 ("intensity_max_DNA", "intensity_max-0"), ("intensity_max_Cyto", "intensity_max-1")]:
                # float32 pipeline vs float64 reference: 1e-5 relative covers the rounding of corrected pixels.
                np.testing.assert_allclose(got[ours], ref[theirs], rtol=1e-5, err_msg=ours)
            index = ref["label"]
            np.testing.assert_allclose(got["dna_content"], ndimage.sum_labels(images["DNA"], labels, index),
                                       rtol=1e-5)
            np.testing.assert_allclose(got["intensity_mean_Cyto"], ndimage.mean(images["Cyto"], labels, index),
                                       rtol=1e-5)
    nuclei = read_objects(screen, "labels_nuclei")
    np.testing.assert_array_equal(nuclei["cell_label"], nuclei["label"])  # cells grow from their nucleus


def test_dna_content_matches_the_drawn_content(control_plate, measured):
    screen, truth = control_plate
    nuclei = read_objects(screen.path, "labels_nuclei")
    expected = [truth[FieldKey(p, w, s, t)][k] for p, w, s, t, k in
                nuclei[["plate", "well", "site", "t", "label"]].itertuples(index=False)]
    # Residual: read noise and rounding, 3 ADU per pixel and plane -> 2.13 after averaging 2 planes,
    # / illumination (>= 0.9) -> 2.4, summed over <= 79 pixels -> SD <= 21: 130 is 6 SD.
    np.testing.assert_allclose(nuclei["dna_content"], expected, rtol=0, atol=130)
    assert abs(np.mean(nuclei["dna_content"] - expected)) < 130 / np.sqrt(len(expected))  # and unbiased


def test_zprime_matches_the_analytic_value(control_plate, measured):
    _, truth = control_plate
    tables, paths = measured
    assert {p.name for p in paths.values()} == {"fields.parquet", "wells.parquet", "zprime.parquet"}
    true_means = {key.well: np.mean(list(c.values())) for key, c in truth.items()}
    expected = z_prime([true_means[w] for w in POSITIVE], [true_means[w] for w in NEGATIVE])
    zprime = pd.read_parquet(paths["measurements/zprime"]).set_index(["labels", "readout"])
    row = zprime.loc[("labels_nuclei", "dna_content_mean")]
    # Only read noise separates measured from true well means: SD <= 21 per nucleus / sqrt(12) ~ 6 per
    # well, against well SDs of ~60 and a gap of ~1000, so Z' moves by ~0.005: well within 0.02.
    assert row["z_prime"] == pytest.approx(expected, abs=0.02)
    assert (row["n_pos"], row["n_neg"]) == (16, 16) and 0.3 < expected < 0.9
    wells = tables["measurements/wells"]
    nuclei = wells[wells["labels"] == "labels_nuclei"]
    assert nuclei["n_objects"].tolist() == [len(truth[FieldKey("P1", w, 0, 0.0)]) for w in nuclei["well"]]


def test_rerun_overwrites_the_same_parts(control_plate, measured):
    screen, truth = control_plate
    key = next(iter(truth))
    path = object_part_path(screen.path, "labels_nuclei", key)
    before = pd.read_parquet(path)
    graph = build_measure(screen, MeasureParams(), fields=[key])
    (result,) = dask.compute(*graph.tasks, scheduler="synchronous")
    pd.testing.assert_frame_equal(pd.read_parquet(path)[before.columns], before)
    assert result.rows[0]["path"] == str(path)
    assert not list(path.parent.glob(".*.tmp"))
    Screen.open(screen.path)  # the tables/ group keeps the store valid, and zarr does not warn


def test_build_is_lazy_and_checks_names(control_plate, no_compute):
    screen, _ = control_plate
    with no_compute():
        graph = build_measure(screen, MeasureParams())
    assert len(graph.tasks) == 32 and graph.outputs == ()
    with pytest.raises(RegionError, match=r"has no label variables \['labels_x'\]"):
        build_measure(screen, MeasureParams(labels=("labels_x",)))
    with pytest.raises(ValueError, match=r"MeasureParams channels \['GFP'\] are not channels"):
        build_measure(screen, MeasureParams(channels=("GFP",)))
    with pytest.raises(ValueError, match=r"MeasureParams.z is plane 2, but .* has 2 z planes"):
        build_measure(screen, MeasureParams(z=2))
    with pytest.raises(ValueError, match=r"controls names wells \['H12'\]"):
        build_measure(screen, MeasureParams(controls={"positive": ["A01", "H12"], "negative": ["B01", "B02"]}))


@pytest.mark.parametrize(("data", "match"), [
    ({"labels": []}, r"MeasureParams\.labels must be a non-empty list"),
    ({"z": "median"}, r"MeasureParams\.z must be 'mean', 'max' or a plane index"),
    ({"illumination": 1}, r"MeasureParams\.illumination must be True or False"),
    ({"offset": -1}, r"IlluminationParams\.offset must be >= 0"),
    ({"ploidy": {"threshold": 3}}, r"PloidyParams\.threshold must be"),
    ({"dna": "DNA"}, r"MeasureParams got unknown keys \['dna'\]"),
])
def test_params_validation(data, match):
    with pytest.raises(ValueError, match=match):
        MeasureParams.from_dict(data)


# ---------------------------------------------------------------------------- 4N fraction on synthetic fields
SYNTH = SyntheticSpec(plates=("P1",), wells=("A01", "A02"), sites=2, shape_yx=(192, 192), channels=("DNA",), n_z=1,
                      pixel_size_um=1.3, nuclei_per_field=3000, g2_fraction_by_well={"A02": 0.5}, seed=11)


def test_4n_fraction_is_close_to_the_truth(tmp_path):
    screen = write_synthetic_screen(tmp_path / "synth.zarr", SYNTH, scheduler="synchronous")
    # The true flat field as the stored illumination: isolates the measurement from the estimate.
    screen.add_variable("illumination", dims=ILLUMINATION_DIMS, dtype="float32", fill_value=float("nan"))
    flat = true_illumination(SYNTH, plate="P1", channel="DNA")
    screen.ledger("illumination").mark(screen.write("illumination", flat[None], plate="P1", c="DNA"))
    tables, _ = run_measure(screen, MeasureParams(labels=("truth_nuclei",)), tmp_path / "tables")
    wells = tables["measurements/wells"].set_index("well")
    radius = SYNTH.nucleus_diameter_um / 2 / SYNTH.pixel_size_um
    g1 = SYNTH.dna_brightness_e * np.pi * radius**2
    for well in SYNTH.wells:
        calls = []
        for site in range(SYNTH.sites):
            field = synthesize_field(SYNTH, plate="P1", well=well, site=site)
            labels = field.truth_nuclei[0]
            edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
            inside = np.setdiff1d(np.unique(labels), np.append(edge, 0))
            calls += [field.dna_content[int(k)] > 1.5 * g1 for k in inside]
        truth = float(np.mean(calls))
        # Tolerance 0.04: the measured G1 peak sits within ~3 % of the true one (haze adds ~4 %
        # to every nucleus, blur and overlaps take a little), which moves the threshold across
        # S-phase nuclei (density s_fraction = 0.2 per G1 unit): 0.2 x 1.5 x 0.05 = 0.015; nuclei
        # that lose pixels to an overlapping neighbour and read noise add as much again.
        assert wells.loc[well, "fraction_4n"] == pytest.approx(truth, abs=0.04), well
        assert wells.loc[well, "dna_n"] == len(calls)
    assert wells.loc["A02", "fraction_4n"] > wells.loc["A01", "fraction_4n"] + 0.15


# ---------------------------------------------------------------------------- end to end
def test_spec_end_to_end_with_threads(tmp_path, monkeypatch):
    from cellflow.pipeline import run_spec
    from cellflow.pipeline.spec import parse_spec

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "specs" / "measure-synthetic.yaml").read_text())
    spec["input"]["synthetic"].update(shape_yx=[96, 112], sites=1, wells=["A01", "A02", "B01", "B02"],
                                      g2_fraction_by_well={"A01": 0.6, "A02": 0.6})
    spec["input"]["store"] = str(tmp_path / "screen.zarr")
    spec["output"]["tables"] = str(tmp_path / "tables")
    spec["cluster"] = {"kind": "threads"}
    spec["stages"]["measure"]["controls"] = {"positive": ["A01", "A02"], "negative": ["B01", "B02"]}
    result = run_spec(parse_spec(spec), progress=False)
    assert {"measurements/fields", "measurements/wells", "measurements/zprime"} <= set(result.table_paths)
    assert all(p.is_file() for p in result.table_paths.values())
    labels = result.screen.read("labels_nuclei", plate=slice(None), well=slice(None), site=slice(None),
                                t=slice(None))
    objects = read_objects(result.screen, "labels_nuclei")
    counts = objects.groupby("well").size()
    for i, well in enumerate(["A01", "A02", "B01", "B02"]):
        field = labels[0, i, 0, 0]
        assert counts.get(well, 0) == np.unique(field[field > 0]).size
    fields = result.tables["measurements/fields"]
    assert fields.loc[fields["labels"] == "labels_nuclei", "n_objects"].sum() == len(objects)
    assert len(result.tables["measurements/zprime"]) > 0


def test_a_spec_run_measures_on_the_illumination_it_corrects_two_stages_earlier(tmp_path):
    """illumination -> autolabel -> measure: the measure stage's direct upstream (autolabel) writes no
    illumination, but the run computes it before measuring, so the intensities must be flat-fielded, the
    same as a measure built once the illumination is in the store (what a resumed run does for a redone
    field). Measuring raw intensities in the first run and corrected ones on resume mixed both in a plate."""
    from cellflow.pipeline import run_spec
    from cellflow.pipeline.spec import parse_spec

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "specs" / "measure-synthetic.yaml").read_text())
    spec["input"]["synthetic"].update(shape_yx=[96, 112], sites=1, wells=["A01", "B01"], g2_fraction_by_well={},
                                      illumination_falloff=0.5)
    spec["input"]["store"] = str(tmp_path / "screen.zarr")
    spec["output"]["tables"] = str(tmp_path / "tables")
    spec["cluster"] = {"kind": "threads"}
    spec["stages"]["measure"].pop("controls")
    result = run_spec(parse_spec(spec), progress=False)
    assert result.status == "ok", result.error
    in_run = read_objects(result.screen, "labels_nuclei")
    params = MeasureParams(labels=("labels_nuclei",), dna_channel="DNA")
    run_measure(result.screen, params, tmp_path / "again")  # built now: the store's illumination is complete
    afterwards = read_objects(result.screen, "labels_nuclei")
    np.testing.assert_allclose(in_run["dna_content"], afterwards["dna_content"], rtol=1e-6)
    run_measure(result.screen, MeasureParams(labels=("labels_nuclei",), dna_channel="DNA", illumination=False),
                tmp_path / "raw")
    raw = read_objects(result.screen, "labels_nuclei")
    assert np.abs(raw["dna_content"] / in_run["dna_content"] - 1).max() > 0.05  # the correction is not a no-op
