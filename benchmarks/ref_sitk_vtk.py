"""Reference for ``benchmarks/end_to_end.py``: the same job with SimpleITK + VTK, one process.

Loads a DICOM series (GDCM), segments body, both lungs and bone by classic thresholds and
connected components, meshes the three labels with VTK's discrete flying edges and writes
``volume.nii.gz``, ``labels.nii.gz``, one PLY per label and ``metrics.json``:

    python benchmarks/ref_sitk_vtk.py SERIES_DIR OUT_DIR [--like-for-like] [--stages]

Compiled libraries end to end (what an experienced engineer would write for speed); no airway
removal, left/right split, smoothing, decimation or preview, so it does less than medscan.

``--like-for-like`` adds the mesh and preview work medscan does with its defaults, each step
done the usual VTK way: every label meshed from its mask block-averaged to about 1.5 mm
(``sitk.BinShrink``, medscan's ``mesh.work_mm``) and Gaussian-smoothed (sigma 0.6 voxel),
flying edges at 0.5, 10 iterations of windowed-sinc smoothing (Taubin, Zhang & Fang 1996,
``vtkWindowedSincPolyDataFilter``; medscan uses Taubin's lambda|mu filter), quadric
decimation to at most 40,000 faces (Garland & Heckbert 1997) with fast-simplification, the
simplifier medscan uses (``vtkQuadricDecimation`` took 5-7 s per surface on RICORD: a
reference slowed by a slow filter would flatter the ratio), PLY and GLB (trimesh: VTK's glTF
writer crashes on a multiblock here) per label, and a
``preview.png`` of three orthogonal slices with the labels over them (matplotlib). Still no
airway removal, no left/right naming and no report.

``--stages`` prints each step's wall time to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util.numpy_support import numpy_to_vtk


def segment(img: sitk.Image) -> sitk.Image:
    """uint8 labels: 1, 2 the two largest low-HU components inside the body, 3 bone.

    The body is the largest component above -500 HU with its holes filled slice by slice.
    """
    dense = sitk.BinaryThreshold(img, -500, 32767, 1, 0)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(dense), sortByObjectSize=True)
    largest = sitk.BinaryThreshold(cc, 1, 1, 1, 0)
    # holes filled per axial slice: in 3-D the airways open the lungs to the top of the scan
    size = largest.GetSize()
    body = sitk.JoinSeries([sitk.BinaryFillhole(largest[:, :, z]) for z in range(size[2])])
    body.CopyInformation(largest)
    low = sitk.And(body, sitk.BinaryThreshold(img, -32768, -321, 1, 0))
    lcc = sitk.RelabelComponent(sitk.ConnectedComponent(low), sortByObjectSize=True)
    lungs = sitk.Cast(sitk.Threshold(lcc, 0, 2, 0), sitk.sitkUInt8)
    bone = sitk.And(body, sitk.BinaryThreshold(img, 300, 2999, 1, 0))
    return sitk.Cast(sitk.Mask(lungs, sitk.Not(bone)) + sitk.Cast(bone, sitk.sitkUInt8) * 3,
                     sitk.sitkUInt8)


def vtk_image(image: sitk.Image, array_type: int) -> vtk.vtkImageData:
    """``image`` as VTK image data (a copy) with its origin and spacing; direction ignored."""
    vimg = vtk.vtkImageData()
    vimg.SetDimensions(*image.GetSize())
    vimg.SetSpacing(*image.GetSpacing())
    vimg.SetOrigin(*image.GetOrigin())
    arr = np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).ravel()
    vimg.GetPointData().SetScalars(numpy_to_vtk(arr, deep=True, array_type=array_type))
    return vimg


def mesh(labels: sitk.Image, value: int) -> vtk.vtkPolyData:
    """Flying-edges surface of ``labels == value`` in the image's physical space (mm)."""
    fe = vtk.vtkDiscreteFlyingEdges3D()
    fe.SetInputData(vtk_image(labels, vtk.VTK_UNSIGNED_CHAR))
    fe.SetValue(0, value)
    fe.Update()
    return fe.GetOutput()


def mesh_like(labels: sitk.Image, value: int, work_mm: float = 1.5, sigma: float = 0.6,
              iterations: int = 10, max_faces: int = 40_000) -> vtk.vtkPolyData:
    """``labels == value`` meshed as medscan's defaults do, with SimpleITK and VTK filters.

    Block mean to about ``work_mm`` (integer factors per axis), Gaussian of ``sigma`` voxels,
    flying edges at 0.5, windowed-sinc smoothing, quadric decimation to ``max_faces``.
    """
    factors = [max(1, round(work_mm / s)) for s in labels.GetSpacing()]
    field = sitk.BinShrink(sitk.Cast(labels == value, sitk.sitkFloat32), factors)
    field = sitk.DiscreteGaussian(field, variance=sigma ** 2, useImageSpacing=False)
    field = sitk.ConstantPad(field, [1, 1, 1], [1, 1, 1], 0.0)  # closed surfaces at the edges
    surface = vtk.vtkFlyingEdges3D()
    surface.SetInputData(vtk_image(field, vtk.VTK_FLOAT))
    surface.SetValue(0, 0.5)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(surface.GetOutputPort())
    smooth.SetNumberOfIterations(iterations)
    smooth.NormalizeCoordinatesOn()
    smooth.Update()
    return decimate(smooth.GetOutput(), max_faces)


