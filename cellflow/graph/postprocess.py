"""Graph builder of the post-processing stage: stored ``probabilities`` -> ``labels_nuclei``.

One task per field reads the field's class probabilities (written by the predict
stage), turns them into instances with
:func:`~cellflow.ops.postprocess.probabilities_to_labels` (markers from the
interior, watershed, small objects removed, holes filled) inside the field's extent,
and writes the labels zero-padded to the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cellflow._config import check_keys
from cellflow.errors import RegionError
from cellflow.graph._stage import StageGraph, TaskResult, VariableSpec, available_variables, guarded, per_field_graph
from cellflow.ops.postprocess import PostprocessParams, probabilities_to_labels
from cellflow.screen.layout import DIMS_LABELS
from cellflow.screen.store import ChunkRecord, FieldKey, Screen

__all__ = ["LabelParams", "build_labels", "write_field_labels"]


@dataclass(frozen=True)
class LabelParams:
    """Which probabilities become which labels, and how."""

    source: str = "probabilities"
    output: str = "labels_nuclei"
    #: None: the settings the model was trained with (the ``postprocess`` attribute the
    #: predict stage stores with the probabilities), else the defaults.
    postprocess: PostprocessParams | None = None

    def __post_init__(self) -> None:
        if not self.output.startswith("labels_"):
            raise ValueError(f"LabelParams.output must be a labels_* variable, got {self.output!r}")
        if isinstance(self.postprocess, Mapping):
            object.__setattr__(self, "postprocess", PostprocessParams.from_dict(self.postprocess))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; :meth:`from_dict` inverts it."""
        return {"source": self.source, "output": self.output,
                "postprocess": None if self.postprocess is None else self.postprocess.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelParams:
        """Params from a spec mapping, naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


def _trained_postprocess(screen: Screen, source: str, after: StageGraph | None) -> PostprocessParams:
    """The post-processing the model behind ``source`` was trained with (its stored attrs), else defaults."""
    attrs: Mapping[str, Any] = {}
    upstream = {v.name: v for v in after.outputs} if after is not None else {}
    if source in upstream and upstream[source].attrs is not None:
        attrs = upstream[source].attrs or {}
    elif source in screen.variables:
        attrs = screen.dataset()[source].attrs
    settings = attrs.get("postprocess") or {}
    return PostprocessParams.from_dict(settings) if settings else PostprocessParams()


def write_field_labels(screen: Screen, key: FieldKey, labels: np.ndarray, output: str) -> tuple[ChunkRecord, ...]:
    """Write one field's labels (its valid extent, top left) zero-padded to the field into ``output``."""
    full = np.zeros(screen.layout.shape_yx, np.uint32)
    full[: labels.shape[0], : labels.shape[1]] = labels
    return tuple(screen.write(output, full, **key._asdict()))


@guarded("labels")
def _label_task(
    screen: Screen, key: FieldKey, params: LabelParams, extent: tuple[int, int] | None, *upstream: object
) -> TaskResult:
    where = key._asdict()
    probabilities = screen.read(params.source, **where)
    if extent is not None:
        probabilities = probabilities[:, : extent[0], : extent[1]]
    assert params.postprocess is not None  # build_labels resolves it
    labels = probabilities_to_labels(probabilities, params.postprocess)
    records = write_field_labels(screen, key, labels, params.output)
    row = {**where, "objects": int(labels.max())}
    return TaskResult(stage="labels", field=key, records=records, rows=(row,))


def build_labels(
    screen: Screen, params: LabelParams, *, after: StageGraph | None = None, fields: Iterable[FieldKey] | None = None
) -> StageGraph:
    """Build (compute nothing) one post-processing task per field, after its predict task.

    Raises
    ------
    RegionError
        ``params.source`` is not in the store and no upstream stage writes it.
    """
    if params.source not in available_variables(screen, after):
        raise RegionError(f"labels: {screen.path} has no variable {params.source!r} (run the predict stage first)")
    if params.postprocess is None:
        params = replace(params, postprocess=_trained_postprocess(screen, params.source, after))
    output = VariableSpec(params.output, DIMS_LABELS, "uint32")
    return per_field_graph("labels", _label_task, screen, params, after=after, fields=fields, outputs=(output,))
