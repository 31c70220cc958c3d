"""Classical nuclei per 520x696 field: cellflow's one-pass hole filling vs SciPy's flood, side by side.

    python benchmarks/classical_speed.py [--root ../shared/data/nuclei] [--repeats 3]

Segments the ten real 520x696 images of ../shared/data/nuclei with ``segment_nuclei``
(default settings, one thread), alternating two versions of the hole filling it calls
(``Backend.fill_holes``, one labelling pass, vs ``scipy.ndimage.binary_fill_holes``, which
floods by repeated dilation), and checks the labels are identical. Prints ms per field per
repeat and the ratio of the medians; writes benchmarks/results/classical_speed.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy import ndimage as ndi

from cellflow.ops import _backend
from cellflow.ops.autolabel import segment_nuclei

RESULTS = Path(__file__).resolve().parent / "results" / "classical_speed.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/nuclei"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with open(args.root / "index.csv") as f:
        rows = [r for r in csv.DictReader(f) if (r["height"], r["width"]) == ("520", "696")]
    images = []
    for r in rows:
        image = iio.imread(args.root / r["image"])
        images.append((image[..., :3].mean(-1) if image.ndim == 3 else image).astype(np.float32))
    versions = {"scipy_flood": lambda self, mask: ndi.binary_fill_holes(mask), "one_pass": _backend.Backend.fill_holes}
    ms: dict[str, list[float]] = {name: [] for name in versions}
    try:
        segment_nuclei(images[0])  # warm-up
        for _ in range(args.repeats):
            outputs = {}
            for name, fill in versions.items():
                _backend.Backend.fill_holes = fill  # type: ignore[method-assign]
                start = time.perf_counter()
                outputs[name] = [segment_nuclei(image) for image in images]
                ms[name].append(1000 * (time.perf_counter() - start) / len(images))
            assert all(np.array_equal(a, b) for a, b in zip(*outputs.values(), strict=True)), "labels differ"
    finally:
        _backend.Backend.fill_holes = versions["one_pass"]  # type: ignore[method-assign]
    medians = {name: float(np.median(v)) for name, v in ms.items()}
    ratio = medians["one_pass"] / medians["scipy_flood"]
    print(f"{'version':12s} " + " ".join(f"{'rep ' + str(i + 1):>7s}" for i in range(args.repeats)) + "  median")
    for name, values in ms.items():
        print(f"{name:12s} " + " ".join(f"{v:7.1f}" for v in values) + f"  {medians[name]:6.1f} ms/field")
    print(f"{len(images)} fields of 520x696, labels identical; one_pass / scipy_flood = {ratio:.2f}")
    RESULTS.write_text(json.dumps({"fields": len(images), "ms_per_field": ms, "median_ms": medians,
                                   "ratio": ratio}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
