"""Kubernetes deployment: render a spec's DaskJob + nightly CronJob, and submit a run.

``cellflow deploy render SPEC --out DIR`` writes the objects; the CronJob's launcher
runs ``cellflow deploy submit /manifests``. See ``deploy/README.md``.
"""

from __future__ import annotations

from cellflow.deploy.render import (
    DASK_API,
    RUN_NOW,
    dask_cluster_manifest,
    dask_job_manifest,
    gpu_worker_group_manifest,
    render_manifests,
    resource_name,
    with_overrides,
    write_manifests,
)
from cellflow.deploy.submit import DeployError, submit

__all__ = [
    "DASK_API",
    "RUN_NOW",
    "DeployError",
    "dask_cluster_manifest",
    "dask_job_manifest",
    "gpu_worker_group_manifest",
    "render_manifests",
    "resource_name",
    "submit",
    "with_overrides",
    "write_manifests",
]
