"""Headless case preview (matplotlib Agg): slices with the label overlay, 3-D mesh views.

The slices show the tissue bands as a translucent fill (legend swatches are that fill as it
looks over the band's mean HU) and the lung structures as opaque outlines in their legend
colour (a translucent orange over dark lung would look brown).

Slices are drawn in the radiological convention (patient left on the image right for the
axial view, head up in the coronal and sagittal views) with the true aspect ratio from the
voxel spacing. The 3-D views are orthographic projections of the LPS meshes (painter's
algorithm with Lambert shading), seen from the front (anterior), from the top (superior) and
from the patient's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medscan.ct.orient import canonical_reorientation
from medscan.ct.tissues import TissueTable

#: Display window of the slices (HU) and opacity of the tissue-band fill.
WINDOW_HU = (-1000.0, 500.0)
BAND_ALPHA = 0.3


def _band_fill_rgba(labels2d: np.ndarray, colors: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """RGBA fill of the tissue-band labels of a slice (structures and background clear)."""
    rgba = np.zeros((*labels2d.shape, 4), dtype=np.float32)
    rgba[..., :3] = colors[labels2d, :3]
    rgba[..., 3] = np.where(bands[labels2d], BAND_ALPHA, 0.0)
    return rgba


def _draw_outlines(ax: Any, labels2d: np.ndarray, colors: np.ndarray, labels: list[int],
                   linewidth: float = 1.2) -> None:
    """Outline the structure labels (the lungs) of a slice in their exact legend colour.

    A translucent fill takes the grey underneath: orange over dark lung shows brown, unlike
    the legend. Opaque contour lines at the 0.5 level of each label's mask keep the legend
    colour and leave the lung parenchyma visible inside.
    """
    if min(labels2d.shape) < 2:
        return
    for label in labels:
        mask = labels2d == label
        if mask.any():
            # contour's default grid is imshow's pixel centres (x = column, y = row) whatever
            # imshow's origin (which only sets the y axis direction): no origin here, or
            # origin="upper" would flip the outline against the image
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[tuple(colors[label, :3])],
                       linewidths=linewidth)


def _seen_colour(color: np.ndarray, mean_hu: float) -> np.ndarray:
    """A band colour as it shows in the slices: blended at BAND_ALPHA over its mean HU grey."""
    lo, hi = WINDOW_HU
    grey = float(np.clip((mean_hu - lo) / (hi - lo), 0.0, 1.0))
    return BAND_ALPHA * color[:3] + (1.0 - BAND_ALPHA) * grey


#: Orthographic 3-D views: ((horizontal LPS axis, sign), (vertical axis, sign), (depth axis,
#: sign toward the viewer)); screen x grows to the right, screen y upward. Each is the view a
#: person standing there would see (right = forward x up, right-handed):
#:
#: * ``front``: from in front of the patient (anterior, -y), head up: the patient's left
#:   (+x) on the image right, as in radiology;
#: * ``top``: from above the head (superior, +z) looking toward the feet, anterior (-y) up:
#:   the patient's right (-x) on the image right;
#: * ``side``: from the patient's left (+x), head up: anterior (-y) on the image left.
VIEWS: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "front": ((0, 1), (2, 1), (1, -1)),
    "top": ((0, -1), (1, -1), (2, 1)),
    "side": ((1, 1), (2, 1), (0, 1)),
}
VIEW_TITLES = {"front": "3-D, anterior", "top": "3-D, top (superior)",
               "side": "3-D, side (patient left)"}


def view_matrix(view: str) -> np.ndarray:
    """3x3 matrix taking LPS vectors to (right, up, toward the viewer) of a 3-D view.

    Every view is a rotation (determinant +1): a real view, never a mirror image.
    """
    m = np.zeros((3, 3))
    for row, (axis, sign) in enumerate(VIEWS[view]):
        m[row, axis] = sign
    return m


def screen_coordinates(points_lps: np.ndarray, view: str) -> np.ndarray:
    """Project LPS points (mm) onto a 3-D view: ``(..., 3)`` -> ``(..., 3)`` (right, up, depth).

    ``depth`` grows toward the viewer. See :data:`VIEWS` for the handedness of each view.
    """
    return np.asarray(points_lps, dtype=np.float64) @ view_matrix(view).T


#: Faces per mesh drawn in the 3-D views (a polygon collection of more is slow to draw).
PREVIEW_FACES = 20000


def preview_mesh(mesh: Any, max_faces: int = PREVIEW_FACES) -> Any:
    """``mesh`` quadric-decimated to at most ``max_faces`` faces for drawing (else itself)."""
    if len(mesh.faces) > max_faces:
        return mesh.simplify_quadric_decimation(face_count=max_faces)
    return mesh


def _flat_triangles(xy: np.ndarray, rgb: np.ndarray) -> Any:
    """A matplotlib artist drawing flat-coloured triangles in the given (painter's) order.

    Parameters
    ----------
    xy : numpy.ndarray
        ``(n, 3, 2)`` float screen coordinates (data units), far first.
    rgb : numpy.ndarray
        ``(n, 3)`` float colours in [0, 1], one per triangle.

    Returns
    -------
    matplotlib.collections.TriMesh
        Gouraud triangles with the same colour at their three corners: Agg draws them in one
        ``draw_gouraud_triangles`` call, without a ``Path`` per triangle and without the
        hairline edge a ``PolyCollection`` needed to hide seams (issue 15: the preview of a
        64-slice chest CT took 0.92-0.97 s instead of 1.58 s). Kept out of the constrained
        layout (the axes limits are set around it).
    """
    from matplotlib.collections import TriMesh
    from matplotlib.tri import Triangulation

    pts = xy.reshape(-1, 2)
    faces = TriMesh(Triangulation(pts[:, 0], pts[:, 1], np.arange(len(pts)).reshape(-1, 3)))
    rgba = np.ones((len(pts), 4))
    rgba[:, :3] = np.repeat(rgb, 3, axis=0)
    faces.set_facecolor(rgba)
    faces.set_in_layout(False)
    return faces


def _shaded_projection(ax: Any, meshes: list[tuple[Any, tuple[int, int, int]]],
                       view: str, max_faces: int = PREVIEW_FACES) -> None:
    """Draw meshes (LPS mm) projected along a view axis onto ``ax`` (see :data:`VIEWS`)."""
    light = np.array([0.3, 0.5, 1.0])
    light /= np.linalg.norm(light)
    polys, shades, depths = [], [], []
    for mesh, color in meshes:
        m = preview_mesh(mesh, max_faces)
        tri = screen_coordinates(m.vertices[m.faces], view)  # (n, 3, 3): right, up, depth
        n_view = screen_coordinates(m.face_normals, view)
        lam = np.clip(n_view @ light, 0.0, 1.0)
        keep = n_view[:, 2] > 0  # facing the viewer
        tri = tri[keep]
        lam = lam[keep]
        polys.append(tri[..., :2])
        base = np.array(color, float) / 255.0
        shades.append(np.clip(base[None, :] * (0.35 + 0.65 * lam[:, None]), 0, 1))
        depths.append(tri[..., 2].mean(axis=1))
    if not polys:
        ax.text(0.5, 0.5, "no meshes", ha="center", va="center", transform=ax.transAxes)
        ax.axis("off")
        return
    xy = np.concatenate(polys)
    col = np.concatenate(shades)
    order = np.argsort(np.concatenate(depths))  # far first
    ax.add_collection(_flat_triangles(xy[order], col[order]), autolim=False)
    lo, hi = xy.reshape(-1, 2).min(axis=0), xy.reshape(-1, 2).max(axis=0)
    pad = 0.03 * (hi - lo).max()
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(VIEW_TITLES[view], fontsize=9)


def render_preview(
    hu: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    tissues: TissueTable,
    meshes: dict[str, Any],
    path: str | Path,
    title: str = "",
    dpi: int = 80,
) -> Path:
    """Write the preview PNG of one case (the figure of :func:`preview_figure`).

    Parameters are those of :func:`preview_figure`, plus ``path`` (the output PNG).

    Returns
    -------
    Path
    """
    fig = preview_figure(hu, labels, affine, tissues, meshes, title, dpi)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def preview_png(
    hu: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    tissues: TissueTable,
    meshes: dict[str, Any],
    title: str = "",
    dpi: int = 80,
) -> bytes:
    """The preview of one case as PNG bytes, in memory (the figure of :func:`preview_figure`).

    Rendered by the figure's own Agg canvas (``FigureCanvasAgg``): no pyplot, no global
    backend switch.

    Returns
    -------
    bytes
        A PNG image.
    """
    return scene_png(preview_scene(hu, labels, affine, tissues, meshes), title, dpi)


def preview_figure(
    hu: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    tissues: TissueTable,
    meshes: dict[str, Any],
    title: str = "",
    dpi: int = 80,
) -> Any:
    """The preview figure of one case: three slices over three 3-D views, and a legend.

    :func:`preview_scene` (what is drawn) then :func:`scene_figure` (the drawing).

    Parameters
    ----------
    hu : numpy.ndarray
        HU volume ``(z, y, x)``.
    labels : numpy.ndarray
        Label map on the same grid.
    affine : numpy.ndarray
        4x4 index -> LPS mm (used for the slice aspect ratios).
    tissues : TissueTable
        Colours and names.
    meshes : dict
        ``{tissue name: trimesh.Trimesh}`` in LPS mm (may be empty).
    title : str
        Figure title (case id, status).
    dpi : int
        Resolution.

    Returns
    -------
    matplotlib.figure.Figure
    """
    return scene_figure(preview_scene(hu, labels, affine, tissues, meshes), title, dpi)


@dataclass
class PreviewScene:
    """What the preview of one case draws: a few MB of plain arrays (picklable).

    Computed from the case's volume, label map and meshes by :func:`preview_scene` in the job's
    process; drawn by :func:`scene_figure` there or in a worker process
    (:func:`render_contained`), with the same pixels.

    Attributes
    ----------
    views : list of (str, numpy.ndarray, numpy.ndarray, float)
        ``(name, HU slice, label slice, aspect)`` of the axial, coronal and sagittal slices
        through the lungs' median voxel, in the canonical orientation (2-D, the volume's and
        label map's dtypes; aspect: row spacing / column spacing).
    colors : numpy.ndarray
        float32 ``(256, 3)`` RGB in [0, 1] per label value.
    structure_labels : list of int
        Labels drawn as outlines (the lung structures); the others are bands (fill).
    is_band : numpy.ndarray
        bool ``(256,)``: label values drawn as a translucent fill.
    meshes : list of (numpy.ndarray, numpy.ndarray, tuple)
        ``(vertices float64 (n, 3) LPS mm, faces int64 (m, 3), RGB 0-255)`` per mesh, already
        decimated to at most :data:`PREVIEW_FACES` faces (:func:`preview_mesh`).
    legend : list of (int, str, bool, float)
        ``(label, name, is structure, mean HU of the band on a 1-in-2x4x4 subsample)`` of each
        label present (the mean is NaN for structures: not used).
    """

    views: list[tuple[str, np.ndarray, np.ndarray, float]]
    colors: np.ndarray
    structure_labels: list[int]
    is_band: np.ndarray
    meshes: list[tuple[np.ndarray, np.ndarray, tuple[int, int, int]]]
    legend: list[tuple[int, str, bool, float]] = field(default_factory=list)


def preview_scene(
    hu: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    tissues: TissueTable,
    meshes: dict[str, Any],
) -> PreviewScene:
    """What the preview draws, from the case's arrays (parameters as :func:`preview_figure`).

    Returns
    -------
    PreviewScene
    """
    colors = np.zeros((256, 3), dtype=np.float32)
    for t in tissues.all:
        colors[t.label] = np.array(t.color) / 255.0
    # slices of the canonical orientation (axial, axes toward head, back and patient left),
    # whatever the stored orientation: transposes and flips only
    reo = canonical_reorientation(affine)
    canonical_affine = reo.canonical_affine(affine, hu.shape)
    hu, labels = reo.to_canonical(hu), reo.to_canonical(labels)
    sx, sy, sz = np.linalg.norm(canonical_affine[:3, :3], axis=0)
    structure_labels = [t.label for t in tissues.structures]
    is_band = np.zeros(256, dtype=bool)
    is_band[[t.label for t in tissues.all if t.label not in structure_labels]] = True
    # the lungs' median voxel on a 1-in-4 in-plane subsample (a look-up table, not np.isin:
    # that widened the whole label map to 64-bit integers, 0.5 GB on a 255-slice series)
    is_lung = np.zeros(256, dtype=bool)
    is_lung[[tissues["lung_left"].label, tissues["lung_right"].label]] = True
    lungs = is_lung[labels[:, ::4, ::4]]
    if lungs.any():
        zz, yy, xx = (int(np.median(a)) for a in np.nonzero(lungs))
        yy, xx = yy * 4, xx * 4
    else:
        zz, yy, xx = (s // 2 for s in hu.shape)
    # axial: anterior at the top, patient left on the image right (radiological); coronal and
    # sagittal: head up (origin lower), patient left on the right / anterior on the left
    views = [
        (name, np.ascontiguousarray(img), np.ascontiguousarray(lab), float(aspect))
        for name, img, lab, aspect in (
            ("axial", hu[zz], labels[zz], sy / sx),
            ("coronal", hu[:, yy, :], labels[:, yy, :], sz / sx),
            ("sagittal", hu[:, :, xx], labels[:, :, xx], sz / sy),
        )
    ]
    # decimated once for the three views (not once per view: issue 15)
    drawn = []
    for name, m in meshes.items():
        if m is not None:
            small = preview_mesh(m)
            drawn.append((np.asarray(small.vertices), np.asarray(small.faces),
                          tuple(tissues[name].color)))
    sample_lab, sample_hu = labels[::2, ::4, ::4], hu[::2, ::4, ::4]
    seen = set(np.unique(sample_lab).tolist())
    legend = [
        (t.label, t.name, t.label in structure_labels,
         float("nan") if t.label in structure_labels
         else float(sample_hu[sample_lab == t.label].mean()))
        for t in tissues.all if t.label in seen
    ]
    return PreviewScene(views, colors, structure_labels, is_band, drawn, legend)


def scene_figure(scene: PreviewScene, title: str = "", dpi: int = 80) -> Any:
    """Draw ``scene``: three slices over three 3-D views, and a legend.

    The layout is matplotlib's constrained layout, which places every title from the drawn
    (aspect-adjusted) axes; ``tight_layout`` sized the rows before the equal-aspect 3-D panels
    grew to their cells' full height, so their titles overlapped the slices above.

    Returns
    -------
    matplotlib.figure.Figure
    """
    # a Figure on its own Agg canvas, never pyplot or matplotlib.use(): the caller's backend
    # (napari's Qt, a notebook's inline) stays as it was
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from medscan.ct.mesh import mesh_from_arrays

    colors = scene.colors
    fig = Figure(figsize=(15, 8.5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for ax, (name, img, lab, aspect) in zip(axes[0], scene.views, strict=True):
        origin = "upper" if name == "axial" else "lower"
        ax.imshow(img, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect,
                  origin=origin, interpolation="nearest")
        ax.imshow(_band_fill_rgba(lab, colors, scene.is_band), aspect=aspect, origin=origin,
                  interpolation="nearest")
        _draw_outlines(ax, lab, colors, scene.structure_labels)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    mesh_list = [(mesh_from_arrays(v, f), color) for v, f, color in scene.meshes]
    for ax, view in zip(axes[1], ("front", "top", "side"), strict=True):
        _shaded_projection(ax, mesh_list, view)
    # legend swatches as the slices show them: bands as their fill over their own mean HU,
    # structures as lines in the outline colour
    handles = [
        Line2D([], [], color=colors[label], linewidth=2.0, label=f"{label} {name}")
        if structure else
        Patch(color=_seen_colour(colors[label], mean_hu), label=f"{label} {name}")
        for label, name, structure, mean_hu in scene.legend
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=max(len(scene.legend), 1),
               fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


def scene_png(scene: PreviewScene, title: str = "", dpi: int = 80) -> bytes:
    """:func:`scene_figure` as PNG bytes (the figure's own Agg canvas)."""
    import io

    fig = scene_figure(scene, title, dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def render_contained(out: np.ndarray, state: np.ndarray, scene: PreviewScene, title: str,
                     dpi: int = 80) -> bytes:
    """:func:`scene_png` as a :func:`medscan.dicom.contain.run_contained` request.

    Runs in a worker process while the job writes the case's other outputs
    (:mod:`medscan.ct.analyse`); ``out`` and ``state`` are unused.
    """
    return scene_png(scene, title, dpi)


def warm_up_drawing() -> int:
    """Draw a small figure with text to PNG: matplotlib's imports and font cache are loaded.

    Called by a worker's warm-up request (:func:`medscan.ct.mesh.warm_up`), so the preview
    drawn there later does not wait for them (about 0.4-0.5 s on the first figure of a
    process). Returns the PNG's size in bytes.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(1, 1), dpi=20, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 1)
    ax.imshow(np.zeros((2, 2), np.float32), cmap="gray")
    ax.contour(np.eye(3, dtype=np.float32), levels=[0.5])
    ax.set_title("warm-up", fontsize=9)
    fig.legend(handles=[Line2D([], [], label="x")], loc="outside lower center", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return len(buf.getvalue())
