"""Shared fixtures: small screens and a scheduler that fails if anything computes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask
import pytest

NUCLEI_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nuclei"


class ComputeForbidden(AssertionError):
    """Raised when a graph that must stay lazy is computed."""


def _refuse(*args: object, **kwargs: object) -> None:
    raise ComputeForbidden("a dask graph was computed while it should only have been built")


@contextmanager
def forbid_compute() -> Iterator[None]:
    """Inside this block any dask compute raises :class:`ComputeForbidden`."""
    with dask.config.set(scheduler=_refuse):
        yield


@pytest.fixture(autouse=True, scope="session")
def _any_free_dashboard_port() -> Iterator[None]:
    """Local clusters of concurrent tests (pytest -n 2) must not race for the default dashboard port 8787."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CELLFLOW_DASHBOARD_ADDRESS", "127.0.0.1:0")
    yield
    mp.undo()


@pytest.fixture
def no_compute():
    return forbid_compute


@pytest.fixture
def nuclei_data() -> Path:
    if not (NUCLEI_DATA / "index.csv").is_file():
        pytest.skip(f"real nuclei data not found at {NUCLEI_DATA}")
    return NUCLEI_DATA


@pytest.fixture
def cupy():
    """CuPy with a usable CUDA device; GPU tests skip cleanly (with the reason) without one."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (GPU extra); the CPU twin is tested")
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        devices = 0
    if devices == 0:
        pytest.skip("CuPy is installed but no CUDA device is available")
    return cupy
