"""Handedness of every preview view, pinned (issue 12).

A 3-D view must be what a person standing there sees, never a mirror image: from the front
the patient's left is on the image right, from above (anterior up) the patient's right is on
the image right, from the patient's left anterior is on the image left. The slice views
follow the radiological convention whatever the stored orientation.
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from ct_reference import reoriented

from medscan.ct.render import (
    VIEWS,
    _shaded_projection,
    preview_figure,
    render_preview,
    screen_coordinates,
    view_matrix,
)
from medscan.ct.tissues import default_tissues
from medscan.volume import Volume

L, P, S = np.eye(3)  # LPS unit vectors: patient left, posterior, superior
A, R, I = -P, -L, -S  # noqa: E741 (anatomical letters)

#: view -> (world direction that must point right on screen, world direction that points up)
EXPECTED = {
    "front": (L, S),   # seen from the front: patient's left on the image right, head up
    "top": (R, A),     # seen from above, anterior up: patient's right on the image right
    "side": (P, S),    # seen from the patient's left: anterior on the image left, head up
}


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_view_directions_and_no_mirror(view):
    right, up = EXPECTED[view]
    assert screen_coordinates(right, view)[0] == 1.0 and screen_coordinates(right, view)[1] == 0
    assert screen_coordinates(up, view)[1] == 1.0 and screen_coordinates(up, view)[0] == 0
    # a real view (rotation), never a reflection
    assert np.linalg.det(view_matrix(view)) == pytest.approx(1.0)
    # the viewer is on the side the depth axis points to: right x up = toward the viewer
    toward = np.cross(right, up)
    assert screen_coordinates(toward, view)[2] == 1.0


def _marker_centres(view: str, markers: dict[str, tuple[np.ndarray, tuple[int, int, int]]]):
    """Render coloured spheres with the preview's projection; pixel centroid of each colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    meshes = [(trimesh.creation.icosphere(2, radius=15.0).apply_translation(c), rgb)
              for c, rgb in markers.values()]
    _shaded_projection(ax, meshes, view)
    canvas.draw()
    img = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    out = {}
    for name, (_c, rgb) in markers.items():
        # the Lambert shading scales the colour: match by hue (dominant channel)
        channel = int(np.argmax(rgb))
        others = [c for c in range(3) if c != channel]
        hit = (img[..., channel] > 60) & (img[..., others] < 30).all(axis=-1)
        assert hit.sum() > 20, (view, name)
        rows, cols = np.nonzero(hit)
        out[name] = (cols.mean(), rows.mean())  # image x to the right, image y DOWN
    return out


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_rendered_view_handedness(view):
    """Pixel-level: a sphere on the expected-right side is drawn right of one on the left."""
    right, up = EXPECTED[view]
    markers = {
        "right": (80.0 * right, (255, 0, 0)),
        "left": (-80.0 * right, (0, 0, 255)),
        "up": (80.0 * up, (0, 255, 0)),
    }
    c = _marker_centres(view, markers)
    assert c["right"][0] > c["left"][0] + 50, c
    assert c["up"][1] < min(c["right"][1], c["left"][1]) - 30, c  # higher on screen


def _left_marked_volume() -> tuple[Volume, np.ndarray]:
    """A small synthetic CT with a body, a 'lung_left' block at patient left-anterior-top."""
    tissues = default_tissues()
    hu = np.full((40, 60, 60), -1000, dtype=np.int16)
    hu[:, 10:50, 10:50] = 40
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[:, 10:50, 10:50] = tissues["soft_tissue"].label
    labels[25:35, 12:25, 35:48] = tissues["lung_left"].label  # +x (left), -y (anterior), +z
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    return Volume(hu=hu, affine=affine), labels


@pytest.mark.parametrize("perm_flips", [((0, 1, 2), (False, False, False)),
                                        ((1, 0, 2), (False, True, False)),
                                        ((2, 1, 0), (True, True, True))])
