"""Surface meshes of labels in patient coordinates (LPS, mm) and their export.

Per label: the mask's bounding box is block-averaged to about ``work_mm`` voxels (occupancy
0..1; for thin labels such as bone mixed with the block maximum, so ribs thinner than a working
voxel stay continuous), lightly Gaussian-smoothed, padded with one empty voxel (so surfaces
are closed) and iso-surfaced at 0.5 by marching cubes (``be.marching_cubes``). Vertices go
through the volume's full 4x4 affine (direction cosines included, not only the spacing) to
LPS mm and faces are oriented outward. Then optional Taubin smoothing
(``trimesh.smoothing.filter_taubin``, volume-preserving) and quadric decimation
(``Trimesh.simplify_quadric_decimation``, fast-simplification).

Defaults (:class:`MeshParams`): 1.5 mm working grid, Gaussian sigma 0.6, 10 Taubin iterations
(lambda 0.5, nu -0.53), decimation to at most 40 000 faces per label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medscan.backend import Backend, get_backend
from medscan.ct.ops import block_factors, block_mean, label_bbox
from medscan.volume import world_from_zyx

#: Mesh formats written by :func:`export_mesh`.
FORMATS = ("ply", "stl", "obj", "glb")
#: Coordinate description stored in manifests and (where the format allows) in the files.
SPACE = {"coordinate_space": "LPS", "units": "mm"}


@dataclass(frozen=True)
class MeshParams:
    """Mesh options (the ``mesh`` section of ``conf/segment.yaml``).

    Attributes
    ----------
    work_mm : float
        The mask is block-averaged to about this voxel size (mm) before marching cubes: the
        occupancy field gives a sub-voxel surface with far fewer faces (0 = full resolution).
    presmooth_sigma : float
        Gaussian sigma (voxels of that grid) applied to the occupancy field; it removes the
        non-manifold edges marching cubes makes where voxels touch only along an edge.
    smooth_iterations : int
        Taubin smoothing iterations (0 = off).
    smooth_lambda, smooth_nu : float
        Taubin weights (nu < -lambda keeps the volume).
    max_faces : int
        Decimate to at most this many faces per label (0 = no decimation).
    thin_labels : tuple of str
        Tissue names meshed from a field that includes the block maximum (see
        :func:`label_surface`'s ``thin``): bone, whose ribs are thinner than the working grid.
    thin_weight : float
        Weight of the block maximum in that field (0 = plain block mean, 1 = pure maximum).
    """

    work_mm: float = 1.5
    presmooth_sigma: float = 0.6
    smooth_iterations: int = 10
    smooth_lambda: float = 0.5
    smooth_nu: float = -0.53
    max_faces: int = 40000
    thin_labels: tuple[str, ...] = ("bone",)
    thin_weight: float = 0.6

    @classmethod
    def from_config(cls, cfg: Any) -> MeshParams:
        """Build from a mapping (unknown keys raise ``TypeError``)."""
        values = dict(cfg or {})
        if "thin_labels" in values:
            values["thin_labels"] = tuple(str(v) for v in values["thin_labels"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        d = asdict(self)
        d["thin_labels"] = list(self.thin_labels)
        return d


def label_surface(
    labels: np.ndarray,
    label: int,
    affine: np.ndarray,
    params: MeshParams | None = None,
    be: Backend | None = None,
    thin: bool = False,
) -> Any | None:
    """Closed surface of ``labels == label`` as a ``trimesh.Trimesh`` in LPS mm.

    Parameters
    ----------
    labels : numpy.ndarray
        Label map ``(z, y, x)``.
    label : int
        Label id to mesh.
    affine : numpy.ndarray
        4x4 index ``(i, j, k)`` -> LPS mm of the label map's grid.
    params : MeshParams, optional
        Smoothing and decimation.
    be : Backend, optional
        Array backend for marching cubes (default: CPU).
    thin : bool
        The label has parts thinner than the working grid (ribs: a cortical shell about 1 mm
        thick around marrow below the bone band): the field is ``params.thin_weight`` times
        the block maximum (1 where *any* voxel of the block is set) plus the rest times the
        block mean, so a block holding some of a thin part stays above the 0.5 iso-level and
        thin parts stay connected instead of falling apart; the mean's share keeps the surface
        close to the mask (within one voxel for 97% of the vertices on the sample; the pure
        maximum puts it up to half a working voxel outside).

    Returns
    -------
    trimesh.Trimesh or None
        None when the label is absent or too thin to give a surface.
    """
    import trimesh

    params = params or MeshParams()
    be = be or get_backend("cpu")
    xp = be.xp
    lab = be.asarray(labels)
    spacing = tuple(float(n) for n in np.linalg.norm(affine[:3, :3], axis=0)[::-1])
    f = block_factors(spacing, params.work_mm)  # type: ignore[arg-type]
    margin = tuple(2 * k for k in f)
    box = label_bbox(be, lab, label, margin)  # type: ignore[arg-type]
    if box[0].stop == 0:
        return None
    sub = lab[box] == label
    # pad to whole blocks (plus one empty block each side when the box touches the border)
    pads = []
    for n, k, sl, full in zip(sub.shape, f, box, lab.shape, strict=True):
        before = k if sl.start == 0 else 0
        after = (-(n + before)) % k + (k if sl.stop == full else 0)
        pads.append((before, after))
    sub = xp.pad(sub, pads)
    field = block_mean(be, sub.view(xp.uint8), f)
    if thin and any(k > 1 for k in f) and params.thin_weight > 0:
        w = float(params.thin_weight)
        field = w * _block_any(be, sub, f) + (1.0 - w) * field
    if params.presmooth_sigma > 0:
        field = be.ndi.gaussian_filter(field, params.presmooth_sigma)
    field = xp.pad(field, 1)
    try:
        verts, faces = be.marching_cubes(field, 0.5)
    except (ValueError, RuntimeError):
        return None
    if len(faces) == 0:
        return None
    fac = np.array(f, dtype=np.float64)
    start = np.array([sl.start - p[0] for sl, p in zip(box, pads, strict=True)], np.float64)
    verts_full = (verts - 1.0) * fac + (fac - 1.0) / 2.0 + start
    world = world_from_zyx(affine, verts_full)
    mesh = trimesh.Trimesh(vertices=world, faces=faces, process=True)
    if _signed_volume(mesh) < 0:
        mesh.invert()
    if params.smooth_iterations > 0:
        trimesh.smoothing.filter_taubin(
            mesh, lamb=params.smooth_lambda, nu=params.smooth_nu,
            iterations=params.smooth_iterations,
        )
    if params.max_faces and len(mesh.faces) > params.max_faces:
        mesh = mesh.simplify_quadric_decimation(face_count=int(params.max_faces))
        if _signed_volume(mesh) < 0:
            mesh.invert()
    return mesh


def _block_any(be: Backend, mask: Any, factors: tuple[int, ...]) -> Any:
    """float32 block maximum (1 where any voxel of the block is set) of a padded mask."""
    xp = be.xp
    fz, fy, fx = factors
    nz, ny, nx = (n // k for n, k in zip(mask.shape, factors, strict=True))
    blocks = mask[: nz * fz, : ny * fy, : nx * fx].reshape(nz, fz, ny, fy, nx, fx)
    return blocks.any(axis=(1, 3, 5)).astype(xp.float32)


def _signed_volume(mesh: Any) -> float:
    """Signed enclosed volume (divergence theorem); cheaper than trimesh's mass properties."""
    tri = mesh.vertices[mesh.faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


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
    """Write ``mesh`` to ``path`` (format from the suffix: ply, stl, obj or glb).

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
    """
    import trimesh

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown mesh format {fmt!r} (use one of {FORMATS})")
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
    path.write_bytes(data)
    return path
