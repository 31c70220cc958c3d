"""Peak memory of predicting / segmenting one large plane stored chunked in zarr (default 16,384²).

The plane (float32, already normalised: a smooth deterministic pattern computed from the
global pixel coordinates, so every chunk is generated alone) is written chunk by chunk
(``--chunk`` pixels a side) into a zarr v3 array. Then, with the model (``resunet`` width 8,
seeded, untrained) loaded once per process (:data:`~cellflow.nn.predict.MODEL_CACHE`):

* ``--mode segment`` (default): :func:`~cellflow.graph.stitch.segment_large` over
  ``dask.array.from_zarr`` with the kernel "tiled prediction (:func:`predict_plane`, tiles
  of ``--tile``) then markers + watershed (:func:`probabilities_to_labels`)", halo
  ``--halo``; the stitched labels are stored chunk by chunk to a zarr array (``da.store``).
* ``--mode predict``: one task per chunk reads the chunk plus the network's halo from the
  input array, predicts it tile by tile and writes its class probabilities (float32) into
  the output array's chunk.

Memory is bounded by the chunk and tile sizes, not the plane: the stitching's owned labels
wait for the plane-wide resolution in a scratch folder beside the output (``segment_large(...,
scratch=)``), and only the thin halo strips stay in memory.
The run happens with ``--workers 0`` in this process (dask threads
scheduler, ``--threads`` threads) or on a LocalCluster of ``--workers`` single-threaded
worker processes. Memory is sampled with psutil every 50 ms for this process and all its
children; the table gives the peak RSS of this process, of the largest worker, and of the
sum, plus ``getrusage`` maxima (``RUSAGE_SELF``; ``RUSAGE_CHILDREN`` counts children that
have ended). Target: peak total <= 2 GB.

Prints a table and writes ``benchmarks/results/large_plane_rss.json``.

Usage::

    python benchmarks/large_plane_rss.py [--size 16384] [--chunk 1024] [--tile 512] [--halo 64]
                                         [--mode segment|predict] [--workers 0] [--threads 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
import torch
import zarr

from cellflow.nn.predict import cached_model, predict_plane, set_worker_threads
from cellflow.ops.postprocess import PostprocessParams, probabilities_to_labels

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "large_plane_rss.json"
MIB = 2**20


# ---------------------------------------------------------------------------- data
def pattern(rows: slice, cols: slice) -> np.ndarray:
    """The plane's pixels ``[rows, cols]``: round blobs on a jittered lattice, float32, ~unit scale."""
    y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    x = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]
    blobs = np.sin(2 * np.pi * (y + 5 * np.sin(x / 97)) / 31) * np.sin(2 * np.pi * (x + 5 * np.cos(y / 89)) / 29)
    return (np.maximum(blobs, 0) * 3 - 0.5 + 0.2 * np.sin((x + y) / 7)).astype(np.float32)


def write_plane(path: Path, size: int, chunk: int) -> zarr.Array:
    """The plane as a zarr v3 array, written one chunk at a time."""
    array = zarr.create_array(path, shape=(size, size), chunks=(chunk, chunk), dtype="float32")
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            rows, cols = slice(y, min(y + chunk, size)), slice(x, min(x + chunk, size))
            array[rows, cols] = pattern(rows, cols)
    return array


def make_model(path: Path) -> str:
    from cellflow.nn.checkpoint import save_checkpoint
    from cellflow.nn.models import build_model
    from cellflow.nn.normalize import Normalization

    torch.manual_seed(0)
    model = build_model("resunet", in_channels=1, classes=3, width=8)
    save_checkpoint(path, model, normalization=Normalization("percentile"), channels=["DNA"],
                    class_names=["background", "interior", "boundary"])
    return str(path)


# ---------------------------------------------------------------------------- kernels
def probabilities(block: np.ndarray, model_path: str, tile: int) -> np.ndarray:
    """Class probabilities of a normalised plane block, with this process's cached model."""
    set_worker_threads(1)
    model, _ = cached_model(model_path)
    return predict_plane(model, block[None].astype(np.float32, copy=False), tile=tile, batch_size=1)


def segment_block(block: np.ndarray, model_path: str, tile: int) -> np.ndarray:
    """Kernel of segment_large: tiled prediction, then markers + watershed."""
    return probabilities_to_labels(probabilities(block, model_path, tile), PostprocessParams())


class SegmentKernel:
    """``segment(block)`` for segment_large, picklable for worker processes."""

    def __init__(self, model_path: str, tile: int) -> None:
        self.model_path, self.tile = model_path, tile

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return segment_block(block, self.model_path, self.tile)


def predict_chunk(source: str, target: str, core: tuple[int, int, int, int], halo: int, model_path: str,
                  tile: int) -> None:
    """Predict one chunk with ``halo`` pixels of context read from ``source``; write it into ``target``."""
    y0, y1, x0, x1 = core
    image = zarr.open_array(source, mode="r")
    size_y, size_x = image.shape
    ey0, ey1, ex0, ex1 = max(0, y0 - halo), min(size_y, y1 + halo), max(0, x0 - halo), min(size_x, x1 + halo)
    block = probabilities(np.asarray(image[ey0:ey1, ex0:ex1]), model_path, tile)
    zarr.open_array(target, mode="r+")[:, y0:y1, x0:x1] = block[:, y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]


