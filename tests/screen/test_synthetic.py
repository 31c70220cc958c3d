from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellflow.errors import SpecError, StoreExistsError
from cellflow.screen.synthetic import (
    LINEAGE_DTYPE,
    SyntheticSpec,
    synthesize_field,
    true_illumination,
    write_synthetic_screen,
)

# Dense small fields: 600 nuclei per 1024^2 is ~37 per 256^2, enough objects for statistics.
SMALL = dict(wells=("A01", "B02"), sites=2, shape_yx=(256, 256), nuclei_per_field=600)


def _spec(**kw) -> SyntheticSpec:
    return SyntheticSpec(**{**SMALL, **kw})


def _lookup(lineage: np.ndarray, column: str) -> np.ndarray:
    lut = np.zeros(int(lineage["label"].max()) + 1, np.int64)
    lut[lineage["label"]] = lineage[column]
    return lut


# ---------------------------------------------------------------- determinism


def test_same_key_gives_identical_field_and_other_sites_differ():
    spec = _spec(n_z=1)
    a = synthesize_field(spec, plate="P1", well="A01", site=0)
    b = synthesize_field(spec, plate="P1", well="A01", site=0)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.truth_nuclei, b.truth_nuclei)
    np.testing.assert_array_equal(a.truth_cells, b.truth_cells)
    np.testing.assert_array_equal(a.lineage, b.lineage)
    assert a.dna_content == b.dna_content
    for other in (dict(site=1), dict(well="B02"), dict(plate="P1", seed=1)):
        seed = other.pop("seed", spec.seed)
        key = {"plate": "P1", "well": "A01", "site": 0, **other}
        c = synthesize_field(_spec(n_z=1, seed=seed), **key)
        assert not np.array_equal(a.truth_nuclei, c.truth_nuclei)
        assert np.mean(a.images != c.images) > 0.5


_DIGEST_SCRIPT = """
import hashlib
from cellflow.screen.synthetic import SyntheticSpec, synthesize_field
spec = SyntheticSpec(wells=("A01",), sites=1, shape_yx=(64, 64), n_z=1, nuclei_per_field=2000)
field = synthesize_field(spec, plate="P1", well="A01", site=0)
print(hashlib.sha256(field.images.tobytes() + field.truth_cells.tobytes()).hexdigest())
"""


def test_fields_are_identical_across_processes_with_different_hash_seeds():
    # Seeding must not go through Python's salted hash(): two interpreters with
    # different PYTHONHASHSEED must produce the same bytes.
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT], env=env, capture_output=True, text=True,
                             check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_generation_order_and_channel_subset_do_not_matter():
    spec = _spec(n_z=1)
    first = [synthesize_field(spec, plate="P1", well=w, site=s) for w, s in [("A01", 0), ("B02", 1)]]
    second = [synthesize_field(spec, plate="P1", well=w, site=s) for w, s in [("B02", 1), ("A01", 0)]][::-1]
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x.images, y.images)
    # A channel's pixels depend neither on the other channels requested nor on their order.
    dna_only = synthesize_field(_spec(n_z=1, channels=("DNA",)), plate="P1", well="A01", site=0)
    reordered = synthesize_field(_spec(n_z=1, channels=("BF", "DNA")), plate="P1", well="A01", site=0)
    np.testing.assert_array_equal(first[0].images[:, 0], dna_only.images[:, 0])
    np.testing.assert_array_equal(first[0].images[:, 0], reordered.images[:, 1])
    np.testing.assert_array_equal(first[0].images[:, 2], reordered.images[:, 0])
    np.testing.assert_array_equal(first[0].truth_cells, dna_only.truth_cells)


# ---------------------------------------------------------------- shapes and truth


