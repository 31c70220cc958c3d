"""Auto-label stage: classical nuclei and cells for every acquired field -> ``labels_nuclei``, ``labels_cells``.

Graph (built lazily, nothing is read until it runs)::

    field ─ read DNA (+ Cyto) planes ─ correct, z-average ─ nuclei ─ cells ─ write labels

One task per field (:func:`build_autolabel`); fields never share a chunk, so tasks
write side by side. A task reads its channels' planes with ``Screen.read``, removes
the camera offset, divides by the plate's ``illumination`` when it is there, averages
over z, and runs the kernels of :mod:`cellflow.ops.autolabel`. It returns the chunks
it wrote and one row (object counts, the diameter used, whether the illumination
was applied).

Illumination. With ``illumination=True`` a channel is corrected when the store's
``illumination`` variable is complete for its plate (every z plane and tile in the
ledger) or when the stage runs after the illumination stage (``after`` writes
``illumination``); the choice is made here, on the client, before anything runs. A
function that turns out unwritten at run time (NaN, the variable's fill value) is
not applied, and the row says so.

Padded fields. Stores built from images of different sizes
(:func:`~cellflow.screen.ingest.ingest_nuclei_pairs`) keep each image at the top-left
of a zero-padded field and its size in ``extent_y`` / ``extent_x``; only that extent
is segmented (the padding would pull the Otsu threshold down) and the padding stays 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dask.base import tokenize

from cellflow._config import check_keys
from cellflow.graph._stage import StageGraph, TaskResult, VariableSpec, field_tasks, guarded, written_upstream
from cellflow.graph.illumination import IlluminationParams, resolve_offset
from cellflow.metrics import field_extents, select_fields
from cellflow.ops.autolabel import (
    CellParams,
    NucleiParams,
    estimate_diameter,
    project_planes,
    segment_cells,
    segment_nuclei,
)
from cellflow.ops.qc import check_planes
from cellflow.screen.layout import DIMS_LABELS
from cellflow.screen.store import FieldKey, Screen

__all__ = ["AutolabelParams", "build_autolabel"]

_STAGE = "autolabel"
_ILLUMINATION = "illumination"


def _fail(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"AutolabelParams.{name} must be {expected}, got {value!r}")


def _optional_positive(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise _fail(name, "a finite number > 0 or None", value)
    return float(value)


def _nested(name: str, value: Any, kind: type[NucleiParams] | type[CellParams]) -> Any:
    """``value`` as ``kind``: kept if it is one, built from a mapping (YAML) otherwise."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise _fail(name, f"a {kind.__name__} or a mapping of its fields", value)
    try:
        return kind.from_dict(value)
    except ValueError as error:
        raise ValueError(f"AutolabelParams.{name} (in '{name}'): {error}") from None


