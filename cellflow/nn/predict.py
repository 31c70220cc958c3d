"""Tiled inference: tile plan, blending window, batched tile predictor and a per-process model cache.

Why tiling does not change the result
-------------------------------------
A plane is cut into tiles whose *kept windows* (``tile`` pixels a side) start at multiples of
the network's down-sampling factor ``D``. Each tile is read with a *halo* of context on every
side (rounded up to a multiple of ``D``), predicted, and the halo is cut off. Both the tiles and
the whole-image reference (:func:`whole_image_probabilities`) read pixels outside the plane from
one and the same *virtual* image: the plane extended by mirroring (numpy's ``'reflect'``: the
edge pixel is not repeated, ``d c b | a b c d | c b a``; periodic for extensions longer than the
plane; a 1-pixel axis is repeated). With ``halo >= receptive_radius`` every kept output pixel
then reads exactly the same input pixels in a tile as in the whole image, and since both inputs
start at a multiple of ``D`` (tile origin minus halo; ``-halo`` for the whole image) the pooling
and up-sampling grids coincide too. With batch norm in eval mode (a fixed per-channel affine
map) each tile's kept prediction therefore equals the whole-image one up to float rounding
(different convolution sizes sum in different orders), and blending equal values with weights
normalised by their sum returns the same value. A halo below the radius gives up that guarantee
for speed; the smooth blending then hides the seams, but the result depends on the tiling.

Adjacent kept windows overlap by ``overlap`` pixels and are blended with a window (``'cosine'``,
``'linear'`` or ``'gaussian'``) whose weights have a floor of :data:`WINDOW_FLOOR` > 0, so that
every pixel, also at the plane's border where one tile covers it, has positive summed weight.

The model cache (:class:`ModelCache`, :data:`MODEL_CACHE`) holds one built model per checkpoint
SHA-256 and device in each worker process, with its batch norms folded into the convolutions
before them (:func:`fold_batch_norm`: in eval mode a batch norm is a per-channel affine map, so
this is the same function with one pass over memory less per layer; outputs change by float
rounding only, ~1e-7). On a CPU, channels-last tensors (``channels_last=True``) are also
markedly faster for these networks (oneDNN convolutions); ``benchmarks/tiled_vs_monai.py``
measures both.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellflow.nn.checkpoint import Checkpoint, file_sha256, load_checkpoint

__all__ = [
    "MODEL_CACHE",
    "WINDOWS",
    "WINDOW_FLOOR",
    "ModelCache",
    "TilePlan",
    "blend_window",
    "cached_model",
    "fold_batch_norm",
    "mirror_indices",
    "plan_tiles",
    "predict_plane",
    "set_worker_threads",
    "whole_image_probabilities",
]

#: Blending windows of :func:`blend_window`.
WINDOWS = ("cosine", "linear", "gaussian")
#: Smallest window weight: every pixel of a tile keeps a positive weight.
WINDOW_FLOOR = 1e-3
#: Standard deviation of the Gaussian window as a fraction of the tile side (as in MONAI).
_GAUSSIAN_SIGMA = 0.125


def _round_up(value: int, factor: int) -> int:
    return -(-value // factor) * factor


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------- geometry
def mirror_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Positions ``start .. stop - 1`` of a mirrored axis, mapped into ``0 .. size - 1``.

    The padding rule of tiles and whole-image inference alike: numpy's ``'reflect'`` (the edge
    pixel is not repeated), repeated periodically for positions far outside.

    Examples
    --------
    >>> mirror_indices(-3, 7, 4).tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    positions = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = positions % period
    return np.where(folded < size, folded, period - folded)


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one plane go (see :func:`plan_tiles`); all sizes in pixels.

    Attributes
    ----------
    shape : (int, int)
        Plane height and width.
    tile : (int, int)
        Kept window of every tile (multiples of ``downsampling``), at most the plane rounded up.
    halo : int
        Context read on each side of a kept window, a multiple of ``downsampling``.
    overlap : (int, int)
        Nominal overlap of adjacent kept windows (the last tile of an axis may overlap more).
    origins_y, origins_x : tuple of int
        First row and column of the kept windows, multiples of ``downsampling``.
    downsampling : int
    """

    shape: tuple[int, int]
    tile: tuple[int, int]
    halo: int
    overlap: tuple[int, int]
    origins_y: tuple[int, ...]
    origins_x: tuple[int, ...]
    downsampling: int

    @property
    def origins(self) -> list[tuple[int, int]]:
        """Every tile's (row, column) origin, row-major."""
        return [(y, x) for y in self.origins_y for x in self.origins_x]

    @property
    def input_shape(self) -> tuple[int, int]:
        """Height and width of a tile's input (kept window plus halo), multiples of ``downsampling``."""
        return self.tile[0] + 2 * self.halo, self.tile[1] + 2 * self.halo


