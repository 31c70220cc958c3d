"""Auto-label training (Sadanandan et al. 2017): a bright-field network taught by the stains.

The paper's idea: segment the nuclei classically in the fluorescence stains, use those
labels to train a network that sees only the bright-field planes, and the network then
segments nuclei without any stain. The issue's bar: on a synthetic screen, the network
trained on the auto labels reaches >= 90 % of the average F1 of the same network trained on
the synthetic truth, both scored against the truth on wells used neither for training nor
for validation.

Steps, all on one seeded synthetic plate (channels DNA, Cyto, BF; 3 z planes):

1. ``run_spec`` with the stages ``illumination`` and ``autolabel`` (``diameter_um: 16``) on
   the threaded scheduler writes ``labels_nuclei`` from the DNA and Cyto stains.
2. The same :class:`~cellflow.nn.train.TrainParams` (same seed, same training wells), input
   ``BF`` with ``z='all'`` (the 3 planes as 3 input channels), 3 classes, train twice:
   (a) ``target='labels_nuclei'`` and (b) ``target='truth_nuclei'``. Each validates (early
   stopping, checkpoint choice) on one well against *its own target*: (a) never sees the
   truth, as in the paper, where none exists at training time.
3. Each checkpoint predicts the test wells through :func:`~cellflow.graph.predict.build_predict`
   (tiled, blended), :func:`~cellflow.ops.postprocess.probabilities_to_labels` makes instances,
   and :func:`~cellflow.metrics.score_field` scores them against ``truth_nuclei``. Average F1 =
   mean over IoU 0.50..0.90, then mean over the test fields. The classical auto labels are
   scored on the same fields for context.

``--input cellpainting`` runs the same comparison for the paper's other case: the plate has
DNA and the four other Cell Painting stains (ER, RNA, AGP, Mito; one plane), the auto labels
come from DNA alone, and the network sees only the four other stains (planes averaged).

Prints a table and writes ``benchmarks/results/autotrain_brightfield.json`` (``--out`` to
write elsewhere, e.g. ``benchmarks/results/autotrain_cellpainting.json``).

Usage::

    python benchmarks/autotrain_brightfield.py [--epochs 16] [--steps 50] [--width 16] [--levels 4]
           [--size 256] [--wells 8] [--train-wells 4] [--sites 2] [--threads 1] [--out PATH]
           [--nuclei JSON] [--seeds 2017 2018 ...] [--jobs 2] [--input {brightfield,cellpainting}]

With ``--seeds`` the whole measurement (plate, auto labels, both trainings) repeats per seed and
the table ends with the per-seed ratios and their mean: one seed's ratio moves by a few points
with the plate drawn, so the bar is judged on the mean.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch

from cellflow.graph.predict import PredictParams, build_predict
from cellflow.metrics import score_field
from cellflow.nn.augment import AugmentParams
from cellflow.nn.train import TrainParams, TrainResult, train
from cellflow.ops.postprocess import probabilities_to_labels
from cellflow.pipeline import parse_spec, run_spec
from cellflow.screen.store import FieldKey, Screen

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "autotrain_brightfield.json"

#: What the network sees, per ``--input``: the plate's channels and planes, the network's input
#: channels and how their planes are used. The auto labels always come from DNA (+ Cyto).
INPUTS: dict[str, dict[str, Any]] = {
    "brightfield": {"plate": ["DNA", "Cyto", "BF"], "n_z": 3, "channels": ("BF",), "z": "all"},
    "cellpainting": {"plate": ["DNA", "ER", "RNA", "AGP", "Mito"], "n_z": 1,
                     "channels": ("ER", "RNA", "AGP", "Mito"), "z": "mean"},
}


@dataclass(frozen=True)
class Split:
    """Disjoint wells: the networks learn on ``train``, stop early on ``validation``, are scored on ``test``."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        wells = [*self.train, *self.validation, *self.test]
        if len(set(wells)) != len(wells) or not (self.train and self.validation and self.test):
            raise ValueError(f"Split needs non-empty, disjoint train/validation/test wells, got {self!r}")

    @property
    def wells(self) -> tuple[str, ...]:
        return (*self.train, *self.validation, *self.test)