def decimate(poly: vtk.vtkPolyData, max_faces: int) -> vtk.vtkPolyData:
    """``poly`` simplified to about ``max_faces`` triangles by fast-simplification (quadrics)."""
    if poly.GetNumberOfPolys() <= max_faces:
        return poly
    import fast_simplification
    from vtk.util.numpy_support import numpy_to_vtkIdTypeArray, vtk_to_numpy

    points, faces = fast_simplification.simplify(
        vtk_to_numpy(poly.GetPoints().GetData()),
        vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3),
        target_count=max_faces)
    out = vtk.vtkPolyData()
    out.SetPoints(vtk.vtkPoints())
    out.GetPoints().SetData(numpy_to_vtk(points, deep=True))
    cells = vtk.vtkCellArray()
    cells.SetData(3, numpy_to_vtkIdTypeArray(faces.astype(np.int64).ravel(), deep=True))
    out.SetPolys(cells)
    return out


def write_glb(poly: vtk.vtkPolyData, path: Path) -> None:
    """Binary glTF of a triangle mesh (trimesh's exporter)."""
    import trimesh
    from vtk.util.numpy_support import vtk_to_numpy

    points = vtk_to_numpy(poly.GetPoints().GetData())
    cells = vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    path.write_bytes(trimesh.Trimesh(points, cells, process=False).export(file_type="glb"))


def preview(img: sitk.Image, labels: sitk.Image, path: Path) -> None:
    """Axial, coronal and sagittal middle slices, labels over them, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hu = sitk.GetArrayViewFromImage(img)
    lab = sitk.GetArrayViewFromImage(labels)
    z, y, x = (n // 2 for n in hu.shape)
    sx, _, sz = img.GetSpacing()
    views = (((hu[z], lab[z]), "upper", 1.0), ((hu[:, y], lab[:, y]), "lower", sz / sx),
             ((hu[:, :, x], lab[:, :, x]), "lower", sz / sx))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.5))
    for ax, ((a, b), origin, aspect) in zip(axes, views, strict=True):
        ax.imshow(a, cmap="gray", vmin=-1000, vmax=400, origin=origin, aspect=aspect)
        ax.imshow(np.ma.masked_equal(b, 0), cmap="tab10", vmin=0, vmax=9, alpha=0.4,
                  origin=origin, aspect=aspect, interpolation="nearest")
        ax.set_axis_off()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


class Stages:
    """Wall time of each step, printed to stderr when ``on``."""

    def __init__(self, on: bool) -> None:
        self.on, self.last = on, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self.on:
            print(f"stage {name:<10} {now - self.last:6.2f} s", file=sys.stderr, flush=True)
        self.last = now


def main(series: Path, out: Path, like_for_like: bool = False, stages: bool = False) -> None:
    """Run the reference job on ``series``, writing into ``out``."""
    lap = Stages(stages)
    out.mkdir(parents=True, exist_ok=True)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    img = sitk.Cast(reader.Execute(), sitk.sitkInt16)
    lap("read")
    labels = segment(img)
    lap("segment")
    stats = sitk.LabelStatisticsImageFilter()
    stats.Execute(img, labels)
    ml = float(np.prod(img.GetSpacing())) / 1000.0
    metrics = {int(k): {"ml": stats.GetCount(k) * ml, "mean_hu": stats.GetMean(k)}
               for k in stats.GetLabels()}
    lap("measure")
    for value, name in ((1, "lung_a"), (2, "lung_b"), (3, "bone")):
        surface = mesh_like(labels, value) if like_for_like else mesh(labels, value)
        writer = vtk.vtkPLYWriter()
        writer.SetFileName(str(out / f"{name}.ply"))
        writer.SetInputData(surface)
        writer.Write()
        if like_for_like:
            write_glb(surface, out / f"{name}.glb")
    lap("mesh")
    if like_for_like:
        preview(img, labels, out / "preview.png")
        lap("preview")
    sitk.WriteImage(img, str(out / "volume.nii.gz"), useCompression=True)
    sitk.WriteImage(labels, str(out / "labels.nii.gz"), useCompression=True)
    (out / "metrics.json").write_text(json.dumps(metrics))
    lap("write")


if __name__ == "__main__":
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    paths = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(paths) != 2 or flags - {"--like-for-like", "--stages"}:
        sys.exit(__doc__)
    main(Path(paths[0]), Path(paths[1]), "--like-for-like" in flags, "--stages" in flags)
