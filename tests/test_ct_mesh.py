"""Meshes from real labels: LPS mm through the full affine, enclosed volume, export formats."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import trimesh

from medscan.ct.mesh import MeshParams, label_surface
from medscan.ct.segment import segment
from medscan.ct.tissues import LUNG_LEFT, LUNG_RIGHT, default_tissues
from medscan.dicom import load_path
from medscan.io.mesh import export_mesh, mesh_summary


@pytest.fixture(scope="module")
def case(sample_ct):
    tissues = default_tissues()
    volume = load_path(sample_ct)
    seg = segment(volume, tissues)
    assert seg.lungs_found
    return volume, seg.labels, tissues


@pytest.fixture(scope="module")
def lung_mesh(case):
    volume, labels, tissues = case
    return label_surface(labels, tissues[LUNG_LEFT].label, volume.affine)


def test_lung_mesh_in_world_box_and_encloses_voxel_volume(case, lung_mesh):
    volume, labels, tissues = case
    lo, hi = volume.world_bounds()
    half = np.array(volume.spacing)[::-1] / 2  # (x, y, z) half voxel
    assert (lung_mesh.vertices >= lo - half - 1e-6).all()
    assert (lung_mesh.vertices <= hi + half + 1e-6).all()
    assert lung_mesh.is_watertight
    voxels_ml = np.count_nonzero(labels == tissues[LUNG_LEFT].label) * volume.voxel_volume_ml
    mesh_ml = lung_mesh.volume / 1000.0
    assert mesh_ml > 0  # outward normals
    assert abs(mesh_ml - voxels_ml) / voxels_ml < 0.05, (mesh_ml, voxels_ml)
    summary = mesh_summary(lung_mesh)
    assert summary["watertight"] and summary["faces"] <= MeshParams().max_faces
    # the left lung mesh lies on the patient's left (+x LPS) of the right lung's
    right = label_surface(labels, tissues[LUNG_RIGHT].label, volume.affine)
    assert lung_mesh.vertices[:, 0].mean() > right.vertices[:, 0].mean() + 80


def test_full_affine_is_used(case):
    """A rotated and shifted grid moves the mesh by exactly that rotation and shift."""
    volume, labels, tissues = case
    params = MeshParams(smooth_iterations=0, max_faces=0)
    base = label_surface(labels, tissues[LUNG_RIGHT].label, volume.affine, params)
    theta = np.deg2rad(30)
    rot = np.eye(4)
    rot[:3, :3] = [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                   [0, 0, 1]]
    rot[:3, 3] = [10.0, -20.0, 5.0]
    moved = label_surface(labels, tissues[LUNG_RIGHT].label, rot @ volume.affine, params)
    np.testing.assert_allclose(moved.vertices, base.vertices @ rot[:3, :3].T + rot[:3, 3],
                               atol=1e-6)
    assert moved.volume == pytest.approx(base.volume, rel=1e-6)


def test_absent_label_gives_no_mesh(case):
    volume, labels, _ = case
    assert label_surface(labels, 250, volume.affine) is None


@pytest.mark.parametrize("fmt", ["ply", "stl", "obj", "glb"])
def test_export_round_trip(tmp_path, lung_mesh, fmt):
    path = export_mesh(lung_mesh, tmp_path / f"lung_left.{fmt}", (240, 150, 80),
                       {"tissue": "lung_left", "label": 8})
    raw = path.read_bytes()
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.faces) == len(lung_mesh.faces)
    # same coordinates (LPS mm) after the round trip
    np.testing.assert_allclose(loaded.bounds, lung_mesh.bounds, atol=1e-3)
    if fmt == "ply":
        header = raw[: raw.index(b"end_header")].decode()
        assert "comment medscan coordinate_space=LPS units=mm" in header
        assert loaded.visual.vertex_colors[0, :3].tolist() == [240, 150, 80]
    elif fmt == "stl":
        assert raw[:80].startswith(b"medscan coordinate_space=LPS units=mm")
    elif fmt == "obj":
        assert raw.startswith(b"# medscan coordinate_space=LPS units=mm")
    else:
        (json_len,) = struct.unpack("<I", raw[12:16])
        gltf = json.loads(raw[20 : 20 + json_len])
        extras = gltf["meshes"][0]["extras"]
        assert extras["coordinate_space"] == "LPS" and extras["units"] == "mm"
        assert extras["tissue"] == "lung_left"


@pytest.mark.slow
def test_bone_mesh_keeps_ribs_continuous_on_ricord(shared_ct):
    """On the 1.25 mm RICORD series the rib cage is one piece, as in the voxel mask.

    Reference: the 26-connected components of the bone label itself (cc3d). A mesh that
    breaks thin ribs has more large pieces than the mask has components, and its largest piece
    holds a far smaller share of the surface than the largest component's share of the bone
    (block mean only: 27 pieces of >= 200 faces, the largest 28% of the faces; the mask's
    largest component is 68% of the bone, 23 components of >= 0.5 mL).
    """
    import cc3d
    from ct_reference import load_series, segment_series

    tissues = default_tissues()
    volume = load_series(str(shared_ct / "ricord-1a-000082-jpegll"))
    labels = segment_series(str(shared_ct / "ricord-1a-000082-jpegll")).labels
    bone = labels == tissues["bone"].label
    comps, _n = cc3d.connected_components(bone, connectivity=26, return_N=True)
    ml = np.bincount(comps.ravel())[1:] * volume.voxel_volume_ml
    largest_share = ml.max() / ml.sum()
    mask_pieces = int(np.count_nonzero(ml >= 0.5))
    mesh = label_surface(labels, tissues["bone"].label, volume.affine, MeshParams(), thin=True)
    faces = sorted((len(p.faces) for p in mesh.split(only_watertight=False)), reverse=True)
    assert faces[0] / len(mesh.faces) > 0.8 * largest_share, (faces[:5], largest_share)
    assert sum(f >= 200 for f in faces) <= mask_pieces, (faces[:30], mask_pieces)


def test_decimation_holds_only_the_mesh(case, monkeypatch):
    """When decimation starts (fast-simplification: ~275 bytes per face of its own), the field,
    the marching-cubes arrays and trimesh's derived cache are no longer held: at 1024 slices
    they were 550 MiB of the bone worker's peak (issue 15, docs/performance.md). NumPy reports
    its buffers to tracemalloc, so what is allocated and still alive is measured directly."""
    import gc
    import tracemalloc

    from medscan.ct.mesh import crop_surface, label_crop

    volume, labels, tissues = case
    params = MeshParams(max_faces=2000)
    crop = label_crop(labels, tissues["bone"].label, volume.affine, params)
    assert crop is not None
    seen: dict[str, int] = {}
    decimate = trimesh.Trimesh.simplify_quadric_decimation

    def spy(self, *args, **kwargs):
        gc.collect()
        seen["held"] = tracemalloc.get_traced_memory()[0] - seen["start"]
        seen["mesh"] = self.vertices.nbytes + self.faces.nbytes
        seen["faces"] = len(self.faces)
        return decimate(self, *args, **kwargs)

    monkeypatch.setattr(trimesh.Trimesh, "simplify_quadric_decimation", spy)
    tracemalloc.start()
    try:
        seen["start"] = tracemalloc.get_traced_memory()[0]
        mesh = crop_surface(crop, volume.affine, params, thin=True)
    finally:
        tracemalloc.stop()
    assert "held" in seen, "the surface was not decimated"
    assert mesh is not None and len(mesh.faces) < seen["faces"]
    assert seen["mesh"] > 100_000, "too small a surface to tell"
    # the mesh's own arrays plus room for small objects: 1.04x now, 6.1x while the field, the
    # marching-cubes arrays and trimesh's cache were still held
    assert seen["held"] < 1.5 * seen["mesh"], seen
