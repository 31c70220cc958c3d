"""Screen data model: layout, schema, the zarr v3 store, ingest and synthetic screens."""

from __future__ import annotations

from cellflow.screen.layout import DIMS_FIELD, DIMS_IMAGES, DIMS_LABELS, ScreenLayout
from cellflow.screen.schema import schema_problems, validate_dataset
from cellflow.screen.store import ChunkLedger, ChunkRecord, FieldKey, Screen, chunk_digest, open_screen

__all__ = [
    "DIMS_FIELD",
    "DIMS_IMAGES",
    "DIMS_LABELS",
    "ChunkLedger",
    "ChunkRecord",
    "FieldKey",
    "Screen",
    "ScreenLayout",
    "chunk_digest",
    "open_screen",
    "schema_problems",
    "validate_dataset",
]
