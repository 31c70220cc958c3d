"""The ktr stage: per-cell ratios from a store equal the kernel's, and recover known ratios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellflow.errors import RegionError
from cellflow.graph.ktr import KtrParams, build_ktr, ktr_tables
from cellflow.live.ktr import ktr_ratios
from cellflow.live.synthetic import synthesize_ktr_field
from cellflow.pipeline import STAGES
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen


@pytest.fixture
def ktr_store(tmp_path):
    """A synthetic plate whose Cyto channel is replaced by a KTR reporter with known ratios."""
    spec = SyntheticSpec(wells=("A01", "B01"), sites=1, shape_yx=(96, 96), n_z=1, channels=("DNA", "Cyto"),
                         nuclei_per_field=1500, pixel_size_um=1.3, seed=3)
    screen = write_synthetic_screen(tmp_path / "p.zarr", spec)
    screen.add_variable("labels_nuclei", dims=("plate", "well", "site", "t", "y", "x"), dtype="uint32",
                        exist_ok=True)
    screen.add_variable("labels_cells", dims=("plate", "well", "site", "t", "y", "x"), dtype="uint32",
                        exist_ok=True)
    truth = {}
    for key in screen.fields():
        field = synthesize_ktr_field(spec, plate=key.plate, well=key.well, site=key.site, background_e=0.0)
        where = key._asdict()
        screen.write("images", np.rint(field.reporter)[None].astype(np.uint16), c="Cyto", **where)
        screen.write("labels_nuclei", field.nuclei, **where)
        screen.write("labels_cells", field.cells, **where)
        truth[key] = field
    return screen, truth


def test_stage_rows_equal_the_kernel_and_recover_the_true_ratio(ktr_store, tmp_path):
    import dask

    screen, truth = ktr_store
    params = KtrParams(channel="Cyto", method="cytoplasm")
    graph = build_ktr(screen, params)
    results = dask.compute(*graph.tasks, scheduler="synchronous")
    assert all(r.error is None for r in results)
    rows = [row for r in results for row in r.rows]
    tables, paths = ktr_tables(rows, tmp_path / "tables", params)
    cells = pd.read_parquet(paths["ktr/cells"])
    for key, field in truth.items():
        mine = cells[(cells.well == key.well) & (cells.site == key.site)].set_index("label")
        eager = ktr_ratios(field.reporter.round(), field.nuclei, field.cells, method="cytoplasm").set_index("label")
        pd.testing.assert_series_equal(mine["ratio_nuclear_cytoplasmic"], eager["ratio_nuclear_cytoplasmic"],
                                       check_names=False)
        measured = mine["ratio_nuclear_cytoplasmic"].dropna()
        expected = pd.Series({k: field.ratio[k] for k in measured.index})
        assert len(measured) >= 0.9 * len(mine)
        assert float(np.abs(measured / expected - 1).max()) < 0.05  # the bar, through the stage
    assert set(tables["ktr/wells"].columns) >= {"plate", "well", "t", "ratio_median", "cells"}
    assert "ktr" in STAGES


def test_missing_channel_or_labels_are_named(ktr_store):
    screen, _ = ktr_store
    with pytest.raises(RegionError, match="channel 'KTR' is not in"):
        build_ktr(screen, KtrParams())
    with pytest.raises(RegionError, match="no variable 'labels_x'"):
        build_ktr(screen, KtrParams(channel="Cyto", nuclei="labels_x"))
    with pytest.raises(ValueError, match="method"):
        KtrParams(method="median")
