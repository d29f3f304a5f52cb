"""``metrics.json`` as tables: the napari widget's tabs and the HTML reports' tables (no Qt here).

The napari widget shows one tab per table; the napari reader puts the same tables into
``layer.metadata["medscan"]["tables"]``; :mod:`medscan.io.report` renders them as HTML. The
tables are read from the metrics themselves, not from a list of expected keys, so every block
``medscan.ct.measure`` writes is shown and nothing is invented:

* ``summary``: the top-level numbers (lung volumes, mean lung HU, %LAA-950, Perc15, ...);
* one table per top-level mapping (``tissues``, ``coverage``, the density bands, the regions, the
  per-structure statistics, ...): each row is a mapping holding numbers, named by its path below
  the block (``lung_left``, ``lung_left / upper``); its columns are those numbers (a short list
  of numbers, like a centroid or a bounding box, is one cell).

See ``docs/napari.md`` and ``docs/ct.md`` (what the metrics mean).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Row-name column of every table.
ROW = "name"
#: Title of the table of top-level numbers.
SUMMARY = "summary"
#: Separator of nested row names.
SEP = " / "


@dataclass
class MetricTable:
    """One table: a title, column names and rows (``{column: value}``, missing = blank).

    Attributes
    ----------
    title : str
        The ``metrics.json`` key the table comes from (``summary`` for the top-level numbers).
    columns : list of str
        Column names in order of first appearance; the first is :data:`ROW`.
    rows : list of dict
        One mapping per row; values are JSON scalars (numbers, bools, strings, None) or short
        lists of them.
    paths : list of tuple of str
        Per row, the keys leading to it in ``metrics.json`` (a summary row: to its value;
        otherwise to the mapping whose cells it shows; a folded column ``key.sub`` adds
        ``key, sub``).
    """

    title: str
    columns: list[str] = field(default_factory=lambda: [ROW])
    rows: list[dict[str, Any]] = field(default_factory=list)
    paths: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, row: dict[str, Any], path: tuple[str, ...] = ()) -> None:
        """Append a row found at ``path`` in the metrics, extending the columns with its keys."""
        for key in row:
            if key not in self.columns:
                self.columns.append(key)
        self.rows.append(row)
        self.paths.append(tuple(path))

    def cell(self, row: int, column: str) -> str:
        """The text shown for ``rows[row][column]`` (:func:`format_value`; blank if absent)."""
        if column not in self.rows[row]:
            return ""
        return format_value(self.rows[row][column])

    def to_dict(self) -> dict[str, Any]:
        """``{"title", "columns", "rows", "paths"}`` (JSON-safe, for ``layer.metadata``)."""
        return {"title": self.title, "columns": list(self.columns), "rows": list(self.rows),
                "paths": [list(p) for p in self.paths]}


def _is_cell(value: Any) -> bool:
    """A value shown in one cell: a scalar, or a short list of scalars (centroid, bbox)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return (
        isinstance(value, list | tuple)
        and len(value) <= 8
        and all(v is None or isinstance(v, bool | int | float | str) for v in value)
    )


def _leaf(value: Any) -> bool:
    """A mapping of cells only (e.g. ``contact_cm2: {inferior: 5.49}``)."""
    return isinstance(value, Mapping) and all(_is_cell(v) for v in value.values())


def _rows(block: Mapping[str, Any], path: tuple[str, ...], table: MetricTable) -> None:
    """Add every mapping below ``block`` that holds cells as a row named by its path.

    A mapping of cells inside a row that has cells of its own is folded into that row as
    ``key.sub`` columns instead of becoming a row of its own.
    """
    cells = {k: v for k, v in block.items() if _is_cell(v)}
    folded = {k for k, v in block.items() if cells and _leaf(v)}
    for key in folded:
        cells.update({f"{key}.{sub}": v for sub, v in block[key].items()})
    if cells:
        table.add({ROW: SEP.join(path[1:]) or path[0], **cells}, path)
    for key, value in block.items():
        if isinstance(value, Mapping) and key not in folded:
            _rows(value, (*path, str(key)), table)


def metric_tables(metrics: Mapping[str, Any] | None) -> list[MetricTable]:
    """Tables of a ``metrics.json`` mapping: the summary first, then one per top-level block.

    Parameters
    ----------
    metrics : mapping or None
        ``metrics.json`` (or ``CaseResult.metrics``); ``None`` gives no tables.

    Returns
    -------
    list of MetricTable
        ``summary`` (one row per top-level number: columns ``name``, ``value``) when there are
        top-level numbers, then one table per top-level mapping that holds numbers, in the
        order of ``metrics``. Top-level mappings of cells become a one-row table named after
        the block.
    """
    tables: list[MetricTable] = []
    summary = MetricTable(SUMMARY)
    for key, value in (metrics or {}).items():
        if _is_cell(value):
            summary.add({ROW: str(key), "value": value}, (str(key),))
    if summary.rows:
        tables.append(summary)
    for key, value in (metrics or {}).items():
        if not isinstance(value, Mapping):
            continue
        table = MetricTable(str(key))
        _rows(value, (str(key),), table)
        if table.rows:
            tables.append(table)
    return tables


def format_value(value: Any) -> str:
    """Cell text of a metric value.

    Floats get 2 decimals (3 significant digits below 0.01), None/NaN is ``n/a``, bools are
    yes/no, lists are bracketed.
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        # two decimals (mL, HU, %); significant digits for small numbers (voxel_volume_ml)
        return f"{value:.2f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)
