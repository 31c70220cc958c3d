from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import scipy.ndimage
import skimage.filters

from cellflow.ops import backend_of, to_host

HAS_CUDA = importlib.util.find_spec("cupy") is not None


def test_numpy_arrays_get_the_cpu_stack():
    be = backend_of(np.zeros((4, 4)))
    assert be.name == "numpy" and be.xp is np and be.ndi is scipy.ndimage
    assert be.ski("filters") is skimage.filters
    assert backend_of(3.0).name == "numpy"


def test_cpu_dispatch_does_not_import_cupy():
    backend_of(np.ones(2))
    assert "cupy" not in sys.modules or HAS_CUDA


def test_unknown_array_type_is_a_type_error():
    class Fake:
        __module__ = "torchlike.tensor"

    with pytest.raises(TypeError, match=r"no cellflow backend for arrays of type '.*Fake' \(module 'torchlike'\)"):
        backend_of(Fake())


def test_kernel_written_once_gives_the_same_result():
    rng = np.random.default_rng(0)
    image = rng.random((32, 32))
    be = backend_of(image)
    smooth = be.ski("filters").gaussian(image, sigma=2)
    np.testing.assert_array_equal(to_host(smooth), skimage.filters.gaussian(image, sigma=2))


@pytest.mark.gpu
def test_cupy_arrays_get_the_gpu_stack(cupy):
    image = cupy.asarray(np.random.default_rng(1).random((32, 32)))
    be = backend_of(image)
    assert be.name == "cupy" and be.xp is cupy
    result = be.ndi.gaussian_filter(image, 2)
    np.testing.assert_allclose(to_host(result), scipy.ndimage.gaussian_filter(to_host(image), 2), atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_fill_holes_equals_scipy_binary_fill_holes(seed):
    """SciPy's flood by repeated dilation is the oracle: 1-D to 3-D masks, sparse to dense, nested rings."""
    rng = np.random.default_rng(seed)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 30, size=rng.integers(1, 4)))
        mask = rng.random(shape) < rng.uniform(0.1, 0.9)
        if rng.random() < 0.5:
            mask = scipy.ndimage.binary_dilation(mask)
        got = backend_of(mask).fill_holes(mask)
        assert got.dtype == bool
        np.testing.assert_array_equal(got, scipy.ndimage.binary_fill_holes(mask))
    rings = np.zeros((9, 9), bool)
    rings[1:8, 1:8], rings[2:7, 2:7], rings[3:6, 3:6], rings[4, 4] = True, False, True, False
    assert backend_of(rings).fill_holes(rings)[1:8, 1:8].all() and not backend_of(rings).fill_holes(rings)[0].any()
    assert backend_of(np.zeros((0, 3), bool)).fill_holes(np.zeros((0, 3), bool)).shape == (0, 3)


@pytest.mark.gpu
def test_fill_holes_on_the_gpu_equals_the_cpu(cupy):
    mask = np.random.default_rng(5).random((64, 80)) < 0.6
    got = backend_of(cupy.asarray(mask)).fill_holes(cupy.asarray(mask))
    np.testing.assert_array_equal(to_host(got), backend_of(mask).fill_holes(mask))
