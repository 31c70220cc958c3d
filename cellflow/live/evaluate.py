"""Scores of a tracking against ground truth: frame-to-frame links and divisions.

A **link** is ``(t, a, b)``: object ``a`` at frame ``t`` and object ``b`` at
``t + 1`` are the same cell, or ``b`` is a daughter of ``a``. The truth's links
come from label persistence and the lineage table (labels present in both
frames); a tracking's from its tracks (consecutive rows of one track, and a
mother's last row to each daughter's first row one frame later).

A **division** is ``(t, mother, {daughter, daughter})`` with the mother's last
frame ``t``. A predicted division counts as found when its mother and both
daughters match the truth's.

Predicted labels are mapped to truth labels per frame by IoU > 0.5 (a unique
match, Caicedo et al. 2019); links or divisions touching an unmatched object
cannot match, so the scores on predicted labels include segmentation errors.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cellflow.live.track import Tracks, measure_objects, overlap_iou

__all__ = ["division_events", "match_labels", "score_tracking", "track_links", "truth_divisions", "truth_links"]

Link = tuple[int, int, int]
Division = tuple[int, int, frozenset[int]]


def truth_links(truth: np.ndarray, lineage: np.ndarray) -> set[Link]:
    """Links of a ``(T, Y, X)`` truth movie whose labels persist, with a lineage (``label``, ``parent``)."""
    present = [set(np.unique(frame[frame > 0]).tolist()) for frame in truth]
    parent = {int(r["label"]): int(r["parent"]) for r in lineage}
    links: set[Link] = set()
    for t in range(len(present) - 1):
        links |= {(t, a, a) for a in present[t] & present[t + 1]}
        links |= {(t, parent[b], b) for b in present[t + 1] if parent.get(b, 0) in present[t]}
    return links


def truth_divisions(truth: np.ndarray, lineage: np.ndarray) -> set[Division]:
    """Divisions of a truth movie whose mother and daughters are all visible."""
    present = [set(np.unique(frame[frame > 0]).tolist()) for frame in truth]
    daughters: dict[int, set[int]] = {}
    for row in lineage:
        if row["parent"]:
            daughters.setdefault(int(row["parent"]), set()).add(int(row["label"]))
    last = {int(r["label"]): int(r["last_t"]) for r in lineage}
    return {
        (last[m], m, frozenset(ds)) for m, ds in daughters.items()
        if last[m] + 1 < len(present) and m in present[last[m]] and ds <= present[last[m] + 1]
    }


def _rows_by_track(tracks: Tracks) -> dict[int, np.ndarray]:
    order = np.lexsort((tracks.frame, tracks.track_id))
    ids, starts = np.unique(tracks.track_id[order], return_index=True)
    return dict(zip(ids.tolist(), np.split(order, starts[1:])))


def track_links(tracks: Tracks) -> set[Link]:
    """Links of a tracking, as ``(t, label, label)``."""
    rows = _rows_by_track(tracks)
    f, lab = tracks.frame, tracks.label
    links: set[Link] = set()
    for r in rows.values():
        links |= {(int(f[i]), int(lab[i]), int(lab[j])) for i, j in itertools.pairwise(r) if f[j] == f[i] + 1}
        parent = int(tracks.parent_track_id[r[0]])
        if parent:
            end = rows[parent][-1]
            if f[r[0]] == f[end] + 1:
                links.add((int(f[end]), int(lab[end]), int(lab[r[0]])))
    return links


def division_events(tracks: Tracks) -> set[Division]:
    """Divisions of a tracking: each mother's last ``(frame, label)`` and its daughters' first labels."""
    rows = _rows_by_track(tracks)
    children: dict[int, list[int]] = {}
    for r in rows.values():
        parent = int(tracks.parent_track_id[r[0]])
        if parent:
            children.setdefault(parent, []).append(int(tracks.label[r[0]]))
    events = set()
    for mother, labels in children.items():
        end = rows[mother][-1]
        events.add((int(tracks.frame[end]), int(tracks.label[end]), frozenset(labels)))
    return events


def match_labels(truth: np.ndarray, pred: np.ndarray) -> dict[int, int]:
    """Predicted label -> truth label for pairs with IoU > 0.5 in one ``(Y, X)`` frame."""
    a, b = measure_objects(pred), measure_objects(truth)
    rows, cols = np.nonzero(overlap_iou(pred, truth, a, b) > 0.5)
    return dict(zip(a.label[rows].tolist(), b.label[cols].tolist()))


def _f1(found: int, predicted: int, actual: int) -> dict[str, float]:
    precision = found / predicted if predicted else float("nan")
    recall = found / actual if actual else float("nan")
    f1 = 2 * found / (predicted + actual) if predicted + actual else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1}


def score_tracking(
    tracks: Tracks, truth: np.ndarray, lineage: np.ndarray, mapping: Sequence[Mapping[int, int]] | None = None
) -> dict[str, Any]:
    """Link accuracy (recall of true links) and precision, and division precision/recall/F1.

    Parameters
    ----------
    tracks : Tracks
    truth : (T, Y, X) ndarray
        True labels.
    lineage : structured ndarray
        With ``label``, ``parent`` and ``last_t`` (:data:`~cellflow.screen.synthetic.LINEAGE_DTYPE`).
    mapping : sequence of dict, optional
        Per frame, predicted label -> truth label (:func:`match_labels`); None
        when ``tracks`` was made from the truth labels themselves.
    """
    def to_truth(t: int, label: int) -> int:
        return label if mapping is None else mapping[t].get(label, -1)

    true_links, true_divisions = truth_links(truth, lineage), truth_divisions(truth, lineage)
    links = {(t, to_truth(t, a), to_truth(t + 1, b)) for t, a, b in track_links(tracks)}
    divisions = {
        (t, to_truth(t, m), frozenset(to_truth(t + 1, d) for d in ds)) for t, m, ds in division_events(tracks)
    }
    division = _f1(len(divisions & true_divisions), len(divisions), len(true_divisions))
    return {
        "links_true": len(true_links), "links_predicted": len(links),
        "link_accuracy": len(links & true_links) / len(true_links) if true_links else float("nan"),
        "link_precision": len(links & true_links) / len(links) if links else float("nan"),
        "divisions_true": len(true_divisions), "divisions_predicted": len(divisions),
        **{f"division_{k}": v for k, v in division.items()},
    }
