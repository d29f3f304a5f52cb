"""``metrics.json`` as tables: the napari widget's tabs and the HTML reports' tables (no Qt here).

The napari widget shows one tab per table; the napari reader puts the same tables into
``layer.metadata["medscan"]["tables"]``; :mod:`medscan.io.report` renders them as HTML. Tables
are built from the metrics themselves, not from a list of expected keys, so every block
``medscan.ct.measure.measure_case`` writes is shown (see ``docs/ct.md`` for what the numbers
mean):

* ``summary``: the top-level numbers (lung volumes, mean lung HU, %LAA-950, Perc15, ...);
* ``density_bands``: one row per lung density band (in the order of the metrics) with its HU
  range from ``definition`` and a ``<group> mL`` / ``<group> %`` column pair per group
  (``lung_right``, ``lung_left``, ``total``); the band definition (name, source, groups) is the
  table's note, each band's source the tip of its row. ``density_bands per lung``: one row per
  group, its numbers (volume, parenchyma, functional and affected mL and %, mean HU, %LAA-950,
  ...);
* ``regions``: one row per lung and region (``lung_right upper``, ... ``total dorsal``), the
  region's numbers and each band's mL and % as columns; each lung's ``bounds`` (where the
  thirds and halves were cut) in the note;
* any other block (``tissues``, ``coverage``, ``structures``, and whatever comes later): each
  row is a mapping holding numbers, named by its path below the block (``lung_left``,
  ``lung_left / upper``); its numbers are the columns, and mappings inside a row are folded
  into it as ``key.sub`` columns (``bbox_lps_mm.min``, ``contact_cm2.inferior``). A short list
  of numbers (a centroid) is one cell.

Band voxel counts (``bands.<band>.voxels``) are not shown in the band tables: they are the band
volume in voxels (mL = voxels x ``voxel_volume_ml``) and stay in ``metrics.json``.
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
#: The blocks with their own layout (:func:`band_table` + :func:`band_group_table`,
#: :func:`region_table`).
DENSITY = "density_bands"
REGIONS = "regions"
#: Suffix of the title of the per-group table of ``density_bands``.
GROUPS = "per lung"
#: Keys of a band entry shown in the band tables (``voxels`` is left to ``metrics.json``).
BAND_COLUMNS = {"ml": "mL", "percent": "%"}

Path = tuple[str, ...]


@dataclass
class MetricTable:
    """One table: a title, column names, rows, and where each cell comes from.

    Attributes
    ----------
    title : str
        The ``metrics.json`` key the table comes from (``summary`` for the top-level numbers).
    columns : list of str
        Column names in order of first appearance; the first is :data:`ROW`.
    rows : list of dict
        One mapping per row; values are JSON scalars (numbers, bools, strings, None) or short
        lists of them; a missing column is a blank cell.
    sources : list of dict
        Per row, ``{column: key path in metrics.json}`` of every cell but the row name.
    note : str
        Text shown with the table (band definition, region bounds).
    tips : list of dict
        Per row, ``{column: text}`` explaining a cell (a band's literature source).
    """

    title: str
    columns: list[str] = field(default_factory=lambda: [ROW])
    rows: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Path]] = field(default_factory=list)
    note: str = ""
    tips: list[dict[str, str]] = field(default_factory=list)

    def add(self, name: str, cells: Mapping[str, tuple[Any, Path]],
            tips: Mapping[str, str] | None = None) -> None:
        """Append a row: ``cells`` maps each column to ``(value, key path in the metrics)``."""
        self.tips.append(dict(tips or {}))
        row: dict[str, Any] = {ROW: name}
        for column, (value, _) in cells.items():
            if column not in self.columns:
                self.columns.append(column)
            row[column] = value
        self.rows.append(row)
        self.sources.append({column: tuple(path) for column, (_, path) in cells.items()})

    def cell(self, row: int, column: str) -> str:
        """The text shown for ``rows[row][column]`` (:func:`format_value`; blank if absent)."""
        if column not in self.rows[row]:
            return ""
        return format_value(self.rows[row][column])

    def to_dict(self) -> dict[str, Any]:
        """``{"title", "columns", "rows", "sources", "note", "tips"}`` (JSON-safe)."""
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": [dict(r) for r in self.rows],
            "sources": [{c: list(p) for c, p in s.items()} for s in self.sources],
            "note": self.note,
            "tips": [dict(t) for t in self.tips],
        }


def _is_cell(value: Any) -> bool:
    """A value shown in one cell: a scalar, or a short list of scalars (centroid, range)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return (
        isinstance(value, list | tuple)
        and len(value) <= 8
        and all(v is None or isinstance(v, bool | int | float | str) for v in value)
    )


def _folded(block: Mapping[str, Any], path: Path, prefix: str = "") -> dict[str, tuple[Any, Path]]:
    """Every cell below ``block`` as ``{"key.sub": (value, path)}`` (mappings flattened)."""
    out: dict[str, tuple[Any, Path]] = {}
    for key, value in block.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_folded(value, (*path, str(key)), f"{name}."))
        elif _is_cell(value):
            out[name] = (value, (*path, str(key)))
    return out


