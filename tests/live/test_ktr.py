"""KTR ratios: recovered against synthetic cells of known nuclear/cytoplasmic ratio, and hand-made cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from cellflow.live.ktr import fit_gmm_1d, gmm_level, join_tracks, ktr_ratios
from cellflow.live.synthetic import synthesize_ktr_field
from cellflow.screen.synthetic import SyntheticSpec

SPEC = SyntheticSpec(wells=("A01",), sites=3, shape_yx=(128, 128), n_z=1, channels=("DNA",),
                     nuclei_per_field=1500, pixel_size_um=1.0, seed=3)


@pytest.fixture(scope="module")
def fields():
    return [synthesize_ktr_field(SPEC, plate="P1", well="A01", site=s) for s in range(SPEC.sites)]


def _errors(field, table):
    truth = np.array([field.ratio[k] for k in table["label"]])
    return table["ratio_nuclear_cytoplasmic"].to_numpy() / truth - 1


@pytest.mark.parametrize("method", ["ring", "cytoplasm", "gmm"])
def test_recovers_known_ratio_within_5_percent(fields, method):
    # Blur (sigma 0.8 px) mixes nucleus and cytoplasm at their border; the gaps and
    # erosions keep that out, so every measured cell is within 5 % of its true ratio.
    # Cells with under 20 cytoplasm pixels (rounded-up mitotic cells) are NaN by design;
    # at least 90 % of the cells must be measured.
    errors = np.concatenate([_errors(f, ktr_ratios(f.reporter, f.nuclei, f.cells, method=method,
                                                   background=f.background)) for f in fields])
    measured = np.isfinite(errors)
    assert errors.size >= 40
    assert measured.mean() >= 0.9
    assert np.abs(errors[measured]).max() < 0.05


def test_ring_without_cells_leaks_into_background(fields):
    # Without cells the ring is not clipped: it reaches the dark background and
    # neighbours, so some cells are badly off. The clipped ring is the fix (above).
    field = fields[0]
    errors = _errors(field, ktr_ratios(field.reporter, field.nuclei, background=field.background))
    assert np.nanmax(np.abs(errors)) > 0.1


def test_isolated_disc_ring_geometry():
    yy, xx = np.mgrid[:41, :41]
    distance = np.hypot(yy - 20, xx - 20)
    nuclei = (distance <= 6).astype(np.uint16) * 5
    reporter = np.where(distance <= 6, 50.0, np.where(distance <= 12, 20.0 + distance, 0.0))
    table = ktr_ratios(reporter, nuclei, ring_radius_px=3, ring_gap_px=2, nuclear_erosion_px=0)
    # Independent reference: pixels at Euclidean distance in (2, 5] from the disc.
    edt = ndi.distance_transform_edt(nuclei == 0)
    ring = (edt > 2) & (edt <= 5)
    assert table["cytoplasm_area"].item() == ring.sum()
    assert table["ratio_nuclear_cytoplasmic"].item() == pytest.approx(50.0 / reporter[ring].mean())


def test_gmm_ignores_a_contaminating_population():
    rng = np.random.default_rng(0)
    cells = np.ones((40, 40), np.uint16)
    nuclei = np.zeros_like(cells)
    nuclei[15:25, 15:25] = 1
    reporter = rng.normal(100.0, 5.0, cells.shape)
    reporter[nuclei > 0] = 300.0
    reporter[:, :8] = rng.normal(5.0, 1.0, (40, 8))  # a fifth of the "cell" is background
    kwargs = dict(cell_erosion_px=0, nuclear_erosion_px=0, ring_gap_px=0)
    plain = ktr_ratios(reporter, nuclei, cells, method="cytoplasm", **kwargs)
    gmm = ktr_ratios(reporter, nuclei, cells, method="gmm", **kwargs)
    assert plain["ratio_nuclear_cytoplasmic"].item() > 3.4  # biased by the background
    assert gmm["ratio_nuclear_cytoplasmic"].item() == pytest.approx(3.0, rel=0.02)


def test_fit_gmm_matches_known_mixture():
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(-5, 1, 2000), rng.normal(5, 2, 1000)])
    weights, means, variances, _ = fit_gmm_1d(values)
    np.testing.assert_allclose(weights, [2 / 3, 1 / 3], atol=0.02)
    np.testing.assert_allclose(means, [-5, 5], atol=0.15)
    np.testing.assert_allclose(variances, [1, 4], rtol=0.1)
    clean = rng.normal(50, 3, 500)
    assert gmm_level(clean) == pytest.approx(clean.mean())


def test_errors_name_the_problem():
    nuclei = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="method"):
        ktr_ratios(np.zeros((8, 8)), nuclei, method="median")
    with pytest.raises(ValueError, match="needs cells"):
        ktr_ratios(np.zeros((8, 8)), nuclei, method="cytoplasm")
    with pytest.raises(ValueError, match="ring_radius_px"):
        ktr_ratios(np.zeros((8, 8)), nuclei, ring_radius_px=0)
    with pytest.raises(ValueError, match="nuclei must be integer labels"):
        ktr_ratios(np.zeros((8, 8)), np.zeros((8, 9), np.uint8))


def test_join_tracks_orders_each_track_in_time():
    keys = {"plate": "P1", "well": "A01", "site": 0}
    frames = pd.DataFrame({**keys, "t": [0, 0, 1, 1], "label": [1, 2, 4, 3], "ratio": [1.0, 2.0, 1.1, 2.1]})
    tracks = pd.DataFrame({**keys, "t": [0, 0, 1, 1], "label": [1, 2, 3, 4], "track_id": [10, 20, 10, 20]})
    joined = join_tracks(frames, tracks)
    assert joined["track_id"].tolist() == [10, 10, 20, 20]
    assert joined["ratio"].tolist() == [1.0, 2.1, 2.0, 1.1]
    with pytest.raises(ValueError, match="track_id"):
        join_tracks(frames, tracks.drop(columns="track_id"))
    with pytest.raises(ValueError, match="more than one"):
        join_tracks(frames, pd.concat([tracks, tracks.assign(track_id=99)]))
