"""Dask graph builders, one per stage; they build lazily and compute nothing."""

from __future__ import annotations

from cellflow.graph._stage import StageGraph, TaskResult, VariableSpec, upstream_of
from cellflow.graph.autolabel import AutolabelParams, build_autolabel
from cellflow.graph.illumination import IlluminationParams, build_illumination, correct
from cellflow.graph.measure import MeasureParams, build_measure, measure_tables, read_objects
from cellflow.graph.predict import PredictParams, build_predict
from cellflow.graph.score import ScoreParams, build_score
from cellflow.graph.stitch import halo_for_diameter, segment_large
from cellflow.graph.track import TrackStageParams, build_track, track_tables

__all__ = [
    "AutolabelParams",
    "IlluminationParams",
    "MeasureParams",
    "PredictParams",
    "ScoreParams",
    "StageGraph",
    "TaskResult",
    "TrackStageParams",
    "VariableSpec",
    "build_autolabel",
    "build_illumination",
    "build_measure",
    "build_predict",
    "build_score",
    "build_track",
    "correct",
    "halo_for_diameter",
    "measure_tables",
    "read_objects",
    "segment_large",
    "track_tables",
    "upstream_of",
]
