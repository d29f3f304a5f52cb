"""Mesh files of a case: PLY, STL, OBJ and binary glTF (trimesh), with their LPS-mm metadata.

Surfaces come from :func:`medscan.ct.mesh.label_surface` as ``trimesh.Trimesh`` in patient LPS
mm; this module only describes and writes them (imports no ``medscan.ct``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medscan.io.atomic import write_bytes

#: Mesh formats written by :func:`export_mesh`.
FORMATS = ("ply", "stl", "obj", "glb")
#: Coordinate description stored in manifests and (where the format allows) in the files.
SPACE = {"coordinate_space": "LPS", "units": "mm"}


def mesh_summary(mesh: Any) -> dict[str, Any]:
    """Vertex/face counts, watertightness, enclosed volume (mL) and LPS bounds (mm)."""
    watertight = bool(mesh.is_watertight)
    return {
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "watertight": watertight,
        "volume_ml": round(float(abs(mesh.volume)) / 1000.0, 3) if watertight else None,
        "bounds_mm": np.round(mesh.bounds, 3).tolist(),
    }


def export_mesh(
    mesh: Any,
    path: str | Path,
    color: tuple[int, int, int],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Atomically write ``mesh`` to ``path`` (format from the suffix: ply, stl, obj or glb).

    Colours are per vertex (not in STL). The coordinate space (LPS, mm) and ``metadata`` are
    stored where the format allows: a PLY header comment, the OBJ header comment, the 80-byte
    STL header, and the glTF mesh ``extras``.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        Surface in LPS mm.
    path : str or Path
        Output file.
    color : tuple of int
        RGB 0..255.
    metadata : dict, optional
        Extra JSON-safe fields (tissue name, label id, case id).

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        For an unknown format.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown mesh format {fmt!r} (use one of {FORMATS})")
    write_bytes(path, mesh_bytes(mesh, fmt, color, metadata))
    return path


def mesh_bytes(
    mesh: Any, fmt: str, color: tuple[int, int, int], metadata: dict[str, Any] | None = None,
) -> bytes:
    """The file content of :func:`export_mesh` for format ``fmt`` (``ply, stl, obj, glb``)."""
    from medscan.interrupt import import_holding_interrupt

    trimesh = import_holding_interrupt("trimesh")  # Ctrl-C not swallowed

    if fmt not in FORMATS:
        raise ValueError(f"unknown mesh format {fmt!r} (use one of {FORMATS})")
    meta = {**SPACE, **(metadata or {})}
    out = mesh.copy()
    rgba = np.array([*color, 255], dtype=np.uint8)
    colors = np.tile(rgba, (len(out.vertices), 1))
    out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=colors)
    text = " ".join(f"{k}={v}" for k, v in meta.items())
    if fmt == "ply":
        data = trimesh.exchange.ply.export_ply(out, encoding="binary")
        head, sep, rest = data.partition(b"\n")  # b"ply"
        fmt_line, sep2, rest = rest.partition(b"\n")
        data = head + sep + fmt_line + sep2 + f"comment medscan {text}\n".encode() + rest
    elif fmt == "stl":
        data = bytearray(trimesh.exchange.stl.export_stl(out))
        header = f"medscan {text}".encode()[:80]
        data[:80] = header.ljust(80, b" ")
        data = bytes(data)
    elif fmt == "obj":
        data = trimesh.exchange.obj.export_obj(out, include_color=True, header=f"medscan {text}")
        data = data.encode()
    else:
        out.metadata.update(meta)
        out.units = "mm"
        data = trimesh.Scene(out).export(file_type="glb")
    return data