def classical_labels(store: Path, tables: Path, *, wells: Sequence[str], sites: int, shape_yx: tuple[int, int],
                     nuclei_per_field: int, seed: int, nuclei: dict[str, Any] | None = None,
                     modality: str = "brightfield") -> tuple[Screen, float]:
    """Synthesise the plate and auto-label it from the stains through ``run_spec``; (screen, seconds)."""
    spec = parse_spec({
        "name": "autotrain-brightfield",
        "input": {"store": str(store), "reuse": False,
                  "synthetic": {"wells": list(wells), "sites": sites, "shape_yx": list(shape_yx),
                                "channels": INPUTS[modality]["plate"], "n_z": INPUTS[modality]["n_z"],
                                "nuclei_per_field": nuclei_per_field, "seed": seed}},
        "stages": {"illumination": {},
                   "autolabel": {"nuclear_channel": "DNA", "diameter_um": 16,
                                 "cytoplasm_channel": "Cyto" if "Cyto" in INPUTS[modality]["plate"] else None,
                                 "nuclei": dict(nuclei or {})}},
        "output": {"tables": str(tables)},
        "cluster": {"kind": "threads"},
    })
    started = time.perf_counter()
    result = run_spec(spec, progress=False)
    return result.screen, time.perf_counter() - started


def base_params(split: Split, *, epochs: int, steps: int, width: int, levels: int, seed: int,
                modality: str = "brightfield") -> TrainParams:
    """The shared training settings; only ``target``/``truth`` differ between the two runs."""
    return TrainParams(
        model="resunet", model_options={"width": width, "levels": levels}, classes=3,
        channels=INPUTS[modality]["channels"], z=INPUTS[modality]["z"],
        augment=AugmentParams(p_elastic=0.0), crop_size=128, batch_size=4, optimizer="adam",
        learning_rate=2e-3, schedule="cosine", epochs=epochs, steps_per_epoch=steps, patience=None,
        train_wells=split.train, validation_wells=split.validation, seed=seed,
    )


def held_out_fields(screen: Screen, wells: Sequence[str]) -> list[FieldKey]:
    """The fields of ``wells`` (the test wells: neither trained nor validated on)."""
    return [key for key in screen.fields() if key.well in wells]


def predicted_labels(screen: Screen, checkpoint: Path, fields: Sequence[FieldKey],
                     params: TrainParams, threads: int) -> dict[FieldKey, np.ndarray]:
    """Predict ``fields`` with the checkpoint (written to ``probabilities``), then instances per field."""
    graph = build_predict(screen, PredictParams(model=str(checkpoint), tile=256, z=params.z, threads=threads),
                          fields=fields)
    graph.create_outputs(screen)
    dask.compute(*graph.tasks, scheduler="synchronous")
    return {key: probabilities_to_labels(screen.read("probabilities", **key._asdict()), params.postprocess)
            for key in fields}


def mean_f1(screen: Screen, labels: dict[FieldKey, np.ndarray]) -> dict[str, Any]:
    """Average F1 (mean over IoU 0.50..0.90, then over fields) against ``truth_nuclei``; per field too."""
    scores = [score_field(screen.read("truth_nuclei", **key._asdict()), pred) for key, pred in labels.items()]
    return {"f1_mean": float(np.mean([s.f1_mean for s in scores])),
            "per_field": [round(float(s.f1_mean), 4) for s in scores]}