def _rows(block: Mapping[str, Any], path: Path, table: MetricTable) -> None:
    """Rows of a generic block: each mapping with cells of its own (its mappings folded in)."""
    if any(_is_cell(v) for v in block.values()):
        table.add(SEP.join(path[1:]) or path[0], _folded(block, path))
        return
    for key, value in block.items():
        if isinstance(value, Mapping):
            _rows(value, (*path, str(key)), table)


def generic_table(title: str, block: Mapping[str, Any]) -> MetricTable:
    """A block without a layout of its own (``tissues``, ``coverage``, ``structures``, ...)."""
    table = MetricTable(title)
    _rows(block, (title,), table)
    return table


def _groups(block: Mapping[str, Any]) -> list[str]:
    """The groups of a band block (``lung_right``, ``lung_left``, ``total``), in order."""
    return [k for k, v in block.items() if k != "definition" and isinstance(v, Mapping)]


def _hu_range(definition: Mapping[str, Any], names: list[str]) -> dict[str, str]:
    """``{band: "[lo, hi)"}`` from a band definition's ``bands`` list.

    ``names`` are the bands of the metrics in order; one not in the definition (the catch-alls
    ``below_range`` / ``above_range`` of :mod:`medscan.ct.density`) gets ``< lo`` of the first
    defined band when it comes before them, else ``>= hi`` of the last.
    """
    bands = [b for b in definition.get("bands") or [] if isinstance(b, Mapping) and "name" in b]
    out = {str(b["name"]): f"[{b['hu_min']:g}, {b['hu_max']:g})" for b in bands}
    if not bands:
        return out
    seen_defined = False
    for name in names:
        if name in out:
            seen_defined = True
        elif not seen_defined:
            out[name] = f"< {bands[0]['hu_min']:g}"
        else:
            out[name] = f">= {bands[-1]['hu_max']:g}"
    return out


def _definition_note(definition: Mapping[str, Any]) -> str:
    """One line: the definition's name, source, interval and groups (bands' sources: tips)."""
    if not definition:
        return ""
    return "; ".join(f"{k}: {format_value(v)}" for k, v in definition.items() if _is_cell(v))


def _band_sources(definition: Mapping[str, Any]) -> dict[str, str]:
    """``{band: source}`` of a band definition."""
    return {str(b["name"]): str(b["source"]) for b in definition.get("bands") or []
            if isinstance(b, Mapping) and "name" in b and b.get("source")}


