"""Start one run of a rendered DaskJob: what the nightly CronJob's launcher pod does.

The launcher replaces last night's finished DaskJob with a fresh one, refuses to start
while the previous run is still going (the CronJob's ``concurrencyPolicy: Forbid``
only covers the launcher itself, not the hours-long DaskJob it starts), and, with GPU
workers, adds the GPU DaskWorkerGroup once the job's DaskCluster exists, owned by it,
so that Kubernetes deletes the GPU pods with the cluster when the job ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

from cellflow.errors import CellflowError

__all__ = ["DeployError", "submit"]

_GROUP, _VERSION = "kubernetes.dask.org", "v1"
#: DaskJob ``status.jobStatus`` values of a run that is over.
FINISHED = frozenset({"Successful", "Failed"})


class DeployError(CellflowError, RuntimeError):
    """A deployment step cannot be done (a run still going, an object that never appears)."""


class CustomObjects(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` the launcher uses."""

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> Any: ...
    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: Any) -> Any: ...
    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        name: str) -> Any: ...


def _get(api: CustomObjects, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return dict(api.get_namespaced_custom_object(_GROUP, _VERSION, namespace, plural, name))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _wait(what: str, check: Callable[[], Any], *, timeout_s: float, poll_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DeployError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def submit(
    manifest_dir: str | Path, *, api: CustomObjects | None = None, timeout_s: float = 600, poll_s: float = 2
) -> str:
    """Create the DaskJob in ``manifest_dir/daskjob.yaml`` (and its GPU worker group), replacing a finished one.

    Parameters
    ----------
    manifest_dir : str or Path
        Holds ``daskjob.yaml`` and optionally ``daskworkergroup-*.yaml``, as rendered by
        :func:`~cellflow.deploy.render_manifests`.
    api : CustomObjects, optional
        Defaults to ``kubernetes.client.CustomObjectsApi`` with the in-cluster config.
    timeout_s, poll_s : float
        How long to wait for the old job to go and the new cluster to appear, and how often to look.

    Returns
    -------
    str
        ``namespace/name`` of the DaskJob created.

    Raises
    ------
    DeployError
        The previous DaskJob has not finished, or an object did not appear or go in time.
    """
    manifest_dir = Path(manifest_dir)
    job = yaml.safe_load((manifest_dir / "daskjob.yaml").read_text())
    groups = [yaml.safe_load(p.read_text()) for p in sorted(manifest_dir.glob("daskworkergroup-*.yaml"))]
    api = api if api is not None else _in_cluster_api()
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]

    previous = _get(api, namespace, "daskjobs", name)
    if previous is not None:
        status = (previous.get("status") or {}).get("jobStatus")
        if status not in FINISHED:
            raise DeployError(f"DaskJob {namespace}/{name} from an earlier run is {status or 'starting'}; "
                              "not starting another until it has finished")
        api.delete_namespaced_custom_object(_GROUP, _VERSION, namespace, "daskjobs", name)
        _wait(f"DaskJob {namespace}/{name} to be deleted", lambda: _get(api, namespace, "daskjobs", name) is None,
              timeout_s=timeout_s, poll_s=poll_s)
    for group in groups:  # left over from a run whose cluster was deleted before its group
        if _get(api, namespace, "daskworkergroups", group["metadata"]["name"]) is not None:
            api.delete_namespaced_custom_object(_GROUP, _VERSION, namespace, "daskworkergroups",
                                                group["metadata"]["name"])
    api.create_namespaced_custom_object(_GROUP, _VERSION, namespace, "daskjobs", job)
    if groups:
        cluster = _wait(f"DaskCluster {namespace}/{name} of the job",
                        lambda: _get(api, namespace, "daskclusters", name), timeout_s=timeout_s, poll_s=poll_s)
        owner = {"apiVersion": f"{_GROUP}/{_VERSION}", "kind": "DaskCluster", "name": name,
                 "uid": cluster["metadata"]["uid"]}
        for group in groups:
            group["metadata"]["ownerReferences"] = [owner]
            api.create_namespaced_custom_object(_GROUP, _VERSION, namespace, "daskworkergroups", group)
    return f"{namespace}/{name}"


def _in_cluster_api() -> CustomObjects:
    from kubernetes import client, config

    config.load_incluster_config()
    return client.CustomObjectsApi()  # type: ignore[no-any-return]
