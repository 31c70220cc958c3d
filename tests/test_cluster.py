from __future__ import annotations

import sys
import types
from typing import ClassVar

import dask
import pytest
from distributed import Client, LocalCluster

from cellflow.cluster import cluster_client, scheduler_context, with_overrides
from cellflow.deploy.validate import validate_manifest
from cellflow.errors import SpecError
from cellflow.pipeline.spec import ClusterSpec, parse_spec


@pytest.mark.parametrize("name", [None, "threads", "synchronous"])
def test_local_schedulers_pass_through(name):
    with scheduler_context(name) as sched:
        assert sched == name
        assert dask.compute(dask.delayed(sum)([1, 2, 3]), scheduler=sched) == (6,)


def test_rejects_unknown_scheduler():
    with pytest.raises(SpecError, match=r"scheduler must be one of .* got 'gpu-please'"):
        with scheduler_context("gpu-please"):
            pass


def _worker_address() -> str:
    from distributed import get_worker

    return str(get_worker().address)


def test_address_connects_a_client_for_the_block():
    import os

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster:
        with scheduler_context(cluster.scheduler_address) as sched:
            assert sched is None  # the open client is dask's default scheduler
            # the task runs in the worker of this in-process cluster, not a fresh thread pool
            (pid,) = dask.compute(dask.delayed(os.getpid)())
            assert pid == os.getpid()
            (address,) = dask.compute(dask.delayed(_worker_address)())  # raises outside a worker
            assert address in cluster.scheduler.workers


# --- clusters from the spec's cluster: section -------------------------------------------


class _Recorder:
    """Stands in for LocalCUDACluster / KubeCluster: records its arguments, runs an in-process cluster."""

    calls: ClassVar[list[tuple[str, dict]]]

    def __init__(self, **kwargs):
        type(self).calls.append(("init", kwargs))
        self._cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                     dashboard_address="127.0.0.1:0")

    def __getattr__(self, name):  # Client(cluster) reads status, scheduler_address, dashboard_link, ...
        return getattr(self._cluster, name)

    def add_worker_group(self, name, **kwargs):
        type(self).calls.append(("add_worker_group", {"name": name, **kwargs}))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        type(self).calls.append(("close", {}))
        self._cluster.close()


def _run_one_task():
    import os

    (pid,) = dask.compute(dask.delayed(os.getpid)())
    return pid


def test_threads_yields_no_client():
    with cluster_client(ClusterSpec(kind="threads")) as client:
        assert client is None


def test_local_cuda_one_worker_per_visible_gpu(monkeypatch):
    import os

    class FakeCUDACluster(_Recorder):
        calls: ClassVar[list] = []

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=FakeCUDACluster))
    spec = ClusterSpec(kind="local-cuda", cuda_visible_devices=[0, 2], threads_per_worker=3,
                       dashboard_address="127.0.0.1:0", allowed_failures=5)
    with cluster_client(spec) as client:
        assert isinstance(client, Client)
        assert _run_one_task() == os.getpid()  # ran on the (fake) cluster's in-process worker
    (_, kwargs), (closed, _) = FakeCUDACluster.calls
    assert kwargs["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert "n_workers" not in kwargs  # LocalCUDACluster starts one worker per visible GPU itself
    assert kwargs["threads_per_worker"] == 3 and kwargs["host"] == "127.0.0.1"
    assert closed == "close"


def test_local_cuda_without_dask_cuda_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # makes `import dask_cuda` raise ImportError
    with pytest.raises(SpecError, match=r"'local-cuda' needs dask_cuda.*pip install 'cellflow\[gpu\]'"):
        with cluster_client(ClusterSpec(kind="local-cuda")):
            pass


@pytest.mark.parametrize("gpu_workers", [0, 2])
def test_kubernetes_builds_the_daskcluster_and_gpu_group(monkeypatch, gpu_workers):
    import dask_kubernetes.operator

    class FakeKubeCluster(_Recorder):
        calls: ClassVar[list] = []

    monkeypatch.setattr(dask_kubernetes.operator, "KubeCluster", FakeKubeCluster)
    spec = ClusterSpec(kind="kubernetes", n_workers=3, threads_per_worker=2, allowed_failures=4,
                       kubernetes={"namespace": "screens", "gpu_workers": gpu_workers, "gpus_per_worker": 2})
    with cluster_client(spec) as client:
        assert isinstance(client, Client)
        assert dask.compute(dask.delayed(sum)([1, 2, 3])) == (6,)
    calls = dict(FakeKubeCluster.calls)
    manifest = calls["init"]["custom_cluster_spec"]
    assert calls["init"]["namespace"] == "screens" and calls["init"]["shutdown_on_close"] is True
    assert validate_manifest(manifest) == []
    assert manifest["kind"] == "DaskCluster" and manifest["metadata"]["namespace"] == "screens"
    worker = manifest["spec"]["worker"]
    assert worker["replicas"] == 3
    (container,) = worker["spec"]["containers"]
    assert container["args"][container["args"].index("--nthreads") + 1] == "2"
    assert {"name": "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "value": "4"} in container["env"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    if gpu_workers:
        group = calls["add_worker_group"]
        assert group["name"] == "gpu" and group["custom_spec"]["replicas"] == 2
        (gpu,) = group["custom_spec"]["spec"]["containers"]
        assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert gpu["args"][:3] == ["dask", "cuda", "worker"]
    else:
        assert "add_worker_group" not in calls


def test_allowed_failures_reaches_an_in_process_scheduler(monkeypatch):
    class FakeCUDACluster(_Recorder):
        calls: ClassVar[list] = []

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=FakeCUDACluster))
    spec = ClusterSpec(kind="local-cuda", dashboard_address="127.0.0.1:0", allowed_failures=7)
    with cluster_client(spec) as client:
        assert client.cluster.scheduler.allowed_failures == 7
    assert dask.config.get("distributed.scheduler.allowed-failures") == 3  # restored after the block


