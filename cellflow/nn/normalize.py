"""Per-channel intensity normalisation of network inputs, recorded with the model.

A network only works on images scaled the way it was trained on, so the
:class:`Normalization` is saved in the checkpoint (:meth:`Normalization.to_dict`)
and :func:`normalize` applies it identically in training and at inference. Each
channel is normalised on its own, from statistics of that channel of the image
(tile) itself. Statistics are taken in float64; the result is float32.

Methods, for one channel ``x``:

``"percentile"`` (the default)
    ``(x - P_low) / (P_high - P_low)`` with ``P_q`` the q-th percentile of ``x``
    (linear interpolation): ``P_low`` maps to exactly 0 and ``P_high`` to exactly 1;
    values outside are not clipped. Invariant to a constant offset and to a gain,
    so a camera offset (the HeLa frames sit at ~33000 ADU) does not matter.
``"unit_minus_median"`` (Sadanandan et al. 2017)
    Scale to [0, 1] by the minimum and maximum, then subtract the median of the
    scaled image: ``(x - min) / (max - min) - median((x - min) / (max - min))``,
    i.e. ``(x - median) / (max - min)``. Invariant to an offset and a gain, but a
    single hot pixel sets ``max`` (``low``/``high`` are not used).
``"median"`` (Van Valen et al. 2016)
    ``x / median(x)``: invariant to a gain, so robust to illumination changes
    (multiplicative), and meant for non-negative intensities whose zero is
    meaningful. It is **not** invariant to an offset: a camera offset ``c`` gives
    ``(x + c) / (median + c)``, which squeezes the contrast by ``median / (median + c)``
    (at ~33000 ADU offset and ~1000 ADU of signal, every pixel lands near 1).
    Subtract the offset first (e.g. with illumination correction) or use
    ``"percentile"``. When the median is <= ``eps`` (e.g. a sparse fluorescence
    channel that is mostly exact zeros) the mean is used instead, and when the mean
    is <= ``eps`` too (an all-zero channel) the channel is divided by 1.

For ``"percentile"`` and ``"unit_minus_median"``, a spread (``P_high - P_low`` or
``max - min``) <= ``eps`` marks a flat channel: it is divided by 1 instead, which
for a constant channel gives all zeros.

Works on NumPy and CuPy arrays alike (:func:`~cellflow.ops.backend_of`); statistics
stay on the device.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellflow.ops._backend import backend_of
from cellflow.ops.postprocess import DictParams

__all__ = ["NORMALIZATION_METHODS", "Normalization", "normalize"]

NORMALIZATION_METHODS = ("median", "unit_minus_median", "percentile")


def _real(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Normalization(DictParams):
    """How to normalise a network's input, per channel; saved in checkpoints.

    Parameters
    ----------
    method : {'percentile', 'unit_minus_median', 'median'}
        See the module docstring. Default ``'percentile'``.
    low, high : float
        Percentiles of the ``'percentile'`` method, ``0 <= low < high <= 100``.
        Defaults 1 and 99.8.
    eps : float
        > 0. A median or spread at or below it is treated as degenerate (see the
        module docstring). Default 1e-6.

    Raises
    ------
    ValueError
        A field is out of range; the message names it.

    Examples
    --------
    >>> norm = Normalization("percentile", low=2, high=98)
    >>> Normalization.from_dict(norm.to_dict()) == norm
    True
    """

    method: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    eps: float = 1e-6

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.method not in NORMALIZATION_METHODS:
            raise ValueError(f"{owner}.method must be one of {NORMALIZATION_METHODS!r}, got {self.method!r}")
        low, high, eps = (_real(owner, name, getattr(self, name)) for name in ("low", "high", "eps"))
        if not 0.0 <= low < 100.0:
            raise ValueError(f"{owner}.low must be in [0, 100), got {self.low!r}")
        if not low < high <= 100.0:
            raise ValueError(f"{owner}.high must be in (low, 100] = ({low}, 100], got {self.high!r}")
        if eps <= 0:
            raise ValueError(f"{owner}.eps must be > 0, got {self.eps!r}")
        for name, value in (("low", low), ("high", high), ("eps", eps)):
            object.__setattr__(self, name, value)


def _safe_divisor(xp: Any, value: Any, eps: float, fallback: Any) -> Any:
    """``value`` where it is > ``eps``, else ``fallback`` (elementwise, on the device)."""
    return xp.where(value > eps, value, fallback)


def normalize(image: Any, norm: Normalization) -> Any:
    """Normalise each channel of ``image`` as ``norm`` says (see the module docstring).

    Parameters
    ----------
    image : (C, M, N) or (M, N) ndarray
        Any real dtype (e.g. raw uint16 ADU); NumPy or CuPy.
    norm : Normalization

    Returns
    -------
    normalized : ndarray of float32
        Same shape and backend as ``image``.

    Raises
    ------
    ValueError
        ``image`` is not a real 2-D or 3-D array.
    TypeError
        ``norm`` is not a :class:`Normalization`.

    Examples
    --------
    >>> image = np.arange(101, dtype=np.uint16).reshape(1, 1, 101) + 33000
    >>> out = normalize(image, Normalization("percentile", low=10, high=90))
    >>> float(out[0, 0, 10]), float(out[0, 0, 90])
    (0.0, 1.0)
    >>> float(normalize(np.array([[1.0, 2.0, 4.0]]), Normalization("median"))[0, 1])
    1.0
    """
    if not isinstance(norm, Normalization):
        raise TypeError(f"norm must be a Normalization, got {type(norm).__name__}")
    be = backend_of(image)
    xp = be.xp
    if getattr(image, "ndim", None) not in (2, 3) or image.dtype.kind not in "fiub":
        raise ValueError(
            f"image must be a real (C, M, N) or (M, N) array, got shape {getattr(image, 'shape', None)} "
            f"and dtype {getattr(image, 'dtype', type(image).__name__)}"
        )
    channels = image.reshape(-1, *image.shape[-2:]) if image.ndim == 3 else image[None]
    flat = channels.reshape(channels.shape[0], -1).astype(np.float64)
    one = xp.ones((flat.shape[0], 1))
    if norm.method == "percentile":
        low, high = xp.percentile(flat, xp.asarray([norm.low, norm.high]), axis=1, keepdims=True)
        out = (flat - low) / _safe_divisor(xp, high - low, norm.eps, one)
    elif norm.method == "unit_minus_median":
        spread = flat.max(axis=1, keepdims=True) - flat.min(axis=1, keepdims=True)
        out = (flat - xp.median(flat, axis=1, keepdims=True)) / _safe_divisor(xp, spread, norm.eps, one)
    else:  # "median"
        median = xp.median(flat, axis=1, keepdims=True)
        mean = flat.mean(axis=1, keepdims=True)
        out = flat / _safe_divisor(xp, median, norm.eps, _safe_divisor(xp, mean, norm.eps, one))
    return out.astype(np.float32).reshape(image.shape)
