"""Kubernetes objects for a pipeline spec: a DaskJob, its nightly CronJob, and what they need.

Everything is built as plain dicts from the spec's ``cluster.kubernetes`` section, so
the same DaskCluster pod specs serve ``cellflow deploy render`` (a DaskJob run by the
dask-kubernetes operator) and ``cluster.kind: kubernetes`` (a KubeCluster started by
``cellflow run``). The graph is the same in both; only the pods differ from a laptop.

Security choices, applied to every pod: a fixed non-root uid, no privilege
escalation, every capability dropped, the RuntimeDefault seccomp profile, a read-only
root filesystem (``/tmp`` is an ``emptyDir``; ``HOME`` and dask's spill directory
point there), requests and limits on every container, and no service-account token
except in the launcher, whose Role may only create/get/list/delete DaskJobs (and,
with GPU workers, the GPU DaskWorkerGroup) in its own namespace. The scheduler
dashboard is a ClusterIP service: reach it with ``kubectl port-forward``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cellflow.cluster import WORKER_MALLOC_ENV
from cellflow.errors import SpecError
from cellflow.pipeline.spec import ClusterSpec, KubernetesSpec, PipelineSpec

__all__ = [
    "DASK_API",
    "RUN_NOW",
    "dask_cluster_manifest",
    "dask_job_manifest",
    "gpu_worker_group_manifest",
    "render_manifests",
    "resource_name",
    "with_overrides",
    "write_manifests",
]

DASK_API = "kubernetes.dask.org/v1"
#: Longest object name: the operator appends ``-scheduler`` / ``-default-worker-<hash>``.
_MAX_NAME = 40
_SPEC_DIR = "/spec"
_MANIFEST_DIR = "/manifests"
#: Subfolder of the rendered objects that start a run when applied.
RUN_NOW = "run-now"
_LAUNCHER_CPU, _LAUNCHER_MEMORY = "100m", "256Mi"


def resource_name(spec_name: str) -> str:
    """The Kubernetes name for a spec: ``cellflow-<name>``, DNS-1123, at most 40 characters.

    Examples
    --------
    >>> resource_name("Nuclei_Fluorescence v2")
    'cellflow-nuclei-fluorescence-v2'
    """
    slug = re.sub(r"[^a-z0-9]+", "-", spec_name.lower()).strip("-")
    if not slug:
        raise SpecError(f"spec name {spec_name!r} has no letters or digits to name Kubernetes objects after")
    return f"cellflow-{slug}"[:_MAX_NAME].rstrip("-")


def _scheduler_address(name: str, namespace: str) -> str:
    # The operator's scheduler Service is '<cluster name>-scheduler'.
    return f"tcp://{name}-scheduler.{namespace}.svc.cluster.local:8786"


def _pod_security(k8s: KubernetesSpec) -> dict[str, Any]:
    uid = k8s.run_as_user
    return {
        "runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _resources(cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    amounts = {"cpu": cpu, "memory": memory} | ({"nvidia.com/gpu": str(gpus)} if gpus else {})
    # Requests equal limits: pods get the Guaranteed QoS class and are evicted last.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _env(cluster: ClusterSpec, name: str) -> list[dict[str, str]]:
    """Environment of every dask pod: the scheduler address, retries, writable dirs under /tmp."""
    return [
        {"name": "DASK_SCHEDULER_ADDRESS", "value": _scheduler_address(name, cluster.kubernetes.namespace)},
        {"name": "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "value": str(cluster.allowed_failures)},
        {"name": "DASK_TEMPORARY_DIRECTORY", "value": "/tmp"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
    ]


def _data_volumes(k8s: KubernetesSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes = [
        {"name": "data", "persistentVolumeClaim": {"claimName": k8s.data_claim}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = [{"name": "data", "mountPath": k8s.data_mount}, {"name": "tmp", "mountPath": "/tmp"}]
    return volumes, mounts


def _pod(k8s: KubernetesSpec, container: dict[str, Any], *, extra_volumes: tuple[dict[str, Any], ...] = (),
         extra_mounts: tuple[dict[str, Any], ...] = (), token: bool = False, **fields: Any) -> dict[str, Any]:
    """A pod spec around one container, with the data volume, /tmp and the security settings."""
    volumes, mounts = _data_volumes(k8s)
    container = container | {
        "securityContext": _container_security(), "volumeMounts": [*mounts, *extra_mounts],
        "workingDir": k8s.working_dir,
    }
    return {
        "automountServiceAccountToken": token, "securityContext": _pod_security(k8s),
        "containers": [container], "volumes": [*volumes, *extra_volumes], **fields,
    }


def _worker(cluster: ClusterSpec, name: str, *, gpu: bool) -> dict[str, Any]:
    """The ``worker`` section (replicas + pod spec) of a DaskCluster or DaskWorkerGroup."""
    k8s = cluster.kubernetes
    command = ["dask", "cuda", "worker"] if gpu else ["dask", "worker"]
    args = [
        *command, "$(DASK_SCHEDULER_ADDRESS)", "--name", "$(DASK_WORKER_NAME)",
        "--nthreads", str(1 if gpu else cluster.threads_per_worker), "--dashboard-address", "8788",
    ]
    if gpu:
        args += ["--resources", f"GPU={k8s.gpus_per_worker}"]
    resources = (
        _resources(k8s.gpu_worker_cpu, k8s.gpu_worker_memory, k8s.gpus_per_worker) if gpu
        else _resources(k8s.worker_cpu, k8s.worker_memory)
    )
    # glibc reads these when the nanny and its worker process start (cellflow.cluster.WORKER_MALLOC_ENV)
    malloc = [{"name": key, "value": str(value)} for key, value in WORKER_MALLOC_ENV.items()]
    container = {
        "name": "worker", "image": k8s.gpu_image if gpu else k8s.image, "args": args,
        "env": [*_env(cluster, name), *malloc], "resources": resources,
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
    }
    extra: dict[str, Any] = {}
    if gpu:  # GPU node pools are usually tainted so that only GPU pods land there
        extra["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"replicas": k8s.gpu_workers if gpu else cluster.n_workers, "spec": _pod(k8s, container, **extra)}


def _scheduler(cluster: ClusterSpec, name: str) -> dict[str, Any]:
    k8s = cluster.kubernetes
    probe = {"httpGet": {"port": "http-dashboard", "path": "/health"}}
    container = {
        "name": "scheduler", "image": k8s.image, "args": ["dask", "scheduler", "--host", "0.0.0.0"],
        "env": _env(cluster, name), "resources": _resources(k8s.scheduler_cpu, k8s.scheduler_memory),
        "ports": [
            {"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"},
        ],
        "readinessProbe": probe | {"initialDelaySeconds": 0, "periodSeconds": 5, "timeoutSeconds": 5},
        "livenessProbe": probe | {"initialDelaySeconds": 15, "periodSeconds": 20},
    }
    service = {  # ClusterIP only: the dashboard is never exposed outside the cluster
        "type": "ClusterIP",
        "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
        "ports": [
            {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
            {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"},
        ],
    }
    return {"spec": _pod(cluster.kubernetes, container), "service": service}


def _metadata(name: str, namespace: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "cellflow",
                                                             "app.kubernetes.io/instance": name, **labels}}


def dask_cluster_manifest(cluster: ClusterSpec, *, name: str) -> dict[str, Any]:
    """A ``DaskCluster`` (scheduler + the default CPU worker group) for ``KubeCluster``.

    Parameters
    ----------
    cluster : ClusterSpec
        Its ``n_workers``, ``threads_per_worker``, ``allowed_failures`` and ``kubernetes``.
    name : str
        Cluster name (DNS-1123, see :func:`resource_name`).

    Returns
    -------
    dict
        The object, ready for ``yaml.safe_dump`` or ``KubeCluster(custom_cluster_spec=...)``.
    """
    return {
        "apiVersion": DASK_API, "kind": "DaskCluster",
        "metadata": _metadata(name, cluster.kubernetes.namespace),
        "spec": {"idleTimeout": 0, "scheduler": _scheduler(cluster, name), "worker": _worker(cluster, name, gpu=False)},
    }


def gpu_worker_group_manifest(cluster: ClusterSpec, *, name: str) -> dict[str, Any] | None:
    """The ``DaskWorkerGroup`` of GPU workers joining cluster ``name``; None without GPU workers."""
    if cluster.kubernetes.gpu_workers == 0:
        return None
    return {
        "apiVersion": DASK_API, "kind": "DaskWorkerGroup",
        "metadata": _metadata(f"{name}-gpu", cluster.kubernetes.namespace),
        "spec": {"cluster": name, "worker": _worker(cluster, name, gpu=True)},
    }


def dask_job_manifest(spec: PipelineSpec, *, name: str) -> dict[str, Any]:
    """A ``DaskJob`` whose runner pod runs ``cellflow run /spec/<spec name>.yaml`` on its own cluster."""
    cluster, k8s = spec.cluster, spec.cluster.kubernetes
    spec_file = f"{name}.yaml"
    runner = {
        "name": "job", "image": k8s.image,
        "args": ["cellflow", "run", f"{_SPEC_DIR}/{spec_file}", "--scheduler", "$(DASK_SCHEDULER_ADDRESS)",
                 "--no-progress"],
        "env": _env(cluster, name), "resources": _resources(k8s.scheduler_cpu, k8s.scheduler_memory),
    }
    spec_volume = {"name": "spec", "configMap": {"name": name, "items": [{"key": spec_file, "path": spec_file}]}}
    pod = _pod(k8s, runner, extra_volumes=(spec_volume,),
               extra_mounts=({"name": "spec", "mountPath": _SPEC_DIR, "readOnly": True},), restartPolicy="Never")
    return {
        "apiVersion": DASK_API, "kind": "DaskJob", "metadata": _metadata(name, k8s.namespace),
        "spec": {"job": {"spec": pod}, "cluster": {"spec": dask_cluster_manifest(cluster, name=name)["spec"]}},
    }


def _rbac(name: str, namespace: str, gpu: bool) -> list[dict[str, Any]]:
    rules = [{"apiGroups": ["kubernetes.dask.org"], "resources": ["daskjobs"],
              "verbs": ["create", "delete", "get", "list"]}]
    if gpu:  # the GPU group is created once the job's DaskCluster exists, owned by it
        rules += [
            {"apiGroups": ["kubernetes.dask.org"], "resources": ["daskclusters"], "verbs": ["get"]},
            {"apiGroups": ["kubernetes.dask.org"], "resources": ["daskworkergroups"],
             "verbs": ["create", "delete", "get", "list"]},
        ]
    launcher = f"{name}-launcher"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(launcher, namespace),
         "automountServiceAccountToken": False},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _metadata(launcher, namespace),
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _metadata(launcher, namespace),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": launcher},
         "subjects": [{"kind": "ServiceAccount", "name": launcher, "namespace": namespace}]},
    ]


def _cron_job(name: str, k8s: KubernetesSpec, manifest_keys: list[str]) -> dict[str, Any]:
    """The nightly CronJob whose small job submits the DaskJob (``cellflow deploy submit``)."""
    container = {
        "name": "launcher", "image": k8s.image, "args": ["cellflow", "deploy", "submit", _MANIFEST_DIR],
        "env": [{"name": "HOME", "value": "/tmp"}], "resources": _resources(_LAUNCHER_CPU, _LAUNCHER_MEMORY),
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "manifests", "mountPath": _MANIFEST_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    items = [{"key": key, "path": key} for key in manifest_keys]
    volumes = [{"name": "manifests", "configMap": {"name": name, "items": items}}, {"name": "tmp", "emptyDir": {}}]
    pod = {"serviceAccountName": f"{name}-launcher", "automountServiceAccountToken": True,
           "restartPolicy": "Never", "securityContext": _pod_security(k8s), "containers": [container],
           "volumes": volumes}
    return {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": _metadata(name, k8s.namespace),
        "spec": {
            "schedule": k8s.schedule, "timeZone": k8s.time_zone, "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600, "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 2, "activeDeadlineSeconds": 1800, "ttlSecondsAfterFinished": 86400,
                "template": {"metadata": {"labels": {"app.kubernetes.io/name": "cellflow"}}, "spec": pod},
            }},
        },
    }


def render_manifests(spec: PipelineSpec, spec_text: str) -> dict[str, dict[str, Any]]:
    """Every object for a nightly run of ``spec``, keyed by file name.

    Parameters
    ----------
    spec : PipelineSpec
        The validated spec; its ``cluster`` section sizes the pods.
    spec_text : str
        The spec's YAML as written, stored verbatim in the ConfigMap.

    Returns
    -------
    dict of str to dict
        ``serviceaccount.yaml``, ``role.yaml``, ``rolebinding.yaml``, ``configmap.yaml``,
        ``cronjob.yaml``, and under ``run-now/`` the ``daskjob.yaml`` (and, with GPU
        workers, ``daskworkergroup-gpu.yaml``) that the CronJob submits each night.
    """
    name, k8s = resource_name(spec.name), spec.cluster.kubernetes
    job = dask_job_manifest(spec, name=name)
    group = gpu_worker_group_manifest(spec.cluster, name=name)
    launched = {"daskjob.yaml": job} | ({"daskworkergroup-gpu.yaml": group} if group else {})
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(name, k8s.namespace),
        "data": {f"{name}.yaml": spec_text} | {k: yaml.safe_dump(v, sort_keys=False) for k, v in launched.items()},
    }
    account, role, binding = _rbac(name, k8s.namespace, gpu=group is not None)
    # The launched objects go to a subfolder, so that `kubectl apply -f DIR` sets up the
    # nightly run without also starting one now.
    return {
        "serviceaccount.yaml": account, "role.yaml": role, "rolebinding.yaml": binding,
        "configmap.yaml": config_map, "cronjob.yaml": _cron_job(name, k8s, sorted(launched)),
        **{f"{RUN_NOW}/{key}": obj for key, obj in launched.items()},
    }


def with_overrides(
    spec: PipelineSpec, *, image: str | None = None, namespace: str | None = None, schedule: str | None = None
) -> PipelineSpec:
    """``spec`` with its ``cluster.kubernetes`` image (CPU and GPU), namespace or schedule replaced, validated.

    ``image`` sets the CPU image and, as ``<image>-cuda``, the GPU image.
    """
    data = spec.model_dump()
    k8s = data["cluster"]["kubernetes"]
    if image is not None:
        k8s.update(image=image, gpu_image=f"{image}-cuda")
    if namespace is not None:
        k8s["namespace"] = namespace
    if schedule is not None:
        k8s["schedule"] = schedule
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise SpecError(f"invalid deploy override: {problems}") from None


def write_manifests(objects: dict[str, dict[str, Any]], out: str | Path) -> list[Path]:
    """Write each object as YAML (``yaml.safe_dump``) under ``out``; return the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for file_name, obj in objects.items():
        path = out / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        paths.append(path)
    return paths
