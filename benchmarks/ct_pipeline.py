"""Benchmark: medscan's CT pipeline vs SimpleITK+VTK and vs plain scikit-image, one process.

Each pipeline goes from the DICOM folder to files on disk: load -> segment (body, lungs) ->
measure -> mesh (both lungs) -> write (volume.nii.gz, labels.nii.gz, lung meshes as PLY,
metrics). No previews.

* medscan: ``medscan.dicom`` + ``medscan.ct`` (segment/measure/mesh) + ``medscan.io`` writers,
  meshing only the two lungs (the job's default also meshes bone);
* SimpleITK+VTK (compiled libraries): ``ImageSeriesReader`` (GDCM), ``BinaryThreshold``,
  ``ConnectedComponent`` + ``RelabelComponent``, ``BinaryFillhole``, ``LabelStatistics``,
  ``vtkDiscreteFlyingEdges3D``, ``WriteImage`` (gzip) and ``vtkPLYWriter``;
* plain scikit-image: pydicom per file, NumPy thresholds, ``skimage.measure.label``,
  ``scipy.ndimage.binary_fill_holes``, ``skimage.measure.marching_cubes`` at full resolution,
  nibabel and trimesh writers.

The reference pipelines do the classic steps only (no airway removal, no left/right split by
erosion, no closing); medscan does more work. Prints per-stage times (median of ``--repeats``
interleaved rounds), the ratios, and peak memory: the process's peak RSS above its RSS at the
start of each pipeline (``VmHWM`` after resetting it through ``/proc/self/clear_refs``; it
includes C/C++ allocations), and, with ``--tracemalloc``, tracemalloc's peak in an extra
untimed round (Python/NumPy allocations only; tracemalloc slows the pipelines down), both as
a multiple of the int16 volume's size.

    .venv/bin/python benchmarks/ct_pipeline.py [--series PATH] [--backend cpu|gpu]
        [--repeats 1] [--only medscan,sitk,skimage] [--tracemalloc]

Goals on the 255-slice RICORD series: medscan <= 1.0x SimpleITK+VTK time, >= 8x faster than
plain scikit-image, peak memory <= 4x the int16 volume.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SERIES = REPO.parent / "shared" / "data" / "ct" / "ricord-1a-000082-jpegll"


class Stages:
    """Per-stage wall-clock times of one pipeline run."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._t
        self._t = now


# --------------------------------------------------------------------------- medscan
def run_medscan(series: Path, out: Path, backend: str) -> tuple[Stages, int]:
    from medscan.backend import get_backend
    from medscan.ct.measure import measure
    from medscan.ct.mesh import label_surface
    from medscan.ct.segment import segment
    from medscan.ct.tissues import default_tissues
    from medscan.dicom import discover, load
    from medscan.io import write_json
    from medscan.io.mesh import export_mesh
    from medscan.volume import LabelMap

    st = Stages()
    be = get_backend(backend)
    tissues = default_tissues()
    volume = load(discover(series).series[0])
    st.lap("load")
    seg = segment(volume, tissues, be=be)
    st.lap("segment")
    metrics = measure(volume.hu, seg.labels, tissues, volume.voxel_volume_ml, seg.lungs_found, be)
    st.lap("measure")
    meshes = {name: label_surface(seg.labels, tissues[name].label, volume.affine, be=be)
              for name in ("lung_left", "lung_right")}
    st.lap("mesh")
    volume.to_nifti(out / "volume.nii.gz")
    LabelMap(seg.labels, volume.affine, tissues.label_table()).to_nifti(out / "labels.nii.gz")
    for name, mesh in meshes.items():
        export_mesh(mesh, out / f"{name}.ply", tissues[name].color)
    write_json(out / "metrics.json", metrics)
    st.lap("write")
    return st, volume.hu.size


