"""Build napari layer-data tuples for CT volumes, label maps and meshes in the medscan world.

Every function returns ``(data, kwargs, layer_type)`` (napari's ``LayerDataTuple``), so the reader,
the widgets and scripts share one way of placing data: see :mod:`medscan.napari.geometry`.
No napari import happens here; the tuples are plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medscan.napari.geometry import (
    WORLD_AXES,
    layer_transform,
    parse_color,
    reorient_lps,
    world_from_lps,
)

#: CT window presets as HU contrast limits (low, high): window width / level
#: lung 1500/-600, mediastinum 350/50, bone 1800/400.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-1350.0, 150.0),
    "mediastinum": (-125.0, 225.0),
    "bone": (-500.0, 1300.0),
}
DEFAULT_PRESET = "lung"

#: Preference order when one tissue has meshes in several formats.
MESH_FORMATS = ("ply", "obj", "stl", "glb")

LayerDataTuple = tuple[Any, dict[str, Any], str]


def _common(name: str, metadata: Mapping[str, Any] | None, visible: bool) -> dict[str, Any]:
    return {
        "name": name,
        "metadata": {"medscan": dict(metadata or {})},
        "visible": visible,
        "axis_labels": WORLD_AXES,
        "units": ("mm", "mm", "mm"),
    }


def image_layer(
    hu_zyx: np.ndarray,
    lps_affine: np.ndarray,
    name: str,
    metadata: Mapping[str, Any] | None = None,
    preset: str = DEFAULT_PRESET,
    visible: bool = True,
) -> LayerDataTuple:
    """An Image layer of a HU volume with a CT window preset.

    Parameters
    ----------
    hu_zyx : numpy.ndarray
        HU values in ``(z, y, x)`` order.
    lps_affine : numpy.ndarray
        4x4 ``(i, j, k)`` -> LPS mm of ``hu_zyx``.
    name : str
        Layer name.
    metadata : mapping, optional
        Extra entries for ``layer.metadata["medscan"]`` (case id, metrics, manifest, ...).
    preset : str
        Initial window, a key of :data:`WINDOW_PRESETS`.
    visible : bool
        Initial visibility.

    Returns
    -------
    tuple
        ``(data, kwargs, "image")``. ``metadata["medscan"]`` holds ``kind="ct"``,
        ``lps_affine`` (of the data as stored in the layer), ``source_lps_affine`` (of
        ``hu_zyx``, before :func:`~medscan.napari.geometry.reorient_lps`) and
        ``window_presets``.
    """
    data, affine = reorient_lps(hu_zyx, lps_affine)
    meta = {
        "kind": "ct",
        "lps_affine": affine.tolist(),
        "source_lps_affine": np.asarray(lps_affine, dtype=np.float64).tolist(),
        "window_presets": {k: list(v) for k, v in WINDOW_PRESETS.items()},
        "window": preset,
        **dict(metadata or {}),
    }
    kwargs = _common(name, meta, visible)
    kwargs.update(layer_transform(affine))
    kwargs.update(
        colormap="gray",
        contrast_limits=WINDOW_PRESETS[preset],
        rendering="attenuated_mip",
        attenuation=0.02,
        blending="translucent",
    )
    return data, kwargs, "image"


def label_table(labels: Mapping[Any, Any] | None) -> dict[int, dict[str, Any]]:
    """Normalise a manifest ``labels`` mapping to ``{id: {"name": str, "color": RGBA}}``.

    Parameters
    ----------
    labels : mapping
        ``{id: {"name": ..., "color": ...}}`` with ids as int or str (JSON keys), colours as
        ``"#rrggbb"`` or RGB(A) lists; ``None`` gives an empty table.

    Returns
    -------
    dict
        Sorted by label id; background ``0`` is dropped.
    """
    table: dict[int, dict[str, Any]] = {}
    for key, value in (labels or {}).items():
        label = int(key)
        if label == 0:
            continue
        if isinstance(value, str):
            value = {"name": value}
        table[label] = {
            "name": str(value.get("name", f"label {label}")),
            "color": parse_color(value.get("color")),
        }
    return dict(sorted(table.items()))


#: Feature columns that lead, in this order, when the metrics have them.
LEAD_COLUMNS = ("volume_ml", "mean_hu", "std_hu")


def feature_columns(tissue_metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Numeric per-label keys of ``tissue_metrics`` (not ``label``): the Labels feature columns.

    :data:`LEAD_COLUMNS` come first (always, NaN when missing), then every other key whose value
    is a number for some label, in order of first appearance.
    """
    columns = list(LEAD_COLUMNS)
    for numbers in tissue_metrics.values():
        for key, value in (numbers or {}).items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and key != "label" and key not in columns:
                columns.append(key)
    return columns


