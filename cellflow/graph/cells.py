"""Graph builder of the ``cells`` stage: cell bodies seeded by nuclei (Van Valen et al. 2016).

One task per field grows one cell per nucleus of ``nuclei`` (e.g. the ``segment`` stage's
network nuclei from a phase/bright-field + nuclear model, or the auto labels) over an image
that is bright inside cells: a channel (a cytoplasm stain, offset removed, z planes averaged)
or one class of stored ``probabilities``. Seeded watershed, optionally refined per cell by an
active contour (Chan-Vese) bounded to its territory: :func:`cellflow.live.cytoplasm.cells_from_nuclei`.
Cell ``k`` contains nucleus ``k``, so ``labels_cells`` is linked to ``labels_nuclei`` by id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cellflow._config import check_keys
from cellflow.errors import RegionError
from cellflow.graph._stage import StageGraph, TaskResult, VariableSpec, available_variables, guarded, per_field_graph
from cellflow.graph.postprocess import write_field_labels
from cellflow.live.cytoplasm import cells_from_nuclei
from cellflow.ops.autolabel import CellParams
from cellflow.screen.layout import DIMS_LABELS
from cellflow.screen.store import FieldKey, Screen

__all__ = ["CellsParams", "build_cells"]

_STAGE = "cells"
_METHODS = ("watershed", "active_contour")


@dataclass(frozen=True)
class CellsParams:
    """Where the cell signal comes from and how cells grow from the nuclei.

    Give ``channel`` (an image channel) or ``probability_class`` (a class of the stored
    ``probabilities``, e.g. ``'cell'`` or ``'interior'``), not both.
    """

    channel: str | None = None
    probability_class: str | None = None
    nuclei: str = "labels_nuclei"
    output: str = "labels_cells"
    method: str = "watershed"
    offset: float = 0.0
    territory_px: int = 8

    def __post_init__(self) -> None:
        if (self.channel is None) == (self.probability_class is None):
            raise ValueError("CellsParams: give exactly one of 'channel' and 'probability_class'")
        if self.method not in _METHODS:
            raise ValueError(f"CellsParams.method must be one of {_METHODS!r}, got {self.method!r}")
        if not self.output.startswith("labels_"):
            raise ValueError(f"CellsParams.output must be a labels_* variable, got {self.output!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellsParams:
        """Params from a spec mapping, naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


def _signal(screen: Screen, key: FieldKey, params: CellsParams) -> np.ndarray:
    where = key._asdict()
    if params.channel is not None:
        planes = screen.read("images", c=params.channel, **where).astype(np.float32)
        return np.maximum(planes.mean(axis=0) - np.float32(params.offset), 0)
    classes = [str(c) for c in screen.dataset()["probabilities"]["class"].values]
    return screen.read("probabilities", **where)[classes.index(str(params.probability_class))]


@guarded(_STAGE)
def _cells_field(screen: Screen, key: FieldKey, params: CellsParams, extent: tuple[int, int] | None,
                 *upstream: object) -> TaskResult:
    crop = (slice(0, extent[0]), slice(0, extent[1])) if extent else (slice(None), slice(None))
    image = _signal(screen, key, params)[crop]
    nuclei = screen.read(params.nuclei, **key._asdict())[crop]
    cell_params = CellParams(threshold=0.5, dilation_px=0) if params.probability_class else None
    cells = cells_from_nuclei(image, nuclei, method=params.method, params=cell_params,
                              territory_px=params.territory_px)
    records = write_field_labels(screen, key, cells, params.output)
    row = {**key._asdict(), "cells": int(np.count_nonzero(np.bincount(cells.ravel())[1:]))}
    return TaskResult(stage=_STAGE, field=key, records=records, rows=(row,))


def build_cells(screen: Screen, params: CellsParams, *, after: StageGraph | None = None,
                fields: Iterable[Sequence[Any]] | None = None) -> StageGraph:
    """Build (compute nothing) one cell-growing task per field, after its upstream task.

    Raises
    ------
    RegionError
        The channel, the nuclei or the probabilities (with their class) are missing.
    """
    available = available_variables(screen, after)
    if params.nuclei not in available:
        raise RegionError(f"cells: {screen.path} has no variable {params.nuclei!r} (segment the nuclei first)")
    if params.channel is not None and params.channel not in [str(c) for c in screen.coords()["c"]]:
        raise RegionError(f"cells: channel {params.channel!r} is not in {screen.path}")
    if params.probability_class is not None and "probabilities" not in available:
        raise RegionError(f"cells: {screen.path} has no 'probabilities' (run the predict stage first)")
    output = VariableSpec(params.output, DIMS_LABELS, "uint32",
                          attrs={"description": f"cells grown from {params.nuclei} ({params.method}); "
                                                "cell k contains nucleus k"})
    return per_field_graph(_STAGE, _cells_field, screen, params, after=after, fields=fields, outputs=(output,))
