"""Checkpoints: weights plus everything needed to use them identically at inference.

One file, written with ``torch.save`` and read with ``torch.load(weights_only=True)``
(no pickled code is ever executed). It holds a plain dict::

    {"format": "cellflow-checkpoint", "version": 1,
     "model": ModelConfig.to_dict(),            # architecture, channels, classes, options
     "normalization": Normalization.to_dict(),  # applied before every forward pass
     "channels": ["DNA"],                       # input channel names, in order
     "class_names": ["background", "interior", "boundary"],
     "state_dict": {...tensors...},
     "metadata": {...JSON-able...}}             # data hashes, scores, training command

The file's SHA-256 identifies it (workers cache one loaded model per hash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cellflow._files import write_atomic
from cellflow.errors import CellflowError
from cellflow.nn.models import ModelConfig
from cellflow.nn.normalize import Normalization

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "file_sha256",
    "load_checkpoint",
    "save_checkpoint",
    "stack_channel_names",
    "store_channel",
]

FORMAT = "cellflow-checkpoint"
VERSION = 1


class CheckpointError(CellflowError, ValueError):
    """A model file cannot be used: unreadable, not a cellflow checkpoint, or inconsistent."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint (weights on the CPU)."""

    model: ModelConfig
    normalization: Normalization
    channels: tuple[str, ...]
    class_names: tuple[str, ...]
    state_dict: Mapping[str, torch.Tensor]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    sha256: str = ""

    def build(self, *, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The model with these weights, in eval mode, on ``device``."""
        module = self.model.build()
        module.load_state_dict(dict(self.state_dict))
        return module.to(device).eval()


def stack_channel_names(channels: Sequence[str], planes: int) -> list[str]:
    """Input names when z planes are stacked as channels: ``['BF@z0', 'BF@z1', ...]``.

    >>> stack_channel_names(["BF"], 3)
    ['BF@z0', 'BF@z1', 'BF@z2']
    """
    return [f"{c}@z{i}" for c in channels for i in range(planes)]


def store_channel(name: str) -> str:
    """The store channel an input name reads (``'BF@z2'`` -> ``'BF'``; plain names unchanged).

    >>> store_channel("BF@z2"), store_channel("DNA")
    ('BF', 'DNA')
    """
    base, sep, plane = name.rpartition("@z")
    return base if sep and plane.isdigit() else name


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    *,
    normalization: Normalization,
    channels: Sequence[str],
    class_names: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Write a checkpoint; returns its SHA-256.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    CheckpointError
        The channel/class counts disagree with the model, or metadata is not JSON-able.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace the model file")
    config: ModelConfig = model.config  # type: ignore[assignment]
    if len(channels) != config.in_channels or len(class_names) != config.classes:
        raise CheckpointError(
            f"checkpoint: {len(channels)} channel names and {len(class_names)} class names given for a model "
            f"with {config.in_channels} input channels and {config.classes} classes"
        )
    try:
        meta = json.loads(json.dumps(dict(metadata or {})))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint metadata must be JSON-able: {error}") from None
    payload = {
        "format": FORMAT, "version": VERSION, "model": config.to_dict(),
        "normalization": normalization.to_dict(), "channels": list(channels), "class_names": list(class_names),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "metadata": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda partial: torch.save(payload, partial))  # a reader never sees half a file
    return file_sha256(path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint safely (``weights_only=True``) and check its structure.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        Unreadable, not a cellflow checkpoint, a newer version, or inconsistent.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path} is not a readable model file: {type(error).__name__}: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cellflow checkpoint (no format {FORMAT!r})")
    if payload.get("version") != VERSION:
        found = payload.get("version")
        raise CheckpointError(f"{path} has checkpoint version {found!r}; this cellflow reads {VERSION}")
    missing = [k for k in ("model", "normalization", "channels", "class_names", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    try:
        config = ModelConfig.from_dict(payload["model"])
        norm = Normalization.from_dict(payload["normalization"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    ckpt = Checkpoint(
        model=config, normalization=norm, channels=tuple(payload["channels"]),
        class_names=tuple(payload["class_names"]), state_dict=payload["state_dict"],
        metadata=payload.get("metadata", {}), sha256=file_sha256(path),
    )
    if len(ckpt.channels) != config.in_channels or len(ckpt.class_names) != config.classes:
        raise CheckpointError(
            f"{path}: channel/class names do not match the model's {config.in_channels}/{config.classes}"
        )
    return ckpt