# ---------------------------------------------------------------------------- graphs
def segment_graph(source: Path, target: Path, model_path: str, tile: int, halo: int) -> Any:
    from cellflow.graph.stitch import segment_large

    image = da.from_zarr(str(source))
    scratch = target.parent / "scratch"  # owned labels wait here for the resolution, not in memory
    scratch.mkdir(exist_ok=True)
    labels = segment_large(image, SegmentKernel(model_path, tile), halo=halo, scratch=scratch)
    out = zarr.create_array(target, shape=image.shape, chunks=image.chunksize, dtype="uint32")
    return da.store(labels, out, lock=False, compute=False)  # type: ignore[arg-type]


def predict_graph(source: Path, target: Path, model_path: str, tile: int, chunk: int) -> Any:
    size = zarr.open_array(source, mode="r").shape[0]
    zarr.create_array(target, shape=(3, size, size), chunks=(3, chunk, chunk), dtype="float32")
    model, _ = cached_model(model_path)
    factor, radius = int(model.downsampling), int(model.receptive_radius)  # type: ignore[arg-type]
    halo = -(-radius // factor) * factor  # the context a chunk needs for exact tiling
    tasks = [dask.delayed(predict_chunk)(str(source), str(target), (y, min(y + chunk, size), x, min(x + chunk, size)),
                                         halo, model_path, tile)
             for y in range(0, size, chunk) for x in range(0, size, chunk)]
    return tasks


# ---------------------------------------------------------------------------- measuring
class RssSampler:
    """Peak RSS of this process, of each child process, and of their sum, sampled in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_self = self.peak_child = self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        rss_self = me.memory_info().rss
        children = 0
        for child in me.children(recursive=True):
            try:
                rss = child.memory_info().rss
            except psutil.Error:  # ended between listing and reading
                continue
            children += rss
            self.peak_child = max(self.peak_child, rss)
        self.peak_self = max(self.peak_self, rss_self)
        self.peak_total = max(self.peak_total, rss_self + children)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@contextmanager
def scheduler(workers: int, threads: int) -> Iterator[Any]:
    """A distributed client on ``workers`` single-threaded processes, or None (threads here)."""
    if workers == 0:
        with dask.config.set(scheduler="threads", num_workers=threads):
            yield None
        return
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      host="127.0.0.1", memory_limit=0) as cluster, Client(cluster) as client:
        yield client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="plane side, pixels")
    parser.add_argument("--chunk", type=int, default=1024, help="zarr chunk side = unit of work")
    parser.add_argument("--tile", type=int, default=512, help="network tile (kept window)")
    parser.add_argument("--halo", type=int, default=64, help="segment_large halo (>= 2 object diameters)")
    parser.add_argument("--mode", choices=["segment", "predict"], default="segment")
    parser.add_argument("--workers", type=int, default=0, help="worker processes; 0: threads in this process")
    parser.add_argument("--threads", type=int, default=1, help="threads of the in-process scheduler")
    parser.add_argument("--workdir", type=Path, default=None, help="where the zarr arrays go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="cellflow-rss-", dir=args.workdir) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        write_plane(root / "plane.zarr", args.size, args.chunk)
        written = time.perf_counter() - started
        model_path = make_model(root / "model.pt")
        with scheduler(args.workers, args.threads) as client, RssSampler() as rss:
            started = time.perf_counter()
            if args.mode == "segment":
                graph = segment_graph(root / "plane.zarr", root / "out.zarr", model_path, args.tile, args.halo)
            else:
                graph = predict_graph(root / "plane.zarr", root / "out.zarr", model_path, args.tile, args.chunk)
            if client is None:
                dask.compute(graph)
            else:
                client.gather(client.compute(graph))
            seconds = time.perf_counter() - started
        check = zarr.open_array(root / "out.zarr", mode="r")
        corner = np.asarray(check[..., : min(64, args.size), : min(64, args.size)])
        usage_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        usage_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result = {
        "benchmark": "large_plane_rss", "mode": args.mode, "size": args.size, "chunk": args.chunk, "tile": args.tile,
        "halo": args.halo, "workers": args.workers, "threads": args.threads,
        "plane_mib": round(args.size**2 * 4 / MIB, 1), "write_seconds": round(written, 2),
        "run_seconds": round(seconds, 2),
        "peak_rss_mib": {"self": round(rss.peak_self / MIB, 1), "largest_child": round(rss.peak_child / MIB, 1),
                         "total": round(rss.peak_total / MIB, 1)},
        "getrusage_maxrss_mib": {"self": round(usage_self / MIB, 1), "children": round(usage_children / MIB, 1)},
        "output_corner_nonzero": bool(np.any(corner)),
        "target_total_mib": 2048, "within_target": rss.peak_total <= 2048 * MIB,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "dask": dask.__version__, "zarr": zarr.__version__, "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
    }
    print(f"{args.mode} of a {args.size}x{args.size} float32 plane ({result['plane_mib']} MiB), chunks {args.chunk}, "
          f"tile {args.tile}, halo {args.halo}, " + (f"{args.workers} worker processes" if args.workers else
                                                     f"{args.threads} thread(s) in-process"))
    print(f"{'peak RSS MiB: self':>20} {'largest worker':>15} {'total':>8} {'ru_maxrss self':>15} {'run s':>8}")
    peak = result["peak_rss_mib"]
    print(f"{peak['self']:>20} {peak['largest_child']:>15} {peak['total']:>8} "
          f"{result['getrusage_maxrss_mib']['self']:>15} {seconds:>8.1f}")
    print(f"within 2 GB: {result['within_target']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