def test_shapes_dtypes_and_coordinates():
    spec = _spec(shape_yx=(96, 130), channels=("Cyto", "DNA"), n_z=2, n_t=3, interval_min=15.0)
    field = synthesize_field(spec, plate="P1", well="B02", site=1)
    assert field.images.shape == (3, 2, 2, 96, 130)
    assert field.images.dtype == np.uint16
    assert field.truth_nuclei.shape == field.truth_cells.shape == (3, 96, 130)
    assert field.truth_nuclei.dtype == field.truth_cells.dtype == np.uint32
    assert field.lineage.dtype == LINEAGE_DTYPE
    assert spec.z_um == (-1.0, 1.0)
    assert spec.t_min == (0.0, 15.0, 30.0)
    layout = spec.layout()
    assert layout.images_shape == (1, 2, 2, 3, 2, 2, 96, 130)
    assert layout.attrs["synthetic_spec"] == spec.to_dict()


def test_cells_contain_their_nuclei_and_micronuclei_belong_to_a_host():
    spec = _spec(n_z=1, channels=("DNA",), micronuclei_fraction=0.5)
    n_micro = 0
    for site in range(2):
        field = synthesize_field(spec, plate="P1", well="A01", site=site)
        nuclei, cells, lineage = field.truth_nuclei[0], field.truth_cells[0], field.lineage
        cell_of = _lookup(lineage, "cell")
        inside = nuclei > 0
        # Every nucleus pixel lies in the cell of its nucleus (the host, for a micronucleus).
        np.testing.assert_array_equal(cells[inside], cell_of[nuclei[inside]])
        # Every cell carries the id of a nucleus that is drawn in the same frame.
        assert set(np.unique(cells)) - {0} <= set(np.unique(nuclei))
        micro = lineage[lineage["cell"] != lineage["label"]]
        n_micro += micro.size
        areas = ndi.sum_labels(np.ones_like(nuclei), nuclei, micro["label"])
        assert np.all((areas >= 1) & (areas <= np.pi * 3.5**2))  # 2-4 um across at 0.65 um/px
        assert set(micro["cell"]) <= set(lineage["label"][lineage["cell"] == lineage["label"]])
        # Cells are bigger than their nuclei and touch each other somewhere.
        assert (cells > 0).sum() > 2 * inside.sum()
        left, right = cells[:, :-1], cells[:, 1:]
        assert np.any((left > 0) & (right > 0) & (left != right))
    assert n_micro >= 5


def test_nucleus_count_follows_requested_density():
    spec = SyntheticSpec(shape_yx=(512, 512), sites=4, nuclei_per_field=600, channels=("DNA",), n_z=1)
    count = 0
    for site in range(4):
        lineage = synthesize_field(spec, plate="P1", well="A01", site=site).lineage
        count += int(np.sum(lineage["cell"] == lineage["label"]))
    expected = 4 * 600 * 512**2 / 1024**2  # 600
    # Poisson total: 3 sd = 12 %; placement drops ~3 % at this density (none at the default).
    assert abs(count / expected - 1) < 0.15, count


# ---------------------------------------------------------------- DNA content


def test_dna_content_is_bimodal_and_matches_integrated_intensity():
    spec = _spec(shape_yx=(512, 512), n_z=1, channels=("DNA",), nuclei_per_field=150)
    field = synthesize_field(spec, plate="P1", well="A01", site=0)
    lineage = field.lineage
    nuclei = lineage[lineage["cell"] == lineage["label"]]
    content = np.array([field.dna_content[int(k)] for k in nuclei["label"]])
    g1 = spec.dna_brightness_e * np.pi * (spec.nucleus_diameter_um / 2 / spec.pixel_size_um) ** 2
    # G1 peak at 1 unit and G2 at 2 units (5 % CV), nothing far outside.
    assert np.median(content[content < 1.2 * g1]) == pytest.approx(g1, rel=0.05)
    assert np.median(content[content > 1.9 * g1]) == pytest.approx(2 * g1, rel=0.05)
    assert content.min() > 0.8 * g1 and content.max() < 2.3 * g1
    # Independent check: integrate the flat-field-corrected, background-subtracted image
    # around isolated interior nuclei (their blur and haze fall within 15 px).
    labels = field.truth_nuclei[0]
    flat = true_illumination(spec, plate="P1", channel="DNA")
    signal = (field.images[0, 0, 0] - spec.camera_offset_adu) / spec.gain_adu_per_e / flat - spec.background_e
    checked = 0
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or field.lineage["cell"][k - 1] != k:
            continue
        crop = tuple(slice(b.start - 32, b.stop + 32) for b in box)
        if min(c.start for c in crop) < 0 or max(c.stop for c in crop) > 512:
            continue  # cut by the border, or its haze would be
        own = labels[crop] == k
        near = ndi.binary_dilation(own, iterations=15)
        if np.setdiff1d(labels[crop][ndi.binary_dilation(near, iterations=15)], [0, k]).size:
            continue  # another object within 30 px
        # Noise over ~2000 px at ~20 e- each: sd ~200 e- of ~100k e-, i.e. 0.2 %.
        assert signal[crop][near].sum() == pytest.approx(field.dna_content[k], rel=0.02)
        checked += 1
    assert checked >= 3


