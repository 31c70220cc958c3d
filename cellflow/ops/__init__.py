"""Kernels on one block: pure functions of NumPy or CuPy arrays (no dask, no I/O)."""

from __future__ import annotations

from cellflow.ops._backend import Backend, backend_of, register_backend, to_host
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

__all__ = [
    "ILLUMINATION_METHODS",
    "Backend",
    "BackgroundSums",
    "apply_illumination",
    "backend_of",
    "background_flatness",
    "background_mask",
    "background_sums",
    "estimate_illumination",
    "fit_surface",
    "register_backend",
    "to_host",
]
