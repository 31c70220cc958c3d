"""Render ``docs/synthetic_vs_real.png``: synthetic channels next to real nuclei images.

Top row: a default synthetic field (1024 x 1024, 0.65 um/px), in-focus DNA and
Cyto, next to a BBBC038 U2OS Hoechst image (520 x 696) and a Cell Tracking
Challenge HeLa H2B-GFP frame. Middle row: the same crops with truth outlines
(synthetic truth, published masks). Bottom row: synthetic bright-field at
z = -2, 0, +2 um and a DNA/Cyto composite. Every panel is a 384 x 384 crop,
contrast-stretched between its 0.5 and 99.8 percentiles.

The real images are read from the shared development set (not copied into
the repository)::

    python benchmarks/synthetic_montage.py [--data ../shared/data/nuclei] [--out docs/synthetic_vs_real.png]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from skimage import io as skio
from skimage.segmentation import find_boundaries

from cellflow.screen.synthetic import SyntheticSpec, synthesize_field

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nuclei"
DEFAULT_OUT = ROOT / "docs" / "synthetic_vs_real.png"
CROP = 384
# One 520 x 696 grey fluorescence image of the BBBC038 stage-1 test set and one HeLa frame.
DSB_NAME = "dsb2018_stage1_test/{}/8b59819fbc92eefe45b1db95c0cc3a467ddcfc755684c7f2ba2f6ccb9ad740ab.png"
HELA_NAME = "ctc_fluo_n2dl_hela/{}/t52.{}"


def stretch(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.8))
    return np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def densest_window(labels: np.ndarray, size: int = CROP, step: int = 32) -> tuple[slice, slice]:
    """The crop window with the most labelled pixels (a view with something in it)."""
    best, best_yx = -1, (0, 0)
    for y in range(0, labels.shape[0] - size + 1, step):
        for x in range(0, labels.shape[1] - size + 1, step):
            count = int(np.count_nonzero(labels[y : y + size, x : x + size]))
            if count > best:
                best, best_yx = count, (y, x)
    y, x = best_yx
    return slice(y, y + size), slice(x, x + size)


def with_outlines(image: np.ndarray, labels: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    rgb = np.repeat(stretch(image)[..., None], 3, axis=2)
    rgb[find_boundaries(labels, mode="inner")] = colour
    return rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--site", type=int, default=0)
    args = parser.parse_args()

    spec = SyntheticSpec()
    field = synthesize_field(spec, plate="P1", well="A01", site=args.site)
    c = {name: i for i, name in enumerate(spec.channels)}
    focus = spec.z_um.index(0.0)
    window = densest_window(field.truth_nuclei[0])
    dna = field.images[0, c["DNA"], focus][window]
    cyto = field.images[0, c["Cyto"], focus][window]
    bf = field.images[0, c["BF"], :][(slice(None), *window)]
    nuclei, cells = field.truth_nuclei[0][window], field.truth_cells[0][window]

    dsb = skio.imread(args.data / DSB_NAME.format("images"))[..., 0]
    dsb_mask = skio.imread(args.data / DSB_NAME.format("masks"))
    dsb_window = densest_window(dsb_mask)
    hela = skio.imread(args.data / HELA_NAME.format("images", "tif"))
    hela_mask = skio.imread(args.data / HELA_NAME.format("masks", "png"))
    hela_window = densest_window(hela_mask)

    yellow, cyan = (1.0, 0.85, 0.0), (0.0, 0.9, 1.0)
    composite = np.stack([stretch(cyto), stretch(dna), stretch(cyto)], axis=2)
    panels = [
        (stretch(dna), "synthetic DNA (in focus)"),
        (stretch(cyto), "synthetic Cyto"),
        (stretch(dsb[dsb_window]), "real: BBBC038 U2OS Hoechst"),
        (stretch(hela[hela_window]), "real: CTC HeLa H2B-GFP"),
        (with_outlines(dna, nuclei, yellow), "synthetic truth_nuclei"),
        (with_outlines(cyto, cells, cyan), "synthetic truth_cells"),
        (with_outlines(dsb[dsb_window], dsb_mask[dsb_window], yellow), "BBBC038 masks"),
        (with_outlines(hela[hela_window], hela_mask[hela_window], yellow), "CTC HeLa masks"),
        *[(stretch(plane), f"synthetic BF z = {z:+.0f} um") for plane, z in zip(bf, spec.z_um)],
        (composite, "synthetic DNA (green) + Cyto (magenta)"),
    ]
    fig, axes = plt.subplots(3, 4, figsize=(12, 9.4))
    for ax, (image, title) in zip(axes.flat, panels):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(
        "cellflow synthetic field (default SyntheticSpec, 384 px crops) vs real nuclei images", fontsize=11
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    # A 256-colour palette keeps the file small (grey images need few colours anyway).
    png = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
