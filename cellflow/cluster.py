"""Where dask graphs run: threads, local processes, local GPUs, a running scheduler, Kubernetes.

Two entry points. :func:`scheduler_context` serves ingest, synthesis and export: a
scheduler name for ``dask.compute`` or the address of a running scheduler.
:func:`cluster_client` serves pipeline runs: it starts (or joins) the cluster a spec's
``cluster:`` section names and yields a ``distributed.Client`` (None for threads).

The graph is the same for every kind; only where its tasks run changes. Worker deaths
are bounded by ``allowed_failures`` (dask's ``distributed.scheduler.allowed-failures``):
set in this process for the clusters whose scheduler runs here, passed as an
environment variable to the Kubernetes scheduler pod, and left to its operator for a
scheduler that is already running.

``dask_cuda`` and ``dask_kubernetes`` are optional extras, imported only when their
kind is asked for.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import dask

from cellflow.errors import SpecError

if TYPE_CHECKING:
    from distributed import Client

    from cellflow.pipeline.spec import ClusterSpec

__all__ = [
    "LOCAL_SCHEDULERS", "WORKER_MALLOC_ENV", "cluster_client", "compute", "scheduler_context", "with_overrides",
    "worker_environ",
]

#: Scheduler names dask understands without a cluster.
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")


def compute(*tasks: Any, scheduler: Any = None, **kwargs: Any) -> tuple[Any, ...]:
    """``dask.compute`` that never leaves threads of this process still running tasks when it returns.

    On dask's threaded scheduler a task that raises (or a callback that stops the
    computation: Ctrl-C, a full disk) makes ``dask.compute`` raise at once while the
    pool's other threads go on running the tasks they started — writing chunks into a
    store that the caller may already be deleting, re-creating or computing again. Here
    the threaded scheduler runs on a pool of its own that is shut down, waiting for the
    tasks in flight (at most one per thread), before this returns or raises. Other
    schedulers (a distributed ``Client``, ``'sync'``, processes) are passed through.
    """
    import dask.threaded
    from dask.base import get_scheduler
    from dask.system import CPU_COUNT

    chosen = get_scheduler(scheduler=scheduler, collections=list(tasks))
    if chosen is None and tasks:
        chosen = getattr(tasks[0], "__dask_scheduler__", None)
    if chosen is not dask.threaded.get:
        return dask.compute(*tasks, scheduler=scheduler, **kwargs)
    pool = ThreadPoolExecutor(dask.config.get("num_workers", None) or CPU_COUNT, thread_name_prefix="cellflow")
    try:
        return dask.compute(*tasks, scheduler="threads", pool=pool, **kwargs)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def scheduler_context(scheduler: str | None) -> Iterator[str | None]:
    """Yield what to pass as ``dask.compute(..., scheduler=...)``.

    Parameters
    ----------
    scheduler : str or None
        ``None`` or one of ``'threads'``, ``'processes'``, ``'synchronous'``; or the
        address of a running distributed scheduler (``'tcp://host:8786'``), to which
        a client is connected for the duration of the block.

    Raises
    ------
    SpecError
        Anything else.
    """
    if scheduler is None or scheduler in LOCAL_SCHEDULERS:
        yield scheduler
        return
    if "://" not in scheduler:
        raise SpecError(
            f"scheduler must be one of {LOCAL_SCHEDULERS} or an address like 'tcp://127.0.0.1:8786', "
            f"got {scheduler!r}"
        )
    from distributed import Client

    # While a Client is open it is dask's default scheduler, so callers pass None.
    with Client(scheduler):
        yield None


def with_overrides(spec: ClusterSpec, *, kind: str | None = None, n_workers: int | None = None,
                   address: str | None = None) -> ClusterSpec:
    """``spec`` with its kind, worker count or address replaced, validated again.

    An ``address`` implies ``kind='address'``.

    Raises
    ------
    SpecError
        The result is not a valid cluster spec (an unknown kind, ``n_workers < 1``).
    """
    from pydantic import ValidationError

    from cellflow.pipeline.spec import ClusterSpec

    update: dict[str, Any] = {}
    if address is not None:
        update.update(kind="address", address=address)
    elif kind is not None:
        update.update(kind=kind, address=None if kind != "address" else spec.address)
    if n_workers is not None:
        update["n_workers"] = n_workers
    try:
        return ClusterSpec.model_validate(spec.model_dump() | update)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'cluster'}: {e['msg']}" for e in error.errors())
        raise SpecError(f"invalid cluster override: {problems}") from None


def _optional(module: str, kind: str, extra: str) -> Any:
    """Import an optional extra's module, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SpecError(
            f"cluster kind {kind!r} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'cellflow[{extra}]'"
        ) from error


