"""Tracking accuracy on synthetic time-lapses: truth labels and classical autolabel labels.

For several seeds and sites of a synthetic movie (256 x 256, 10 frames 10 min apart,
dividing nuclei), track (cellflow.live.track_labels) the true labels and the labels
of the classical autolabel kernels (Otsu + watershed on the DNA channel), and score
frame-to-frame links and divisions against the lineage (cellflow.live.evaluate).
Prints a table and writes benchmarks/results/tracking_synthetic.json.

    python benchmarks/tracking_synthetic.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cellflow.live import track_labels
from cellflow.live.evaluate import match_labels, score_tracking
from cellflow.ops.autolabel import segment_nuclei
from cellflow.screen.synthetic import SyntheticSpec, synthesize_field, true_illumination

SEEDS, SITES = (0, 1, 2), 3
SPEC = dict(
    wells=("A01",), sites=SITES, shape_yx=(256, 256), channels=("DNA",), n_z=1, n_t=10, interval_min=10.0,
    nuclei_per_field=600, division_rate_per_h=0.5, mitotic_fraction=0.05,
)
COUNTS = ("links_true", "links_found", "links_predicted", "divisions_true", "divisions_predicted", "divisions_found")


def _autolabel(spec: SyntheticSpec, images: np.ndarray) -> np.ndarray:
    """Offset removed, divided by the plate's true flat field (the illumination stage estimates it)."""
    flat = true_illumination(spec, plate="P1", channel="DNA")
    dna = (images[:, 0, 0].astype(float) - spec.camera_offset_adu) / flat
    diameter = spec.nucleus_diameter_um / spec.pixel_size_um
    return np.stack([segment_nuclei(frame, diameter_px=diameter) for frame in dna])


def _counts(score: dict) -> dict[str, int]:
    return {
        "links_true": score["links_true"], "links_predicted": score["links_predicted"],
        "links_found": round(score["link_accuracy"] * score["links_true"]),
        "divisions_true": score["divisions_true"], "divisions_predicted": score["divisions_predicted"],
        "divisions_found": round(np.nan_to_num(score["division_recall"]) * score["divisions_true"]),
    }


def _summary(total: dict[str, int]) -> dict[str, float]:
    d = total["divisions_true"] + total["divisions_predicted"]
    return {
        "link_accuracy": total["links_found"] / total["links_true"],
        "link_precision": total["links_found"] / max(total["links_predicted"], 1),
        "division_f1": 2 * total["divisions_found"] / d if d else float("nan"),
        **total,
    }


def main() -> dict:
    totals = {name: dict.fromkeys(COUNTS, 0) for name in ("truth", "autolabel")}
    per_field = []
    start = time.perf_counter()
    for seed in SEEDS:
        spec = SyntheticSpec(seed=seed, **SPEC)
        for site in range(SITES):
            field = synthesize_field(spec, plate="P1", well="A01", site=site)
            labels = _autolabel(spec, field.images)
            mapping = [match_labels(t, p) for t, p in zip(field.truth_nuclei, labels, strict=True)]
            scores = {
                "truth": score_tracking(track_labels(field.truth_nuclei), field.truth_nuclei, field.lineage),
                "autolabel": score_tracking(track_labels(labels), field.truth_nuclei, field.lineage, mapping),
            }
            for name, score in scores.items():
                counts = _counts(score)
                totals[name] = {k: totals[name][k] + counts[k] for k in COUNTS}
                per_field.append({"seed": seed, "site": site, "labels": name, **_summary(counts)})
    result = {
        "spec": {**SPEC, "seeds": SEEDS}, "seconds": round(time.perf_counter() - start, 1),
        "pooled": {name: _summary(total) for name, total in totals.items()}, "fields": per_field,
    }
    print(f"{'labels':<10} {'link acc':>9} {'link prec':>9} {'div F1':>7} {'links':>6} {'divisions':>9}")
    for name, s in result["pooled"].items():
        print(f"{name:<10} {s['link_accuracy']:9.3f} {s['link_precision']:9.3f} {s['division_f1']:7.3f} "
              f"{s['links_true']:6d} {s['divisions_true']:9d}")
    out = Path(__file__).parent / "results" / "tracking_synthetic.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