def band_table(block: Mapping[str, Any]) -> MetricTable:
    """``density_bands``: one row per band, its HU range, ``<group> mL`` / ``<group> %``."""
    definition = block.get("definition") or {}
    groups = _groups(block)
    bands: list[str] = []
    for group in groups:
        for band in block[group].get("bands") or {}:
            if band not in bands:
                bands.append(band)
    ranges = _hu_range(definition, bands)
    sources = _band_sources(definition)
    table = MetricTable(DENSITY, columns=[ROW, "HU"] if ranges else [ROW])
    for band in bands:
        cells: dict[str, tuple[Any, Path]] = {}
        if band in ranges:
            cells["HU"] = (ranges[band], (DENSITY, "definition", "bands"))
        for group in groups:
            entry = (block[group].get("bands") or {}).get(band) or {}
            for key, unit in BAND_COLUMNS.items():
                if key in entry:
                    cells[f"{group} {unit}"] = (entry[key], (DENSITY, group, "bands", band, key))
        table.add(band, cells, {ROW: sources[band], "HU": sources[band]} if band in sources
                  else None)
    table.note = _definition_note(definition)
    return table


def band_group_table(block: Mapping[str, Any]) -> MetricTable:
    """``density_bands`` per group: volume, parenchyma, functional/affected, mean HU, ..."""
    table = MetricTable(f"{DENSITY} {GROUPS}")
    for group in _groups(block):
        entry = block[group]
        table.add(group, {k: (v, (DENSITY, group, k)) for k, v in entry.items() if _is_cell(v)})
    return table


def region_table(block: Mapping[str, Any]) -> MetricTable:
    """``regions``: one row per lung and region; its numbers and ``<band> mL`` / ``<band> %``."""
    table = MetricTable(REGIONS)
    notes = []
    for lung, regions in block.items():
        if not isinstance(regions, Mapping):
            continue
        for region, entry in regions.items():
            if not isinstance(entry, Mapping):
                continue
            path = (REGIONS, lung, region)
            if region == "bounds":
                notes.append(
                    f"{lung} bounds: "
                    + ", ".join(f"{k} {format_value(v)}" for k, v in entry.items())
                )
                continue
            cells = {k: (v, (*path, k)) for k, v in entry.items() if _is_cell(v)}
            for band, numbers in (entry.get("bands") or {}).items():
                for key, unit in BAND_COLUMNS.items():
                    if key in numbers:
                        cells[f"{band} {unit}"] = (numbers[key], (*path, "bands", band, key))
            table.add(f"{lung} {region}", cells)
    table.note = "; ".join(notes)
    return table


def metric_tables(metrics: Mapping[str, Any] | None) -> list[MetricTable]:
    """Tables of a ``metrics.json`` mapping: the summary first, then one per top-level block.

    Parameters
    ----------
    metrics : mapping or None
        ``metrics.json`` (or ``CaseResult.metrics``); ``None`` gives no tables.

    Returns
    -------
    list of MetricTable
        ``summary`` (columns ``name``, ``value``) when there are top-level numbers, then one
        table per top-level mapping that holds numbers, in the order of ``metrics``.
    """
    tables: list[MetricTable] = []
    summary = MetricTable(SUMMARY)
    for key, value in (metrics or {}).items():
        if _is_cell(value):
            summary.add(str(key), {"value": (value, (str(key),))})
    if summary.rows:
        tables.append(summary)
    for key, value in (metrics or {}).items():
        if isinstance(value, Mapping):
            if key == DENSITY:
                made = [band_table(value), band_group_table(value)]
            elif key == REGIONS:
                made = [region_table(value)]
            else:
                made = [generic_table(str(key), value)]
            tables += [t for t in made if t.rows]
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


#: ``metrics.json`` blocks keyed by label name whose numbers become Labels feature columns;
#: ``structures`` (per-label HU statistics, centroid, bounding box, surface area) first: its
#: numbers carry more decimals than the same ones in ``tissues``.
LABEL_BLOCKS = ("structures", "tissues")


def label_metrics(metrics: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per-label numbers by label name, merged from the :data:`LABEL_BLOCKS` of ``metrics``.

    Returns
    -------
    dict
        ``{name: {key: value}}``; a key present in several blocks keeps its first value.
    """
    out: dict[str, dict[str, Any]] = {}
    for block in LABEL_BLOCKS:
        for name, numbers in ((metrics or {}).get(block) or {}).items():
            if isinstance(numbers, Mapping):
                row = out.setdefault(str(name), {})
                for key, value in numbers.items():
                    row.setdefault(key, value)
    return out
