"""Tracking of labelled objects through a time-lapse: linking, gap closing, divisions.

The tracker follows Jaqaman et al. (2008, Nat. Methods 5:695), with two linear
assignment problems (LAPs) solved by :func:`scipy.optimize.linear_sum_assignment`:

1. **Frame to frame.** Objects at ``t`` (rows) are linked to objects at ``t + 1``
   (columns). A link costs ``(d / max_distance)**2 + overlap_weight * (1 - IoU)``
   (centroid distance ``d``, intersection over union of the two masks) and is
   allowed for ``d <= max_distance`` or overlapping masks. The cost matrix is
   augmented (:func:`solve_assignment`) with a death alternative per row and a
   birth alternative per column, so an object links only when that is cheaper
   than ending one track and starting another.
2. **Gap closing and divisions.** The segments from step 1 start (*heads*) and end
   (*tails*). Columns are the heads after frame 0; rows are

   * tails that may continue at a head ``2 .. max_gap + 1`` frames later (the
     object was missed in between): cost ``(d / (max_distance * sqrt(steps)))**2``
     plus ``(ln(area ratio) / ln 2)**2``;
   * candidate mothers at ``t`` for a head at ``t + 1`` within
     ``max_division_distance``. A mother that continues (step 1 linked it to
     ``c``, often one of its daughters) gives one row: the division ``{head, c}``
     costs ``(2 |midpoint - mother| / (separation / 2))**2 + (ln(sister area
     ratio) / ln(max_sister_ratio))**2``, where the mother must be nearer the
     daughters' midpoint than half their separation. A mother that ends at ``t`` gives two rows
     (one per daughter), each costing ``(d / max_division_distance)**2``; the pair
     must then pass the same midpoint and sister tests, else no division.

   Every daughter's area must lie within ``daughter_area_ratio`` times the
   mother's. An accepted division with a continuing mother cuts the mother's
   link to ``c``: the mother's track ends at ``t``, both daughters start new
   tracks whose parent is the mother's.

The kernel sees NumPy label images only (no dask, no I/O) and never uses label
values as identities: two frames' labels are related by geometry alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from cellflow._config import check_keys

__all__ = ["FrameObjects", "TrackParams", "Tracks", "measure_objects", "overlap_iou", "solve_assignment",
           "track_labels"]


def _fail(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"TrackParams.{name} must be {expected}, got {value!r}")


def _positive(name: str, value: Any, *, zero: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        raise _fail(name, "a finite number " + (">= 0" if zero else "> 0"), value)
    return float(value)


@dataclass(frozen=True)
class TrackParams:
    """Settings of the tracker (see the module docstring for the costs).

    Parameters
    ----------
    max_distance : float
        Largest centroid displacement per frame in pixels for a link without overlap.
    overlap_weight : float
        Weight of ``1 - IoU`` in the link cost.
    alternative_cost : float
        Cost of a birth and of a death; a link is made when its cost is below
        twice this (the birth and death it replaces).
    max_gap : int
        Most consecutive frames an object may be missing and still be linked.
    divisions : bool
        Detect divisions.
    max_division_distance : float
        Largest distance in pixels from a mother at ``t`` to a daughter at ``t + 1``.
    daughter_area_ratio : (float, float)
        Allowed range of daughter area / mother area (the mother in its last
        frame). Whole-cell labels give daughters about half the mother's area;
        with a nuclear marker the mitotic chromatin is condensed and each
        daughter can be several times larger, hence the wide default.
    max_sister_ratio : float
        Largest area ratio (larger / smaller) of two sisters, > 1.
    """

    max_distance: float = 20.0
    overlap_weight: float = 1.0
    alternative_cost: float = 1.0
    max_gap: int = 2
    divisions: bool = True
    max_division_distance: float = 30.0
    daughter_area_ratio: tuple[float, float] = (0.25, 6.0)
    max_sister_ratio: float = 4.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("max_distance", "alternative_cost", "max_division_distance"):
            set_(self, name, _positive(name, getattr(self, name)))
        set_(self, "overlap_weight", _positive("overlap_weight", self.overlap_weight, zero=True))
        if isinstance(self.max_gap, bool) or not isinstance(self.max_gap, numbers.Integral) or self.max_gap < 0:
            raise _fail("max_gap", "an integer >= 0", self.max_gap)
        set_(self, "max_gap", int(self.max_gap))
        if not isinstance(self.divisions, bool):
            raise _fail("divisions", "true or false", self.divisions)
        ratio = self.daughter_area_ratio
        if isinstance(ratio, str) or not hasattr(ratio, "__len__") or len(ratio) != 2:
            raise _fail("daughter_area_ratio", "two numbers (low, high)", ratio)
        low, high = (_positive("daughter_area_ratio", v) for v in ratio)
        if low >= high:
            raise _fail("daughter_area_ratio", "(low, high) with low < high", ratio)
        set_(self, "daughter_area_ratio", (low, high))
        sister = _positive("max_sister_ratio", self.max_sister_ratio)
        if sister <= 1.0:
            raise _fail("max_sister_ratio", "a number > 1", self.max_sister_ratio)
        set_(self, "max_sister_ratio", sister)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``daughter_area_ratio`` as a list)."""
        data = asdict(self)
        data["daughter_area_ratio"] = list(self.daughter_area_ratio)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackParams:
        """Inverse of :meth:`to_dict`; missing keys take their defaults."""
        check_keys(cls, data)
        data = dict(data)
        if "daughter_area_ratio" in data and isinstance(data["daughter_area_ratio"], list):
            data["daughter_area_ratio"] = tuple(data["daughter_area_ratio"])
        return cls(**data)


