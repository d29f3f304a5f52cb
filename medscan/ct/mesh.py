"""Surface meshes of labels in patient coordinates (LPS, mm).

Per label: the mask's bounding box is block-averaged to about ``work_mm`` voxels (occupancy
0..1; for thin labels such as bone mixed with the block maximum, so ribs thinner than a working
voxel stay continuous), lightly Gaussian-smoothed, padded with one empty voxel (so surfaces
are closed) and iso-surfaced at 0.5 by marching cubes (``be.marching_cubes``). Vertices go
through the volume's full 4x4 affine (direction cosines included, not only the spacing) to
LPS mm and faces are oriented outward. Then optional Taubin smoothing
(``trimesh.smoothing.filter_taubin``, volume-preserving) and quadric decimation
(``Trimesh.simplify_quadric_decimation``, fast-simplification). Writing them (PLY, STL, OBJ,
glTF) is :mod:`medscan.io.mesh`'s job.

Defaults (:class:`MeshParams`, from ``conf/segment.yaml``): 1.5 mm working grid, Gaussian sigma
0.6, 10 Taubin iterations (lambda 0.5, nu -0.53), decimation to at most 40 000 faces per label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medscan.backend import Backend, get_backend
from medscan.ct.ops import block_factors, block_mean, label_bbox
from medscan.defaults import segment_defaults
from medscan.volume import world_from_zyx

#: Defaults of :class:`MeshParams`: the ``mesh`` section of ``conf/segment.yaml``.
_YAML = segment_defaults("mesh")


@dataclass(frozen=True)
class MeshParams:
    """Mesh options (the ``mesh`` section of ``conf/segment.yaml``; defaults read from it).

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

    work_mm: float = _YAML["work_mm"]
    presmooth_sigma: float = _YAML["presmooth_sigma"]
    smooth_iterations: int = _YAML["smooth_iterations"]
    smooth_lambda: float = _YAML["smooth_lambda"]
    smooth_nu: float = _YAML["smooth_nu"]
    max_faces: int = _YAML["max_faces"]
    thin_labels: tuple[str, ...] = tuple(_YAML["thin_labels"])  # type: ignore[assignment]
    thin_weight: float = _YAML["thin_weight"]

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

    :func:`label_crop` then :func:`crop_surface` (the parallel meshing of
    :func:`medscan.ct.analyse.analyse` runs the second in a worker process).

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
    params = params or MeshParams()
    be = be or get_backend("cpu")
    crop = label_crop(labels, label, affine, params, be)
    if crop is None:
        return None
    return crop_surface(crop, affine, params, be, thin)


@dataclass(frozen=True)
class LabelCrop:
    """``labels == label`` inside the label's bounding box (plus a margin of two blocks).

    Pickled bit-packed (``numpy.packbits``: 1/8 of the boolean crop) so that it goes cheaply
    through the pipe to a mesh worker process.

    Attributes
    ----------
    mask : array
        bool ``(z, y, x)`` crop (a NumPy array, or the backend's array type).
    start : tuple of int
        Index of the crop's first voxel in the label map.
    full_shape : tuple of int
        Shape of the whole label map (a crop touching its border gets an empty block there).
    """

    mask: Any
    start: tuple[int, int, int]
    full_shape: tuple[int, int, int]

    @property
    def box(self) -> tuple[slice, ...]:
        """The crop's slices in the label map."""
        return tuple(slice(a, a + n) for a, n in zip(self.start, self.mask.shape, strict=True))

    @property
    def voxels(self) -> int:
        """Voxels in the crop's box (the cost of the field; the largest box is meshed apart)."""
        return int(np.prod(self.mask.shape))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        mask = np.asarray(self.mask)
        return (_unpack_crop, (np.packbits(mask, axis=None), mask.shape, self.start,
                               self.full_shape))


def _unpack_crop(packed: np.ndarray, shape: tuple[int, ...], start: tuple[int, int, int],
                 full_shape: tuple[int, int, int]) -> LabelCrop:
    mask = np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape).view(bool)
    return LabelCrop(mask, start, full_shape)


def label_crop(
    labels: Any, label: int, affine: np.ndarray, params: MeshParams | None = None,
    be: Backend | None = None,
) -> LabelCrop | None:
    """The part of ``labels == label`` that :func:`crop_surface` meshes (None: label absent).

    Parameters are those of :func:`label_surface`; the margin (two working-grid blocks each
    side) keeps the Gaussian pre-smoothing inside the crop.
    """
    params = params or MeshParams()
    be = be or get_backend("cpu")
    lab = be.asarray(labels)
    f = _factors(affine, params)
    margin = tuple(2 * k for k in f)
    box = label_bbox(be, lab, label, margin)  # type: ignore[arg-type]
    if box[0].stop == 0:
        return None
    return LabelCrop(lab[box] == label, tuple(int(sl.start) for sl in box),  # type: ignore
                     tuple(int(n) for n in lab.shape))  # type: ignore[arg-type]


def _factors(affine: np.ndarray, params: MeshParams) -> tuple[int, ...]:
    spacing = tuple(float(n) for n in np.linalg.norm(affine[:3, :3], axis=0)[::-1])
    return block_factors(spacing, params.work_mm)  # type: ignore[arg-type]


