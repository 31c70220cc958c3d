"""Live-cell analysis: tracking of labelled objects, lineages and growth."""

from __future__ import annotations

from cellflow.live.cytoplasm import cells_from_nuclei, cells_from_probabilities, cytoplasm_targets
from cellflow.live.growth import (
    area_jumps,
    field_summary,
    growth_rates,
    lineage_table,
    segmentation_consistency,
    tracks_frame,
)
from cellflow.live.ktr import join_tracks, ktr_ratios
from cellflow.live.track import (
    FrameObjects,
    TrackParams,
    Tracks,
    measure_objects,
    overlap_iou,
    solve_assignment,
    track_labels,
)

__all__ = [
    "FrameObjects",
    "TrackParams",
    "Tracks",
    "area_jumps",
    "cells_from_nuclei",
    "cells_from_probabilities",
    "cytoplasm_targets",
    "field_summary",
    "growth_rates",
    "join_tracks",
    "ktr_ratios",
    "lineage_table",
    "measure_objects",
    "overlap_iou",
    "segmentation_consistency",
    "solve_assignment",
    "track_labels",
    "tracks_frame",
]
