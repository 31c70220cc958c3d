"""Measure stage: per-object measurements of every field -> Parquet object tables + per-field rows.

Graph (built lazily, nothing is read until it runs)::

    field ─ read labels + channels ─ correct, reduce z ─ regionprops ─ write part file ─ summary row

One task per field and label variable set (:func:`build_measure`). A screen holds
millions of objects, so the object rows never travel to the client: each task writes
its field's table itself, as one Parquet part per field and label variable::

    <store>/tables/objects/<labels>/<plate>/<well>_s<site>_t<t>.parquet

keyed by ``plate, well, site, t, label``. ``tables/`` is made an (empty) zarr group on the
client, so zarr does not warn about a foreign folder when it lists the store. A part is written to a temporary name and
renamed (``os.replace``), so a killed task never leaves half a file, and a rerun
overwrites the same part (idempotent). The field's summary row references its parts
(:mod:`cellflow.graph._parts`), so a resumed run redoes a field whose part was deleted
or changed since. :func:`read_objects` reads them back.

Intensities. Channels are offset-subtracted and divided by the store's ``illumination``
with the rule of the autolabel stage (:mod:`cellflow.graph.autolabel`): when the
variable is complete for the plate and channel, or an upstream stage writes it. Planes
are then reduced over z (``MeasureParams.z``). ``dna_content`` is the integrated
intensity of ``dna_channel``.

Links. Measuring ``labels_nuclei`` in a store that also has ``labels_cells`` adds a
``cell_label`` column: the cell covering most of the nucleus (0 = none).

Tables. Each task returns one summary row per label variable (counts, area, DNA
content sums and a sparse log2 DNA-content histogram); :func:`measure_tables` turns
them into ``measurements/fields.parquet``, ``wells.parquet`` (cell counts, mean DNA
content, 4N fraction, histogram) and, with controls, ``zprime.parquet``
(:mod:`cellflow.readouts.assay`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellflow._config import check_keys
from cellflow._files import write_parquet
from cellflow.errors import RegionError
from cellflow.graph._parts import PART_KEYS, tables_group, write_part
from cellflow.graph._stage import StageGraph, TaskResult, per_field_graph, written_upstream
from cellflow.graph._tables import StageTables
from cellflow.graph.autolabel import _complete_illumination
from cellflow.graph.illumination import IlluminationParams, resolve_offset
from cellflow.ops.illumination import apply_illumination
from cellflow.ops.measure import link_objects, measure_objects, touches_border
from cellflow.readouts.assay import Controls, PloidyParams, dna_histogram, well_table, zprime_table
from cellflow.screen.store import FieldKey, Screen

__all__ = ["MEASURE_TABLES", "MeasureParams", "build_measure", "measure_tables", "object_part_path", "read_objects"]

_STAGE = "measure"
_ILLUMINATION = "illumination"
_KEY_COLUMNS = ("plate", "well", "site", "t", "label")


def _fail(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"MeasureParams.{name} must be {expected}, got {value!r}")


def _names(name: str, value: Any) -> tuple[str, ...]:
    names = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
    if not names or any(not isinstance(v, str) or not v.strip() for v in names) or len(set(names)) != len(names):
        raise _fail(name, "a non-empty list of unique names", value)
    return names


def _nested(name: str, value: Any, kind: Any) -> Any:
    if value is None or isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise _fail(name, f"a {kind.__name__} or a mapping of its fields", value)
    return kind.from_dict(value)


@dataclass(frozen=True)
class MeasureParams:
    """Settings of the measure stage; validated here, trusted everywhere else.

    Parameters
    ----------
    labels : tuple of str
        Label variables to measure, e.g. ``('labels_nuclei', 'labels_cells')``.
    channels : tuple of str, optional
        Channels whose intensities are measured; None for all of the screen's.
    dna_channel : str, optional
        Channel whose integrated intensity is the DNA content (added to ``channels``);
        None: no DNA-content readouts.
    z : {'mean', 'max'} or int
        How a channel's z planes become one plane: averaged, maximum, or one plane index.
    illumination : bool
        Divide by the stored ``illumination`` where it is complete (see the module docstring).
    offset : float, optional
        Camera offset in ADU; None: the screen's metadata
        (:func:`~cellflow.graph.illumination.resolve_offset`).
    controls : Controls, optional
        Positive and negative control wells, for ``zprime.parquet``.
    ploidy : PloidyParams
        G1 peak, 4N threshold and histogram bins.

    Examples
    --------
    >>> params = MeasureParams(controls={"positive": ["A01", "A02"], "negative": ["B01", "B02"]})
    >>> MeasureParams.from_dict(params.to_dict()) == params
    True
    """

    labels: tuple[str, ...] = ("labels_nuclei",)
    channels: tuple[str, ...] | None = None
    dna_channel: str | None = "DNA"
    z: str | int = "mean"
    illumination: bool = True
    offset: float | None = None
    controls: Controls | None = None
    ploidy: PloidyParams = field(default_factory=PloidyParams)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "labels", _names("labels", self.labels))
        if self.channels is not None:
            set_(self, "channels", _names("channels", self.channels))
        if self.dna_channel is not None and (not isinstance(self.dna_channel, str) or not self.dna_channel.strip()):
            raise _fail("dna_channel", "a channel name such as 'DNA' or None", self.dna_channel)
        if self.z not in ("mean", "max") and (isinstance(self.z, bool) or not isinstance(self.z, int) or self.z < 0):
            raise _fail("z", "'mean', 'max' or a plane index >= 0", self.z)
        if not isinstance(self.illumination, bool):
            raise _fail("illumination", "True or False", self.illumination)
        if self.offset is not None:  # IlluminationParams validates offsets; its message names the field
            set_(self, "offset", IlluminationParams(offset=self.offset).offset)
        set_(self, "controls", _nested("controls", self.controls, Controls))
        set_(self, "ploidy", _nested("ploidy", self.ploidy, PloidyParams))

    @property
    def measured_channels(self) -> tuple[str, ...] | None:
        """``channels`` with ``dna_channel`` appended when missing (None: all)."""
        if self.channels is None or self.dna_channel is None or self.dna_channel in self.channels:
            return self.channels
        return (*self.channels, self.dna_channel)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict (nested settings as dicts); :meth:`from_dict` inverts it."""
        return {
            "labels": list(self.labels), "channels": None if self.channels is None else list(self.channels),
            "dna_channel": self.dna_channel, "z": self.z, "illumination": self.illumination, "offset": self.offset,
            "controls": None if self.controls is None else self.controls.to_dict(), "ploidy": self.ploidy.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeasureParams:
        """Params from :meth:`to_dict` output (or a YAML spec), naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


@dataclass(frozen=True)
class _Plan:
    """What every task needs besides the screen and the field, fixed on the client."""

    params: MeasureParams
    channels: tuple[str, ...]
    offset: float
    corrected: frozenset[tuple[str, str]] | None  # (plate, channel) to flat-field; None: all
    link_cells: bool


# ---------------------------------------------------------------------------- client side
def _check(screen: Screen, params: MeasureParams) -> tuple[str, ...]:
    """The channels to measure, after checking every name against the store."""
    missing = [name for name in params.labels if name not in screen.variables]
    if missing:
        raise RegionError(f"measure: {screen.path} has no label variables {missing!r}; it has "
                          f"{list(screen.variables)!r} (run autolabel or labels first)")
    coords = screen.coords()
    available = tuple(str(c) for c in coords["c"])
    channels = params.measured_channels or available
    unknown = [c for c in (*channels, params.dna_channel) if c is not None and c not in available]
    if unknown:
        raise ValueError(f"MeasureParams channels {unknown!r} are not channels of {screen.path}; it has {available!r}")
    if isinstance(params.z, int) and params.z >= len(coords["z"]):
        raise ValueError(f"MeasureParams.z is plane {params.z}, but {screen.path} has {len(coords['z'])} z planes")
    if params.controls is not None:
        wells = {str(w) for w in coords["well"]}
        stray = [w for w in (*params.controls.positive, *params.controls.negative) if w not in wells]
        if stray:
            raise ValueError(f"MeasureParams.controls names wells {stray!r} that are not in {screen.path}")
    return tuple(channels)


def build_measure(screen: Screen, params: MeasureParams, *, after: StageGraph | None = None,
                  fields: Iterable[Sequence[Any]] | None = None) -> StageGraph:
    """Lazy tasks that measure every field's objects and write their Parquet parts.

    Parameters
    ----------
    screen : Screen
    params : MeasureParams
    after : StageGraph, optional
        Upstream stage; each field's task waits for that field's upstream task. An
        upstream that writes ``illumination`` makes this stage apply it.
    fields : iterable of (plate, well, site, t), optional
        Fields to measure; default every acquired field.

    Returns
    -------
    StageGraph
        No store variables; one task per field returning one summary row per label variable.

    Raises
    ------
    RegionError
        A label variable or field is not in the screen.
    ValueError
        A channel, z plane or control well is not in the screen.
    """
    channels = _check(screen, params)
    corrected: frozenset[tuple[str, str]] | None = frozenset()
    if params.illumination:
        upstream = _ILLUMINATION in written_upstream(after)
        corrected = None if upstream else frozenset(_complete_illumination(screen))
    tables_group(screen)
    plan = _Plan(
        params, channels, resolve_offset(screen, IlluminationParams(offset=params.offset)), corrected,
        link_cells="labels_cells" in screen.variables,
    )
    return per_field_graph(_STAGE, _measure_field, screen, plan, after=after, fields=fields)


# ---------------------------------------------------------------------------- task body
def object_part_path(root: str | Path, labels: str, key: FieldKey) -> Path:
    """Where the object table of one field and label variable lives (``root`` = the store)."""
    return Path(root) / "tables" / "objects" / labels / key.plate / f"{key.well}_s{key.site}_t{key.t:g}.parquet"


def _plane(screen: Screen, key: FieldKey, plan: _Plan, channel: str, crop: tuple[Any, ...]) -> np.ndarray:
    """One channel of the field: offset removed, flat-fielded when planned, reduced over z."""
    planes = screen.read("images", plate=key.plate, well=key.well, site=key.site, t=key.t, c=channel)[crop]
    illumination = None
    if plan.corrected is None or (key.plate, channel) in plan.corrected:
        illumination = screen.read(_ILLUMINATION, plate=key.plate, c=channel)[crop]
        if not np.all(np.isfinite(illumination)):  # never written (NaN fill): leave the channel as it is
            illumination = None
    if illumination is None:
        signal = planes.astype(np.float32) - np.float32(plan.offset)
    else:
        signal = apply_illumination(planes, illumination, offset=plan.offset)
    z = plan.params.z
    if z == "mean":
        return np.asarray(signal.mean(axis=0, dtype=np.float32))
    if z == "max":
        return np.asarray(signal.max(axis=0))
    return np.asarray(signal[int(z)])


def _summary(table: pd.DataFrame, dna: str | None, exclude_border: bool) -> dict[str, Any]:
    """The field's summary row of one label variable (see :func:`cellflow.readouts.well_table`)."""
    counted = table[~table["border"]] if exclude_border else table
    content = counted["dna_content"].to_numpy(np.float64) if dna is not None else np.zeros(0)
    bins, counts = dna_histogram(content)
    return {
        "n_objects": len(table), "n_border": int(table["border"].sum()), "area_sum": float(table["area"].sum()),
        "dna_n": int(content.size), "dna_content_sum": float(content.sum()),
        "dna_content_median": float(np.median(content)) if content.size else float("nan"),
        # arrays, not lists: at ~200 occupied bins a field, lists of Python ints were most of what a
        # resumed run of 10^5 fields held in memory
        "dna_bins": bins.astype(np.int32), "dna_counts": counts.astype(np.int32),
    }


def _measure_field(screen: Screen, key: FieldKey, plan: _Plan, extent: tuple[int, int] | None,
                   *_upstream: Any) -> TaskResult:
    """Task: measure one field's objects in every label variable; write the parts, return summaries."""
    crop = (Ellipsis, slice(0, extent[0]), slice(0, extent[1])) if extent else (Ellipsis,)
    where = key._asdict()
    images = {c: _plane(screen, key, plan, c, crop) for c in plan.channels}
    dna = plan.params.dna_channel
    rows = []
    for name in plan.params.labels:
        labels = screen.read(name, **where)[crop]
        columns: dict[str, Any] = measure_objects(labels, images)
        columns["border"] = touches_border(columns, labels.shape)
        if dna is not None:
            columns["dna_content"] = columns[f"intensity_sum_{dna}"]
        if name == "labels_nuclei" and plan.link_cells:
            cells = screen.read("labels_cells", **where)[crop]
            columns["cell_label"] = link_objects(labels, cells, columns["label"])
        table = pd.DataFrame({"plate": key.plate, "well": key.well, "site": key.site, "t": key.t, **columns},
                             index=pd.RangeIndex(len(columns["label"])))
        path = object_part_path(screen.path, name, key)
        reference = write_part(path, table)  # checked on resume: a part deleted since makes the field run again
        rows.append({**where, "labels": name, **_summary(table, dna, plan.params.ploidy.exclude_border),
                     "path": str(path), **reference})
    return TaskResult(stage=_STAGE, field=key, rows=tuple(rows))


# ---------------------------------------------------------------------------- tables
def measure_tables(rows: Sequence[Mapping[str, Any]], out_dir: Path, params: MeasureParams | None = None
                   ) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Measure rows -> ``measurements/fields``, ``wells`` and (with controls) ``zprime`` Parquet tables.

    Parameters
    ----------
    rows : sequence of mapping
        The stage's per-field summary rows (``TaskResult.rows``).
    out_dir : Path
        The run's table folder; tables go to ``out_dir/measurements/<name>.parquet``.
    params : MeasureParams, optional
        Ploidy settings and controls; default :class:`MeasureParams`.

    Returns
    -------
    tables : dict of str to DataFrame
        Keyed ``'measurements/fields'``, ``'measurements/wells'``, ``'measurements/zprime'``.
    paths : dict of str to Path
        The files written, same keys.
    """
    return MEASURE_TABLES(rows, out_dir, params)


def _measure_frames(rows: Sequence[Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """Step 1 (:class:`~cellflow.graph._tables.StageTables`): the field summary rows as one frame."""
    return {"summaries": pd.DataFrame(list(rows))} if rows else {}


def _write_measure(frames: dict[str, pd.DataFrame], out_dir: Path, params: MeasureParams | None
                   ) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Step 2: per-well readouts (G1 peak per labels and plate), the fields' 4N calls, Z' per labels and plate."""
    if not frames:
        return {}, {}
    params = params or MeasureParams()
    summaries = frames["summaries"].drop(columns=list(PART_KEYS), errors="ignore")  # "path" names the part
    wells, fields = well_table(summaries, params.ploidy)
    tables = {"measurements/fields": fields, "measurements/wells": wells}
    if params.controls is not None:
        tables["measurements/zprime"] = zprime_table(wells, params.controls)
    folder = Path(out_dir) / "measurements"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, table in tables.items():
        paths[key] = folder / f"{key.rsplit('/', 1)[1]}.parquet"
        write_parquet(paths[key], table)
    return tables, paths


#: The measure stage's tables in the runner's two steps.
MEASURE_TABLES = StageTables(_measure_frames, _write_measure)


def read_objects(screen_or_path: Screen | str | Path, labels: str = "labels_nuclei") -> pd.DataFrame:
    """All object rows of one label variable of a store, sorted by plate, well, site, t, label.

    Raises
    ------
    FileNotFoundError
        The store has no object table for ``labels`` (the measure stage has not run).
    """
    root = screen_or_path.path if isinstance(screen_or_path, Screen) else Path(screen_or_path)
    folder = root / "tables" / "objects" / labels
    parts = sorted(folder.glob("*/*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no object tables for {labels!r} under {folder}; run the measure stage first")
    table = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return table.sort_values(list(_KEY_COLUMNS), kind="stable", ignore_index=True)
