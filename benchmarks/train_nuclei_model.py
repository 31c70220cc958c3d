"""Train the default nuclei model on the real development images (never on dsb2018_stage1_test).

    python benchmarks/train_nuclei_model.py [--root ../shared/data/nuclei] [--out runs/nuclei-model]
           [--epochs 30] [--steps 60] [--model resunet] [--width 8]
           [--synthetic-fields 240 --synthetic-share 0.5] [--validation-fraction 0.2]

Training data: every grey/GFP fluorescence pair of ../shared/data/nuclei except the
dsb2018_stage1_test source, which is kept for testing (issue bar: the 53 grey images).
Validation: a seeded fraction of all training-source fields (real and synthetic), disjoint from training.
Writes the checkpoint, history.json and a JSON summary; prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cellflow.nn.augment import AugmentParams
from cellflow.nn.normalize import Normalization
from cellflow.nn.train import TrainParams, train
from cellflow.ops.postprocess import PostprocessParams
from cellflow.screen import ingest_nuclei_pairs
from cellflow.screen.store import Screen

SOURCES = ("dsb2018_stage1_train_subset", "ctc_fluo_n2dh_gowt1", "ctc_fluo_n2dl_hela", "stardist_examples")


_SHAPES = ((256, 256), (256, 320), (360, 360), (520, 696), (512, 640), (256, 256))


def synthetic_field(index: int) -> tuple[np.ndarray, np.ndarray]:
    """One domain-randomised synthetic nuclear-stain field (uint16 image, uint16 labels), seeded by ``index``.

    Drawn per field so the network sees what real screens vary in and the 17 real training images
    do not cover: field size; pixel size (nuclei ~10-40 px across); density from a few sparse nuclei
    to crowded (2-45 % cover) and clustering; signal from dim to bright over a dim or bright, noisy
    background; vignetting; optical blur; nucleus-to-nucleus brightness spread (log-normal, sigma
    0-0.6); on 60 % of fields diffuse cytoplasmic signal (autofluorescence / bleed-through of the
    cell-body stain, 5-35 %) that is *not* a nucleus; on 20 % saturated nuclei. The masks are the
    synthetic truth.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    from cellflow.screen.synthetic import SyntheticSpec, synthesize_field

    rng = np.random.default_rng([2018, index])
    shape = _SHAPES[index % len(_SHAPES)]
    pixel_size_um = float(rng.uniform(0.4, 1.6))
    diameter_px = 16.0 / pixel_size_um
    coverage = float(np.exp(rng.uniform(np.log(0.02), np.log(0.45))))  # fraction of the field inside nuclei
    per_1024 = max(1, int(coverage * 1024**2 / (np.pi * (diameter_px / 2) ** 2)))  # the spec counts per 1024^2
    dna = float(np.exp(rng.uniform(np.log(60), np.log(3000))))
    spec = SyntheticSpec(
        wells=("A01",), sites=1, shape_yx=shape, n_z=1, channels=("DNA", "Cyto"), pixel_size_um=pixel_size_um,
        nuclei_per_field=per_1024, seed=10_000 + index, nucleus_diameter_cv=float(rng.uniform(0.1, 0.35)),
        nucleus_irregularity=float(rng.uniform(0.05, 0.2)), cluster_fraction=float(rng.uniform(0.0, 0.6)),
        micronuclei_fraction=0.02, psf_sigma_um=float(rng.uniform(0.3, 1.0)) * pixel_size_um,
        illumination_falloff=float(rng.uniform(0.0, 0.6)), dna_brightness_e=dna, cyto_brightness_e=0.4 * dna,
        background_e=float(np.exp(rng.uniform(np.log(2), np.log(150)))), read_noise_e=float(rng.uniform(1, 8)))
    field = synthesize_field(spec, plate="P1", well="A01", site=0)
    offset = spec.camera_offset_adu
    nuclear = field.images[0, 0, 0].astype(np.float64) - offset
    cyto = field.images[0, 1, 0].astype(np.float64) - offset
    labels = field.truth_nuclei[0]
    factors = np.concatenate([[1.0], np.exp(rng.normal(0.0, float(rng.uniform(0.0, 0.6)), int(labels.max())))])
    image = nuclear * ndi.gaussian_filter(factors[expand_labels(labels, 4)], 2.0)  # smooth across blurred edges
    if rng.random() < 0.6:
        image = image + float(rng.uniform(0.05, 0.35)) * cyto
    if rng.random() < 0.2:
        image = np.minimum(image, np.percentile(image, float(rng.uniform(99.0, 99.9))))
    return np.clip(image + offset, 0, 65535).astype(np.uint16), labels.astype(np.uint16)


def synthetic_pairs(folder: Path, n: int) -> Screen:
    """``n`` domain-randomised synthetic fields (:func:`synthetic_field`) as image/mask pairs, ingested like the
    real ones (channel ``image``) into ``folder/synthetic.zarr``."""
    import tifffile
    from PIL import Image

    store = folder / "synthetic.zarr"
    if store.exists():
        return Screen.open(store)
    images, masks = folder / "synthetic" / "images", folder / "synthetic" / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for index in range(n):
        image, labels = synthetic_field(index)
        tifffile.imwrite(images / f"synthetic_{index:04d}.tif", image)
        Image.fromarray(labels).save(masks / f"synthetic_{index:04d}.png")
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
                        help="also train on this many domain-randomised synthetic nuclear-stain fields")
    parser.add_argument("--synthetic-share", type=float, default=0.5,
                        help="share of the training crops drawn from the synthetic fields (with --synthetic-fields)")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
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
        epochs=args.epochs, steps_per_epoch=args.steps, patience=args.patience,
        validation_fraction=args.validation_fraction, seed=2017,
        screen_weights=(1 - args.synthetic_share, args.synthetic_share) if args.synthetic_fields else None,
    )
    start = time.perf_counter()
    result = train(screens, params, out=args.out, log=print)
    summary = {
        "checkpoint": str(result.checkpoint), "sha256": result.sha256, "best_epoch": result.best_epoch,
        "best_val_f1": result.best_f1, "initial_val_f1": result.initial_f1,
        "train_fields": len(result.train_fields), "validation_fields": len(result.validation_fields),
        "seconds": time.perf_counter() - start, "params": params.to_dict(), "sources": SOURCES,
        "synthetic_fields": args.synthetic_fields, "synthetic_share": args.synthetic_share,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "params"}, indent=2, default=str))


if __name__ == "__main__":
    main()
