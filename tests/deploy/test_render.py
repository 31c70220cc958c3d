from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from cellflow.cli import main
from cellflow.deploy import DeployError, render_manifests, resource_name, submit, with_overrides
from cellflow.deploy.validate import validate_manifest, validate_openapi
from cellflow.errors import SpecError
from cellflow.pipeline.spec import PipelineSpec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "nuclei-fluorescence.yaml"


def _gpu_spec(gpu_workers=2, gpus_per_worker=1):
    data = load_spec(SPEC).model_dump()
    data["cluster"]["kubernetes"].update(gpu_workers=gpu_workers, gpus_per_worker=gpus_per_worker)
    return PipelineSpec.model_validate(data)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The CLI's output for the shipped spec, read back from disk."""
    out = tmp_path_factory.mktemp("k8s")
    assert main(["deploy", "render", str(SPEC), "--out", str(out)]) == 0
    return {str(p.relative_to(out)): yaml.safe_load(p.read_text()) for p in sorted(out.rglob("*.yaml"))}


def _pods(objects):
    """(where, pod spec) for every pod template in the objects, the DaskJob's cluster included."""
    for name, obj in objects.items():
        spec = obj.get("spec", {})
        if obj["kind"] == "CronJob":
            yield name, spec["jobTemplate"]["spec"]["template"]["spec"]
        elif obj["kind"] == "DaskJob":
            yield f"{name} job", spec["job"]["spec"]
            yield f"{name} scheduler", spec["cluster"]["spec"]["scheduler"]["spec"]
            yield f"{name} worker", spec["cluster"]["spec"]["worker"]["spec"]
        elif obj["kind"] == "DaskWorkerGroup":
            yield name, spec["worker"]["spec"]


def _walk(value):
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def test_render_writes_every_object_and_each_validates_offline(rendered):
    assert set(rendered) == {"serviceaccount.yaml", "role.yaml", "rolebinding.yaml", "configmap.yaml",
                             "cronjob.yaml", "run-now/daskjob.yaml"}
    for name, obj in rendered.items():
        assert validate_manifest(obj) == [], name
    # the launched objects inside the ConfigMap are the ones on disk, and validate too
    data = rendered["configmap.yaml"]["data"]
    assert yaml.safe_load(data["daskjob.yaml"]) == rendered["run-now/daskjob.yaml"]


def test_gpu_objects_validate_and_ask_for_gpus():
    objects = render_manifests(_gpu_spec(gpu_workers=2, gpus_per_worker=4), SPEC.read_text())
    for name, obj in objects.items():
        assert validate_manifest(obj) == [], name
    group = objects["run-now/daskworkergroup-gpu.yaml"]
    job = objects["run-now/daskjob.yaml"]
    assert group["spec"]["cluster"] == job["metadata"]["name"]  # the operator names the job's cluster after it
    assert group["spec"]["worker"]["replicas"] == 2
    (container,) = group["spec"]["worker"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["image"].endswith("-cuda")
    mounted = objects["cronjob.yaml"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0]
    assert [i["key"] for i in mounted["configMap"]["items"]] == ["daskjob.yaml", "daskworkergroup-gpu.yaml"]
    for (_, cpu_pod) in _pods({"j": job}):
        assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in cpu_pod["containers"])


@pytest.mark.parametrize("gpu_workers", [0, 1])
def test_every_pod_is_non_root_locked_down_and_limited(rendered, gpu_workers):
    objects = rendered if gpu_workers == 0 else render_manifests(_gpu_spec(gpu_workers), SPEC.read_text())
    pods = list(_pods(objects))
    assert len(pods) == 4 + gpu_workers
    for where, pod in pods:
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] > 0, where
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is ("cronjob" in where), where
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            # a read-only root needs a writable /tmp, and HOME there
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), where
            assert {"name": "HOME", "value": "/tmp"} in container["env"], where