def _run(result: TrainResult, f1: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {"test": f1, "best_epoch": result.best_epoch, "best_val_f1": result.best_f1,
            "initial_val_f1": result.initial_f1, "val_f1": [round(r.val_f1, 4) for r in result.history],
            "loss": [round(r.loss, 4) for r in result.history],
            "train_wells": _wells(result.train_fields), "validation_wells": _wells(result.validation_fields),
            "train_fields": len(result.train_fields), "validation_fields": len(result.validation_fields),
            "train_seconds": round(seconds, 1)}


@dataclass(frozen=True)
class Settings:
    """The plate, the split and the training budget (the command-line options)."""

    wells: int = 8
    train_wells: int = 4
    sites: int = 2
    size: int = 256
    nuclei_per_field: int = 400
    epochs: int = 16
    steps: int = 50
    width: int = 16
    levels: int = 4
    seed: int = 2017
    threads: int = 1
    modality: str = "brightfield"

    def split(self) -> Split:
        """Wells A01.. : the first ``train_wells`` train, the next one validates, the rest test."""
        wells = tuple(f"A{i:02d}" for i in range(1, self.wells + 1))
        return Split(train=wells[: self.train_wells], validation=wells[self.train_wells: self.train_wells + 1],
                     test=wells[self.train_wells + 1:])


def _wells(records: Sequence[Sequence[Any]]) -> list[str]:
    return sorted({str(record[2]) for record in records})  # (screen_id, plate, well, site, t)


def compare(workdir: Path, settings: Settings, *, ignore_area_ratio: float | None = None,
            ignore_solidity: float | None = None, nuclei: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole measurement in ``workdir``; returns the JSON-able result.

    ``ignore_*``: the auto-label run leaves suspect auto labels (likely merges) out of its loss
    (:func:`cellflow.nn.targets.suspect_objects`); the truth run never does. ``nuclei``: the
    auto-label stage's nuclei settings (:class:`~cellflow.ops.autolabel.NucleiParams` fields),
    as a user would set them for their stain; tune them on another plate, never on this one.
    """
    split = settings.split()
    screen, classical_s = classical_labels(
        workdir / "plate.zarr", workdir / "tables", wells=split.wells, sites=settings.sites,
        shape_yx=(settings.size, settings.size), nuclei_per_field=settings.nuclei_per_field, seed=settings.seed,
        nuclei=nuclei, modality=settings.modality)
    fields = held_out_fields(screen, split.test)
    base = base_params(split, epochs=settings.epochs, steps=settings.steps, width=settings.width,
                       levels=settings.levels, seed=settings.seed, modality=settings.modality)
    runs: dict[str, dict[str, Any]] = {}
    # (a) the paper's setting: no truth at training time, so it validates on its own auto labels.
    auto = replace(base, target="labels_nuclei", truth="labels_nuclei", ignore_area_ratio=ignore_area_ratio,
                   ignore_solidity=ignore_solidity)
    for name, params in (("auto", auto),
                         ("truth", replace(base, target="truth_nuclei", truth="truth_nuclei"))):
        started = time.perf_counter()
        result = train(screen, params, out=workdir / name)
        seconds = time.perf_counter() - started
        labels = predicted_labels(screen, result.checkpoint, fields, params, settings.threads)
        runs[name] = _run(result, mean_f1(screen, labels), seconds)
    classical = mean_f1(screen, {key: screen.read("labels_nuclei", **key._asdict()) for key in fields})
    f1_auto, f1_truth = runs["auto"]["test"]["f1_mean"], runs["truth"]["test"]["f1_mean"]
    return {
        "benchmark": "autotrain_brightfield",
        "settings": asdict(settings),
        "split": {"train": split.train, "validation": split.validation, "test": split.test,
                  "test_wells_scored": sorted({key.well for key in fields}), "test_fields": len(fields)},
        "classical_seconds": round(classical_s, 1),
        "params": base.to_dict(), "autolabel_nuclei": dict(nuclei or {}),
        "ignore_area_ratio": ignore_area_ratio, "ignore_solidity": ignore_solidity,
        "f1_auto": f1_auto, "f1_truth": f1_truth,
        "ratio": f1_auto / f1_truth if f1_truth > 0 else None,
        "f1_classical_auto_labels": classical["f1_mean"], "classical_per_field": classical["per_field"],
        "runs": runs,
    }


def print_report(result: dict[str, Any]) -> None:
    split = result["split"]
    title = {"brightfield": "Bright-field", "cellpainting": "Cell Painting (ER, RNA, AGP, Mito)"}
    what = title[result["settings"].get("modality", "brightfield")]
    print(f"\n{what} nuclei, trained on wells {', '.join(split['train'])}, validated on "
          f"{', '.join(split['validation'])}, scored against truth_nuclei on {', '.join(split['test'])} "
          f"({split['test_fields']} fields)")
    print(f"{'':<40} {'test avgF1':>10} {'val F1':>7} {'best ep':>7} {'train s':>8}")
    for name, label in (("auto", "(a) target labels_nuclei (auto, stains)"),
                        ("truth", "(b) target truth_nuclei")):
        run = result["runs"][name]
        print(f"{label:<40} {run['test']['f1_mean']:>10.3f} {run['best_val_f1']:>7.3f} "
              f"{run['best_epoch']:>7} {run['train_seconds']:>8.1f}")
    print(f"{'classical auto labels themselves':<40} {result['f1_classical_auto_labels']:>10.3f}")
    ratio = "n/a (F1_truth is 0)" if result["ratio"] is None else f"{result['ratio']:.3f}"
    print(f"\nratio F1_auto / F1_truth = {ratio}  (bar >= 0.90)")


def main() -> None:
    default = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    helps = {"wells": "wells A01.. (train wells, then 1 validation well, the rest test)",
             "size": "field side in pixels", "nuclei_per_field": "per 1024 x 1024 (scaled by the area)",
             "width": "resunet width", "levels": "resunet levels", "threads": "torch CPU threads"}
    for name, value in asdict(default).items():
        if name != "modality":
            parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value, help=helps.get(name))
    parser.add_argument("--input", dest="modality", choices=sorted(INPUTS), default=default.modality,
                        help="what the network sees: the 3-plane bright-field stack (default) or the four "
                             "non-nuclear Cell Painting channels")
    parser.add_argument("--ignore-area-ratio", type=float, default=None,
                        help="auto run: leave auto labels larger than this x the median area out of the loss")
    parser.add_argument("--ignore-solidity", type=float, default=None,
                        help="auto run: leave auto labels less solid than this out of the loss")
    parser.add_argument("--nuclei", type=json.loads, default=None, metavar="JSON",
                        help='auto-label nuclei settings, e.g. \'{"smoothing_px": 0.0}\' (tune on another seed)')
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="repeat the whole measurement (plate and training) for each seed; "
                             "report each and the mean ratio (default: --seed once)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds measured at once (processes)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    settings = Settings(**{name: getattr(args, name) for name in asdict(default)})
    seeds = args.seeds or [settings.seed]
    options = {"ignore_area_ratio": args.ignore_area_ratio, "ignore_solidity": args.ignore_solidity,
               "nuclei": args.nuclei}
    started = time.perf_counter()
    jobs = [replace(settings, seed=seed) for seed in seeds]
    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(args.jobs, len(jobs))) as pool:
            results = list(pool.map(partial(measure, **options), jobs))
    else:
        results = [measure(job, **options) for job in jobs]
    for result in results:
        print_report(result)
    if len(results) == 1:
        summary = results[0]
    else:
        summary = summarise_seeds(results)
        print_seed_summary(summary)
    summary.update(seconds=round(time.perf_counter() - started, 1), python=platform.python_version(),
                   torch=torch.__version__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {args.out} ({summary['seconds']} s)")


def measure(settings: Settings, **options: Any) -> dict[str, Any]:
    """One whole measurement (its own plate, its own training) in a temporary folder."""
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cellflow-autotrain-") as tmp:
        result = compare(Path(tmp), settings, **options)
    result["seed_seconds"] = round(time.perf_counter() - started, 1)
    return result


def summarise_seeds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed ratios and their mean; the ratio of the mean F1s too (pooled over seeds)."""
    auto = np.array([r["f1_auto"] for r in results])
    truth = np.array([r["f1_truth"] for r in results])
    ratios = np.array([r["ratio"] if r["ratio"] is not None else np.nan for r in results])
    return {
        "benchmark": "autotrain_brightfield",
        "seeds": [r["settings"]["seed"] for r in results],
        "per_seed": [{"seed": r["settings"]["seed"], "f1_auto": r["f1_auto"], "f1_truth": r["f1_truth"],
                      "ratio": r["ratio"], "f1_classical_auto_labels": r["f1_classical_auto_labels"]}
                     for r in results],
        "f1_auto_mean": float(auto.mean()), "f1_truth_mean": float(truth.mean()),
        "ratio_mean": float(np.nanmean(ratios)), "ratio_min": float(np.nanmin(ratios)),
        "ratio_max": float(np.nanmax(ratios)),
        "ratio_of_means": float(auto.mean() / truth.mean()) if truth.mean() > 0 else None,
        "runs_by_seed": list(results),
    }


def print_seed_summary(summary: dict[str, Any]) -> None:
    print(f"\n{'seed':>6} {'F1 auto':>8} {'F1 truth':>8} {'ratio':>6} {'auto labels':>11}")
    for row in summary["per_seed"]:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.3f}"
        print(f"{row['seed']:>6} {row['f1_auto']:>8.3f} {row['f1_truth']:>8.3f} {ratio:>6} "
              f"{row['f1_classical_auto_labels']:>11.3f}")
    print(f"{'mean':>6} {summary['f1_auto_mean']:>8.3f} {summary['f1_truth_mean']:>8.3f} "
          f"{summary['ratio_mean']:>6.3f}   (min {summary['ratio_min']:.3f}, max {summary['ratio_max']:.3f}; "
          f"ratio of the means {summary['ratio_of_means']:.3f}; bar >= 0.90)")


if __name__ == "__main__":
    main()
