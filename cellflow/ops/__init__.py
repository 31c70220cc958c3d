"""Kernels on one block: pure functions of NumPy or CuPy arrays (no dask, no I/O)."""

from __future__ import annotations

from cellflow.ops._backend import Backend, backend_of, register_backend, to_host
from cellflow.ops.autolabel import (
    CELL_METHODS,
    DECLUMP_METHODS,
    CellParams,
    NucleiParams,
    estimate_diameter,
    project_planes,
    segment_cells,
    segment_nuclei,
)
from cellflow.ops.illumination import (
    ILLUMINATION_METHODS,
    BackgroundSums,
    apply_illumination,
    background_flatness,
    background_mask,
    background_sums,
    estimate_illumination,
    fit_surface,
)
from cellflow.ops.measure import SHAPE_COLUMNS, link_objects, measure_objects, touches_border
from cellflow.ops.postprocess import PostprocessParams, probabilities_to_labels

__all__ = [
    "CELL_METHODS",
    "DECLUMP_METHODS",
    "ILLUMINATION_METHODS",
    "SHAPE_COLUMNS",
    "Backend",
    "BackgroundSums",
    "CellParams",
    "NucleiParams",
    "PostprocessParams",
    "apply_illumination",
    "backend_of",
    "background_flatness",
    "background_mask",
    "background_sums",
    "estimate_diameter",
    "estimate_illumination",
    "fit_surface",
    "link_objects",
    "measure_objects",
    "probabilities_to_labels",
    "project_planes",
    "register_backend",
    "segment_cells",
    "segment_nuclei",
    "to_host",
    "touches_border",
]
