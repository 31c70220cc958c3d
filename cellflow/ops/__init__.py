"""Kernels on one block: pure functions of NumPy or CuPy arrays (no dask, no I/O)."""

from __future__ import annotations

from cellflow.ops._backend import Backend, backend_of, register_backend, to_host

__all__ = ["Backend", "backend_of", "register_backend", "to_host"]
