"""cellflow: deep-learning cell segmentation of microscopy screens, from a laptop to many GPUs."""

from __future__ import annotations

from cellflow.errors import CellflowError, IngestError, RegionError, SchemaError, SpecError, StoreExistsError
from cellflow.screen import Screen, ScreenLayout, open_screen

__version__ = "0.2.0"

__all__ = [
    "CellflowError",
    "IngestError",
    "RegionError",
    "SchemaError",
    "Screen",
    "ScreenLayout",
    "SpecError",
    "StoreExistsError",
    "__version__",
    "open_screen",
]