def labels_layer(
    labels_zyx: np.ndarray,
    lps_affine: np.ndarray,
    name: str,
    table: Mapping[int, Mapping[str, Any]],
    tissue_metrics: Mapping[str, Mapping[str, Any]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    visible: bool = True,
) -> LayerDataTuple:
    """A Labels layer with tissue names (as features) and colours.

    Parameters
    ----------
    labels_zyx : numpy.ndarray
        Integer label map in ``(z, y, x)`` order.
    lps_affine : numpy.ndarray
        4x4 ``(i, j, k)`` -> LPS mm.
    name : str
        Layer name.
    table : mapping
        ``{id: {"name", "color"}}`` from :func:`label_table`.
    tissue_metrics : mapping, optional
        Per-label numbers by tissue name (``metrics.json["tissues"]``: ``{name: {label,
        volume_ml, mean_hu, std_hu, ...}}``); every number becomes a feature column
        (:func:`feature_columns`; one row per label id; napari shows them under the cursor).
    metadata : mapping, optional
        Extra entries for ``layer.metadata["medscan"]``.
    visible : bool
        Initial visibility.

    Returns
    -------
    tuple
        ``(data, kwargs, "labels")``.
    """
    import pandas as pd

    data, affine = reorient_lps(labels_zyx, lps_affine)
    tissue_metrics = dict(tissue_metrics or {})
    columns = feature_columns(tissue_metrics)
    rows = [{"index": 0, "name": "background", **dict.fromkeys(columns, np.nan)}]
    for label, entry in table.items():
        row: dict[str, Any] = {"index": int(label), "name": entry["name"]}
        numbers = tissue_metrics.get(entry["name"], {})
        for column in columns:
            value = numbers.get(column)
            row[column] = float(value) if value is not None else np.nan
        rows.append(row)
    colormap: dict[int | None, Any] = {0: (0.0, 0.0, 0.0, 0.0), None: (0.5, 0.5, 0.5, 1.0)}
    colormap.update({int(k): tuple(v["color"]) for k, v in table.items()})
    meta = {
        "kind": "labels",
        "lps_affine": affine.tolist(),
        "label_names": {int(k): v["name"] for k, v in table.items()},
        **dict(metadata or {}),
    }
    kwargs = _common(name, meta, visible)
    kwargs.update(layer_transform(affine))
    kwargs.update(features=pd.DataFrame(rows), colormap=colormap, opacity=0.5)
    return np.asarray(data), kwargs, "labels"


def surface_layer(
    vertices_lps: np.ndarray,
    faces: np.ndarray,
    name: str,
    color: Any = None,
    metadata: Mapping[str, Any] | None = None,
    visible: bool = True,
) -> LayerDataTuple:
    """A Surface layer from a mesh whose vertices are LPS mm, in one colour.

    Parameters
    ----------
    vertices_lps : numpy.ndarray
        ``(n, 3)`` LPS ``(x, y, z)`` in mm.
    faces : numpy.ndarray
        ``(m, 3)`` vertex indices.
    name : str
        Layer name.
    color : str or sequence, optional
        Any colour :func:`medscan.napari.geometry.parse_color` understands.
    metadata : mapping, optional
        Extra entries for ``layer.metadata["medscan"]``.
    visible : bool
        Initial visibility.

    Returns
    -------
    tuple
        ``((vertices_world, faces), kwargs, "surface")``.
    """
    vertices = world_from_lps(vertices_lps).astype(np.float32)
    faces = np.asarray(faces, dtype=np.int64)
    rgba = np.asarray(parse_color(color), dtype=np.float32)
    kwargs = _common(name, {"kind": "mesh", **dict(metadata or {})}, visible)
    kwargs.update(
        vertex_colors=np.tile(rgba, (len(vertices), 1)),
        shading="smooth",
        blending="translucent_no_depth" if rgba[3] < 1 else "opaque",
    )
    return (vertices, faces), kwargs, "surface"


def load_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a mesh file (ply, stl, obj, glb) with trimesh, unchanged (no merging or repair).

    Parameters
    ----------
    path : str or Path
        Mesh file; vertices are expected in LPS mm (the medscan output contract).

    Returns
    -------
    vertices : numpy.ndarray
        ``(n, 3)`` float64.
    faces : numpy.ndarray
        ``(m, 3)`` int64.

    Raises
    ------
    ValueError
        When the file holds no triangles.
    """
    from medscan.interrupt import import_holding_interrupt

    trimesh = import_holding_interrupt("trimesh")  # Ctrl-C not swallowed

    mesh = trimesh.load(str(path), force="mesh", process=False)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        raise ValueError(f"{path}: mesh has no triangles")
    return vertices, faces
