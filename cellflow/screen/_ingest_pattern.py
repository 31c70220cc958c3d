"""Filename patterns: from a file's name to its screen coordinates.

A :class:`FilenamePattern` is either a brace template (``"{well}_s{site}_w{channel}.tif"``)
compiled to a regular expression, or a regular expression with named groups. Either way
it is validated once, here, and the rest of ingest works with the normalised
coordinates that :meth:`FilenamePattern.coordinates` returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cellflow.errors import IngestError
from cellflow.screen.layout import WELL_PATTERN

__all__ = ["DEFAULT_CHANNEL", "FIELDS", "RGB_METHODS", "FilenamePattern", "natural_key"]

#: Field names a pattern may capture.
FIELDS: tuple[str, ...] = ("plate", "well", "row", "col", "site", "t", "channel", "z")
#: Ways to reduce an RGB(A) file to one channel (see :func:`cellflow.screen.ingest.reduce_rgb`).
RGB_METHODS: tuple[str, ...] = ("mean", "luminance", "max", "red", "green", "blue")
#: Channel name of every file when the pattern has no ``{channel}`` field.
DEFAULT_CHANNEL = "image"

# Sub-pattern of each field in a template unless overridden with {name:regex}. None of
# them crosses a folder separator, so a template with '/' matches folder by folder.
_FIELD_REGEX: dict[str, str] = {
    "plate": r"[^/]+?",
    "well": r"[A-Za-z]{1,2}[0-9]{1,2}",
    "row": r"[A-Za-z]{1,2}",
    "col": r"[0-9]{1,2}",
    "site": r"[0-9]+",
    "t": r"[0-9]+",
    "channel": r"[^/]+?",
    "z": r"[0-9]+",
}
_WILDCARD = r"[^/]*?"
_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_TIFF = r"(?i:\.tiff?)"

# Built-in patterns, written as regular expressions because their optional parts
# (plate prefix, site, channel, GUID) are not expressible in a template.
_NAMED: dict[str, str] = {
    # ImageXpress / BBBC021-039: [PLATE_]WELL[_sSITE][_wCHANNEL[GUID]].tif, e.g.
    # IXMtest_A02_s1_w1D3D1A84C-0B6B-4A5B-9C53-2B5D1C5C9A6E.tif, Week1_150607_B02_s4_w1.tif
    "imagexpress": (
        rf"(?:(?P<plate>[^/]+?)_)?(?P<well>[A-Z]{{1,2}}[0-9]{{2}})(?:_s(?P<site>[0-9]+))?"
        rf"(?:_w(?P<channel>[0-9]+)(?:{_GUID})?)?{_TIFF}"
    ),
    # cellflow's own export: PLATE_WELL_sSITE_tT_zZ_CHANNEL.tif, e.g. P1_B07_s0_t3_z0_DNA.tif
    "cellflow": (
        r"(?P<plate>[^/]+?)_(?P<well>[A-Za-z]{1,2}[0-9]{2})_s(?P<site>[0-9]+)_t(?P<t>[0-9]+)"
        rf"_z(?P<z>[0-9]+)_(?P<channel>[^/]+?){_TIFF}"
    ),
}
_NAMED["bbbc"] = _NAMED["imagexpress"]


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value: ``'w2' < 'w10'``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"([0-9]+)", text))


def _template_to_regex(template: str) -> str:
    """Compile a brace template to a regex source; braces may nest inside ``{name:regex}``."""
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch == "{":
            depth, j = 1, i + 1
            while j < len(template) and depth:
                depth += {"{": 1, "}": -1}.get(template[j], 0)
                j += 1
            if depth:
                raise IngestError(f"template {template!r}: '{{' at position {i} is never closed")
            name, colon, sub = template[i + 1 : j - 1].partition(":")
            if name not in FIELDS:
                raise IngestError(
                    f"template {template!r}: unknown field {name!r}; expected one of {FIELDS!r}"
                )
            out.append(f"(?P<{name}>{sub if colon else _FIELD_REGEX[name]})")
            i = j
        elif ch == "}":
            raise IngestError(f"template {template!r}: unmatched '}}' at position {i}")
        elif ch == "*":
            out.append(_WILDCARD)
            i += 1
        else:
            out.append(re.escape(ch))
            i += 1
    return "".join(out)


def _compile(source: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(source)
    except re.error as exc:
        raise IngestError(f"pattern {source!r} is not a valid regular expression: {exc}") from exc
    unknown = sorted(set(compiled.groupindex) - set(FIELDS))
    if unknown:
        raise IngestError(f"pattern {source!r}: unknown field(s) {unknown!r}; expected some of {FIELDS!r}")
    names = set(compiled.groupindex)
    if "well" not in names and not {"row", "col"} <= names:
        raise IngestError(f"pattern {source!r} must capture the well: a 'well' field, or 'row' and 'col'")
    if ("well" in names and names & {"row", "col"}) or len(names & {"row", "col"}) == 1:
        raise IngestError(f"pattern {source!r}: give either 'well' or both 'row' and 'col'")
    return compiled


def _positive(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise IngestError(f"FilenamePattern.{name} must be a positive number, got {value!r}")
    return number


@dataclass(frozen=True)
class FilenamePattern:
    """How file names map to plate, well, site, time, channel and z.

    Parameters
    ----------
    template : str, optional
        Brace template such as ``"{plate}/{well}_s{site}_w{channel}.tif"``. Fields are
        ``plate, well, row, col, site, t, channel, z``; ``{row}{col}`` make a well name
        (``B7`` -> ``B07``); ``{name:regex}`` overrides a field's sub-pattern; ``*`` matches
        any text within one folder level and is not captured; everything else is literal.
    regex : str, optional
        A regular expression with named groups from the same field names (see
        :meth:`from_regex`). Give a template or a regex; with a template this holds
        the compiled regex.
    channel_names : mapping of str to str
        Channel value in the name -> channel name, e.g. ``{"1": "DNA", "2": "Cyto"}``.
        Unmapped values are kept as they are. Channels are ordered as listed here, then
        unmapped ones in natural order. Without a channel field every file is channel
        ``'image'``.
    interval_min : float
        Minutes between time points: a ``{t}`` value is an index and its time is
        ``index * interval_min`` (the default 1.0 keeps the index).
    z_step_um : float
        Micrometres between focal planes: a ``{z}`` index (or a TIFF page index when the
        pattern has no z field) becomes ``index * z_step_um``. Not centred, so a plane's
        z does not depend on which other planes exist.
    plate : str, optional
        Plate name when the pattern has no plate field (default: the folder's name).
    rgb : {'mean', 'luminance', 'max', 'red', 'green', 'blue'}, optional
        How to reduce an RGB(A) file to one channel. None (default) makes an RGB file a
        bad file whose reason says to set ``rgb``.

    The pattern must match the whole file name, or the whole path relative to the
    ingested folder when it contains ``/``. Missing fields default to site 0, t 0, z 0.

    Examples
    --------
    >>> p = FilenamePattern("{row}{col}_s{site}_w{channel}.tif", channel_names={"1": "DNA"})
    >>> p.coordinates("B7_s2_w1.tif", default_plate="P1")
    {'plate': 'P1', 'well': 'B07', 'site': 2, 't': 0.0, 'channel': 'DNA', 'z': 0.0}
    >>> FilenamePattern.named("bbbc").coordinates(
    ...     "Week1_150607_B02_s4_w1E4A56DD0-9E45-4E14-A7B8-5C0F5F7F1A3E.tif", default_plate="x")["plate"]
    'Week1_150607'
    """

    template: str | None = None
    regex: str | None = None
    channel_names: Mapping[str, str] = field(default_factory=dict)
    interval_min: float = 1.0
    z_step_um: float = 1.0
    plate: str | None = None
    rgb: str | None = None
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.template is not None:
            if not isinstance(self.template, str) or not self.template:
                raise IngestError(f"FilenamePattern.template must be a non-empty str, got {self.template!r}")
            source = _template_to_regex(self.template)
            if self.regex is not None and self.regex != source:
                raise IngestError("FilenamePattern: give a template or a regex, not both")
            set_(self, "regex", source)
        elif not isinstance(self.regex, str) or not self.regex:
            raise IngestError(f"FilenamePattern needs a template or a regex, got regex={self.regex!r}")
        set_(self, "_compiled", _compile(str(self.regex)))
        names = dict(self.channel_names)
        bad = {k: v for k, v in names.items() if not isinstance(k, str) or not isinstance(v, str) or not v.strip()}
        if bad:
            raise IngestError(f"FilenamePattern.channel_names must map str to non-blank str, got {bad!r}")
        if len(set(names.values())) != len(names):
            raise IngestError(f"FilenamePattern.channel_names maps two values to one name: {names!r}")
        set_(self, "channel_names", names)
        set_(self, "interval_min", _positive("interval_min", self.interval_min))
        set_(self, "z_step_um", _positive("z_step_um", self.z_step_um))
        if self.plate is not None and (not isinstance(self.plate, str) or not self.plate.strip()):
            raise IngestError(f"FilenamePattern.plate must be a non-blank str or None, got {self.plate!r}")
        if self.rgb is not None and self.rgb not in RGB_METHODS:
            raise IngestError(f"FilenamePattern.rgb must be one of {RGB_METHODS!r} or None, got {self.rgb!r}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_regex(cls, regex: str, **options: Any) -> FilenamePattern:
        """A pattern from a regular expression with named groups (``(?P<well>...)``).

        Examples
        --------
        >>> FilenamePattern.from_regex(r"(?P<well>[A-P][0-9]{2})-(?P<channel>\\w+)\\.png").fields
        ('well', 'channel')
        """
        return cls(regex=regex, **options)

    @classmethod
    def named(cls, name: str, **options: Any) -> FilenamePattern:
        """A built-in pattern with ``options`` as in the constructor.

        ``'imagexpress'`` / ``'bbbc'``: ``[PLATE_]WELL[_sSITE][_wCHANNEL[GUID]].tif`` as
        written by ImageXpress and used by BBBC021-039; the hex GUID after the channel is
        ignored, thumbnails (``_thumb``) do not match. ``'cellflow'``:
        ``PLATE_WELL_sSITE_tT_zZ_CHANNEL.tif``, e.g. ``P1_B07_s0_t3_z0_DNA.tif``.
        """
        if name not in _NAMED:
            raise IngestError(f"unknown built-in pattern {name!r}; expected one of {sorted(_NAMED)!r}")
        return cls(regex=_NAMED[name], **options)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Names accepted by :meth:`named`."""
        return tuple(sorted(_NAMED))

    # ------------------------------------------------------------------ use
    @property
    def fields(self) -> tuple[str, ...]:
        """Field names the pattern captures, in the order they appear."""
        return tuple(self._compiled.groupindex)

    @property
    def matches_path(self) -> bool:
        """True when the pattern has a '/' (outside ``[...]``): it matches relative paths, not names."""
        return "/" in re.sub(r"\[(?:\\.|[^\]])*\]", "", str(self.regex))

    def match(self, name: str) -> dict[str, str] | None:
        """Raw captured text per field, or None when ``name`` does not match."""
        found = self._compiled.fullmatch(name)
        if found is None:
            return None
        return {k: v for k, v in found.groupdict().items() if v is not None}

    def coordinates(self, name: str, *, default_plate: str) -> dict[str, Any] | None:
        """Normalised coordinates of a file, or None when it does not match.

        Returns ``plate, well`` (``'B07'``), ``site`` (int), ``t`` (minutes), ``channel``
        (mapped name) and ``z`` (µm).

        Raises
        ------
        IngestError
            The name matches but a value cannot be a coordinate (a well like ``'B123'``).
        """
        raw = self.match(name)
        if raw is None:
            return None
        well = raw.get("well") or raw.get("row", "") + raw.get("col", "")
        parts = re.fullmatch(r"([A-Za-z]{1,2})([0-9]+)", well)
        well = f"{parts.group(1).upper()}{int(parts.group(2)):02d}" if parts else well
        if not WELL_PATTERN.match(well):
            raise IngestError(f"{name!r}: well {well!r} is not a well name like 'A01' (pattern {self.regex!r})")
        numbers = {}
        for key in ("site", "t", "z"):
            text = raw.get(key, "0")
            if not (text.isascii() and text.isdigit()):
                raise IngestError(f"{name!r}: {key} must be a non-negative integer, got {text!r}")
            numbers[key] = int(text)
        channel = raw.get("channel", DEFAULT_CHANNEL)
        plate = raw.get("plate") or self.plate or default_plate
        if not channel.strip() or not plate.strip():
            raise IngestError(f"{name!r}: blank plate or channel name")
        return {
            "plate": plate,
            "well": well,
            "site": numbers["site"],
            "t": numbers["t"] * self.interval_min,
            "channel": self.channel_names.get(channel, channel),
            "z": numbers["z"] * self.z_step_um,
        }

    def channel_order(self, name: str) -> tuple[Any, ...]:
        """Sort key of a channel name: mapped names in mapping order, then natural order."""
        mapped = list(self.channel_names.values())
        return (0, mapped.index(name)) if name in mapped else (1, natural_key(name))

    # ------------------------------------------------------------------ dict round-trip
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` inverts it."""
        source = {"template": self.template} if self.template is not None else {"regex": self.regex}
        return {
            **source, "channel_names": dict(self.channel_names), "interval_min": self.interval_min,
            "z_step_um": self.z_step_um, "plate": self.plate, "rgb": self.rgb,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FilenamePattern:
        """Build a pattern from :meth:`to_dict` output, naming unknown keys."""
        known = {"template", "regex", "channel_names", "interval_min", "z_step_um", "plate", "rgb"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise IngestError(f"FilenamePattern got unknown keys {unknown!r}; expected some of {sorted(known)!r}")
        return cls(**dict(data))
