"""Field quality checks: refuse pixels no analysis can use, with a message that says why.

A blank field (every pixel the same: a missed acquisition, a closed shutter), a
saturated one (most pixels at the detector's maximum) or one holding NaN/inf would
otherwise yield zero objects or garbage objects that look like results. The stages
that read images call :func:`check_planes` first; the error quarantines that field
only (:func:`cellflow.graph.guarded`) and is listed in the run report.
"""

from __future__ import annotations

import numpy as np

from cellflow.errors import FieldQualityError

__all__ = ["SATURATED_FRACTION", "check_planes"]

#: A field with at least this fraction of its pixels at the dtype's maximum is refused.
SATURATED_FRACTION = 0.5


def check_planes(planes: np.ndarray, *, what: str) -> None:
    """Raise :class:`FieldQualityError` if ``planes`` are blank, saturated or not finite.

    Parameters
    ----------
    planes : ndarray
        The raw pixels of one channel of one field (any shape), in their stored dtype.
    what : str
        How to name them in the message, e.g. ``"field P1/A01/0/0 channel 'DNA'"``.

    Examples
    --------
    >>> check_planes(np.arange(4, dtype=np.uint16), what="x")
    >>> check_planes(np.zeros(4, np.uint16), what="field A01 channel 'DNA'")
    Traceback (most recent call last):
    ...
    cellflow.errors.FieldQualityError: field A01 channel 'DNA' is blank: every pixel is 0 (a missed acquisition?)
    """
    planes = np.asarray(planes)
    if planes.size == 0:
        raise FieldQualityError(f"{what} has no pixels")
    if planes.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(planes)))
        if bad:
            raise FieldQualityError(f"{what} holds {bad} NaN or infinite pixels of {planes.size}")
    low, high = planes.min(), planes.max()
    if low == high:
        raise FieldQualityError(f"{what} is blank: every pixel is {low.item()!r} (a missed acquisition?)")
    if planes.dtype.kind in "ui":
        top = np.iinfo(planes.dtype).max
        fraction = float(np.count_nonzero(planes == top)) / planes.size
        if fraction >= SATURATED_FRACTION:
            raise FieldQualityError(
                f"{what} is saturated: {fraction:.0%} of pixels at the detector maximum {top} (over-exposed?)"
            )
