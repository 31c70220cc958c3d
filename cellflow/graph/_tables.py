"""A stage's tables from its rows in two steps, so that the runner can read the rows a plate at a time.

1. ``frames(rows)``: the rows as DataFrames with one row per table row (or per object of a
   part a row references, :func:`~cellflow.graph._parts.parts_frame`), in the rows' order,
   nothing computed across rows; ``{}`` for no rows.
2. ``write(frames, out_dir, params)``: the stage's tables (summaries, normalisations, joins)
   made from those frames and written as Parquet.

Step 1 is row by row, so a stage's frames are the frames of each plate's rows one after the
other (:func:`join_frames`); step 2 runs once, on the stage's joined frames, so no table has to
be computable plate by plate (celltype's wells have a column per cell type of the whole run;
measure's wells and Z', score's summaries are sorted labels first, plates second).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["StageTables", "join_frames", "join_plate_frames", "stacked"]

Frames = dict[str, pd.DataFrame]
Tables = tuple[dict[str, pd.DataFrame], dict[str, Path]]


@dataclass(frozen=True)
class StageTables:
    """How a stage's table rows become its tables (see the module docstring); called, both steps at once.

    Parameters
    ----------
    frames : callable
        ``frames(rows) -> dict[str, DataFrame]`` (step 1).
    write : callable
        ``write(frames, out_dir, params) -> (tables, paths)`` (step 2): tables keyed
        ``'<group>/<level>'`` and the Parquet files written, same keys.
    """

    frames: Callable[[Sequence[Mapping[str, Any]]], Frames]
    write: Callable[[Frames, Path, Any], Tables]

    def __call__(self, rows: Sequence[Mapping[str, Any]], out_dir: str | Path, params: Any = None) -> Tables:
        """The tables of ``rows`` (a stage's rows, sorted by field) written under ``out_dir``."""
        return self.write(self.frames(rows), Path(out_dir), params)


def stacked(filled: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Frames with rows, one after another, with a fresh RangeIndex."""
    if len(filled) == 1:
        return filled[0].reset_index(drop=True)
    return pd.concat(filled, ignore_index=True)


def join_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame | None:
    """Frames of consecutive runs of rows as one, as step 1 makes it from all the rows at once; None when unsure.

    Frames without rows are left out, as :func:`~cellflow.graph._parts.parts_frame` leaves out
    empty parts (all of them without rows: the first that has columns). Exact when the frames
    with rows have the same columns of the same dtypes; otherwise inferring the types of all the
    rows together may give others (a column of None in one plate's rows and of floats in
    another's is float64 from all the rows, object joined), and this returns None.

    Examples
    --------
    >>> a, b = pd.DataFrame([{"plate": "P1", "x": 1}]), pd.DataFrame([{"plate": "P2", "x": 2}])
    >>> join_frames([a, b]).equals(pd.DataFrame([{"plate": "P1", "x": 1}, {"plate": "P2", "x": 2}]))
    True
    >>> join_frames([a, pd.DataFrame([{"plate": "P2", "x": None}])]) is None  # int64 and object
    True
    """
    filled = [frame for frame in frames if len(frame)]
    if not filled:
        return next((frame for frame in frames if len(frame.columns)), frames[0]) if frames else pd.DataFrame()
    first = filled[0]
    for frame in filled[1:]:
        if not (frame.columns.equals(first.columns) and frame.columns.dtype == first.columns.dtype
                and frame.dtypes.equals(first.dtypes)):
            return None
    return stacked(filled)


def join_plate_frames(per_plate: Sequence[Mapping[str, pd.DataFrame]]) -> Frames | None:
    """Step 1's frames of each plate's rows (plates in order) as the frames of all the rows; None when unsure.

    Every plate must have the same keys (the same frames), and each frame must join
    (:func:`join_frames`).
    """
    keys = list(per_plate[0]) if per_plate else []
    if any(list(frames) != keys for frames in per_plate):
        return None
    joined: Frames = {}
    for key in keys:
        frame = join_frames([frames[key] for frames in per_plate])
        if frame is None:
            return None
        joined[key] = frame
    return joined
