"""Ingest folders of TIFF/PNG microscopy images into a screen store.

Three steps, each usable alone:

1. :class:`FilenamePattern` maps file names to coordinates (plate, well, site, t,
   channel, z); :func:`scan` applies it to a folder and returns a validated
   :class:`FileTable` (one row per file, duplicates refused).
2. :func:`lazy_images` views the table as one dask-backed
   ``(plate, well, site, t, c, z, y, x)`` DataArray; only one file header is read.
3. :func:`ingest` creates a store from the table and writes every field in parallel,
   one dask task per field, with any dask scheduler (threads, processes, a
   ``distributed.Client``). A bad file (truncated, wrong size, wrong number of pages,
   NaN only, RGB without ``rgb=``...) is named in the :class:`IngestReport` with its
   reason; its field is not written, not acquired and has no ledger entry; every other
   field still ingests.

:func:`ingest_nuclei_pairs` ingests the paired ``SOURCE/images`` + ``SOURCE/masks``
layout of the real nuclei set, with the masks as ``truth_nuclei``.

The report is saved in the store's root attributes under ``cellflow_ingest``
(:meth:`IngestReport.load` reads it back).

Readers: TIFF with tifffile (every page, or leading axis of a stack, is a z plane when
the pattern has no z field), everything else with Pillow. 8- and 16-bit integer and
float32 pixels are stored as they are (uint8, uint16, float32); RGB(A) is reduced to
one channel by :func:`reduce_rgb`.
"""

from __future__ import annotations

from cellflow.screen._ingest_nuclei import folder_images, ingest_images, ingest_nuclei_pairs, well_names
from cellflow.screen._ingest_pattern import FIELDS, RGB_METHODS, FilenamePattern
from cellflow.screen._ingest_read import BadFile, ImageHeader, read_header, reduce_rgb
from cellflow.screen._ingest_report import REPORT_ATTR, IngestReport
from cellflow.screen._ingest_table import COLUMNS, FileTable, lazy_images, scan
from cellflow.screen._ingest_write import ingest

__all__ = [
    "COLUMNS",
    "FIELDS",
    "REPORT_ATTR",
    "RGB_METHODS",
    "BadFile",
    "FileTable",
    "FilenamePattern",
    "ImageHeader",
    "IngestReport",
    "folder_images",
    "ingest",
    "ingest_images",
    "ingest_nuclei_pairs",
    "lazy_images",
    "read_header",
    "reduce_rgb",
    "scan",
    "well_names",
]
