"""The cells stage: the kernel's cells through a store, linked to their nuclei by id."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from cellflow.errors import RegionError
from cellflow.graph.cells import CellsParams, build_cells
from cellflow.live.cytoplasm import cells_from_nuclei
from cellflow.metrics import score_field
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    spec = SyntheticSpec(wells=("A01",), sites=2, shape_yx=(128, 160), n_z=1, channels=("DNA", "Cyto"), seed=1,
                         nuclei_per_field=1500, pixel_size_um=1.3)
    screen = write_synthetic_screen(tmp_path_factory.mktemp("cells") / "p.zarr", spec)
    screen.add_variable("labels_nuclei", dims=("plate", "well", "site", "t", "y", "x"), dtype="uint32",
                        exist_ok=True)
    for key in screen.fields():  # the true nuclei stand in for a network's nuclei
        screen.write("labels_nuclei", screen.read("truth_nuclei", **key._asdict()), **key._asdict())
    return screen, spec


@pytest.mark.parametrize("method", ["watershed", "active_contour"])
def test_stage_equals_the_kernel_and_links_cells_to_nuclei(store, method):
    screen, spec = store
    params = CellsParams(channel="Cyto", method=method, offset=spec.camera_offset_adu)
    graph = build_cells(screen, params)
    graph.create_outputs(screen)
    results = dask.compute(*graph.tasks, scheduler="synchronous")
    assert all(r.error is None for r in results)
    for key in screen.fields():
        where = key._asdict()
        cyto = np.maximum(screen.read("images", c="Cyto", **where).astype(np.float32).mean(axis=0)
                          - np.float32(spec.camera_offset_adu), 0)
        nuclei = screen.read("labels_nuclei", **where)
        expected = cells_from_nuclei(cyto, nuclei, method=method)
        cells = screen.read("labels_cells", **where)
        np.testing.assert_array_equal(cells, expected)
        inside = nuclei > 0
        assert inside.any()
        assert (cells[inside] == nuclei[inside]).mean() > 0.95  # cell k holds nucleus k
        # the kernel scored 0.84 (watershed) / 0.93 (active contour) on these synthetic fields;
        # 0.6 catches a mislinked or degenerate result without pinning the tuning
        assert score_field(screen.read("truth_cells", **where), cells).f1_mean > 0.6


def test_missing_inputs_are_named(store):
    screen, _ = store
    with pytest.raises(RegionError, match="no variable 'labels_x'"):
        build_cells(screen, CellsParams(channel="Cyto", nuclei="labels_x"))
    with pytest.raises(RegionError, match="channel 'GFP'"):
        build_cells(screen, CellsParams(channel="GFP"))
    with pytest.raises(ValueError, match="exactly one"):
        CellsParams()


def test_cells_from_a_probability_class(store):
    from cellflow.ops.autolabel import CellParams

    screen, _ = store
    screen.add_variable("probabilities", dims=("plate", "well", "site", "t", "class", "y", "x"), dtype="float32",
                        coords={"class": ["background", "cell"]}, exist_ok=True)
    for key in screen.fields():
        cell = (screen.read("truth_cells", **key._asdict()) > 0).astype(np.float32)
        screen.write("probabilities", np.stack([1 - cell, cell]), **key._asdict())
    params = CellsParams(probability_class="cell", output="labels_cellsp")
    graph = build_cells(screen, params)
    graph.create_outputs(screen)
    assert all(r.error is None for r in dask.compute(*graph.tasks, scheduler="synchronous"))
    for key in screen.fields():
        where = key._asdict()
        probability = screen.read("probabilities", **where)[1]
        expected = cells_from_nuclei(probability, screen.read("labels_nuclei", **where),
                                     params=CellParams(threshold=0.5, dilation_px=0))
        np.testing.assert_array_equal(screen.read("labels_cellsp", **where), expected)
