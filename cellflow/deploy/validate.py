"""Offline checks of rendered objects: no cluster, no network.

Core, batch and RBAC objects are deserialised into the ``kubernetes`` client's models
and serialised back; a field the models do not know would be dropped on the way, so
any difference is reported. The dask-kubernetes objects (DaskJob, DaskCluster,
DaskWorkerGroup) are checked against the CRD OpenAPI schemas shipped inside the
installed ``dask_kubernetes`` package, with a validator of the subset those schemas
use (type, format, properties, required, items, additionalProperties, enum,
nullable). Unknown fields are errors there too: the API server would prune them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["crd_schemas", "validate_manifest", "validate_openapi"]

_MODELS = {
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("batch/v1", "CronJob"): "V1CronJob",
    ("batch/v1", "Job"): "V1Job",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
}
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float),
}
_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_IMPLICIT = {"apiVersion", "kind", "metadata"}  # every custom resource has these beside its schema


@functools.cache
def crd_schemas() -> dict[str, dict[str, Any]]:
    """``{kind: openAPIV3Schema}`` of the fully resolved CRDs in the installed dask-kubernetes Helm chart."""
    import dask_kubernetes

    folder = Path(dask_kubernetes.__file__).parent / "operator/deployment/helm/dask-kubernetes-operator/crds"
    schemas = {}
    for path in sorted(folder.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


def validate_openapi(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Problems of ``value`` against an OpenAPI v3 (structural CRD) schema, one ``path: message`` each."""
    where = path or "(root)"
    if value is None:
        return [] if schema.get("nullable") else [f"{where}: null is not allowed"]
    kind = schema.get("type")
    if kind is not None:
        # bool is an int in Python; the schema's integer is not a boolean
        if not isinstance(value, _TYPES[kind]) or (kind in ("integer", "number") and isinstance(value, bool)):
            return [f"{where}: expected {kind}, got {type(value).__name__} {value!r}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if schema.get("format") in _RANGES and isinstance(value, int):
        low, high = _RANGES[schema["format"]]
        if not low <= value <= high:
            problems.append(f"{where}: {value} is out of {schema['format']} range")
    if isinstance(value, dict):
        problems += _object_problems(value, schema, path)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += validate_openapi(item, schema["items"], f"{path}[{i}]")
    return problems


def _object_problems(value: dict[str, Any], schema: Mapping[str, Any], path: str) -> list[str]:
    problems = [f"{path or '(root)'}: missing required field {key!r}" for key in schema.get("required", ())
                if key not in value]
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        child = f"{path}.{key}" if path else key
        if key in properties:
            problems += validate_openapi(item, properties[key], child)
        elif isinstance(extra, Mapping):
            problems += validate_openapi(item, extra, child)
        elif not (extra is True or schema.get("x-kubernetes-preserve-unknown-fields")):
            problems.append(f"{child}: unknown field (the API server would drop it)")
    return problems


def _differences(sent: Any, back: Any, path: str = "") -> list[str]:
    if isinstance(sent, dict) and isinstance(back, dict):
        out = [f"{path}.{k}: dropped by the model" for k in sent if k not in back]
        return out + [d for k in sent if k in back for d in _differences(sent[k], back[k], f"{path}.{k}")]
    if isinstance(sent, list) and isinstance(back, list) and len(sent) == len(back):
        return [d for i, (a, b) in enumerate(zip(sent, back)) for d in _differences(a, b, f"{path}[{i}]")]
    return [] if sent == back else [f"{path or '(root)'}: sent {sent!r}, model gave back {back!r}"]


def _validate_model(obj: Mapping[str, Any], model: str) -> list[str]:
    from kubernetes.client import ApiClient

    client = ApiClient()
    try:
        parsed = client._ApiClient__deserialize(dict(obj), model)  # type: ignore[attr-defined]
    except (ValueError, TypeError) as error:
        return [f"{model}: {error}"]
    return [f"{model}{d}" for d in _differences(dict(obj), client.sanitize_for_serialization(parsed))]


def validate_manifest(obj: Mapping[str, Any]) -> list[str]:
    """Problems of one rendered object (empty when it is valid).

    Raises
    ------
    ValueError
        An apiVersion/kind this module has no model or CRD schema for.
    """
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in _MODELS:
        return _validate_model(obj, _MODELS[key])
    schemas = crd_schemas()
    if obj.get("apiVersion") == "kubernetes.dask.org/v1" and obj.get("kind") in schemas:
        body = {k: v for k, v in obj.items() if k not in _IMPLICIT}
        problems = validate_openapi(body, schemas[str(obj["kind"])])
        return problems + [f"metadata{d[len('V1ObjectMeta'):]}" if d.startswith("V1ObjectMeta") else d
                           for d in _validate_model(obj.get("metadata", {}), "V1ObjectMeta")]
    raise ValueError(f"no model or CRD schema for apiVersion/kind {key!r}; known: {sorted(_MODELS)} and Dask CRDs")
