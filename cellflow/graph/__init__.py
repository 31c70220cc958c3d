"""Dask graph builders, one per stage; they build lazily and compute nothing."""

from __future__ import annotations

from cellflow.graph._stage import StageGraph, TaskResult, VariableSpec, upstream_of
from cellflow.graph.autolabel import AutolabelParams, build_autolabel
from cellflow.graph.illumination import IlluminationParams, build_illumination, correct
from cellflow.graph.predict import PredictParams, build_predict
from cellflow.graph.score import ScoreParams, build_score
from cellflow.graph.stitch import halo_for_diameter, segment_large

__all__ = [
    "AutolabelParams",
    "IlluminationParams",
    "PredictParams",
    "ScoreParams",
    "StageGraph",
    "TaskResult",
    "VariableSpec",
    "build_autolabel",
    "build_illumination",
    "build_predict",
    "build_score",
    "correct",
    "halo_for_diameter",
    "segment_large",
    "upstream_of",
]
