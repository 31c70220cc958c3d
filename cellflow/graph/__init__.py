"""Dask graph builders, one per stage; they build lazily and compute nothing."""

from __future__ import annotations

from cellflow.graph._stage import StageGraph, TaskResult, VariableSpec, upstream_of

__all__ = ["StageGraph", "TaskResult", "VariableSpec", "upstream_of"]