@dataclass(frozen=True, eq=False)
class FrameObjects:
    """The objects of one label image, sorted by label.

    Attributes
    ----------
    label : (N,) ndarray of int64
    area : (N,) ndarray of float64
        Pixels.
    centroid : (N, 2) ndarray of float64
        ``(y, x)`` in pixels.
    """

    label: np.ndarray
    area: np.ndarray
    centroid: np.ndarray


def measure_objects(labels: np.ndarray) -> FrameObjects:
    """Label, area and centroid of every object of a ``(Y, X)`` label image.

    Examples
    --------
    >>> labels = np.zeros((4, 5), np.uint32); labels[1:3, 1:4] = 7
    >>> objects = measure_objects(labels)
    >>> objects.label.tolist(), objects.area.tolist(), objects.centroid.tolist()
    ([7], [6.0], [[1.5, 2.0]])
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be a (Y, X) image, got shape {labels.shape}")
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    ids, inverse = np.unique(flat[where], return_inverse=True)
    area = np.bincount(inverse, minlength=ids.size).astype(float)
    y, x = np.divmod(where, labels.shape[1])
    centroid = np.stack([np.bincount(inverse, y, ids.size), np.bincount(inverse, x, ids.size)], axis=1)
    return FrameObjects(ids.astype(np.int64), area, centroid / np.maximum(area, 1.0)[:, None])


def overlap_iou(labels_a: np.ndarray, labels_b: np.ndarray, a: FrameObjects, b: FrameObjects) -> np.ndarray:
    """``(len(a), len(b))`` intersection over union of the objects of two label images."""
    both = (labels_a > 0) & (labels_b > 0)
    width = int(b.label.max(initial=0)) + 1
    pairs, counts = np.unique(labels_a[both].astype(np.int64) * width + labels_b[both], return_counts=True)
    rows = np.searchsorted(a.label, pairs // width)
    cols = np.searchsorted(b.label, pairs % width)
    iou = np.zeros((a.label.size, b.label.size))
    iou[rows, cols] = counts / (a.area[rows] + b.area[cols] - counts)
    return iou


def solve_assignment(
    cost: np.ndarray, row_alternative: np.ndarray, col_alternative: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest partial matching: each row links to one column or takes its alternative.

    Jaqaman's augmented ``(n + m) x (m + n)`` matrix: links top left, row
    alternatives on the top-right diagonal, column alternatives on the
    bottom-left diagonal, and bottom right the transpose of the allowed links
    at zero cost, so the total is the links' costs plus the alternatives of
    everything left unlinked.

    Parameters
    ----------
    cost : (n, m) ndarray of float
        Link costs; ``inf`` forbids a link.
    row_alternative : (n,) ndarray of float
    col_alternative : (m,) ndarray of float

    Returns
    -------
    rows, cols : (k,) ndarray of int
        The links made.

    Examples
    --------
    >>> cost = np.array([[1.0, 0.5], [np.inf, 3.0]])
    >>> solve_assignment(cost, np.ones(2), np.ones(2))
    (array([0]), array([1]))
    """
    n, m = cost.shape
    if n == 0 or m == 0:
        return np.zeros(0, int), np.zeros(0, int)
    big = np.full((n + m, m + n), np.inf)
    big[:n, :m] = cost
    big[np.arange(n), m + np.arange(n)] = row_alternative
    big[n + np.arange(m), np.arange(m)] = col_alternative
    big[n:, m:] = np.where(np.isfinite(cost.T), 0.0, np.inf)
    rows, cols = linear_sum_assignment(big)
    keep = (rows < n) & (cols < m)
    return rows[keep], cols[keep]


