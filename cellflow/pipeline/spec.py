"""Pipeline specs: the YAML files users run, validated into typed objects once, at the edge.

A spec names where the screen comes from (``input``), which stages run in which
order with which parameters (``stages``), where tables go (``output``), and where
the graph runs (``cluster``). Every problem is reported with the YAML path and
line, e.g. ``specs/x.yaml:14: stages.autolabel.diameter_px: must be > 0``, all at
once.

Relative paths in a spec are resolved against the working directory the run is
started from (like a shell command), not the spec file's folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cellflow.errors import SpecError
from cellflow.pipeline.stages import STAGES, StageEntry

__all__ = [
    "ClusterSpec",
    "InputSpec",
    "KubernetesSpec",
    "OutputSpec",
    "PipelineSpec",
    "TrainSpec",
    "load_spec",
    "load_train_spec",
    "parse_spec",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """Where the screen comes from. ``store`` is always where it lives."""

    store: Path
    synthetic: dict[str, Any] | None = Field(default=None, description="SyntheticSpec fields: create the store")
    nuclei_pairs: Path | None = Field(default=None, description="images/ + masks/ folders to ingest")
    sources: list[str] | None = None
    modalities: list[str] | None = None
    folder: Path | None = Field(default=None, description="a folder of TIFF/PNG to ingest")
    pattern: str | None = Field(default=None, description="filename template or built-in name for `folder`")
    reuse: bool = Field(default=True, description="use an existing store instead of re-creating it")
    add_new_files: bool = Field(
        default=True, description="with `folder` and `reuse`: ingest the files of fields the store has not acquired "
        "yet (new plates, wells, sites, later time points; files that were bad before) before each run")

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        given = [k for k in ("synthetic", "nuclei_pairs", "folder") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of synthetic, nuclei_pairs, folder; got {given}")
        if self.folder is not None and not self.pattern:
            raise ValueError("folder needs a pattern (a filename template or 'bbbc')")
        if (self.sources or self.modalities) and self.nuclei_pairs is None:
            raise ValueError("sources/modalities filter nuclei_pairs only")
        return self


class OutputSpec(_Strict):
    """Where tables and the run summary are written."""

    tables: Path = Path("cellflow-runs/tables")


_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_ABSOLUTE = r"^/"


class KubernetesSpec(_Strict):
    """Pods for ``cluster.kind: kubernetes`` and for ``cellflow deploy render``.

    Quantities are Kubernetes strings (``cpu: "2"``, ``memory: "8Gi"``). GPU workers
    form a second worker group with ``nvidia.com/gpu`` limits; ``gpu_workers: 0``
    (the default) leaves it out.
    """

    image: str = Field(default="ghcr.io/cellflow/cellflow:0.2.0", min_length=1)
    gpu_image: str = Field(default="ghcr.io/cellflow/cellflow:0.2.0-cuda", min_length=1)
    namespace: str = Field(default="cellflow", pattern=_DNS_LABEL)
    scheduler_cpu: str = Field(default="1", pattern=_QUANTITY)
    scheduler_memory: str = Field(default="2Gi", pattern=_QUANTITY)
    worker_cpu: str = Field(default="2", pattern=_QUANTITY)
    worker_memory: str = Field(default="8Gi", pattern=_QUANTITY)
    gpu_workers: int = Field(default=0, ge=0)
    gpus_per_worker: int = Field(default=1, ge=1)
    gpu_worker_cpu: str = Field(default="4", pattern=_QUANTITY)
    gpu_worker_memory: str = Field(default="16Gi", pattern=_QUANTITY)
    data_claim: str = Field(default="cellflow-data", pattern=_DNS_LABEL, description="PersistentVolumeClaim (RWX)")
    data_mount: str = Field(default="/data", pattern=_ABSOLUTE)
    working_dir: str = Field(default="/data/cellflow", pattern=_ABSOLUTE, description="relative spec paths start here")
    schedule: str = Field(default="0 2 * * *", pattern=r"^\S+( \S+){4}$", description="cron: nightly at 02:00")
    time_zone: str = "Etc/UTC"
    run_as_user: int = Field(default=10001, ge=1, description="non-root uid of every container")


class ClusterSpec(_Strict):
    """Where the graph runs. The graph is the same in every case.

    ``threads``: dask's threaded scheduler; ``local``: a LocalCluster of processes;
    ``local-cuda``: dask-cuda's LocalCUDACluster, one worker per GPU (the ``gpu``
    extra); ``address``: a running scheduler; ``kubernetes``: a dask-kubernetes
    KubeCluster from the ``kubernetes`` section. A task is retried ``retries`` times
    when it raises, and given up after ``allowed_failures`` worker deaths.
    """

    kind: Literal["threads", "local", "local-cuda", "address", "kubernetes"] = "local"
    n_workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: str = "auto"
    address: str | None = None
    dashboard_address: str = Field(
        default="127.0.0.1:8787", description="bound to loopback unless you say otherwise"
    )
    retries: int = Field(default=2, ge=0, description="retries of a task that raised (dask.compute(retries=))")
    allowed_failures: int = Field(
        default=3, ge=0, description="worker deaths a task may take part in (distributed.scheduler.allowed-failures)"
    )
    cuda_visible_devices: list[int] | None = Field(default=None, description="local-cuda: GPUs to use (default all)")
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)

    @model_validator(mode="after")
    def _address(self) -> ClusterSpec:
        if (self.kind == "address") != (self.address is not None):
            raise ValueError("kind 'address' needs address: tcp://HOST:PORT (and only it takes one)")
        if self.cuda_visible_devices is not None and self.kind != "local-cuda":
            raise ValueError(f"cuda_visible_devices applies to kind 'local-cuda' only, got kind {self.kind!r}")
        return self


class PipelineSpec(_Strict):
    """A whole pipeline run."""

    name: str
    input: InputSpec
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    output: OutputSpec = Field(default_factory=OutputSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)

    def stage_entries(self) -> list[tuple[str, StageEntry, Any]]:
        """(name, registry entry, parsed params) for each stage, in spec order."""
        return [(name, STAGES[name], STAGES[name].params.from_dict(raw or {})) for name, raw in self.stages.items()]


class TrainSpec(_Strict):
    """A training run: the screen, the stages that make its labels, the training parameters, the model's folder.

    ``stages`` (optional) run first, exactly as in a pipeline spec and resumable like one:
    e.g. ``illumination`` + ``autolabel`` make ``labels_nuclei`` from the stains, which
    ``train.target`` then names (Sadanandan et al. 2017: the network learns another
    modality from labels nobody drew). Their tables go to ``model_dir/labels``.
    """

    name: str
    input: InputSpec
    stages: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    cluster: ClusterSpec = Field(default_factory=lambda: ClusterSpec(kind="threads"))
    train: dict[str, Any] = Field(default_factory=dict, description="TrainParams fields")
    model_dir: Path = Path("cellflow-runs/model")

    def labelling(self) -> PipelineSpec | None:
        """The pipeline that makes the training labels, or None without ``stages``."""
        if not self.stages:
            return None
        return PipelineSpec(name=f"{self.name}-labels", input=self.input,
                            stages={k: dict(v or {}) for k, v in self.stages.items()},
                            output=OutputSpec(tables=self.model_dir / "labels"), cluster=self.cluster)

    def params(self) -> Any:
        """The parsed :class:`~cellflow.nn.train.TrainParams`."""
        from cellflow.nn.train import TrainParams

        return TrainParams.from_dict(self.train)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at path ``loc`` (the deepest one that exists)."""
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if getattr(k, "value", None) == str(part)]
            if not match:
                break
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _where(source: str, root: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    line = _line_of(root, loc)
    path = ".".join(str(p) for p in loc) or "(top level)"
    return f"{source}:{line}: {path}" if line else f"{source}: {path}"


def parse_spec(data: Mapping[str, Any], *, source: str = "spec", root: yaml.Node | None = None) -> PipelineSpec:
    """Validate a spec mapping; every problem is listed in one :class:`SpecError`.

    Parameters
    ----------
    data : mapping
        The loaded YAML.
    source : str
        File name for messages.
    root : yaml.Node, optional
        The composed YAML tree, for line numbers.
    """
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: a spec is a YAML mapping (name, input, stages, ...), got {type(data).__name__}")
    problems: list[str] = []
    spec = None
    try:
        spec = PipelineSpec.model_validate(dict(data))
    except ValidationError as error:
        problems += _validation_problems(error, source, root)
    stages = data.get("stages") or {}
    if isinstance(stages, Mapping):
        problems.extend(_stage_problems(stages, source, root))
    if problems or spec is None:
        raise SpecError("invalid spec:\n  " + "\n  ".join(problems))
    return spec


def _stage_problems(stages: Mapping[str, Any], source: str, root: yaml.Node | None) -> list[str]:
    problems = []
    for name, raw in stages.items():
        if name not in STAGES:
            where = _where(source, root, ("stages", name))
            problems.append(f"{where}: unknown stage {name!r}; known: {sorted(STAGES)}")
            continue
        if raw is not None and not isinstance(raw, Mapping):
            problems.append(f"{_where(source, root, ('stages', name))}: stage parameters must be a mapping")
            continue
        try:
            STAGES[name].params.from_dict(raw or {})
        except (TypeError, ValueError) as error:
            problems.append(_param_problem(error, raw or {}, ("stages", name), source, root))
    return problems


def _validation_problems(error: ValidationError, source: str, root: yaml.Node | None) -> list[str]:
    """One ``file:line: path: message`` per pydantic error (validator frames dropped from the path)."""
    problems = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        problems.append(f"{_where(source, root, loc)}: {err['msg']}")
    return problems


def _param_problem(
    error: Exception, raw: Mapping[str, Any], base: tuple[str, ...], source: str, root: yaml.Node | None
) -> str:
    """A params class's error, pointed at the line of the key it names (else at ``base``)."""
    key = _offending_key(str(error), raw)
    return f"{_where(source, root, (*base, key) if key else base)}: {error}"


def _offending_key(message: str, raw: Mapping[str, Any]) -> str | None:
    """The parameter a stage's error message names, to point at its line.

    Only the part before "; expected ..." counts: that tail lists the valid keys, which would
    otherwise point an unknown key's error at the first valid key of the mapping.
    """
    message = message.split("; expected", 1)[0]
    for key in raw:
        if f"'{key}'" in message or f".{key} " in message or message.startswith(f"{key} "):
            return str(key)
    return None


def _read_yaml(path: str | Path) -> tuple[Path, Any, yaml.Node | None]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no spec file at {path}")
    text = path.read_text()
    try:
        return path, yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from None


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate a YAML pipeline spec (``yaml.safe_load``; never executes tags).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    SpecError
        Invalid YAML or an invalid spec; the message gives file, line and field.
    """
    path, data, root = _read_yaml(path)
    return parse_spec(data if data is not None else {}, source=str(path), root=root)


def load_train_spec(path: str | Path) -> TrainSpec:
    """Read and validate a YAML training spec (name, input, optional stages and cluster, train, model_dir)."""
    path, data, root = _read_yaml(path)
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: a training spec is a YAML mapping (name, input, train, model_dir)")
    problems: list[str] = []
    spec = None
    try:
        spec = TrainSpec.model_validate(dict(data))
    except ValidationError as error:
        problems += _validation_problems(error, str(path), root)
    stages = data.get("stages") or {}
    if isinstance(stages, Mapping):
        problems.extend(_stage_problems(stages, str(path), root))
    if spec is not None:
        try:
            spec.params()
        except (TypeError, ValueError) as error:
            problems.append(_param_problem(error, spec.train, ("train",), str(path), root))
    if problems or spec is None:
        raise SpecError("invalid training spec:\n  " + "\n  ".join(problems))
    return spec
