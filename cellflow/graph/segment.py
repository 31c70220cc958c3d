"""Segment stage: a trained network's probabilities turned into instances in one task per field.

Graph (built lazily, nothing is read until it runs)::

    field ─ input channels ─ normalise ─ tiles ─ probabilities ─ markers + watershed ─ write labels

It is the ``predict`` stage (:mod:`cellflow.graph.predict`) followed by the ``labels`` stage
(:mod:`cellflow.graph.postprocess`) without the round trip through the store: the
probabilities of a field stay in the worker's memory and only ``labels_nuclei`` (uint32) is
written, which saves writing and reading ``classes x 4`` bytes per pixel. Both halves are the
same code as those stages (:func:`~cellflow.graph.predict.field_probabilities`,
:func:`~cellflow.ops.postprocess.probabilities_to_labels`,
:func:`~cellflow.graph.postprocess.write_field_labels`), so the labels equal those of
``predict`` + ``labels`` exactly. Use the two stages when the probabilities should be kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cellflow._config import check_keys
from cellflow.graph._stage import StageGraph, TaskResult, VariableSpec, guarded
from cellflow.graph.postprocess import write_field_labels
from cellflow.graph.predict import FieldPlan, PredictParams, field_probabilities, plan_fields, plan_tasks
from cellflow.ops.postprocess import PostprocessParams, probabilities_to_labels
from cellflow.screen.layout import DIMS_LABELS
from cellflow.screen.store import FieldKey, Screen

__all__ = ["SegmentParams", "build_segment"]

_STAGE = "segment"


@dataclass(frozen=True)
class SegmentParams:
    """Settings of the segment stage: how to predict, and how probabilities become labels.

    Parameters
    ----------
    predict : PredictParams or mapping
        The network and its tiling (:class:`~cellflow.graph.predict.PredictParams`).
    output : str
        The labels variable to write, ``labels_*``.
    postprocess : PostprocessParams or mapping, optional
        Markers, watershed and clean-up (:class:`~cellflow.ops.postprocess.PostprocessParams`);
        None: the settings the model was trained with (its checkpoint's metadata), else the
        defaults, as the ``labels`` stage does.

    Raises
    ------
    ValueError
        A value is out of range; the message names the field.

    Examples
    --------
    >>> params = SegmentParams.from_dict({"predict": {"model": "m.pt", "tile": 256}})
    >>> params.predict.tile, params.output
    (256, 'labels_nuclei')
    >>> SegmentParams.from_dict(params.to_dict()) == params
    True
    """

    predict: PredictParams
    output: str = "labels_nuclei"
    postprocess: PostprocessParams | None = None

    def __post_init__(self) -> None:
        if isinstance(self.predict, Mapping):
            object.__setattr__(self, "predict", PredictParams.from_dict(self.predict))
        if not isinstance(self.predict, PredictParams):
            raise TypeError(f"SegmentParams.predict must be PredictParams or a mapping, got {self.predict!r}")
        if not isinstance(self.output, str) or not self.output.startswith("labels_"):
            raise ValueError(f"SegmentParams.output must be a labels_* variable, got {self.output!r}")
        if isinstance(self.postprocess, Mapping):
            object.__setattr__(self, "postprocess", PostprocessParams.from_dict(self.postprocess))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; :meth:`from_dict` inverts it."""
        return {"predict": self.predict.to_dict(), "output": self.output,
                "postprocess": None if self.postprocess is None else self.postprocess.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentParams:
        """Params from a spec mapping, naming unknown keys."""
        check_keys(cls, data)
        if "predict" not in data:
            raise ValueError("SegmentParams.predict is required: {'predict': {'model': 'path/to/checkpoint.pt'}}")
        return cls(**dict(data))


def build_segment(screen: Screen, params: SegmentParams, *, after: StageGraph | None = None,
                  fields: Iterable[FieldKey] | None = None) -> StageGraph:
    """Lazy tasks that predict and label every field, one task per field.

    Parameters
    ----------
    screen : Screen
    params : SegmentParams
    after : StageGraph, optional
        Upstream stage; each field's task waits for that field's upstream task.
    fields : iterable of (plate, well, site, t), optional
        Fields to segment; default every acquired field.

    Returns
    -------
    StageGraph
        ``params.output`` (uint32, unique per field); each task returns a :class:`TaskResult`
        with its chunk records and one row (field, ``objects``, ``model_sha256``).

    Raises
    ------
    FileNotFoundError, CheckpointError, ValueError, RegionError
        As :func:`~cellflow.graph.predict.build_predict`.
    """
    checkpoint, plans = plan_fields(screen, params.predict, fields)
    if params.postprocess is None:  # what the model was trained with (see build_predict's attrs)
        trained = checkpoint.metadata.get("params", {}).get("postprocess") or {}
        params = replace(params, postprocess=PostprocessParams.from_dict(trained))
    output = VariableSpec(params.output, DIMS_LABELS, "uint32",
                          attrs={"description": "instances from a trained network (tiled probabilities, "
                                                "markers + watershed)", "model_sha256": checkpoint.sha256})
    return plan_tasks(_STAGE, _segment_field, screen, params, plans, checkpoint, (output,), after)


@guarded(_STAGE)
def _segment_field(screen: Screen, params: SegmentParams, plan: FieldPlan, *_upstream: Any) -> TaskResult:
    """Task: predict one field, label its probabilities and write the labels."""
    probabilities, checkpoint = field_probabilities(screen, params.predict, plan)
    assert params.postprocess is not None  # build_segment resolves it
    labels = probabilities_to_labels(probabilities, params.postprocess)
    records = write_field_labels(screen, plan.key, labels, params.output)
    row = {**plan.key._asdict(), "objects": int(labels.max()), "model_sha256": checkpoint.sha256}
    return TaskResult(stage=_STAGE, field=plan.key, records=records, rows=(row,))