# ---------------------------------------------------------------- acquisition


def test_illumination_is_normalised_smooth_and_per_plate_channel():
    spec = _spec(plates=("P1", "P2"))
    flat = true_illumination(spec, plate="P1", channel="DNA")
    assert flat.shape == spec.shape_yx and flat.dtype == np.float32
    assert float(flat.mean()) == pytest.approx(1.0, abs=1e-5)
    # 20-40 % falloff (+- 25 % per channel) towards the corners.
    corners = flat[[0, 0, -1, -1], [0, -1, 0, -1]].mean()
    assert 0.5 < corners / flat.max() < 0.85
    assert not np.allclose(flat, true_illumination(spec, plate="P1", channel="Cyto"))
    assert not np.allclose(flat, true_illumination(spec, plate="P2", channel="DNA"))


def test_dna_background_follows_true_illumination():
    spec = _spec(n_z=1, channels=("DNA",), nuclei_per_field=0, background_e=200.0)
    image = synthesize_field(spec, plate="P1", well="A01", site=0).images[0, 0, 0].astype(float)
    flat = true_illumination(spec, plate="P1", channel="DNA")
    measured = (image - spec.camera_offset_adu) / spec.gain_adu_per_e / spec.background_e
    blocks = (16, 16, 16, 16)  # 256 pixels per block mean
    measured_blocks = measured.reshape(blocks).mean(axis=(1, 3))
    flat_blocks = flat.reshape(blocks).mean(axis=(1, 3))
    # Shot + read noise of a 256-pixel mean at ~200 e-: sd ~ 1/sqrt(200 * 256) = 0.4 %.
    rms = np.sqrt(np.mean((measured_blocks / flat_blocks - 1) ** 2))
    assert rms < 0.015
    corner, centre = measured_blocks[0, 0] / measured_blocks[7, 7], flat_blocks[0, 0] / flat_blocks[7, 7]
    assert corner == pytest.approx(centre, rel=0.02)


def test_noise_is_poisson_plus_read_noise():
    spec = _spec(n_z=1, channels=("DNA",), nuclei_per_field=0, background_e=50.0, read_noise_e=3.0,
                 gain_adu_per_e=2.0, illumination_falloff=0.0)
    image = synthesize_field(spec, plate="P1", well="A01", site=0).images[0, 0, 0].astype(float)
    electrons = (image - spec.camera_offset_adu) / spec.gain_adu_per_e
    assert electrons.mean() == pytest.approx(50.0, rel=0.01)
    # var = mean + read^2 (+ 1/12 / gain^2 of ADU rounding); 65k pixels give a ~0.6 % sd.
    assert electrons.var() == pytest.approx(50.0 + 9.0, rel=0.04)