def test_nothing_is_exposed_outside_the_cluster(rendered):
    objects = {**rendered, **render_manifests(_gpu_spec(), SPEC.read_text())}
    assert not any(obj["kind"] in ("Ingress", "Service") for obj in objects.values())
    services = [node for obj in objects.values() for node in _walk(obj) if "ports" in node and "selector" in node]
    assert services and all(s["type"] == "ClusterIP" for s in services)
    for obj in objects.values():
        for node in _walk(obj):
            assert node.get("type") not in ("LoadBalancer", "NodePort")
            assert "hostNetwork" not in node and "hostPort" not in node and "privileged" not in node


def test_rbac_is_namespaced_and_minimal(rendered):
    role, binding = rendered["role.yaml"], rendered["rolebinding.yaml"]
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "cellflow"
    assert role["rules"] == [{"apiGroups": ["kubernetes.dask.org"], "resources": ["daskjobs"],
                              "verbs": ["create", "delete", "get", "list"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    account = rendered["serviceaccount.yaml"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "cellflow"}]
    cron_pod = rendered["cronjob.yaml"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron_pod["serviceAccountName"] == account
    gpu_rules = render_manifests(_gpu_spec(), SPEC.read_text())["role.yaml"]["rules"]
    for rule in gpu_rules:
        assert set(rule["verbs"]) <= {"create", "delete", "get", "list"}
        assert rule["resources"][0] in ("daskjobs", "daskclusters", "daskworkergroups")


def test_cronjob_runs_nightly_one_at_a_time(rendered):
    cron = rendered["cronjob.yaml"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["schedule"] == "0 2 * * *"
    assert cron["startingDeadlineSeconds"] > 0 and cron["jobTemplate"]["spec"]["backoffLimit"] >= 1
    assert cron["successfulJobsHistoryLimit"] >= 1 and cron["failedJobsHistoryLimit"] >= 1
    (launcher,) = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert launcher["args"] == ["cellflow", "deploy", "submit", "/manifests"]


def test_daskjob_runs_the_spec_from_the_configmap_against_its_own_scheduler(rendered):
    from dask_kubernetes.operator.controller.controller import build_job_pod_spec

    job = rendered["run-now/daskjob.yaml"]
    (runner,) = job["spec"]["job"]["spec"]["containers"]
    spec_path = runner["args"][2]
    assert runner["args"][:2] == ["cellflow", "run"] and runner["args"][3:5] == ["--scheduler", "$(DASK_SCHEDULER_ADDRESS)"]
    # the file the runner reads is the ConfigMap key mounted at that path, holding the spec as written
    (mount,) = [m for m in runner["volumeMounts"] if m["name"] == "spec"]
    (volume,) = [v for v in job["spec"]["job"]["spec"]["volumes"] if v["name"] == "spec"]
    (item,) = volume["configMap"]["items"]
    assert f"{mount['mountPath']}/{item['path']}" == spec_path
    text = rendered["configmap.yaml"]["data"][item["key"]]
    assert text == SPEC.read_text() and parse_spec(yaml.safe_load(text)) == load_spec(SPEC)
    # the scheduler address we set is the one the operator itself would inject
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    bare = copy.deepcopy(job["spec"]["job"]["spec"])
    for container in bare["containers"]:
        container["env"] = [e for e in container["env"] if e["name"] != "DASK_SCHEDULER_ADDRESS"]
    pod = build_job_pod_spec(name, name, namespace, bare, {}, {})
    injected = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    ours = {e["name"]: e["value"] for e in runner["env"]}
    assert ours["DASK_SCHEDULER_ADDRESS"] == injected["DASK_SCHEDULER_ADDRESS"]


def test_example_manifests_in_deploy_are_up_to_date(rendered):
    shipped = ROOT / "deploy" / "k8s"
    on_disk = {str(p.relative_to(shipped)): yaml.safe_load(p.read_text()) for p in sorted(shipped.rglob("*.yaml"))}
    assert on_disk == rendered, "re-run: cellflow deploy render specs/nuclei-fluorescence.yaml --out deploy/k8s"


def test_overrides_and_names():
    spec = with_overrides(load_spec(SPEC), image="registry.example/cf:2", namespace="screens", schedule="30 1 * * 1-5")
    k8s = spec.cluster.kubernetes
    assert (k8s.image, k8s.gpu_image, k8s.namespace, k8s.schedule) == (
        "registry.example/cf:2", "registry.example/cf:2-cuda", "screens", "30 1 * * 1-5")
    with pytest.raises(SpecError, match=r"cluster.kubernetes.schedule: String should match"):
        with_overrides(spec, schedule="nightly")
    assert resource_name("Nuclei_Fluorescence v2") == "cellflow-nuclei-fluorescence-v2"
    assert len(resource_name("x" * 100)) == 40
    with pytest.raises(SpecError, match=r"spec name '__' has no letters or digits"):
        resource_name("__")


# --- the validator itself must fail on bad objects --------------------------------------


@pytest.mark.parametrize(("edit", "message"), [
    (lambda j: j["spec"]["job"]["spec"]["containers"][0].update(imagePullPolicy2="Always"),
     r"spec.job.spec.containers\[0\].imagePullPolicy2: unknown field"),
    (lambda j: j["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"].update(cpu=2),
     r"limits.cpu: expected string, got int 2"),
    (lambda j: j["spec"]["cluster"]["spec"]["worker"].update(replicas="3"), r"worker.replicas: expected integer"),
    (lambda j: j["spec"].pop("cluster"), r"\(root\)|spec: missing required field 'cluster'"),
    (lambda j: j["metadata"].update(labelz={}), r"metadata.labelz: dropped by the model"),
])
def test_crd_validation_catches_mistakes(rendered, edit, message):
    job = copy.deepcopy(rendered["run-now/daskjob.yaml"])
    edit(job)
    problems = validate_manifest(job)
    assert any(re.search(message, p) for p in problems), problems


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["spec"].update(concurrency="Forbid"), r"V1CronJob.spec.concurrency: dropped by the model"),
    (lambda c: c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].pop("name"),
     r"V1CronJob: .*V1Container\s+name"),
])
def test_model_validation_catches_mistakes(rendered, edit, message):
    cron = copy.deepcopy(rendered["cronjob.yaml"])
    edit(cron)
    assert any(re.search(message, p) for p in validate_manifest(cron)), validate_manifest(cron)


