"""Cell-type classification and cytoplasm-from-phase on synthetic co-cultures (Van Valen et al. 2016).

1. Cell types: a U-Net (2 levels, width 16) trained with
   :func:`cellflow.live.celltype.train_semantic` on DNA + bright-field fields of a two-type
   co-culture (:func:`cellflow.live.synthetic.synthesize_coculture_field`); per-cell
   accuracy of :func:`cellflow.live.celltype.classify_cells` on held-out fields (other
   sites), with the truth cells as the objects.
2. Cytoplasm from DNA + bright-field: the same network with classes background /
   cytoplasm / nucleus (:func:`cellflow.live.cytoplasm.cytoplasm_targets`), turned into
   nuclei and linked cells by :func:`cellflow.live.cytoplasm.cells_from_probabilities`;
   F1 (mean over IoU 0.5-0.95) of the cells against ``truth_cells`` on the held-out
   fields, beside a Voronoi partition of the truth nuclei (baseline).

Run: ``python benchmarks/celltype_synthetic.py [--steps N]``; writes
``benchmarks/results/celltype_synthetic.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from skimage.segmentation import expand_labels

from cellflow.live.celltype import (
    SemanticTrainParams,
    celltype_targets,
    classify_cells,
    predict_probabilities,
    train_semantic,
)
from cellflow.live.cytoplasm import cells_from_nuclei, cells_from_probabilities, cytoplasm_targets
from cellflow.live.synthetic import COCULTURE_TYPES, CocultureField, synthesize_coculture_field
from cellflow.metrics import score_field
from cellflow.nn.normalize import Normalization, normalize
from cellflow.ops.autolabel import CellParams
from cellflow.screen.synthetic import SyntheticSpec

SPEC = SyntheticSpec(wells=("A01",), sites=16, shape_yx=(192, 192), n_z=1, channels=("DNA", "BF"),
                     nuclei_per_field=800, pixel_size_um=1.0, seed=21)
TRAIN_SITES = range(0, 10)
TEST_SITES = range(10, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-celltype", action="store_true",
                        help="keep the cell-type result of an existing --out file, run the cytoplasm part only")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "celltype_synthetic.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fields = [synthesize_coculture_field(SPEC, plate="P1", well="A01", site=s) for s in range(SPEC.sites)]
    images = [normalize(f.image, Normalization()) for f in fields]
    params = SemanticTrainParams(steps=args.steps, batch_size=8, crop_size=64,
                                 model_options={"width": 16, "levels": 2}, seed=0)
    result: dict[str, object] = {"spec": SPEC.to_dict(), "train_sites": list(TRAIN_SITES),
                                 "test_sites": list(TEST_SITES), "params": params.to_dict(),
                                 "threads": args.threads, "torch": torch.__version__}

    if args.skip_celltype:
        result["celltype"] = json.loads(Path(args.out).read_text())["celltype"]
    else:
        result["celltype"] = _celltype(fields, images, params)
    print("cell types:", result["celltype"])
    result["cytoplasm"] = _cytoplasm(fields, images, params)
    print("cytoplasm F1:", result["cytoplasm"])
    Path(args.out).write_text(json.dumps(result, indent=1))


def _celltype(fields: list[CocultureField], images: list[np.ndarray], params: SemanticTrainParams) -> dict[str, float]:
    started = time.perf_counter()
    pairs = [celltype_targets(fields[s].cells, fields[s].cell_type, n_types=2) for s in TRAIN_SITES]
    model = train_semantic([images[s] for s in TRAIN_SITES], [t for t, _ in pairs], [w for _, w in pairs],
                           classes=4, params=params)
    correct = total = 0
    for s in TEST_SITES:
        table = classify_cells(predict_probabilities(model, images[s]), fields[s].cells, type_names=COCULTURE_TYPES)
        truth = [COCULTURE_TYPES[fields[s].cell_type[k]] for k in table["label"]]
        correct += int((table["cell_type"].to_numpy() == np.asarray(truth)).sum())
        total += len(table)
    return {"accuracy": correct / total, "cells": total, "seconds": round(time.perf_counter() - started, 1)}


def _cytoplasm(fields: list[CocultureField], images: list[np.ndarray], params: SemanticTrainParams) -> dict[str, float]:
    started = time.perf_counter()
    pairs = [cytoplasm_targets(fields[s].nuclei, fields[s].cells) for s in TRAIN_SITES]
    model = train_semantic([images[s] for s in TRAIN_SITES], [t for t, _ in pairs], [w for _, w in pairs],
                           classes=3, params=params)
    scores: dict[str, list[float]] = {
        "model_watershed": [], "model_active_contour": [], "nuclei": [], "voronoi_of_model_nuclei": [],
        "model_foreground_truth_nuclei": [], "voronoi_of_truth_nuclei": []}
    for s in TEST_SITES:
        probabilities = predict_probabilities(model, images[s])
        truth = fields[s].cells
        for method in ("watershed", "active_contour"):
            nuclei, cells = cells_from_probabilities(probabilities, method=method)
            scores[f"model_{method}"].append(score_field(truth, cells).f1_mean)
        scores["nuclei"].append(score_field(fields[s].nuclei, nuclei).f1_mean)
        scores["voronoi_of_model_nuclei"].append(score_field(truth, expand_labels(nuclei, 10_000)).f1_mean)
        seeded = cells_from_nuclei(1.0 - probabilities[0], fields[s].nuclei,
                                   params=CellParams(threshold=0.5, dilation_px=0))
        scores["model_foreground_truth_nuclei"].append(score_field(truth, seeded).f1_mean)
        scores["voronoi_of_truth_nuclei"].append(score_field(truth, expand_labels(fields[s].nuclei, 10_000)).f1_mean)
    out = {k: round(float(np.mean(v)), 4) for k, v in scores.items()}
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


if __name__ == "__main__":
    main()