def test_brightfield_contrast_inverts_through_focus_and_fluorescence_blurs():
    spec = _spec(n_z=3, channels=("DNA", "BF"))
    field = synthesize_field(spec, plate="P1", well="A01", site=0)
    bf = field.images[0, 1].astype(float)
    below, above = (bf[0] - bf[1]).ravel(), (bf[2] - bf[1]).ravel()
    assert np.corrcoef(below, above)[0, 1] < -0.5
    # Cells are faint in focus: after flat-field correction, the defocused planes carry
    # several times the contrast of the focal plane (smoothing keeps shot noise out).
    flat = true_illumination(spec, plate="P1", channel="BF")
    contrast = [ndi.gaussian_filter((plane - spec.camera_offset_adu) / flat, 1.0).std() for plane in bf]
    assert min(contrast[0], contrast[2]) > 2.5 * contrast[1]
    # Defocus moves light around without adding or removing any (mean within 0.5 %).
    means = [((plane - spec.camera_offset_adu) / flat).mean() for plane in bf]
    assert max(means) / min(means) < 1.005
    # Out-of-focus DNA planes are blurred: less high-frequency energy than the focal plane.
    dna = field.images[0, 0].astype(float)
    sharpness = [np.abs(ndi.gaussian_laplace(plane, 1.0)).mean() for plane in dna]  # sigma 1: past the shot noise
    assert sharpness[1] > 1.3 * max(sharpness[0], sharpness[2])
    np.testing.assert_allclose(sharpness[0], sharpness[2], rtol=0.1)  # same blur either side of focus


# ---------------------------------------------------------------- time-lapse


def test_time_lapse_labels_persist_and_divisions_are_recorded():
    spec = _spec(n_z=1, channels=("DNA",), n_t=6, division_rate_per_h=0.6, micronuclei_fraction=0.3)
    field = synthesize_field(spec, plate="P1", well="A01", site=0)
    lineage = field.lineage
    for t in range(spec.n_t):
        present = set(np.unique(field.truth_nuclei[t]).tolist()) - {0}
        alive = lineage["label"][(lineage["first_t"] <= t) & (lineage["last_t"] >= t)]
        assert present == set(alive.tolist()), t
    children = lineage[lineage["parent"] > 0]
    assert children.size >= 6
    last_t = _lookup(lineage, "last_t")
    centroid = {}
    for parent in np.unique(children["parent"]):
        kids = children[children["parent"] == parent]
        assert kids.size == 2
        assert np.all(kids["first_t"] == last_t[parent] + 1)
        assert np.all(kids["label"] > lineage["label"][lineage["first_t"] == 0].max())  # new labels
        t0 = int(last_t[parent])
        centroid = np.array(ndi.center_of_mass(field.truth_nuclei[t0] == parent))
        born = [np.array(ndi.center_of_mass(field.truth_nuclei[t0 + 1] == k)) for k in kids["label"]]
        # The daughters are born where the mother was (she may have drifted one step).
        assert np.linalg.norm((born[0] + born[1]) / 2 - centroid) < 40
    # Labels move smoothly: a random walk of ~6.5 px per axis per frame, not a reshuffle.
    moves = []
    for k in lineage["label"][(lineage["first_t"] == 0) & (lineage["last_t"] >= 1)]:
        a = ndi.center_of_mass(field.truth_nuclei[0] == k)
        b = ndi.center_of_mass(field.truth_nuclei[1] == k)
        moves.append(np.hypot(a[0] - b[0], a[1] - b[1]))
    assert 1.0 < np.median(moves) < 25.0


def test_single_frame_lineage_is_trivial():
    field = synthesize_field(_spec(n_z=1, channels=("DNA",)), plate="P1", well="A01", site=0)
    assert np.all(field.lineage["first_t"] == 0) and np.all(field.lineage["last_t"] == 0)
    assert np.all(field.lineage["parent"] == 0)
    assert set(field.dna_content) == set(field.lineage["label"].tolist())


# ---------------------------------------------------------------- spec


def test_spec_round_trips_through_json():
    spec = _spec(channels=("BF", "DNA"), g2_fraction_by_well={"B02": 0.7}, n_t=2)
    data = json.loads(json.dumps(spec.to_dict()))
    again = SyntheticSpec.from_dict(data)
    assert again == spec
    assert again.g2_fraction_by_well == (("B02", 0.7),)
    assert again.g2_fraction_for("B02") == 0.7 and again.g2_fraction_for("A01") == spec.g2_fraction


