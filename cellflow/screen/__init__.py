"""Screen data model: layout, schema, the zarr v3 store, ingest, synthetic screens, OME-Zarr."""

from __future__ import annotations

from cellflow.screen.ingest import (
    FilenamePattern,
    IngestReport,
    ingest,
    ingest_images,
    ingest_nuclei_pairs,
    lazy_images,
    scan,
)
from cellflow.screen.layout import DIMS_FIELD, DIMS_IMAGES, DIMS_LABELS, ScreenLayout
from cellflow.screen.ome import export_ome_zarr, import_ome_zarr
from cellflow.screen.schema import schema_problems, validate_dataset
from cellflow.screen.store import ChunkLedger, ChunkRecord, FieldKey, Screen, chunk_digest, open_screen
from cellflow.screen.synthetic import (
    SyntheticField,
    SyntheticSpec,
    synthesize_field,
    true_illumination,
    write_synthetic_screen,
)

__all__ = [
    "DIMS_FIELD",
    "DIMS_IMAGES",
    "DIMS_LABELS",
    "ChunkLedger",
    "ChunkRecord",
    "FieldKey",
    "FilenamePattern",
    "IngestReport",
    "Screen",
    "ScreenLayout",
    "SyntheticField",
    "SyntheticSpec",
    "chunk_digest",
    "export_ome_zarr",
    "import_ome_zarr",
    "ingest",
    "ingest_images",
    "ingest_nuclei_pairs",
    "lazy_images",
    "open_screen",
    "scan",
    "schema_problems",
    "synthesize_field",
    "true_illumination",
    "validate_dataset",
    "write_synthetic_screen",
]