@dataclass(frozen=True, eq=False)
class Tracks:
    """One row per object per frame, with its track.

    Attributes
    ----------
    frame, label, track_id, parent_track_id : (N,) ndarray of int64
        Frame index, label in that frame, track (``1..K``) and the track it
        divided from (0 for none). Rows are sorted by frame, then label.
    area : (N,) ndarray of float64
    centroid : (N, 2) ndarray of float64
    """

    frame: np.ndarray
    label: np.ndarray
    track_id: np.ndarray
    parent_track_id: np.ndarray
    area: np.ndarray
    centroid: np.ndarray


_Rows = tuple[list[tuple[Any, ...]], list[np.ndarray]]  # row keys of step 2 and their costs to every head


def _link_cost(a: FrameObjects, b: FrameObjects, iou: np.ndarray, params: TrackParams) -> np.ndarray:
    distance = np.hypot(*np.moveaxis(a.centroid[:, None, :] - b.centroid[None, :, :], -1, 0))
    cost = (distance / params.max_distance) ** 2 + params.overlap_weight * (1.0 - iou)
    return np.where((distance <= params.max_distance) | (iou > 0), cost, np.inf)


@dataclass(frozen=True, eq=False)
class _Objects:
    """All objects of the movie, concatenated frame after frame."""

    frame: np.ndarray
    label: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    start: np.ndarray  # (T + 1,) first row of each frame

    def rows(self, t: int) -> np.ndarray:
        return np.arange(self.start[t], self.start[t + 1])

    def distance(self, i: int, j: int) -> float:
        return float(np.hypot(*(self.centroid[i] - self.centroid[j])))


def _link_frames(labels: np.ndarray, params: TrackParams) -> tuple[_Objects, np.ndarray]:
    """Step 1: frame-to-frame links as ``succ`` (next row of each row, -1 for none)."""
    frames = [measure_objects(image) for image in labels]
    sizes = [f.label.size for f in frames]
    objects = _Objects(
        frame=np.repeat(np.arange(len(frames)), sizes),
        label=np.concatenate([f.label for f in frames]),
        area=np.concatenate([f.area for f in frames]),
        centroid=np.concatenate([f.centroid for f in frames]).reshape(-1, 2),
        start=np.concatenate([[0], np.cumsum(sizes)]),
    )
    succ = np.full(objects.label.size, -1)
    for t in range(len(frames) - 1):
        a, b = frames[t], frames[t + 1]
        cost = _link_cost(a, b, overlap_iou(labels[t], labels[t + 1], a, b), params)
        alt = params.alternative_cost
        rows, cols = solve_assignment(cost, np.full(a.label.size, alt), np.full(b.label.size, alt))
        succ[objects.start[t] + rows] = objects.start[t + 1] + cols
    return objects, succ


def _predecessors(succ: np.ndarray) -> np.ndarray:
    pred = np.full(succ.size, -1)
    linked = succ >= 0
    pred[succ[linked]] = np.flatnonzero(linked)
    return pred


def _area_ok(objects: _Objects, mother: int, daughter: int, params: TrackParams) -> bool:
    low, high = params.daughter_area_ratio
    return bool(low <= objects.area[daughter] / objects.area[mother] <= high)


def _sisters_cost(objects: _Objects, mother: int, d1: int, d2: int, params: TrackParams) -> float:
    """Midpoint and sister-symmetry cost of a division, ``inf`` when a gate fails."""
    ratio = abs(math.log(objects.area[d1] / objects.area[d2]))
    midpoint = (objects.centroid[d1] + objects.centroid[d2]) / 2
    offset = float(np.hypot(*(midpoint - objects.centroid[mother])))
    half_separation = objects.distance(d1, d2) / 2
    # The mother sits between its daughters: nearer their midpoint than either daughter is.
    if ratio > math.log(params.max_sister_ratio) or offset >= half_separation:
        return math.inf
    return (2 * offset / half_separation) ** 2 + (ratio / math.log(params.max_sister_ratio)) ** 2


def _gap_rows(objects: _Objects, succ: np.ndarray, heads: np.ndarray, params: TrackParams) -> _Rows:
    """Rows ``('gap', tail)`` and their costs to every head."""
    n_t = objects.start.size - 1
    tails = np.flatnonzero((succ < 0) & (objects.frame < n_t - 2))
    keys: list[tuple[Any, ...]] = []
    costs: list[np.ndarray] = []
    for tail in tails:
        steps = objects.frame[heads] - objects.frame[tail]
        reach = params.max_distance * np.sqrt(np.maximum(steps, 1))
        distance = np.hypot(*(objects.centroid[heads] - objects.centroid[tail]).T)
        area = np.log(objects.area[heads] / objects.area[tail]) / math.log(2.0)
        cost = (distance / reach) ** 2 + area**2
        allowed = (steps >= 2) & (steps <= params.max_gap + 1) & (distance <= reach)
        keys.append(("gap", int(tail)))
        costs.append(np.where(allowed, cost, np.inf))
    return keys, costs