def test_g2_override_shifts_dna_content():
    spec = _spec(n_z=1, channels=("DNA",), g2_fraction_by_well={"B02": 0.8}, s_fraction=0.1)
    fractions = []
    for well in spec.wells:
        content = np.array(list(synthesize_field(spec, plate="P1", well=well, site=0).dna_content.values()))
        g1 = spec.dna_brightness_e * np.pi * (spec.nucleus_diameter_um / 2 / spec.pixel_size_um) ** 2
        fractions.append(np.mean(content > 1.8 * g1))
    assert fractions[1] > fractions[0] + 0.3


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(channels=("DNA", "GFP")), r"channels must be names from .*\['GFP'\]"),
        (dict(channels=()), r"channels must be a non-empty sequence of unique"),
        (dict(wells=("A1",)), r"wells must be names like 'A01'"),
        (dict(plates=("P1", "P1")), r"plates must be a non-empty sequence of unique.*\(.P1., .P1.\)"),
        (dict(n_z=0), r"n_z must be an integer >= 1, got 0"),
        (dict(shape_yx=(8, 64)), r"shape_yx must be an integer >= 16, got 8"),
        (dict(shape_yx=(64,)), r"shape_yx must be two integers"),
        (dict(pixel_size_um=0.0), r"pixel_size_um must be > 0"),
        (dict(mitotic_fraction=1.5), r"mitotic_fraction must be >= 0.0 and <= 1.0, got 1.5"),
        (dict(z_step_um=float("nan")), r"z_step_um must be a finite number"),
        (dict(s_fraction=0.5, g2_fraction=0.6), r"s_fraction \+ g2_fraction must be <= 1"),
        (dict(g2_fraction_by_well={"H12": 0.5}), r"g2_fraction_by_well must be keyed by wells"),
        (dict(illumination_falloff=0.9), r"illumination_falloff must be >= 0.0 and <= 0.75"),
    ],
)
def test_bad_spec_values_raise(kw, match):
    with pytest.raises(SpecError, match=match):
        _spec(**kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(sites=True), r"sites must be an integer, got bool True"),
        (dict(sites=2.0), r"sites must be an integer, got float"),
        (dict(z_step_um="2"), r"z_step_um must be a number, got str '2'"),
        (dict(plates="P1"), r"plates must be a sequence of names"),
        (dict(wells=("A01", 2)), r"wells must be a sequence of strings"),
        (dict(shape_yx=64), r"shape_yx must be two integers"),
    ],
)
def test_wrong_spec_types_raise_type_error(kw, match):
    with pytest.raises(TypeError, match=match):
        _spec(**kw)