def _die_once(marker):
    """Kill this worker process the first time; return 42 the next."""
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return 42


@pytest.mark.slow
def test_worker_death_fails_the_task_when_no_failures_are_allowed(tmp_path):
    """With dask's default (3) the task would be retried and return 42; allowed_failures=0 must reach the scheduler."""
    from distributed import KilledWorker

    spec = ClusterSpec(kind="local", n_workers=1, dashboard_address="127.0.0.1:0", allowed_failures=0)
    with cluster_client(spec) as client:
        future = client.submit(_die_once, str(tmp_path / "died"), pure=False)
        with pytest.raises(KilledWorker):
            future.result(timeout=60)
    assert (tmp_path / "died").exists()  # the worker did die in the task


def test_address_argument_overrides_the_spec():
    import os

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster:
        with cluster_client(ClusterSpec(kind="threads"), address=cluster.scheduler_address) as client:
            assert client.scheduler.address == cluster.scheduler_address
            assert _run_one_task() == os.getpid()


def test_overrides_are_validated():
    spec = ClusterSpec()
    assert with_overrides(spec, kind="threads", n_workers=4).model_dump() == spec.model_dump() | {
        "kind": "threads", "n_workers": 4}
    assert with_overrides(spec, address="tcp://h:1").kind == "address"
    with pytest.raises(SpecError, match=r"kind: Input should be 'threads', 'local'"):
        with_overrides(spec, kind="gpu-please")
    with pytest.raises(SpecError, match=r"n_workers: Input should be greater than or equal to 1"):
        with_overrides(spec, n_workers=0)


@pytest.mark.parametrize(("cluster", "message"), [
    ({"kind": "local", "cuda_visible_devices": [0]}, r"cluster: .*cuda_visible_devices applies to kind 'local-cuda'"),
    ({"kind": "kubernetes", "kubernetes": {"worker_cpu": "two"}}, r"spec:7: cluster.kubernetes.worker_cpu: String should match"),
    ({"kind": "kubernetes", "kubernetes": {"gpus": 1}}, r"spec:7: cluster.kubernetes.gpus: Extra inputs are not permitted"),
    ({"retries": -1}, r"cluster.retries: Input should be greater than or equal to 0"),
])
def test_cluster_section_errors_name_the_field(cluster, message):
    import yaml

    text = yaml.safe_dump({"name": "x", "input": {"store": "s.zarr"}, "cluster": cluster}, sort_keys=False)
    with pytest.raises(SpecError, match=message):
        parse_spec(yaml.safe_load(text), root=yaml.compose(text))