#: glibc malloc settings for worker processes. dask's nanny starts workers with
#: ``MALLOC_TRIM_THRESHOLD_=65536`` (hand freed memory back to the OS at once), which also
#: pins glibc's mmap threshold at 128 KiB: every image-sized array is then a fresh mmap
#: whose pages the kernel must fault in and zero, and is unmapped again when freed.
#: cellflow's tasks allocate and free many MB-sized arrays per field (tiles, probabilities,
#: distance maps), so keep blocks up to 128 MiB in the heap and return free heap above
#: 32 MiB. Measured on the segment stage (resunet + watershed, 24 fields of 520 x 696, one
#: worker with 2 threads): 6.6 s instead of 12.0 s, for a peak RSS of 1.10 GiB instead of
#: 0.77 GiB (trimming above 256 MiB: 6.3 s, 1.30 GiB). Values in the environment of the
#: process that starts the cluster win (dask reads them first).
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": 128 * 2**20, "MALLOC_TRIM_THRESHOLD_": 32 * 2**20}


def worker_environ() -> dict[str, Any]:
    """dask's ``distributed.nanny.pre-spawn-environ`` with :data:`WORKER_MALLOC_ENV` over dask's own default."""
    current = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    if str(current.get("MALLOC_TRIM_THRESHOLD_", 65536)) != "65536":  # someone chose another value: keep it
        return current
    return {**current, **WORKER_MALLOC_ENV}


def _dashboard(spec: ClusterSpec) -> str:
    """The spec's dashboard address, or ``$CELLFLOW_DASHBOARD_ADDRESS`` when the spec leaves it at the default.

    On a node several people share, one sets e.g. ``CELLFLOW_DASHBOARD_ADDRESS=127.0.0.1:8790``
    (or ``127.0.0.1:0`` for any free port) once instead of in every spec.
    """
    chosen = os.environ.get("CELLFLOW_DASHBOARD_ADDRESS")
    if chosen and "dashboard_address" not in spec.model_fields_set:
        return chosen
    return spec.dashboard_address


def _local(spec: ClusterSpec) -> Any:
    from distributed import LocalCluster

    cores = max(1, len(os.sched_getaffinity(0)) // spec.n_workers)  # each worker's share: no oversubscription
    return LocalCluster(
        n_workers=spec.n_workers, threads_per_worker=spec.threads_per_worker, processes=True,
        memory_limit=spec.memory_limit, dashboard_address=_dashboard(spec), host="127.0.0.1",
        env={"CELLFLOW_CORES": str(cores), "OMP_NUM_THREADS": str(cores)},
    )


def _local_cuda(spec: ClusterSpec) -> Any:
    dask_cuda = _optional("dask_cuda", "local-cuda", "gpu")
    options: dict[str, Any] = {}
    if spec.cuda_visible_devices is not None:
        options["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.cuda_visible_devices))
    # One worker per visible GPU: LocalCUDACluster's own default, so n_workers is not passed.
    return dask_cuda.LocalCUDACluster(
        threads_per_worker=spec.threads_per_worker, memory_limit=spec.memory_limit,
        dashboard_address=_dashboard(spec), host="127.0.0.1", **options,
    )


def _kubernetes(spec: ClusterSpec, stack: ExitStack) -> Any:
    from cellflow.deploy.render import dask_cluster_manifest, gpu_worker_group_manifest

    operator = _optional("dask_kubernetes.operator", "kubernetes", "k8s")
    # A fresh name per run, so concurrent runs from one namespace do not meet.
    name = f"cellflow-{uuid.uuid4().hex[:10]}"
    cluster = stack.enter_context(operator.KubeCluster(
        custom_cluster_spec=dask_cluster_manifest(spec, name=name), namespace=spec.kubernetes.namespace,
        shutdown_on_close=True,
    ))
    group = gpu_worker_group_manifest(spec, name=name)
    if group is not None:
        # add_worker_group names it '<cluster>-<name>', as the manifest does
        cluster.add_worker_group("gpu", custom_spec=group["spec"]["worker"])
    return cluster


@contextmanager
def cluster_client(spec: ClusterSpec, *, address: str | None = None) -> Iterator[Client | None]:
    """Start or join the cluster ``spec`` names; yield a client to it (None for ``threads``).

    Parameters
    ----------
    spec : ClusterSpec
        The spec's ``cluster:`` section.
    address : str, optional
        Address of a running scheduler (the CLI's ``--scheduler``); overrides ``spec``.

    Yields
    ------
    distributed.Client or None
        Connected for the block; the cluster started for it is closed after.

    Raises
    ------
    SpecError
        The kind's optional extra (dask-cuda, dask-kubernetes) is not installed.
    """
    if address is not None:
        spec = with_overrides(spec, address=address)
    if spec.kind == "threads":
        yield None
        return
    from distributed import Client

    with ExitStack() as stack:
        stack.enter_context(dask.config.set({"distributed.scheduler.allowed-failures": spec.allowed_failures}))
        if spec.kind == "address":
            target: Any = spec.address
        elif spec.kind == "kubernetes":
            target = _kubernetes(spec, stack)
        else:
            stack.enter_context(dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}))
            target = stack.enter_context(_local(spec) if spec.kind == "local" else _local_cuda(spec))
        client = stack.enter_context(Client(target))
        if spec.kind in ("local", "local-cuda"):  # workers whose output is this console's
            from cellflow._worker_plugins import QuietCancellation

            client.register_plugin(QuietCancellation())
        yield client