# --------------------------------------------------------------------------- SimpleITK + VTK
def run_sitk_vtk(series: Path, out: Path) -> tuple[Stages, int]:
    import SimpleITK as sitk
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    st = Stages()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    img = sitk.Cast(reader.Execute(), sitk.sitkInt16)
    st.lap("load")
    dense = sitk.BinaryThreshold(img, -500, 32767, 1, 0)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(dense), sortByObjectSize=True)
    body = sitk.BinaryFillhole(sitk.BinaryThreshold(cc, 1, 1, 1, 0))
    low = sitk.And(body, sitk.BinaryThreshold(img, -32768, -321, 1, 0))
    lcc = sitk.RelabelComponent(sitk.ConnectedComponent(low), sortByObjectSize=True)
    lungs = sitk.BinaryThreshold(lcc, 1, 2, 1, 0)
    lungs = sitk.BinaryFillhole(lungs)
    labels = sitk.Mask(lcc, lungs)
    labels = sitk.Cast(sitk.Threshold(labels, 0, 2, 0), sitk.sitkUInt8)
    st.lap("segment")
    stats = sitk.LabelStatisticsImageFilter()
    stats.Execute(img, labels)
    spacing = np.prod(img.GetSpacing()) / 1000.0
    metrics = {int(k): {"ml": stats.GetCount(k) * spacing, "mean": stats.GetMean(k)}
               for k in stats.GetLabels()}
    st.lap("measure")
    arr = sitk.GetArrayViewFromImage(labels)
    vimg = vtk.vtkImageData()
    vimg.SetDimensions(*img.GetSize())
    vimg.SetSpacing(*img.GetSpacing())
    vimg.SetOrigin(*img.GetOrigin())
    vimg.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(arr).ravel(), deep=True,
                                                array_type=vtk.VTK_UNSIGNED_CHAR))
    fe = vtk.vtkDiscreteFlyingEdges3D()
    fe.SetInputData(vimg)
    fe.SetValue(0, 1)
    fe.SetValue(1, 2)
    fe.Update()
    surf = fe.GetOutput()
    st.lap("mesh")
    sitk.WriteImage(img, str(out / "volume.nii.gz"), useCompression=True)
    sitk.WriteImage(labels, str(out / "labels.nii.gz"), useCompression=True)
    writer = vtk.vtkPLYWriter()
    writer.SetFileName(str(out / "lungs.ply"))
    writer.SetInputData(surf)
    writer.Write()
    (out / "metrics.json").write_text(json.dumps(metrics))
    st.lap("write")
    return st, int(np.prod(img.GetSize()))


# --------------------------------------------------------------------------- plain skimage
def run_skimage(series: Path, out: Path) -> tuple[Stages, int]:
    import nibabel as nib
    import pydicom
    import scipy.ndimage as ndi
    import trimesh
    from skimage.measure import label, marching_cubes

    st = Stages()
    slices = []
    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(
            ds.RescaleIntercept)
        slices.append((float(ds.ImagePositionPatient[2]), hu.astype(np.int16)))
    slices.sort(key=lambda s: s[0])
    vol = np.stack([s[1] for s in slices])
    ds0 = pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True)
    sy, sx = (float(v) for v in ds0.PixelSpacing)
    sz = abs(slices[1][0] - slices[0][0])
    st.lap("load")
    lab = label(vol > -500, connectivity=1)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = ndi.binary_fill_holes(lab == sizes.argmax())
    lab = label(body & (vol < -320), connectivity=1)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1][:2]
    labels = np.zeros(vol.shape, np.uint8)
    for n, i in enumerate(order, start=1):
        labels[ndi.binary_fill_holes(lab == i)] = n
    st.lap("segment")
    metrics = {n: {"ml": float((labels == n).sum() * sx * sy * sz / 1000),
                   "mean": float(vol[labels == n].mean())} for n in (1, 2)}
    st.lap("measure")
    meshes = []
    for n in (1, 2):
        v, f, _, _ = marching_cubes(np.pad(labels == n, 1).astype(np.float32), 0.5,
                                    spacing=(sz, sy, sx))
        meshes.append(trimesh.Trimesh(v, f))
    st.lap("mesh")
    aff = np.diag([sx, sy, sz, 1.0])
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), aff), str(out / "volume.nii.gz"))
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), aff), str(out / "labels.nii.gz"))
    for n, m in enumerate(meshes, start=1):
        m.export(out / f"lung{n}.ply")
    (out / "metrics.json").write_text(json.dumps(metrics))
    st.lap("write")
    return st, vol.size


