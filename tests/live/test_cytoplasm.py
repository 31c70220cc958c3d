"""Cells from nuclei on synthetic cytoplasm stains, scored against the truth and a Voronoi baseline."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import expand_labels

from cellflow.live.cytoplasm import cells_from_nuclei, cells_from_probabilities, cytoplasm_targets
from cellflow.metrics import score_field
from cellflow.screen.synthetic import SyntheticSpec, synthesize_field

# Sparse enough that the background matters (a Voronoi partition gives it all to cells).
SPEC = SyntheticSpec(wells=("A01",), sites=3, shape_yx=(128, 128), n_z=1, channels=("Cyto",),
                     nuclei_per_field=500, pixel_size_um=1.3, seed=1)


@pytest.fixture(scope="module")
def fields():
    out = []
    for site in range(SPEC.sites):
        field = synthesize_field(SPEC, plate="P1", well="A01", site=site)
        truth = field.truth_cells[0]
        nuclei = np.where(np.isin(field.truth_nuclei[0], np.unique(truth)), field.truth_nuclei[0], 0)
        cyto = field.images[0, 0, 0].astype(np.float32) - np.float32(SPEC.camera_offset_adu)
        out.append((cyto, nuclei.astype(np.uint32), truth))
    return out


def _mean_f1(fields, segment):
    return float(np.mean([score_field(truth, segment(cyto, nuclei)).f1_mean for cyto, nuclei, truth in fields]))


def test_cells_beat_voronoi_and_keep_nucleus_ids(fields):
    # Measured on these fields (seed 1): Voronoi 0.32, watershed 0.84, active contour 0.93.
    voronoi = _mean_f1(fields, lambda cyto, nuclei: expand_labels(nuclei, 10_000))
    watershed = _mean_f1(fields, lambda cyto, nuclei: cells_from_nuclei(cyto, nuclei))
    contour = _mean_f1(fields, lambda cyto, nuclei: cells_from_nuclei(cyto, nuclei, method="active_contour"))
    assert voronoi < 0.5
    assert watershed >= voronoi + 0.3 and watershed >= 0.75
    assert contour >= watershed
    for cyto, nuclei, _ in fields:
        cells = cells_from_nuclei(cyto, nuclei, method="active_contour")
        inside = nuclei > 0
        assert np.array_equal(cells[inside], nuclei[inside])  # cell k contains nucleus k


def test_probability_route_on_perfect_probabilities(fields):
    # With the truth's own class map as probabilities the route must give back the truth
    # up to the distance-watershed split of touching cells (and nuclei merged by declumping).
    _, nuclei, truth = fields[1]
    target, _ = cytoplasm_targets(nuclei, truth)
    probabilities = np.eye(3, dtype=np.float32)[target].transpose(2, 0, 1)
    found_nuclei, cells = cells_from_probabilities(probabilities, diameter_px=12)
    assert score_field(nuclei, found_nuclei).f1_mean > 0.8
    assert score_field(truth, cells).f1_mean > 0.8
    # The foreground is kept: pixels differ only where no nucleus was found or where
    # background enclosed by cells is filled as a hole.
    union, common = ((cells > 0) | (truth > 0)).sum(), ((cells > 0) & (truth > 0)).sum()
    assert common >= 0.95 * union


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="method"):
        cells_from_nuclei(np.zeros((5, 5)), np.zeros((5, 5), np.uint8), method="snake")
    with pytest.raises(ValueError, match="one shape"):
        cells_from_nuclei(np.zeros((5, 5)), np.zeros((5, 6), np.uint8))
    with pytest.raises(ValueError, match="probabilities must be"):
        cells_from_probabilities(np.zeros((4, 5, 5)))