def test_slice_views_radiological_whatever_the_storage(tmp_path, perm_flips):
    """The axial panel shows the left lung on the image right and anterior at the top."""
    from PIL import Image

    tissues = default_tissues()
    volume, labels = _left_marked_volume()
    other = reoriented(Volume(hu=labels.astype(np.int16), affine=volume.affine), *perm_flips)
    stored_hu = reoriented(volume, *perm_flips).hu
    png = render_preview(stored_hu, other.hu.astype(np.uint8), other.affine, tissues, {},
                         tmp_path / "p.png", dpi=50)
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    h, w, _ = img.shape
    axial = img[: h // 2, : w // 3]  # top-left panel
    # overlays at alpha 0.3: lung_left (240,150,80) leaves green well above blue, the
    # soft-tissue overlay (220,110,100) does not; both tint the grey (red above blue)
    tinted = axial[..., 0] - axial[..., 2] > 10
    orange = tinted & (axial[..., 1] - axial[..., 2] > 12)
    grey = tinted & ~orange
    assert orange.sum() > 20
    gy, gx = np.nonzero(grey)
    oy, ox = np.nonzero(orange)
    assert ox.mean() > gx.mean() + 5  # patient left on the image right
    assert oy.mean() < gy.mean() - 5  # anterior at the top


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_preview_titles_clear_of_every_panel(sample_ct):
    """Breaker defect 13: the 3-D panels' titles ("3-D, anterior", "3-D, side") overlapped the
    slice panels above them (tight_layout sized rows before the equal-aspect panels grew).
    On the real sample with its lung and bone meshes, no title may overlap another panel,
    another title or the figure legend, measured on the drawn figure."""
    from ct_reference import load_series

    from medscan.ct.mesh import label_surface
    from medscan.ct.segment import segment

    tissues = default_tissues()
    volume = load_series(str(sample_ct))
    seg = segment(volume, tissues)
    meshes = {name: label_surface(seg.labels, tissues[name].label, volume.affine,
                                  thin=name == "bone")
              for name in ("lung_left", "lung_right", "bone")}
    fig = preview_figure(volume.hu, seg.labels, volume.affine, tissues, meshes, "sample")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = fig.axes
    assert len(axes) == 6
    boxes = [ax.get_window_extent(renderer) for ax in axes]
    titles = [ax.title.get_window_extent(renderer) for ax in axes]
    legend = fig.legends[0].get_window_extent(renderer)
    for i, title in enumerate(titles):
        assert axes[i].title.get_text()
        assert title.y0 >= boxes[i].y1 - 1, (axes[i].title.get_text(), title, boxes[i])
        assert not _overlap(title, legend)
        for j, box in enumerate(boxes):
            if j != i:
                assert not _overlap(title, box), (axes[i].title.get_text(), j, title, box)
                assert not _overlap(title, titles[j]), (i, j)


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_rendered_view_near_surface_hides_far_one(view):
    """Painter's order (issue 15: flat Gouraud triangles instead of a polygon collection): of two
    spheres on one line of sight, the one nearer the viewer covers the far one's centre, and
    the far one still shows where the near one does not reach."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    right, up = EXPECTED[view]
    toward = np.cross(right, up)
    fig = Figure(figsize=(4, 4), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    near = trimesh.creation.icosphere(3, radius=10.0).apply_translation(40.0 * toward)
    far = trimesh.creation.icosphere(3, radius=25.0).apply_translation(-40.0 * toward)
    _shaded_projection(ax, [(far, (0, 0, 255)), (near, (255, 0, 0))], view)
    canvas.draw()
    img = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    h, w = img.shape[:2]
    red = (img[..., 0] > 60) & (img[..., 1:] < 30).all(axis=-1)
    blue = (img[..., 2] > 60) & (img[..., :2] < 30).all(axis=-1)
    assert red[h // 2 - 3 : h // 2 + 4, w // 2 - 3 : w // 2 + 4].all()
    assert blue.sum() > 5 * red.sum() > 0  # the far sphere's ring around the near one