@dataclass(frozen=True)
class AutolabelParams:
    """Settings of the auto-label stage; validated here, trusted everywhere else.

    Parameters
    ----------
    nuclear_channel : str
        Channel of the nuclear stain (e.g. ``'DNA'``).
    cytoplasm_channel : str, optional
        Channel of the cytoplasm stain (e.g. ``'Cyto'``); None for nuclei only.
    diameter_px : float, optional
        Expected nucleus diameter in pixels.
    diameter_um : float, optional
        The same in micrometres, converted with the store's ``pixel_size_um``. Give at
        most one of the two; with neither, the diameter is estimated per field.
    illumination : bool
        Correct with the stored ``illumination`` where it is available (see the module docstring).
    offset : float, optional
        Camera offset (ADU) subtracted first; None: the screen's metadata
        (:func:`~cellflow.graph.illumination.resolve_offset`), else 0.
    nuclei : NucleiParams or mapping
        Nuclei settings (:class:`~cellflow.ops.autolabel.NucleiParams`).
    cells : CellParams or mapping
        Cell settings (:class:`~cellflow.ops.autolabel.CellParams`).

    Raises
    ------
    ValueError
        A value is out of range; the message names the field.

    Examples
    --------
    >>> params = AutolabelParams(cytoplasm_channel="Cyto", diameter_um=16, nuclei={"declump": "intensity"})
    >>> params.nuclei.declump
    'intensity'
    >>> AutolabelParams.from_dict(params.to_dict()) == params
    True
    """

    nuclear_channel: str = "DNA"
    cytoplasm_channel: str | None = None
    diameter_px: float | None = None
    diameter_um: float | None = None
    illumination: bool = True
    offset: float | None = None
    nuclei: NucleiParams = field(default_factory=NucleiParams)
    cells: CellParams = field(default_factory=CellParams)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.nuclear_channel, str) or not self.nuclear_channel.strip():
            raise _fail("nuclear_channel", "a channel name such as 'DNA'", self.nuclear_channel)
        if self.cytoplasm_channel is not None and (
                not isinstance(self.cytoplasm_channel, str) or not self.cytoplasm_channel.strip()):
            raise _fail("cytoplasm_channel", "a channel name such as 'Cyto' or None", self.cytoplasm_channel)
        if self.cytoplasm_channel == self.nuclear_channel:
            raise _fail("cytoplasm_channel", "a channel other than nuclear_channel", self.cytoplasm_channel)
        for name in ("diameter_px", "diameter_um"):
            set_(self, name, _optional_positive(name, getattr(self, name)))
        if self.diameter_px is not None and self.diameter_um is not None:
            raise _fail("diameter_um", "None when diameter_px is given (give one of the two)", self.diameter_um)
        if not isinstance(self.illumination, bool):
            raise _fail("illumination", "True or False", self.illumination)
        if self.offset is not None:
            if isinstance(self.offset, bool) or not isinstance(self.offset, numbers.Real) \
                    or not math.isfinite(self.offset) or self.offset < 0:
                raise _fail("offset", "a finite number >= 0 or None", self.offset)
            set_(self, "offset", float(self.offset))
        set_(self, "nuclei", _nested("nuclei", self.nuclei, NucleiParams))
        set_(self, "cells", _nested("cells", self.cells, CellParams))

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict (nested settings as dicts); :meth:`from_dict` inverts it."""
        return {
            "nuclear_channel": self.nuclear_channel, "cytoplasm_channel": self.cytoplasm_channel,
            "diameter_px": self.diameter_px, "diameter_um": self.diameter_um, "illumination": self.illumination,
            "offset": self.offset, "nuclei": self.nuclei.to_dict(), "cells": self.cells.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutolabelParams:
        """Params from :meth:`to_dict` output (or a YAML spec), naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))

    def diameter_for(self, screen: Screen) -> float | None:
        """The diameter in pixels on ``screen`` (None: estimate per field)."""
        if self.diameter_um is not None:
            return self.diameter_um / float(screen.layout.pixel_size_um)
        return self.diameter_px


@dataclass(frozen=True)
class _FieldPlan:
    """What one task needs besides the screen and the params, fixed on the client."""

    key: FieldKey
    diameter_px: float | None
    offset: float
    extent: tuple[int, int] | None
    corrected: tuple[str, ...]  # channels to divide by the stored illumination


# ---------------------------------------------------------------------------- client side
def _channels(params: AutolabelParams) -> tuple[str, ...]:
    return (params.nuclear_channel,) if params.cytoplasm_channel is None else (
        params.nuclear_channel, params.cytoplasm_channel)


def _check_channels(screen: Screen, params: AutolabelParams) -> None:
    available = [str(c) for c in screen.coords()["c"]]
    for name, channel in (("nuclear_channel", params.nuclear_channel), ("cytoplasm_channel", params.cytoplasm_channel)):
        if channel is not None and channel not in available:
            raise ValueError(f"AutolabelParams.{name} {channel!r} is not a channel of {screen.path}; "
                             f"it has {available!r}")


def _complete_illumination(screen: Screen) -> set[tuple[str, str]]:
    """(plate, channel) pairs whose stored illumination is complete (every z plane and tile)."""
    if _ILLUMINATION not in screen.variables:
        return set()
    done = screen.ledger(_ILLUMINATION).completed()  # chunk grid (plate, c, z, y tiles, x tiles)
    whole = done.reshape(done.shape[0], done.shape[1], -1).all(axis=-1)
    coords = screen.coords()
    return {(str(coords["plate"][p]), str(coords["c"][c])) for p, c in zip(*np.nonzero(whole))}


def _corrected(screen: Screen, params: AutolabelParams, after: StageGraph | None) -> set[tuple[str, str]] | None:
    """(plate, channel) pairs to correct; None means every pair (the upstream stage writes them)."""
    if not params.illumination:
        return set()
    if _ILLUMINATION in written_upstream(after):
        return None
    return _complete_illumination(screen)


