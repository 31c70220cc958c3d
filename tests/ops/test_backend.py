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
