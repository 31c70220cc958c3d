"""The run report as one offline HTML file: sections of tables, figures and text, rendered by jinja2.

Every text is escaped (``autoescape``); figures are PNGs inlined as ``data:`` URIs, and the
CSS is inline, so the file needs no network and no JavaScript.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass

import jinja2
import numpy as np
import pandas as pd

__all__ = ["FigureView", "Section", "TableView", "data_uri", "render_report", "table_view"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes.

    Raises
    ------
    ValueError
        ``png`` does not start with the PNG signature.
    """
    if not png.startswith(_PNG_SIGNATURE):
        raise ValueError(f"data_uri: expected PNG bytes, got bytes starting {png[:8]!r}")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@dataclass(frozen=True)
class TableView:
    """A table as the template shows it: titled, cells already formatted as text."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]
    more: int = 0  # rows left out


@dataclass(frozen=True)
class FigureView:
    """One PNG figure with a title and a caption."""

    title: str
    png: bytes
    caption: str = ""

    @property
    def uri(self) -> str:
        """The PNG as a data URI."""
        return data_uri(self.png)


@dataclass(frozen=True)
class Section:
    """A report section: notes, tables, figures, long tables and preformatted text, in that order.

    ``long_tables`` come after the figures, so that a plate's heat maps are not pushed below
    hundreds of table rows.
    """

    title: str
    anchor: str
    notes: tuple[str, ...] = ()
    tables: tuple[TableView, ...] = ()
    figures: tuple[FigureView, ...] = ()
    text: str = ""
    long_tables: tuple[TableView, ...] = ()


_MAX_LISTED = 4  # a list-valued cell (a histogram, say) longer than this shows its length only


def _cell(value: object) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(np.ravel(np.asarray(value, dtype=object)))
        if len(items) > _MAX_LISTED:
            return f"[{len(items)} values]"
        return "[" + ", ".join(_cell(v) for v in items) + "]"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if number != 0 and (abs(number) >= 1e5 or abs(number) < 1e-3):
            return f"{number:.3g}"
        return f"{number:.3f}" if abs(number) < 10 else f"{number:.1f}"
    return str(value)


def table_view(frame: pd.DataFrame, title: str, *, max_rows: int = 200) -> TableView:
    """A DataFrame as a :class:`TableView` (numbers to 3 decimals or 3 significant digits).

    Examples
    --------
    >>> view = table_view(pd.DataFrame({"well": ["A01"], "f1": [0.51234]}), "t")
    >>> view.rows, view.numeric
    ((('A01', '0.512'),), (False, True))
    >>> table_view(pd.DataFrame({"bins": [[1, 2], list(range(60))]}), "t").rows
    (('[1, 2]',), ('[60 values]',))
    """
    shown = frame.head(max_rows)
    numeric = tuple(frame[c].dtype.kind in "iuf" for c in frame.columns)
    rows = tuple(tuple(_cell(v) for v in row) for row in shown.itertuples(index=False))
    return TableView(title=title, columns=tuple(map(str, frame.columns)), rows=rows, numeric=numeric,
                     more=max(len(frame) - max_rows, 0))


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cellflow.report", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False, keep_trailing_newline=True,
    )


def render_report(
    *, title: str, status: str, header: Sequence[tuple[str, str]], sections: Sequence[Section], generator: str = ""
) -> str:
    """Render the report page.

    Parameters
    ----------
    title : str
        Page title (escaped).
    status : str
        'ok', 'quarantined', 'failed', 'interrupted' or anything else (drawn grey), shown as a badge.
    header : sequence of (str, str)
        Key/value lines under the title (an http(s) value becomes a link).
    sections : sequence of Section
        In page order; each gets an anchor in the navigation line.
    generator : str
        Version text in the footer.

    Returns
    -------
    str
        A complete HTML document.
    """
    status_class = status if status in ("ok", "quarantined", "failed", "interrupted") else "unknown"
    template = _environment().get_template("report.html.j2")
    return template.render(title=title, status=status, status_class=status_class, header=list(header),
                           sections=list(sections), generator=generator)