def _division_rows(objects: _Objects, succ: np.ndarray, heads: np.ndarray, params: TrackParams) -> _Rows:
    """Rows ``('split', mother)`` (continuing) or ``('end', mother, slot)`` and their costs to every head."""
    keys: list[tuple[Any, ...]] = []
    costs: list[np.ndarray] = []
    for t in np.unique(objects.frame[heads]):
        column = np.flatnonzero(objects.frame[heads] == t)
        for mother in objects.rows(int(t) - 1):
            cost = np.full(heads.size, np.inf)
            for j in column:
                head = int(heads[j])
                distance = objects.distance(mother, head)
                if distance > params.max_division_distance or not _area_ok(objects, mother, head, params):
                    continue
                if succ[mother] < 0:
                    cost[j] = (distance / params.max_division_distance) ** 2
                elif _area_ok(objects, mother, int(succ[mother]), params):
                    cost[j] = _sisters_cost(objects, mother, head, int(succ[mother]), params)
            if not np.isfinite(cost).any():
                continue
            slots = [("end", int(mother), 0), ("end", int(mother), 1)] if succ[mother] < 0 else [("split", int(mother))]
            keys += slots
            costs += [cost] * len(slots)
    return keys, costs


def _close_gaps_and_divide(objects: _Objects, succ: np.ndarray, params: TrackParams) -> np.ndarray:
    """Step 2: gap closing and divisions; updates ``succ`` and returns each row's mother row (-1)."""
    mother_of = np.full(succ.size, -1)
    heads = np.flatnonzero((_predecessors(succ) < 0) & (objects.frame > 0))
    keys, costs = _gap_rows(objects, succ, heads, params)
    if params.divisions:
        more_keys, more_costs = _division_rows(objects, succ, heads, params)
        keys, costs = keys + more_keys, costs + more_costs
    if not keys:
        return mother_of
    alt = params.alternative_cost
    rows, cols = solve_assignment(np.stack(costs), np.full(len(keys), alt), np.full(heads.size, alt))
    daughters: dict[int, list[int]] = {}
    gaps: list[tuple[int, int]] = []
    for row, col in zip(rows, cols):
        key, head = keys[row], int(heads[col])
        if key[0] == "gap":
            gaps.append((key[1], head))
        else:
            daughters.setdefault(key[1], []).append(head)
    for mother, found in daughters.items():
        if succ[mother] >= 0:  # continuing mother: its successor is the other daughter
            found = [*found, int(succ[mother])]
        elif len(found) != 2 or not math.isfinite(_sisters_cost(objects, mother, found[0], found[1], params)):
            continue
        succ[mother] = -1
        mother_of[found] = mother
    mothers = set(mother_of[mother_of >= 0].tolist())
    for tail, head in gaps:
        if tail not in mothers:  # a tail that divided does not also continue
            succ[tail] = head
    return mother_of


def _assign_tracks(objects: _Objects, succ: np.ndarray, mother_of: np.ndarray) -> Tracks:
    pred = _predecessors(succ)
    track = np.zeros(succ.size, np.int64)
    heads = np.flatnonzero(pred < 0)  # already in frame, then label order
    for number, head in enumerate(heads, start=1):
        row = int(head)
        while row >= 0:
            track[row] = number
            row = int(succ[row])
    parent = np.zeros(heads.size + 1, np.int64)
    has_mother = mother_of[heads] >= 0
    parent[np.flatnonzero(has_mother) + 1] = track[mother_of[heads[has_mother]]]
    return Tracks(
        frame=objects.frame.astype(np.int64), label=objects.label, track_id=track,
        parent_track_id=parent[track], area=objects.area, centroid=objects.centroid,
    )


def track_labels(labels: np.ndarray, params: TrackParams | None = None) -> Tracks:
    """Track the objects of a ``(T, Y, X)`` label movie.

    Parameters
    ----------
    labels : (T, Y, X) ndarray of int
        One label image per frame (0 = background); label values need not
        persist between frames.
    params : TrackParams, optional

    Returns
    -------
    Tracks
        Tracks are numbered ``1..K`` in order of their first frame, then label.

    Raises
    ------
    ValueError
        ``labels`` is not a 3-d integer array.

    Examples
    --------
    >>> movie = np.zeros((3, 20, 20), np.uint16)
    >>> movie[0, 2:6, 2:6] = 1; movie[1, 3:7, 3:7] = 5; movie[2, 4:8, 4:8] = 2
    >>> track_labels(movie).track_id.tolist()
    [1, 1, 1]
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a (T, Y, X) integer array, got {labels.dtype} of shape {labels.shape}")
    params = params or TrackParams()
    objects, succ = _link_frames(labels, params)
    mother_of = _close_gaps_and_divide(objects, succ, params)
    return _assign_tracks(objects, succ, mother_of)