def test_openapi_subset_against_hand_checked_cases():
    schema = {"type": "object", "required": ["n"], "properties": {
        "n": {"type": "integer", "format": "int32"}, "tags": {"type": "array", "items": {"type": "string"}},
        "mode": {"type": "string", "enum": ["a", "b"]}, "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "maybe": {"type": "string", "nullable": True}}}
    assert validate_openapi({"n": 1, "tags": ["x"], "mode": "a", "env": {"K": "v"}, "maybe": None}, schema) == []
    assert validate_openapi({"n": True}, schema) == ["n: expected integer, got bool True"]
    assert validate_openapi({"n": 2**31}, schema) == ["n: 2147483648 is out of int32 range"]
    assert validate_openapi({}, schema) == ["(root): missing required field 'n'"]
    assert validate_openapi({"n": 1, "tags": [1], "mode": "c", "env": {"K": 1}, "x": 0}, schema) == [
        "tags[0]: expected string, got int 1", "mode: 'c' is not one of ['a', 'b']",
        "env.K: expected string, got int 1", "x: unknown field (the API server would drop it)"]
    with pytest.raises(ValueError, match=r"no model or CRD schema for apiVersion/kind \('v1', 'Pod'\)"):
        validate_manifest({"apiVersion": "v1", "kind": "Pod"})


# --- the launcher -----------------------------------------------------------------------


class FakeApi:
    """An in-memory CustomObjectsApi: objects by (plural, name); the operator's effects scripted."""

    def __init__(self, objects=None, *, cluster_after_gets=1):
        self.objects = dict(objects or {})
        self.calls = []
        self._cluster_after_gets = cluster_after_gets

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        from kubernetes.client.exceptions import ApiException

        self.calls.append(("get", plural, name))
        if plural == "daskclusters" and ("daskjobs", name) in self.objects:
            self._cluster_after_gets -= 1  # the operator creates the job's cluster a little later
            if self._cluster_after_gets < 0:
                return {"metadata": {"name": name, "uid": "uid-123"}}
        if (plural, name) not in self.objects:
            raise ApiException(status=404)
        return self.objects[(plural, name)]

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", plural, body["metadata"]["name"]))
        self.objects[(plural, body["metadata"]["name"])] = body

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("delete", plural, name))
        del self.objects[(plural, name)]


def _manifest_dir(tmp_path, spec):
    objects = render_manifests(spec, SPEC.read_text())
    for key, text in objects["configmap.yaml"]["data"].items():
        if key.startswith("dask"):
            (tmp_path / key).write_text(text)
    return tmp_path, objects


def test_submit_creates_the_job(tmp_path):
    folder, objects = _manifest_dir(tmp_path, load_spec(SPEC))
    api = FakeApi()
    assert submit(folder, api=api, poll_s=0) == "cellflow/cellflow-nuclei-fluorescence"
    assert api.objects[("daskjobs", "cellflow-nuclei-fluorescence")] == objects["run-now/daskjob.yaml"]
    assert [c[0] for c in api.calls] == ["get", "create"]


def test_submit_replaces_a_finished_run_and_refuses_a_running_one(tmp_path):
    folder, _ = _manifest_dir(tmp_path, load_spec(SPEC))
    key = ("daskjobs", "cellflow-nuclei-fluorescence")
    api = FakeApi({key: {"status": {"jobStatus": "Successful"}}})
    submit(folder, api=api, poll_s=0)
    assert ("delete", *key) in api.calls and api.objects[key]["kind"] == "DaskJob"
    running = FakeApi({key: {"status": {"jobStatus": "Running"}}})
    with pytest.raises(DeployError, match=r"cellflow/cellflow-nuclei-fluorescence from an earlier run is Running"):
        submit(folder, api=running, poll_s=0)
    assert [c[0] for c in running.calls] == ["get"]  # nothing deleted, nothing created


def test_submit_adds_the_gpu_group_owned_by_the_jobs_cluster(tmp_path):
    folder, _ = _manifest_dir(tmp_path, _gpu_spec())
    api = FakeApi(cluster_after_gets=2)
    submit(folder, api=api, poll_s=0)
    group = api.objects[("daskworkergroups", "cellflow-nuclei-fluorescence-gpu")]
    assert group["metadata"]["ownerReferences"] == [{"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
                                                     "name": "cellflow-nuclei-fluorescence", "uid": "uid-123"}]
    creates = [c[1] for c in api.calls if c[0] == "create"]
    assert creates == ["daskjobs", "daskworkergroups"]
    with pytest.raises(DeployError, match=r"timed out after 0 s waiting for DaskCluster"):
        submit(folder, api=FakeApi(cluster_after_gets=10**6), poll_s=0, timeout_s=0)


@pytest.mark.parametrize("gpu_workers", [0, 1])
def test_worker_pods_start_with_cellflows_malloc_settings(rendered, gpu_workers):
    from cellflow.cluster import WORKER_MALLOC_ENV

    objects = rendered if gpu_workers == 0 else render_manifests(_gpu_spec(gpu_workers), SPEC.read_text())
    workers = [c for _, pod in _pods(objects) for c in pod["containers"] if c["name"] == "worker"]
    assert len(workers) == 1 + gpu_workers
    for container in workers:
        env = {e["name"]: e["value"] for e in container["env"]}
        assert {k: env.get(k) for k in WORKER_MALLOC_ENV} == {k: str(v) for k, v in WORKER_MALLOC_ENV.items()}