def test_dashboard_address_from_the_environment_only_where_the_spec_leaves_the_default(monkeypatch):
    class FakeCUDACluster(_Recorder):
        calls: ClassVar[list] = []

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=FakeCUDACluster))
    monkeypatch.setenv("CELLFLOW_DASHBOARD_ADDRESS", "127.0.0.1:0")
    for spec, expected in ((ClusterSpec(kind="local-cuda"), "127.0.0.1:0"),
                           (ClusterSpec(kind="local-cuda", dashboard_address="127.0.0.1:8799"), "127.0.0.1:8799")):
        FakeCUDACluster.calls.clear()
        with cluster_client(spec):
            pass
        assert FakeCUDACluster.calls[0][1]["dashboard_address"] == expected
    assert ClusterSpec().dashboard_address == "127.0.0.1:8787"  # the documented default is unchanged


def _malloc_environ():
    import os

    return {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}


def test_local_workers_start_with_cellflows_malloc_settings(monkeypatch):
    # glibc reads these when a process starts: they must be in the nanny's pre-spawn environment
    # (set before the worker process exists), not set inside the worker afterwards
    from cellflow.cluster import WORKER_MALLOC_ENV

    for name in WORKER_MALLOC_ENV:
        monkeypatch.delenv(name, raising=False)
    spec = ClusterSpec(kind="local", n_workers=1, dashboard_address="127.0.0.1:0")
    with cluster_client(spec) as client:
        (seen,) = client.run(_malloc_environ).values()
    assert seen == {k: str(v) for k, v in WORKER_MALLOC_ENV.items()}
    assert str(dask.config.get("distributed.nanny.pre-spawn-environ")["MALLOC_TRIM_THRESHOLD_"]) == "65536"  # restored


def test_a_malloc_setting_someone_chose_is_kept():
    from cellflow.cluster import WORKER_MALLOC_ENV, worker_environ

    assert worker_environ()["MALLOC_MMAP_THRESHOLD_"] == WORKER_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 1 << 20}):
        chosen = worker_environ()
    assert chosen["MALLOC_TRIM_THRESHOLD_"] == 1 << 20 and "MALLOC_MMAP_THRESHOLD_" not in chosen


def test_compute_returns_only_after_every_started_task_ended():
    """A raising task must not leave another one writing after compute() has given up (threaded scheduler)."""
    import threading
    import time

    from cellflow.cluster import compute

    started, ended = threading.Event(), threading.Event()

    def slow():
        started.set()
        time.sleep(0.5)
        ended.set()
        return 1

    def fail():
        started.wait(5)  # the slow one is running when this raises
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        compute(dask.delayed(slow)(), dask.delayed(fail)(), scheduler="threads")
    assert ended.is_set()
    started.clear(), ended.clear()
    with pytest.raises(OSError):  # plain dask.compute gives up at once: the reason for compute()
        dask.compute(dask.delayed(slow)(), dask.delayed(fail)(), scheduler="threads")
    assert not ended.is_set()
    ended.wait(5)
    assert compute(dask.delayed(slow)(), scheduler="sync") == (1,)


def _sleep_then(seconds: float, value: int) -> int:
    import time

    time.sleep(seconds)
    return value


def test_a_stopped_runs_running_tasks_print_no_worker_warning_each(capfd):
    """A local cluster's workers print to this console. A run that stops (Ctrl-C, SIGTERM, a full
    disk) leaves the cluster with tasks still executing; closing it must not add one worker
    warning per task ('Async instruction for <Task cancelled ...> ended with CancelledError')
    under the run's own message."""
    import time

    spec = ClusterSpec(n_workers=1, threads_per_worker=2, dashboard_address="127.0.0.1:0")
    with cluster_client(spec) as client:
        assert client.submit(_sleep_then, 0, 7, pure=False).result(timeout=30) == 7
        futures = [client.submit(_sleep_then, 2, i, pure=False) for i in range(2)]
        deadline = time.monotonic() + 30
        while sum(len(v) for v in client.processing().values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # both tasks are executing on the worker: now the run stops
    time.sleep(0.5)  # the worker's last lines reach the console
    assert all(not f.done() or f.cancelled() for f in futures)
    assert "ended with CancelledError" not in capfd.readouterr().err


def test_the_cancellation_filter_drops_only_cancellation_warnings():
    import logging

    from cellflow._worker_plugins import _CancelledNoise

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("distributed.worker.state_machine", logging.WARNING, __file__, 1, message, (), None)

    noise = _CancelledNoise()
    assert not noise.filter(record("Async instruction for <Task cancelled name=\"execute('x')\"> ended with CancelledError"))
    assert noise.filter(record("Async instruction for <Task finished name=\"execute('x')\"> ended with ValueError('bad')"))
    assert noise.filter(record("Compute Failed"))