def _axis_origins(size: int, tile: int, stride: int, factor: int) -> tuple[int, ...]:
    # The last window is pulled back to end at or just past the plane (its origin stays a
    # multiple of D), so that no tile is mostly padding.
    last = _round_up(max(size - tile, 0), factor)
    return (*range(0, last, stride), last)


def plan_tiles(
    shape: tuple[int, int], *, tile: int, halo: int, downsampling: int = 1, overlap: int | None = None
) -> TilePlan:
    """Lay out the tiles of a plane: kept windows at multiples of ``downsampling``, with a halo.

    Parameters
    ----------
    shape : (int, int)
        Plane height and width, >= 1.
    tile : int
        Side of a tile's kept window, >= 1; rounded up to a multiple of ``downsampling`` and cut
        to the plane (rounded up to ``downsampling``) along a shorter axis.
    halo : int
        Context on each side, >= 0; rounded up to a multiple of ``downsampling``. At least the
        model's ``receptive_radius`` for results that do not depend on the tiling.
    downsampling : int
        The model's total down-sampling factor ``D``.
    overlap : int, optional
        Overlap of adjacent kept windows (blended), rounded up to a multiple of ``D``. Default:
        twice the halo, but at most half the tile (rounded down to ``D``). Must be less than
        the tile.

    Returns
    -------
    TilePlan

    Raises
    ------
    ValueError
        For sizes out of range, or an overlap not less than the tile.

    Examples
    --------
    >>> plan = plan_tiles((100, 130), tile=48, halo=51, downsampling=8)
    >>> plan.halo, plan.tile, plan.overlap, plan.origins_y, plan.origins_x
    (56, (48, 48), (24, 24), (0, 24, 48, 56), (0, 24, 48, 72, 88))
    """
    height = _check_int("shape[0]", shape[0], 1)
    width = _check_int("shape[1]", shape[1], 1)
    factor = _check_int("downsampling", downsampling, 1)
    side = _round_up(_check_int("tile", tile, 1), factor)
    halo = _round_up(_check_int("halo", halo, 0), factor)
    tiles = (min(side, _round_up(height, factor)), min(side, _round_up(width, factor)))
    overlaps = []
    for kept in tiles:
        if overlap is None:
            wanted = min(2 * halo, (kept // 2) // factor * factor)
        else:
            wanted = _round_up(_check_int("overlap", overlap, 0), factor)
        if wanted >= kept and kept < side:  # a short axis has one tile: nothing to overlap
            wanted = 0
        if wanted >= kept:
            raise ValueError(f"overlap must be less than the tile {kept}, got {overlap!r} (rounded to {wanted})")
        overlaps.append(wanted)
    origins_y = _axis_origins(height, tiles[0], tiles[0] - overlaps[0], factor)
    origins_x = _axis_origins(width, tiles[1], tiles[1] - overlaps[1], factor)
    return TilePlan((height, width), tiles, halo, (overlaps[0], overlaps[1]), origins_y, origins_x, factor)


# ---------------------------------------------------------------------------- blending
def _profile(length: int, ramp: int, window: str) -> np.ndarray:
    """1-D weights of a kept window of ``length`` pixels whose edges ramp over ``ramp`` pixels."""
    u = np.arange(length, dtype=np.float64) + 0.5
    if window == "gaussian":
        centre, sigma = length / 2, _GAUSSIAN_SIGMA * length
        weights = np.exp(-0.5 * ((u - centre) / sigma) ** 2)
    elif ramp == 0:
        weights = np.ones(length)
    else:
        edge = np.clip(np.minimum(u, length - u) / ramp, 0.0, 1.0)  # 0 at the edge, 1 past the ramp
        weights = edge if window == "linear" else 0.5 - 0.5 * np.cos(np.pi * edge)
    return WINDOW_FLOOR + (1.0 - WINDOW_FLOOR) * weights


def blend_window(shape: tuple[int, int], *, overlap: tuple[int, int] = (0, 0), window: str = "cosine") -> np.ndarray:
    """Weights of one tile's kept window for blending: positive everywhere, 1 at the centre.

    Parameters
    ----------
    shape : (int, int)
        Kept window height and width.
    overlap : (int, int)
        Overlap with the neighbours along each axis: the cosine and linear windows ramp up over
        that many pixels from each edge (flat without overlap). The Gaussian ignores it.
    window : {'cosine', 'linear', 'gaussian'}
        Cosine (Hann) ramps, linear ramps, or a Gaussian with sigma ``tile / 8``.

    Returns
    -------
    (M, N) ndarray of float32
        Outer product of the row and column profiles, in ``[WINDOW_FLOOR, 1]``.

    Raises
    ------
    ValueError
        For an unknown window.

    Examples
    --------
    >>> w = blend_window((8, 8), overlap=(2, 2))
    >>> bool(w.min() > 0), float(w[4, 4])
    (True, 1.0)
    """
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS!r}, got {window!r}")
    rows = _profile(shape[0], overlap[0], window)
    cols = _profile(shape[1], overlap[1], window)
    return np.outer(rows, cols).astype(np.float32)


# ---------------------------------------------------------------------------- prediction
def _model_geometry(model: torch.nn.Module) -> tuple[int, int]:
    """(downsampling, receptive_radius) of a :class:`~cellflow.nn.models.SegmentationModel`."""
    try:
        return int(model.downsampling), int(model.receptive_radius)  # type: ignore[arg-type]
    except AttributeError:
        raise TypeError(f"model must be a cellflow SegmentationModel, got {type(model).__name__}") from None


def _check_image(model: torch.nn.Module, image: Any) -> np.ndarray:
    image = np.asarray(image)
    channels = getattr(model, "in_channels", None)
    if image.ndim != 3 or image.shape[0] != channels:
        raise ValueError(f"image must be (C, H, W) with C = the model's {channels} input channels, "
                         f"got shape {image.shape!r}")
    if image.dtype.kind != "f":
        raise TypeError(f"image must be a normalised float array, got dtype {image.dtype}")
    return image.astype(np.float32, copy=False)


def _crop(image: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """``image[:, rows, cols]`` of the mirrored virtual image (positions may lie outside)."""
    height, width = image.shape[-2:]
    return image[:, mirror_indices(*rows, height)[:, None], mirror_indices(*cols, width)[None, :]]


@dataclass(frozen=True)
class _Runner:
    """Runs batches through a model on a device, with the requested precision and layout."""

    model: torch.nn.Module
    device: torch.device
    amp: bool
    channels_last: bool

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        with torch.inference_mode(), autocast:
            probabilities = self.model.predict_proba(inputs)  # type: ignore[operator]
        return probabilities.float().cpu().numpy()


def _runner(model: torch.nn.Module, device: str | torch.device, amp: bool, channels_last: bool) -> _Runner:
    if model.training:
        raise ValueError("model must be in eval mode (model.eval()): batch statistics would make "
                         "the result depend on the tiling")
    return _Runner(model, torch.device(device), bool(amp), bool(channels_last))


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_plane(
    model: torch.nn.Module,
    image: Any,
    *,
    tile: int = 512,
    halo: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    window: str = "cosine",
    device: str | torch.device = "cpu",
    amp: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """Class probabilities of a plane, predicted tile by tile and blended.

    Parameters
    ----------
    model : SegmentationModel
        In eval mode, on ``device``.
    image : (C, H, W) ndarray of float
        Normalised image (:func:`~cellflow.nn.normalize.normalize`), C = ``model.in_channels``.
    tile : int
        Side of a tile's kept window (see :func:`plan_tiles`).
    halo : int, optional
        Context around each tile; default the model's ``receptive_radius`` (the smallest halo
        for which the result does not depend on the tiling).
    overlap : int, optional
        Overlap of adjacent kept windows; see :func:`plan_tiles`.
    batch_size : int
        Tiles per forward pass, >= 1.
    window : {'cosine', 'linear', 'gaussian'}
        Blending window (:func:`blend_window`).
    device : str or torch.device
        Where the model runs, e.g. ``'cpu'`` or ``'cuda:0'``.
    amp : bool
        Run under bfloat16 autocast (GPU speed; the result then differs from float32 by
        ~1e-2, beyond the tiling tolerance).
    channels_last : bool
        Feed channels-last tensors (faster convolutions on tensor-core GPUs); the model
        should be converted too (:meth:`ModelCache.get` does).

    Returns
    -------
    probabilities : (classes, H, W) ndarray of float32

    Raises
    ------
    ValueError
        Wrong image shape, model in training mode, or tile sizes out of range.
    TypeError
        A non-float image or a model that is not a cellflow network.

    Examples
    --------
    >>> from cellflow.nn.models import build_model
    >>> model = build_model("unet", in_channels=1, classes=2, width=2).eval()
    >>> image = np.random.default_rng(0).normal(size=(1, 40, 50)).astype(np.float32)
    >>> tiled = predict_plane(model, image, tile=24)
    >>> bool(np.abs(tiled - whole_image_probabilities(model, image)).max() < 1e-4)
    True
    """
    image = _check_image(model, image)
    factor, radius = _model_geometry(model)
    _check_int("batch_size", batch_size, 1)
    plan = plan_tiles(image.shape[1:], tile=tile, halo=radius if halo is None else halo,
                      downsampling=factor, overlap=overlap)
    weights = blend_window(plan.tile, overlap=plan.overlap, window=window)
    run = _runner(model, device, amp, channels_last)
    height, width = plan.shape
    classes = int(model.classes)  # type: ignore[arg-type]
    total = np.zeros((classes, height, width), np.float32)
    weight_sum = np.zeros((height, width), np.float32)
    (th, tw), h = plan.tile, plan.halo
    for batch in _batches(plan.origins, batch_size):
        inputs = np.stack([_crop(image, (y - h, y + th + h), (x - h, x + tw + h)) for y, x in batch])
        outputs = run(inputs)[:, :, h:h + th, h:h + tw]
        for (y, x), output in zip(batch, outputs):
            kept_h, kept_w = min(th, height - y), min(tw, width - x)  # the last tiles may pass the edge
            w = weights[:kept_h, :kept_w]
            total[:, y:y + kept_h, x:x + kept_w] += output[:, :kept_h, :kept_w] * w
            weight_sum[y:y + kept_h, x:x + kept_w] += w
    return total / weight_sum


def whole_image_probabilities(
    model: torch.nn.Module, image: Any, *, device: str | torch.device = "cpu", amp: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """Class probabilities of a plane in one forward pass: the reference of :func:`predict_plane`.

    The plane is mirrored (the padding rule of the tiles) by the model's receptive radius
    rounded up to its down-sampling factor ``D`` on every side, and further at the bottom and
    right to a multiple of ``D``, so that the input starts at a multiple of ``D`` like every
    tile's and every output pixel sees the virtual image the tiles see.

    Parameters
    ----------
    model, image, device, amp, channels_last
        As for :func:`predict_plane`.

    Returns
    -------
    probabilities : (classes, H, W) ndarray of float32
    """
    image = _check_image(model, image)
    factor, radius = _model_geometry(model)
    halo = _round_up(radius, factor)
    height, width = image.shape[1:]
    padded = _crop(image, (-halo, _round_up(height, factor) + halo), (-halo, _round_up(width, factor) + halo))
    output = _runner(model, device, amp, channels_last)(padded[None])[0]
    return np.ascontiguousarray(output[:, halo:halo + height, halo:halo + width])


# ---------------------------------------------------------------------------- per-process cache
def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an eval-mode model with each batch norm folded into the convolution before it.

    Every ``BatchNorm2d`` that directly follows a ``Conv2d`` or ``ConvTranspose2d`` in an
    ``nn.Sequential`` is folded into that convolution's weights and bias and replaced by
    ``nn.Identity`` (point-wise, so the model's geometry is unchanged). Other layers stay.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode (the running statistics are what is folded).

    Returns
    -------
    torch.nn.Module
        A new model in eval mode computing the same function up to float rounding.

    Raises
    ------
    ValueError
        The model is in training mode.

    Examples
    --------
    >>> from cellflow.nn.models import build_model
    >>> model = build_model("resunet", in_channels=1, classes=2, width=2).eval()
    >>> folded = fold_batch_norm(model)
    >>> x = torch.randn(1, 1, 32, 32)
    >>> bool((folded(x) - model(x)).abs().max() < 1e-5), folded.receptive_radius == model.receptive_radius
    (True, True)
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batch_norm needs a model in eval mode (model.eval())")
    folded = copy.deepcopy(model)
    for sequence in [m for m in folded.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(sequence) - 1):
            conv, norm = sequence[i], sequence[i + 1]
            if isinstance(conv, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and isinstance(norm, torch.nn.BatchNorm2d):
                sequence[i] = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, torch.nn.ConvTranspose2d))
                sequence[i + 1] = torch.nn.Identity()
    return folded.eval()


class ModelCache:
    """Built models of one process, keyed by checkpoint SHA-256, device and memory layout.

    Models are built in eval mode with their batch norms folded (:func:`fold_batch_norm`).

    Each worker process loads a checkpoint once and keeps the model on its device; tasks ask
    :meth:`get` for it. The file's hash is remembered per (path, size, mtime), so a task does
    not re-read an unchanged file. The cache is explicit state of its process: it is filled
    only by :meth:`get`, emptied by :meth:`clear`, and guarded by a lock (a worker runs several
    tasks at once in threads). ``loads`` counts the checkpoints built since the last clear.
    """

    def __init__(self) -> None:
        self._models: dict[tuple[str, str, bool], tuple[torch.nn.Module, Checkpoint]] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def __len__(self) -> int:
        return len(self._models)

    def _sha256(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(path)
        return self._hashes[key]

    def get(
        self, path: str | Path, *, device: str | torch.device = "cpu", channels_last: bool = False
    ) -> tuple[torch.nn.Module, Checkpoint]:
        """The model of checkpoint ``path`` (eval mode, on ``device``) and its :class:`Checkpoint`.

        Raises
        ------
        FileNotFoundError, CheckpointError
            As :func:`~cellflow.nn.checkpoint.load_checkpoint`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no model file at {path}")
        with self._lock:
            key = (self._sha256(path), str(torch.device(device)), bool(channels_last))
            if key not in self._models:
                checkpoint = load_checkpoint(path)
                module = fold_batch_norm(checkpoint.build(device=device))
                if channels_last:
                    module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                self._models[key] = (module, checkpoint)
                self.loads += 1
            return self._models[key]

    def clear(self) -> None:
        """Forget every model (frees their memory once no task holds them) and the load count."""
        with self._lock:
            self._models.clear()
            self._hashes.clear()
            self.loads = 0


#: The cache of this process (each dask worker process has its own).
MODEL_CACHE = ModelCache()


def cached_model(
    checkpoint_path: str | Path, *, device: str | torch.device = "cpu", channels_last: bool = False
) -> tuple[torch.nn.Module, Checkpoint]:
    """``MODEL_CACHE.get(checkpoint_path, ...)``: this process's model of a checkpoint (see :class:`ModelCache`)."""
    return MODEL_CACHE.get(checkpoint_path, device=device, channels_last=channels_last)


def set_worker_threads(threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads for this process and return the number set.

    A dask worker runs ``nthreads`` tasks at once, each calling into torch; with torch's
    default (one thread per core) for every task the cores are oversubscribed. Without
    ``threads``, inside a distributed worker the cores are shared out:
    ``max(1, cores // nthreads)``, ``cores`` the worker's share of the machine
    (``CELLFLOW_CORES``, set by a cellflow local cluster: cores / workers) or else the
    cores this process may run on; elsewhere torch's current setting is kept.

    Parameters
    ----------
    threads : int, optional
        Threads to use, >= 1.
    """
    if threads is None:
        try:
            from distributed import get_worker

            nthreads = get_worker().state.nthreads
        except (ImportError, ValueError, AttributeError):  # not in a distributed worker
            return torch.get_num_threads()
        # a local cluster shares the machine between its workers (cellflow.cluster sets CELLFLOW_CORES)
        cores = int(os.environ.get("CELLFLOW_CORES", 0)) or len(os.sched_getaffinity(0))
        threads = max(1, cores // max(1, nthreads))
    threads = _check_int("threads", threads, 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads

