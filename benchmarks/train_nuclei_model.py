"""Train the default nuclei model on the real development images (never on dsb2018_stage1_test).

    python benchmarks/train_nuclei_model.py [--root ../shared/data/nuclei] [--out runs/nuclei-model]
           [--epochs 30] [--steps 60] [--model resunet] [--width 8]

Training data: every grey/GFP fluorescence pair of ../shared/data/nuclei except the
dsb2018_stage1_test source, which is kept for testing (issue bar: the 53 grey images).
Validation: a seeded 20 % of those training-source fields, disjoint from training.
Writes the checkpoint, history.json and a JSON summary; prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cellflow.nn.augment import AugmentParams
from cellflow.nn.normalize import Normalization
from cellflow.nn.train import TrainParams, train
from cellflow.ops.postprocess import PostprocessParams
from cellflow.screen import ingest_nuclei_pairs
from cellflow.screen.store import Screen

SOURCES = ("dsb2018_stage1_train_subset", "ctc_fluo_n2dh_gowt1", "ctc_fluo_n2dl_hela", "stardist_examples")


def synthetic_pairs(folder: Path, n: int) -> Screen:
    """``n`` synthetic in-focus DNA fields as image/mask pairs, ingested like the real ones (channel ``image``).

    Field size, pixel size (nuclei of about 10-40 px), density and brightness vary per field (seeded),
    spanning the scales of the DSB 2018 images; the masks are the synthetic truth.
    """
    import numpy as np
    import tifffile
    from PIL import Image

    from cellflow.screen.synthetic import SyntheticSpec, synthesize_field

    store = folder / "synthetic.zarr"
    if store.exists():
        return Screen.open(store)
    rng = np.random.default_rng(2018)
    images, masks = folder / "synthetic" / "images", folder / "synthetic" / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for index in range(n):
        shape = [(256, 256), (256, 320), (520, 696)][index % 3]
        pixel_size_um = float(rng.uniform(0.4, 1.6))
        diameter_px = 16.0 / pixel_size_um
        coverage = float(rng.uniform(0.1, 0.45))  # fraction of the field inside nuclei
        per_1024 = int(coverage * 1024**2 / (np.pi * (diameter_px / 2) ** 2))  # the spec counts per 1024^2
        spec = SyntheticSpec(wells=("A01",), sites=1, shape_yx=shape, n_z=1, channels=("DNA",),
                             pixel_size_um=pixel_size_um, nuclei_per_field=per_1024, seed=index)
        field = synthesize_field(spec, plate="P1", well="A01", site=0)
        tifffile.imwrite(images / f"synthetic_{index:03d}.tif", field.images[0, 0, 0])
        Image.fromarray(field.truth_nuclei[0].astype(np.uint16)).save(masks / f"synthetic_{index:03d}.png")
    ingest_nuclei_pairs(folder, store)
    return Screen.open(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/nuclei"))
    parser.add_argument("--out", type=Path, default=Path("runs/nuclei-model"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--model", default="resunet")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--init-from", default=None, help="checkpoint to fine-tune (same architecture)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--synthetic-fields", type=int, default=0,
                        help="also train on this many synthetic DNA fields at DSB-like scales (10-40 px nuclei)")
    parser.add_argument("--augment", type=json.loads, default=None, metavar="JSON",
                        help="AugmentParams fields over the defaults below, e.g. '{\"p_noise\": 0.6}'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "train.zarr"
    if not store.exists():
        ingest_nuclei_pairs(args.root, store, sources=SOURCES, modalities=["fluorescence*"])
    screen = Screen.open(store)
    assert "dsb2018_stage1_test" not in screen.layout.plates  # the test images never train
    screens = [screen]
    if args.synthetic_fields:
        screens.append(synthetic_pairs(args.out / "synthetic", args.synthetic_fields))
    params = TrainParams(
        model=args.model, model_options={"width": args.width}, channels=("image",), classes=3,
        normalization=Normalization(method="percentile", low=1.0, high=99.8),
        # zoom 0.5-2x: the test images' nuclei range from a few to ~40 px across; shrink_px=1 undoes
        # the boundary band the 3-class targets put one pixel outside each contour
        augment=AugmentParams.from_dict({"p_scale": 0.6, "scale_range": (0.5, 2.0), **(args.augment or {})}),
        postprocess=PostprocessParams(shrink_px=1),
        crop_size=192, batch_size=8, optimizer="adam", learning_rate=args.lr, init_from=args.init_from,
        schedule="cosine",
        epochs=args.epochs, steps_per_epoch=args.steps, patience=args.patience, validation_fraction=0.2, seed=2017,
    )
    start = time.perf_counter()
    result = train(screens, params, out=args.out, log=print)
    summary = {
        "checkpoint": str(result.checkpoint), "sha256": result.sha256, "best_epoch": result.best_epoch,
        "best_val_f1": result.best_f1, "initial_val_f1": result.initial_f1,
        "train_fields": len(result.train_fields), "validation_fields": len(result.validation_fields),
        "seconds": time.perf_counter() - start, "params": params.to_dict(), "sources": SOURCES,
        "synthetic_fields": args.synthetic_fields,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "params"}, indent=2, default=str))


if __name__ == "__main__":
    main()