def test_bad_keys_raise():
    spec = _spec()
    with pytest.raises(SpecError, match=r"unknown keys \['colour'\]"):
        SyntheticSpec.from_dict({**spec.to_dict(), "colour": "red"})
    with pytest.raises(TypeError, match="expects a mapping"):
        SyntheticSpec.from_dict([("seed", 1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"plate must be one of .*got 'P9'"):
        synthesize_field(spec, plate="P9", well="A01", site=0)
    with pytest.raises(ValueError, match=r"site must be an integer in 0..1, got 2"):
        synthesize_field(spec, plate="P1", well="A01", site=2)
    with pytest.raises(ValueError, match=r"channel must be one of"):
        true_illumination(spec, plate="P1", channel="GFP")


# ---------------------------------------------------------------- store


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_write_synthetic_screen_round_trips(tmp_path, scheduler):
    spec = _spec(shape_yx=(64, 80), sites=2, n_z=2, n_t=2, channels=("DNA", "BF"), nuclei_per_field=2000)
    screen = write_synthetic_screen(tmp_path / "s.zarr", spec, scheduler=scheduler)
    ds = screen.dataset()
    assert ds["acquired"].values.all()
    assert screen.layout.attrs["synthetic_spec"] == spec.to_dict()
    for name in ("images", "truth_nuclei", "truth_cells"):
        assert screen.ledger(name).completed().all()
    for well in spec.wells:
        for site in range(spec.sites):
            field = synthesize_field(spec, plate="P1", well=well, site=site)
            sel = ds.sel(plate="P1", well=well, site=site)
            np.testing.assert_array_equal(sel["images"].values, field.images)
            np.testing.assert_array_equal(sel["truth_nuclei"].values, field.truth_nuclei)
            np.testing.assert_array_equal(sel["truth_cells"].values, field.truth_cells)
    with pytest.raises(StoreExistsError):
        write_synthetic_screen(tmp_path / "s.zarr", spec)


# ---------------------------------------------------------------- Cell Painting stains


def test_cell_painting_stains_leave_the_other_channels_untouched():
    plain = synthesize_field(_spec(n_z=1, channels=("DNA", "Cyto", "BF")), plate="P1", well="A01", site=0)
    painted = synthesize_field(_spec(n_z=1, channels=("ER", "DNA", "Mito", "Cyto", "AGP", "RNA", "BF")),
                               plate="P1", well="A01", site=0)
    for c, i in zip(("DNA", "Cyto", "BF"), (1, 3, 6)):
        np.testing.assert_array_equal(plain.images[:, ("DNA", "Cyto", "BF").index(c)], painted.images[:, i])
    np.testing.assert_array_equal(plain.truth_nuclei, painted.truth_nuclei)
    np.testing.assert_array_equal(plain.truth_cells, painted.truth_cells)


def test_each_cell_painting_stain_shows_its_compartment():
    """Measured against the truth masks: what a biologist sees in each channel of a Cell Painting field."""
    spec = _spec(n_z=1, channels=("ER", "RNA", "AGP", "Mito"), psf_sigma_um=0.3)
    field = synthesize_field(spec, plate="P1", well="A01", site=0)
    nuclei, cells = field.truth_nuclei[0], field.truth_cells[0]
    floor = spec.camera_offset_adu + spec.background_e * spec.gain_adu_per_e
    signal = {c: field.images[0, i, 0].astype(float) - floor for i, c in enumerate(spec.channels)}
    nucleus = ndi.binary_erosion(nuclei > 0, iterations=2)  # away from the blurred envelope
    ring = ndi.binary_dilation(nuclei > 0, iterations=3) & ~ndi.binary_dilation(nuclei > 0) & (cells > 0)
    border = np.zeros(cells.shape, bool)
    border[:, 1:] |= (cells[:, 1:] != cells[:, :-1]) & (cells[:, 1:] > 0) & (cells[:, :-1] > 0)
    border[1:, :] |= (cells[1:, :] != cells[:-1, :]) & (cells[1:, :] > 0) & (cells[:-1, :] > 0)
    cytoplasm = (cells > 0) & ~ndi.binary_dilation(nuclei > 0, iterations=2) & ~ndi.binary_dilation(border, iterations=3)
    assert nucleus.sum() > 500 and ring.sum() > 500 and border.sum() > 100 and cytoplasm.sum() > 1000
    er, rna, agp, mito = (signal[c] for c in ("ER", "RNA", "AGP", "Mito"))
    assert er[nucleus].mean() < 0.35 * er[ring].mean()  # nuclei are holes ringed by the densest ER
    assert rna[nucleus].mean() > 1.5 * rna[cytoplasm].mean()  # RNA marks the nucleus ...
    bright_spots = [rna[(nuclei == k) & nucleus].max() / np.median(rna[(nuclei == k) & nucleus])
                    for k in np.unique(nuclei[nucleus])]
    assert np.median(bright_spots) > 1.5  # ... with nucleoli brighter than its nucleoplasm
    assert agp[border].mean() > 2 * agp[cytoplasm].mean()  # membranes outline every cell
    assert agp[nucleus].mean() < agp[cytoplasm].mean()
    assert mito[nucleus].mean() < 0.3 * mito[cytoplasm].mean()  # mitochondria stay out of the nucleus
