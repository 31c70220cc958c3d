"""Run reports: plots of scores, measurements, illumination and segmentations, and one offline
HTML page per run (:func:`build_report`, ``cellflow report RUN_DIR``)."""

from __future__ import annotations

from cellflow.report.build import ReportError, build_report, load_summary
from cellflow.report.html import FigureView, Section, TableView, data_uri, render_report, table_view

__all__ = [
    "FigureView",
    "ReportError",
    "Section",
    "TableView",
    "build_report",
    "data_uri",
    "load_summary",
    "render_report",
    "table_view",
]
