"""Orchestration: validated specs, the stage registry, and the runner."""

from __future__ import annotations

from cellflow.pipeline.runner import RunResult, build_graphs, cluster_client, prepare_input, run_spec
from cellflow.pipeline.spec import ClusterSpec, InputSpec, OutputSpec, PipelineSpec, load_spec, parse_spec
from cellflow.pipeline.stages import STAGES, StageEntry

__all__ = [
    "STAGES",
    "ClusterSpec",
    "InputSpec",
    "OutputSpec",
    "PipelineSpec",
    "RunResult",
    "StageEntry",
    "build_graphs",
    "cluster_client",
    "load_spec",
    "parse_spec",
    "prepare_input",
    "run_spec",
]