def build_autolabel(screen: Screen, params: AutolabelParams, *, after: StageGraph | None = None,
                    fields: Iterable[FieldKey] | None = None) -> StageGraph:
    """Lazy tasks that segment nuclei (and cells) in every field and write their labels.

    Parameters
    ----------
    screen : Screen
    params : AutolabelParams
    after : StageGraph, optional
        Upstream stage; each field's task waits for that field's upstream task
        (:func:`~cellflow.graph.upstream_of`). An upstream that writes ``illumination``
        makes this stage apply it.
    fields : iterable of (plate, well, site, t), optional
        Fields to label; default every acquired field.

    Returns
    -------
    StageGraph
        ``labels_nuclei`` (and ``labels_cells`` with a cytoplasm channel), uint32 with
        dims (plate, well, site, t, y, x); one task per field, each returning a
        :class:`TaskResult` with its chunk records and one row; ``by_field`` maps
        each field to its task.

    Raises
    ------
    ValueError
        A channel of ``params`` is not in the screen.
    RegionError
        A field is not in the screen.
    """
    _check_channels(screen, params)
    keys = select_fields(screen, fields)
    diameter = params.diameter_for(screen)
    offset = resolve_offset(screen, IlluminationParams(offset=params.offset))
    extents = field_extents(screen)
    corrected = _corrected(screen, params, after)
    outputs = [VariableSpec("labels_nuclei", DIMS_LABELS, "uint32",
                            attrs={"description": "nuclei, 0 = background, 1..N per field (classical auto-labels)"})]
    if params.cytoplasm_channel is not None:
        outputs.append(VariableSpec("labels_cells", DIMS_LABELS, "uint32",
                                    attrs={"description": "cells, cell k contains nucleus k of labels_nuclei"}))
    token = tokenize(str(screen.path), params.to_dict(), diameter, offset, corrected and sorted(corrected))
    calls: dict[FieldKey, tuple[Any, ...]] = {}
    for key in keys:
        chosen = tuple(c for c in _channels(params) if corrected is None or (key.plate, c) in corrected)
        calls[key] = (screen, params, _FieldPlan(key, diameter, offset, extents.get(key), chosen))
    by_field = field_tasks(_STAGE, token, _label_field, calls, after)
    return StageGraph(_STAGE, tuple(outputs), tuple(by_field.values()), by_field)


# ---------------------------------------------------------------------------- task body
def _plane(screen: Screen, plan: _FieldPlan, channel: str) -> tuple[np.ndarray, bool]:
    """One channel of the field, cropped, corrected and z-averaged; and whether it was flat-fielded."""
    key = plan.key
    planes = screen.read("images", plate=key.plate, well=key.well, site=key.site, t=key.t, c=channel)
    crop = (Ellipsis, slice(0, plan.extent[0]), slice(0, plan.extent[1])) if plan.extent else (Ellipsis,)
    check_planes(planes[crop], what=f"field {key.plate}/{key.well}/{key.site}/{key.t:g} channel {channel!r}")
    illumination = None
    if channel in plan.corrected:
        illumination = screen.read(_ILLUMINATION, plate=key.plate, c=channel)[crop]
        if not np.all(np.isfinite(illumination)):  # never written (NaN fill): leave the channel as it is
            illumination = None
    return project_planes(planes[crop], illumination=illumination, offset=plan.offset), illumination is not None


def _padded(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(shape, np.uint32)
    full[: labels.shape[0], : labels.shape[1]] = labels
    return full


@guarded(_STAGE)
def _label_field(screen: Screen, params: AutolabelParams, plan: _FieldPlan, *_upstream: Any) -> TaskResult:
    """Task: segment one field and write its labels."""
    key = plan.key
    where = key._asdict()
    shape = tuple(screen.layout.shape_yx)
    nuclear, flat_nuclear = _plane(screen, plan, params.nuclear_channel)
    diameter = plan.diameter_px
    if diameter is None:
        diameter = estimate_diameter(nuclear, smoothing_px=params.nuclei.smoothing_px)
    nuclei = segment_nuclei(nuclear, diameter_px=diameter, params=params.nuclei) if diameter else \
        np.zeros(nuclear.shape, np.uint32)
    records = screen.write("labels_nuclei", _padded(nuclei, shape), **where)
    row: dict[str, Any] = {**where, "nuclei": int(nuclei.max()), "diameter_px": diameter,
                           "illumination_nuclear": flat_nuclear}
    if params.cytoplasm_channel is not None:
        cytoplasm, flat_cytoplasm = _plane(screen, plan, params.cytoplasm_channel)
        cells = segment_cells(cytoplasm, nuclei, params=params.cells)
        records += screen.write("labels_cells", _padded(cells, shape), **where)
        row.update(cells=int(np.count_nonzero(np.bincount(cells.ravel())[1:])), illumination_cytoplasm=flat_cytoplasm)
    return TaskResult(stage=_STAGE, field=key, records=tuple(records), rows=(row,))
