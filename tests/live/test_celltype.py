"""Cell-type classification: targets by hand, per-cell aggregation by hand, and a tiny trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellflow.live.celltype import (
    SemanticTrainParams,
    celltype_targets,
    classify_cells,
    predict_probabilities,
    train_semantic,
)
from cellflow.live.synthetic import COCULTURE_TYPES, synthesize_coculture_field
from cellflow.nn.normalize import Normalization, normalize
from cellflow.nn.targets import three_class_targets
from cellflow.screen.synthetic import SyntheticSpec

SPEC = SyntheticSpec(wells=("A01",), sites=8, shape_yx=(96, 96), n_z=1, channels=("DNA", "BF"),
                     nuclei_per_field=1200, pixel_size_um=1.3, seed=11)


def test_targets_split_the_interior_by_type():
    labels = np.zeros((30, 40), np.int32)
    labels[2:14, 2:18] = 3
    labels[2:14, 18:38] = 8
    labels[16:28, 5:30] = 5
    types = {3: 1, 8: 0, 5: 1}
    target, weights = celltype_targets(labels, types, n_types=2, boundary_px=1, min_area=1)
    base, _ = three_class_targets(labels, boundary_px=1, min_area=1)
    assert np.array_equal(target == 0, base == 0) and np.array_equal(target == 1, base == 2)
    for label, kind in types.items():
        interior = (labels == label) & (base == 1)
        assert interior.any() and (target[interior] == 2 + kind).all()
    assert set(np.unique(weights[target == 1])) == {5.0}
    with pytest.raises(ValueError, match="no type"):
        celltype_targets(labels, {3: 0}, n_types=2)
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        celltype_targets(labels, {3: 0, 8: 2, 5: 0}, n_types=2)


def test_classify_cells_means_over_each_cell():
    rng = np.random.default_rng(1)
    cells = rng.integers(0, 4, (20, 20))
    probabilities = rng.dirichlet(np.ones(4), size=(20, 20)).transpose(2, 0, 1)
    table = classify_cells(probabilities, cells, type_names=["x", "y"])
    for row in table.itertuples():
        mask = cells == row.label
        expected = [probabilities[2][mask].mean(), probabilities[3][mask].mean()]
        assert (row.score_x, row.score_y) == pytest.approx(expected)
        assert row.cell_type == ("x" if expected[0] >= expected[1] else "y")
    with pytest.raises(ValueError, match="probabilities must be"):
        classify_cells(probabilities[:3], cells, type_names=["x", "y"])


def test_tiny_model_classifies_a_synthetic_coculture():
    # Types differ in nuclear texture (chromocentres) and bright-field absorbance; a
    # 2-level U-Net of width 8 learns them in 150 steps of 4 crops (about 10 s on one core).
    fields = [synthesize_coculture_field(SPEC, plate="P1", well="A01", site=s) for s in range(SPEC.sites)]
    images = [normalize(f.image, Normalization()) for f in fields]
    pairs = [celltype_targets(f.cells, f.cell_type, n_types=2) for f in fields[:4]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_semantic(images[:4], [t for t, _ in pairs], [w for _, w in pairs], classes=4,
                               params=SemanticTrainParams(steps=150, batch_size=4, crop_size=48, seed=0))
        tables = [classify_cells(predict_probabilities(model, im), f.cells, type_names=COCULTURE_TYPES)
                  for f, im in zip(fields[4:], images[4:], strict=True)]
    finally:
        torch.set_num_threads(threads)
    predicted = np.concatenate([t["cell_type"].to_numpy() for t in tables])
    truth = np.concatenate([[COCULTURE_TYPES[f.cell_type[k]] for k in t["label"]]
                            for f, t in zip(fields[4:], tables, strict=True)])
    assert truth.size >= 30 and len(set(truth)) == 2  # both types among the held-out cells
    assert (predicted == truth).mean() >= 0.9
