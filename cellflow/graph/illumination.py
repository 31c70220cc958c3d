"""Illumination stage: one flat-field per plate x channel x z, from all of the plate's fields.

Graph (built lazily, nothing is read until it runs)::

    field ─ read, BackgroundSums per (c, z) ─┐
    field ─ ...                              ├─ tree of sums (fan-in split_every) ─┬─ estimate (c, z) ─ write
    field ─ ...                              ┘        one tree per plate           └─ ...

Each field task reads its planes and returns, per channel and z, the block sums
and counts of its background pixels (:func:`~cellflow.ops.illumination.background_sums`):
a few small grids whatever the field size. A tree of additions reduces them per
plate, so the memory of any task stays bounded for 10^4-10^6 fields, and the
depth of the graph grows with the logarithm of their number. One task per
plate x channel x z then smooths the sum, normalises it to mean 1 and writes
``illumination[plate, c, z]``. The kernels' own docstring
(:mod:`cellflow.ops.illumination`) justifies the statistic.

Bright-field (transmitted light) is handled like the fluorescence channels: its
lamp's uneven field multiplies the transmitted light as vignetting multiplies
fluorescence, and the symmetric foreground test drops cells that are darker
or brighter than the background.

:func:`correct` applies the stored function lazily to ``images``.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import reduce
from typing import Any, Literal

import numpy as np
import xarray as xr
from dask import delayed
from dask.base import tokenize
from dask.delayed import Delayed

from cellflow._config import check_keys
from cellflow.graph._stage import StageGraph, TaskResult, VariableSpec, field_tasks, guarded, merge_results
from cellflow.ops.illumination import (
    ILLUMINATION_METHODS,
    BackgroundSums,
    apply_illumination,
    background_sums,
    estimate_illumination,
)
from cellflow.screen.store import FieldKey, Screen

__all__ = ["ILLUMINATION_DIMS", "RESCALE_MODES", "IlluminationParams", "build_illumination", "correct",
           "resolve_offset"]

#: Dimensions of the ``illumination`` variable (fixed by the schema).
ILLUMINATION_DIMS: tuple[str, ...] = ("plate", "c", "z", "y", "x")
#: How :func:`correct` scales the function before dividing by it.
RESCALE_MODES: tuple[str, ...] = ("mean", "max", "min")
_STAGE = "illumination"
_PlaneKey = tuple[str, int]  # (channel, z index)


def _fail(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"IlluminationParams.{name} must be {expected}, got {value!r}")


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise _fail(name, f"an integer >= {minimum}", value)
    return int(value)


def _number(name: str, value: Any, *, low: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _fail(name, "a finite number", value)
    if value < low or (strict and value == low):
        raise _fail(name, f"{'>' if strict else '>='} {low:g}", value)
    return float(value)


@dataclass(frozen=True)
class IlluminationParams:
    """Settings of the illumination stage; validated here, trusted everywhere else.

    Parameters
    ----------
    method : {'spline', 'median', 'polynomial'}
        Smoothing of the plate's averaged background (see :mod:`cellflow.ops.illumination`).
    block_px : int
        Edge of the blocks in which fields are averaged (the down-sampling factor).
    filter_size_px : float, optional
        Median filter edge in pixels (``'median'``); default an eighth of the shorter field side.
    iterations : int
        Outlier-removal rounds of the surface fit (``'spline'``, ``'polynomial'``).
    knots : int
        Interior knots per axis of the cubic B-spline surface (``'spline'``).
    degree : int
        Total degree of the polynomial surface (``'polynomial'``), at most 10.
    outlier_sigma : float
        Robust standard deviations beyond which a block is left out of the next fit.
    tolerance : float
        Largest relative departure from the local background of a background pixel, in (0, 1).
    object_px : int
        Size of the largest cells or clusters in pixels (width of the background opening).
    channels : tuple of str, optional
        Channels to estimate; None for all of the screen's channels.
    offset : float, optional
        Camera offset (dark level) in ADU, subtracted before estimating. None: the
        ``camera_offset_adu`` of the screen's acquisition metadata (see :func:`resolve_offset`).
    split_every : int
        Fan-in of the tree reduction over fields.

    Raises
    ------
    ValueError
        A value is out of range; the message names the field.

    Examples
    --------
    >>> params = IlluminationParams(method="median", channels=("DNA",))
    >>> IlluminationParams.from_dict(params.to_dict()) == params
    True
    """

    method: Literal["median", "spline", "polynomial"] = "spline"
    block_px: int = 8
    filter_size_px: float | None = None
    iterations: int = 5
    knots: int = 3
    degree: int = 4
    outlier_sigma: float = 3.0
    tolerance: float = 0.2
    object_px: int = 96
    channels: tuple[str, ...] | None = None
    offset: float | None = None
    split_every: int = 8

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.method not in ILLUMINATION_METHODS:
            raise _fail("method", f"one of {ILLUMINATION_METHODS!r}", self.method)
        for name, minimum in (("block_px", 1), ("iterations", 0), ("knots", 0), ("degree", 0),
                              ("object_px", 1), ("split_every", 2)):
            set_(self, name, _integer(name, getattr(self, name), minimum))
        if self.degree > 10:
            raise _fail("degree", "an integer <= 10 (higher degrees ring at the field edges)", self.degree)
        if self.filter_size_px is not None:
            set_(self, "filter_size_px", _number("filter_size_px", self.filter_size_px, low=0, strict=True))
        set_(self, "outlier_sigma", _number("outlier_sigma", self.outlier_sigma, low=0, strict=True))
        tolerance = _number("tolerance", self.tolerance, low=0, strict=True)
        if tolerance >= 1:
            raise _fail("tolerance", "a fraction in (0, 1)", self.tolerance)
        set_(self, "tolerance", tolerance)
        if self.offset is not None:
            set_(self, "offset", _number("offset", self.offset, low=0, strict=False))
        if self.channels is not None:
            set_(self, "channels", _channel_names(self.channels))

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict; :meth:`from_dict` inverts it."""
        out = asdict(self)
        out["channels"] = None if self.channels is None else list(self.channels)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IlluminationParams:
        """Params from :meth:`to_dict` output (or a YAML spec), naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


def _channel_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _fail("channels", "a sequence of channel names such as ('DNA',) or None", value)
    names = tuple(value)
    if not names or any(not isinstance(v, str) or not v.strip() for v in names) or len(set(names)) != len(names):
        raise _fail("channels", "a non-empty sequence of unique, non-blank names", value)
    return names


def resolve_offset(screen: Screen, params: IlluminationParams) -> float:
    """The camera offset to subtract: ``params.offset``, else the screen's metadata, else 0.

    The metadata is the ``camera_offset_adu`` attribute of the store's layout
    (``Screen.layout.attrs``), or of the synthetic spec it was generated from
    (``attrs['synthetic_spec']``).
    """
    if params.offset is not None:
        return params.offset
    attrs = screen.layout.attrs
    for source in (attrs, attrs.get("synthetic_spec") or {}):
        if "camera_offset_adu" in source:
            return float(source["camera_offset_adu"])
    return 0.0


def build_illumination(screen: Screen, params: IlluminationParams, *, after: StageGraph | None = None,
                       fields: Iterable[FieldKey] | None = None) -> StageGraph:
    """Lazy tasks that estimate and write ``illumination`` for every plate x channel x z.

    Parameters
    ----------
    screen : Screen
    params : IlluminationParams
    after : StageGraph, optional
        Upstream stage; each field's read waits for that field's upstream task.
    fields : iterable of FieldKey, optional
        Fields to average; default all acquired fields. Plates without any field
        get no task.

    Returns
    -------
    StageGraph
        One task per plate x channel x z, each returning a :class:`TaskResult` with
        the chunks it wrote and one summary row. ``by_field`` maps every field to a
        barrier on its plate's tasks.

    Raises
    ------
    ValueError
        ``params.channels`` names a channel the screen does not have.
    """
    keys = screen.fields() if fields is None else list(fields)
    channels = _selected_channels(screen, params)
    offset = resolve_offset(screen, params)
    z_values = [float(z) for z in screen.coords()["z"]]
    output = VariableSpec(
        _STAGE, ILLUMINATION_DIMS, "float32", fill_value=float("nan"),
        attrs={"description": "relative illumination, mean 1 over the field; corrected = (images - offset) / it"},
    )
    tasks: list[Delayed] = []
    by_field: dict[FieldKey, Delayed] = {}
    token = tokenize(str(screen.path), params, channels, offset)
    sums = field_tasks(f"{_STAGE}-sums", token, _field_sums,
                       {key: (screen, key, channels, params, offset) for key in keys}, after)
    for plate, group in itertools.groupby(sorted(keys), key=lambda k: k.plate):
        plate_keys = list(group)
        parts = [sums[key] for key in plate_keys]
        total = _tree_sum(parts, params.split_every)
        writes = [
            delayed(_estimate_and_write)(screen, total, plate, (c, iz), z, params)
            for c in channels for iz, z in enumerate(z_values)
        ]
        barrier = delayed(_plate_done)(*writes)
        tasks.extend(writes)
        by_field.update(dict.fromkeys(plate_keys, barrier))
    return StageGraph(_STAGE, (output,), tuple(tasks), by_field)


def _selected_channels(screen: Screen, params: IlluminationParams) -> tuple[str, ...]:
    available = tuple(str(c) for c in screen.coords()["c"])
    if params.channels is None:
        return available
    unknown = [c for c in params.channels if c not in available]
    if unknown:
        raise ValueError(f"IlluminationParams.channels {unknown!r} are not in the screen; it has {available!r}")
    return params.channels


def _tree_sum(parts: list[Delayed], split_every: int) -> Delayed:
    """Sum ``parts`` by a tree of additions with fan-in ``split_every``."""
    while len(parts) > 1:
        parts = [delayed(_add)(*parts[i:i + split_every]) for i in range(0, len(parts), split_every)]
    return parts[0]


# ---------------------------------------------------------------------------- task bodies
def _field_sums(screen: Screen, key: FieldKey, channels: tuple[str, ...], params: IlluminationParams,
                offset: float, *_after: Any) -> dict[_PlaneKey, BackgroundSums]:
    """One field's background sums for every selected channel and z plane; none if it cannot be read.

    A field that fails here (a bad image) is left out of its plate's estimate rather than
    failing the plate: its own error is reported by the stage that segments it.
    """
    try:
        return _field_sums_or_raise(screen, key, channels, params, offset)
    except Exception:  # the field is quarantined downstream, where its error is reported
        return {}


def _field_sums_or_raise(screen: Screen, key: FieldKey, channels: tuple[str, ...], params: IlluminationParams,
                         offset: float) -> dict[_PlaneKey, BackgroundSums]:
    out: dict[_PlaneKey, BackgroundSums] = {}
    for c in channels:
        planes = screen.read("images", plate=key.plate, well=key.well, site=key.site, t=key.t, c=c)
        for iz, plane in enumerate(planes):
            out[(c, iz)] = background_sums(
                plane, block_px=params.block_px, offset=offset, tolerance=params.tolerance,
                object_px=params.object_px,
            )
    return out


def _add(*parts: dict[_PlaneKey, BackgroundSums]) -> dict[_PlaneKey, BackgroundSums]:
    parts = tuple(p for p in parts if p)  # fields that could not be read give no sums
    return {key: reduce(lambda a, b: a + b, (p[key] for p in parts)) for key in parts[0]} if parts else {}


@guarded(_STAGE)
def _estimate_and_write(screen: Screen, total: dict[_PlaneKey, BackgroundSums], plate: str,
                        plane: _PlaneKey, z: float, params: IlluminationParams) -> TaskResult:
    if plane not in total:
        raise ValueError(f"plate {plate!r}: no readable field to estimate the illumination of {plane} from")
    sums = total[plane]
    illumination = estimate_illumination(
        sums, method=params.method, filter_size_px=params.filter_size_px, iterations=params.iterations,
        knots=params.knots, degree=params.degree, outlier_sigma=params.outlier_sigma,
    )
    records = screen.write(_STAGE, illumination, plate=plate, c=plane[0], z=z)
    row = {
        "plate": plate, "c": plane[0], "z": z, "method": params.method, "fields": sums.fields,
        "background_fraction": sums.background_fraction,
        "illumination_min": float(illumination.min()), "illumination_max": float(illumination.max()),
    }
    return TaskResult(stage=_STAGE, records=tuple(records), rows=(row,))


def _plate_done(*results: TaskResult) -> TaskResult:
    """A plate's illumination is written: its tasks' results as one (downstream tasks wait on it)."""
    return merge_results(_STAGE, results)


# ---------------------------------------------------------------------------- apply
def correct(images: xr.DataArray, illumination: xr.DataArray, *, offset: float = 0.0,
            rescale: Literal["mean", "max", "min"] = "mean") -> xr.DataArray:
    """Flat-field correct ``images`` lazily: ``(images - offset) / illumination``, float32.

    Parameters
    ----------
    images : xarray.DataArray
        Pixels with dims ``y``, ``x`` and coordinates ``plate``, ``c``, ``z`` (as
        dims or scalars), e.g. ``screen.dataset()['images']`` or a selection of it.
    illumination : xarray.DataArray
        Dims ``(plate, c, z, y, x)``, e.g. ``screen.dataset()['illumination']``.
        It is selected at the images' plates, channels and planes.
    offset : float
        Camera offset (dark level) subtracted first; use the one the function was
        estimated with (:func:`resolve_offset`).
    rescale : {'mean', 'max', 'min'}
        Scale of the function divided by: ``'mean'`` as stored (mean 1, a field
        keeps its mean brightness); ``'max'`` divided by its maximum (values as if
        the whole field were lit like the optical axis); ``'min'`` divided by its
        minimum (corrected <= images - offset everywhere, so the result fits the
        acquisition's dtype and range).

    Returns
    -------
    corrected : xarray.DataArray of float32
        Same dims, coordinates and chunks as ``images``; lazy when ``images`` is.

    Raises
    ------
    ValueError
        Unknown ``rescale``; ``illumination`` has the wrong dims or lacks a plate,
        channel or plane of ``images``.
    """
    if rescale not in RESCALE_MODES:
        raise ValueError(f"rescale must be one of {RESCALE_MODES!r}, got {rescale!r}")
    if tuple(illumination.dims) != ILLUMINATION_DIMS:
        raise ValueError(f"illumination must have dims {ILLUMINATION_DIMS}, got {tuple(illumination.dims)}")
    where = {d: images[d] for d in ILLUMINATION_DIMS[:3] if d in images.coords}
    try:
        flat = illumination.sel(where)
    except KeyError as error:
        raise ValueError(f"illumination has no function for some of the images' {sorted(where)}: {error}") from None
    stray = [d for d in flat.dims if d not in images.dims]
    if stray:
        raise ValueError(f"images have no coordinate for illumination dims {stray!r}; select them first")
    if rescale != "mean":
        flat = flat / getattr(flat, rescale)(("y", "x"))
    corrected = xr.apply_ufunc(
        apply_illumination, images, flat, kwargs={"offset": float(offset)},
        dask="parallelized", output_dtypes=[np.float32], join="exact",
    )
    corrected = corrected.transpose(*images.dims)
    corrected.name = images.name
    return corrected