# --------------------------------------------------------------------------- memory
def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def measured(
    fn: Callable[[], tuple[Stages, int]], trace: bool
) -> tuple[Stages, int, float, float]:
    """Run ``fn``; return stages, voxels, peak RSS increase (bytes), tracemalloc peak (bytes).

    tracemalloc slows Python-heavy code a lot: with ``trace`` the times are not meaningful.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        rss0 = _status_kb("VmRSS")
    except OSError:
        rss0 = -1
    tpeak = float("nan")
    if trace:
        tracemalloc.start()
    st, voxels = fn()
    if trace:
        _, tpeak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    hwm = _status_kb("VmHWM") if rss0 >= 0 else -1
    rss_peak = (hwm - rss0) * 1024.0 if rss0 >= 0 else float("nan")
    return st, voxels, rss_peak, float(tpeak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    ap.add_argument("--backend", default="cpu", choices=["cpu", "gpu", "auto"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", default="medscan,sitk,skimage")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="one extra untimed round per pipeline under tracemalloc")
    args = ap.parse_args()
    if not args.series.exists():
        args.series = REPO / "medscan" / "sample" / "ct-lungdx-a0002-b40f"
    which = args.only.split(",")
    if args.backend != "cpu" and "medscan" in which:
        which.append("medscan_cpu")  # issue 7: GPU vs CPU on the same machine, same process
    runners = {
        "medscan": lambda out: run_medscan(args.series, out, args.backend),
        "medscan_cpu": lambda out: run_medscan(args.series, out, "cpu"),
        "sitk": lambda out: run_sitk_vtk(args.series, out),
        "skimage": lambda out: run_skimage(args.series, out),
    }
    # warm-up imports and caches (not timed): one small run each on the sample
    sample = REPO / "medscan" / "sample" / "ct-lungdx-a0002-b40f"
    warm = {"medscan": lambda o: run_medscan(sample, o, args.backend),
            "medscan_cpu": lambda o: run_medscan(sample, o, "cpu"),
            "sitk": lambda o: run_sitk_vtk(sample, o),
            "skimage": lambda o: run_skimage(sample, o)}
    for name in which:
        with tempfile.TemporaryDirectory() as d:
            warm[name](Path(d))
    results: dict[str, list[tuple[Stages, int, float, float]]] = {k: [] for k in which}
    for _ in range(args.repeats):
        for name in which:
            d = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
            try:
                results[name].append(measured(lambda r=runners[name], d=d: r(d), False))
            finally:
                shutil.rmtree(d, ignore_errors=True)

    traced: dict[str, float] = {}
    if args.tracemalloc:
        for name in which:
            d = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
            try:
                traced[name] = measured(lambda r=runners[name], d=d: r(d), True)[3]
            finally:
                shutil.rmtree(d, ignore_errors=True)

    print(f"series: {args.series}  backend: {args.backend}  repeats: {args.repeats}")
    stages = ["load", "segment", "measure", "mesh", "write"]
    header = f"{'pipeline':<10}" + "".join(f"{s:>10}" for s in [*stages, "total"])
    header += f"{'peakRSS/vol':>13}{'tracemalloc/vol':>17}"
    print(header)
    totals: dict[str, float] = {}
    for name, runs in results.items():
        med = {s: statistics.median(r[0].times.get(s, 0.0) for r in runs) for s in stages}
        total = statistics.median(sum(r[0].times.values()) for r in runs)
        totals[name] = total
        vol_bytes = runs[0][1] * 2  # int16
        rss = max(r[2] for r in runs) / vol_bytes
        tm = traced.get(name, float("nan")) / vol_bytes
        print(f"{name:<10}" + "".join(f"{med[s]:>10.2f}" for s in stages) + f"{total:>10.2f}"
              + f"{rss:>12.2f}x{tm:>16.2f}x")
    if "medscan" in totals:
        if "medscan_cpu" in totals:
            r = totals["medscan_cpu"] / totals["medscan"]
            print(f"medscan {args.backend} vs cpu: {r:.2f}x faster end to end  (goal >= 10x)")
        if "sitk" in totals:
            r = totals["medscan"] / totals["sitk"]
            print(f"medscan / SimpleITK+VTK time: {r:.2f}x  (goal <= 1.0x)")
        if "skimage" in totals:
            r = totals["skimage"] / totals["medscan"]
            print(f"plain scikit-image / medscan time: {r:.2f}x faster  (goal >= 8x)")


if __name__ == "__main__":
    main()
