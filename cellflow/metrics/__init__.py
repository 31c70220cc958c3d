"""Scoring segmentations against ground truth: object matching by IoU, F1 over
thresholds, the error taxonomy of Caicedo et al. 2019, pixel Jaccard/Dice and
per-cell F-scores, per-well and per-plate summaries, and a dask stage that scores
a whole screen.

Kernels (:func:`iou_matrix`, :func:`score_field`, :func:`fscore_curve`) are pure
NumPy functions of one field; :func:`score_graph` / :func:`score_screen` run them
once per field with dask.
"""

from __future__ import annotations

from cellflow.metrics._matching import Overlaps, iou_matrix, overlaps
from cellflow.metrics._options import DEFAULT_AREA_BINS, DEFAULT_THRESHOLDS, ScoreOptions
from cellflow.metrics._scores import FieldScore, fscore_curve, score_field, score_overlaps
from cellflow.metrics._screen import (
    TABLE_NAMES,
    field_extents,
    score_graph,
    score_screen,
    score_stored_field,
    select_fields,
    write_tables,
)
from cellflow.metrics._summary import summarise

__all__ = [
    "DEFAULT_AREA_BINS",
    "DEFAULT_THRESHOLDS",
    "TABLE_NAMES",
    "FieldScore",
    "Overlaps",
    "ScoreOptions",
    "field_extents",
    "fscore_curve",
    "iou_matrix",
    "overlaps",
    "score_field",
    "score_graph",
    "score_overlaps",
    "score_screen",
    "score_stored_field",
    "select_fields",
    "summarise",
    "write_tables",
]