def crop_surface(
    crop: LabelCrop, affine: np.ndarray, params: MeshParams | None = None,
    be: Backend | None = None, thin: bool = False,
) -> Any | None:
    """Closed surface of a :class:`LabelCrop` as a ``trimesh.Trimesh`` in LPS mm.

    Parameters are those of :func:`label_surface` (``crop`` from :func:`label_crop`).

    Returns
    -------
    trimesh.Trimesh or None
        None when the crop is too thin to give a surface.
    """
    from medscan.interrupt import import_holding_interrupt

    trimesh = import_holding_interrupt("trimesh")  # Ctrl-C not swallowed

    params = params or MeshParams()
    be = be or get_backend("cpu")
    xp = be.xp
    f = _factors(affine, params)
    box = crop.box
    sub = be.asarray(crop.mask)
    # pad to whole blocks (plus one empty block each side when the box touches the border)
    pads = []
    for n, k, sl, full in zip(sub.shape, f, box, crop.full_shape, strict=True):
        before = k if sl.start == 0 else 0
        after = (-(n + before)) % k + (k if sl.stop == full else 0)
        pads.append((before, after))
    sub = xp.pad(sub, pads)
    field = block_mean(be, sub.view(xp.uint8), f)
    if thin and any(k > 1 for k in f) and params.thin_weight > 0:
        w = float(params.thin_weight)
        field = w * _block_any(be, sub, f) + (1.0 - w) * field
    del sub  # the full-resolution padded mask is not held through meshing and decimation
    if params.presmooth_sigma > 0:
        field = be.ndi.gaussian_filter(field, params.presmooth_sigma)
    field = xp.pad(field, 1)
    try:
        verts, faces = be.marching_cubes(field, 0.5)
    except (ValueError, RuntimeError):
        return None
    del field  # each array is dropped once used: the peak is decimation's, not their sum
    if len(faces) == 0:
        return None
    fac = np.array(f, dtype=np.float64)
    start = np.array([sl.start - p[0] for sl, p in zip(box, pads, strict=True)], np.float64)
    verts_full = (verts - 1.0) * fac + (fac - 1.0) / 2.0 + start
    del verts
    world = world_from_zyx(affine, verts_full)
    del verts_full
    mesh = trimesh.Trimesh(vertices=world, faces=faces, process=True)
    del world, faces
    if _signed_volume(mesh) < 0:
        mesh.invert()
    if params.smooth_iterations > 0:
        trimesh.smoothing.filter_taubin(
            mesh, lamb=params.smooth_lambda, nu=params.smooth_nu,
            iterations=params.smooth_iterations,
        )
    if params.max_faces and len(mesh.faces) > params.max_faces:
        # trimesh keeps what it derived (edges, adjacency, normals: about 70 bytes per face)
        # in its cache, which trimesh has no public call to drop; decimation reads only the
        # vertices and faces, and needs about 275 bytes per face of its own (issue 15: the
        # mesh worker's peak at 1024 slices)
        mesh._cache.clear()
        mesh = mesh.simplify_quadric_decimation(face_count=int(params.max_faces))
        if _signed_volume(mesh) < 0:
            mesh.invert()
    return mesh


def contained_surface(
    out: np.ndarray, state: np.ndarray, crop: LabelCrop, affine: np.ndarray,
    params: MeshParams, thin: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """:func:`crop_surface` as a request to a contained worker process (CPU backend).

    Called by :func:`medscan.dicom.contain.run_contained` in its worker (``out``: a one-slot
    placeholder; ``state[0]`` marks the mesh as started / done, so a crash names it).

    Returns
    -------
    tuple or None
        ``(vertices, faces, metadata)``: float64 ``(n, 3)`` LPS mm and int64 ``(m, 3)``,
        exactly the mesh's arrays, and its ``metadata`` dict (trimesh's ``processed`` flag;
        glTF writes it as ``extras``); :func:`mesh_from_arrays` rebuilds the same mesh.
        None: no surface.
    """
    from medscan.dicom.contain import DONE, STARTED

    state[0] = STARTED
    mesh = crop_surface(crop, affine, params, get_backend("cpu"), thin)
    state[0] = DONE
    if mesh is None:
        return None
    return (np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64),
            dict(mesh.metadata))


def warm_up(out: np.ndarray, state: np.ndarray) -> int:
    """Mesh a small cube and draw a small figure in a worker process: imports done ahead.

    A request :func:`medscan.dicom.contain.run_contained` sends while the case is still being
    segmented, so the worker's first real mesh does not wait for the imports (trimesh, SciPy,
    scikit-image, fast-simplification: about 1 s), nor the case's preview drawn there after
    the mesh (:func:`medscan.ct.render.warm_up_drawing`: matplotlib and its font cache). Every
    step of :func:`crop_surface` runs, decimation included. Returns the number of faces
    (``out``, ``state``: unused).
    """
    from medscan.ct.render import warm_up_drawing

    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[3:9, 3:9, 3:9] = True
    params = MeshParams(work_mm=0.0, smooth_iterations=1, max_faces=16)
    mesh = crop_surface(LabelCrop(mask, (0, 0, 0), mask.shape), np.eye(4), params,
                        get_backend("cpu"), thin=False)
    warm_up_drawing()
    return 0 if mesh is None else len(mesh.faces)


def mesh_from_arrays(vertices: np.ndarray, faces: np.ndarray,
                     metadata: dict[str, Any] | None = None) -> Any:
    """``trimesh.Trimesh`` of the given arrays as they are (``process=False``: no merging).

    Parameters
    ----------
    vertices : numpy.ndarray
        float64 ``(n, 3)``.
    faces : numpy.ndarray
        int64 ``(m, 3)`` vertex indices.
    metadata : dict, optional
        The original mesh's ``metadata`` (exported by glTF; default: empty).
    """
    from medscan.interrupt import import_holding_interrupt

    trimesh = import_holding_interrupt("trimesh")  # Ctrl-C not swallowed

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    mesh.metadata.clear()
    mesh.metadata.update(metadata or {})
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
