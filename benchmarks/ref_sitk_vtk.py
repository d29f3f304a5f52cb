"""Reference for ``benchmarks/end_to_end.py``: the same job with SimpleITK + VTK, one process.

Loads a DICOM series (GDCM), segments body, both lungs and bone by classic thresholds and
connected components, meshes the three labels with VTK's discrete flying edges and writes
``volume.nii.gz``, ``labels.nii.gz``, one PLY per label and ``metrics.json``:

    python benchmarks/ref_sitk_vtk.py SERIES_DIR OUT_DIR

Compiled libraries end to end (what an experienced engineer would write for speed); no airway
removal, left/right split, smoothing, decimation or preview, so it does less than medscan.
"""

from __future__ import annotations

import json
import sys
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


def mesh(labels: sitk.Image, value: int) -> vtk.vtkPolyData:
    """Flying-edges surface of ``labels == value`` in the image's physical space (mm)."""
    arr = sitk.GetArrayViewFromImage(labels)
    vimg = vtk.vtkImageData()
    vimg.SetDimensions(*labels.GetSize())
    vimg.SetSpacing(*labels.GetSpacing())
    vimg.SetOrigin(*labels.GetOrigin())
    vimg.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(arr).ravel(), deep=True,
                                                array_type=vtk.VTK_UNSIGNED_CHAR))
    fe = vtk.vtkDiscreteFlyingEdges3D()
    fe.SetInputData(vimg)
    fe.SetValue(0, value)
    fe.Update()
    return fe.GetOutput()


def main(series: Path, out: Path) -> None:
    """Run the reference job on ``series``, writing into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    img = sitk.Cast(reader.Execute(), sitk.sitkInt16)
    labels = segment(img)
    stats = sitk.LabelStatisticsImageFilter()
    stats.Execute(img, labels)
    ml = float(np.prod(img.GetSpacing())) / 1000.0
    metrics = {int(k): {"ml": stats.GetCount(k) * ml, "mean_hu": stats.GetMean(k)}
               for k in stats.GetLabels()}
    for value, name in ((1, "lung_a"), (2, "lung_b"), (3, "bone")):
        writer = vtk.vtkPLYWriter()
        writer.SetFileName(str(out / f"{name}.ply"))
        writer.SetInputData(mesh(labels, value))
        writer.Write()
    sitk.WriteImage(img, str(out / "volume.nii.gz"), useCompression=True)
    sitk.WriteImage(labels, str(out / "labels.nii.gz"), useCompression=True)
    (out / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
