"""Baseline for ``benchmarks/end_to_end.py``: the same job as a practitioner writes it in Python.

pydicom per file, NumPy thresholds, ``skimage.measure.label``, ``scipy.ndimage``'s hole
filling, ``skimage.measure.marching_cubes`` on each full-resolution mask, trimesh's PLY export
and nibabel's writer:

    python benchmarks/ref_skimage.py SERIES_DIR OUT_DIR

Masks: body (largest component above -500 HU, holes filled per axial slice), the two largest
components below -320 HU inside it (the lungs), bone 300..3000 HU inside the body.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import scipy.ndimage as ndi
import trimesh
from skimage.measure import label, marching_cubes


def load(series: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU volume (z, y, x) int16 sorted by z position, and its spacing (z, y, x) in mm."""
    slices = []
    for f in sorted(series.iterdir()):
        try:
            ds = pydicom.dcmread(f)
        except pydicom.errors.InvalidDicomError:
            continue
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        slices.append((float(ds.ImagePositionPatient[2]), hu.astype(np.int16),
                       [float(v) for v in ds.PixelSpacing]))
    slices.sort(key=lambda s: s[0])
    vol = np.stack([s[1] for s in slices])
    sy, sx = slices[0][2]
    return vol, (abs(slices[1][0] - slices[0][0]), sy, sx)


def largest(mask: np.ndarray, n: int) -> list[np.ndarray]:
    """The ``n`` largest 6-connected components of ``mask``."""
    lab = label(mask, connectivity=1)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return [lab == i for i in np.argsort(sizes)[::-1][:n]]


def main(series: Path, out: Path) -> None:
    """Run the baseline job on ``series``, writing into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    vol, spacing = load(series)
    body = largest(vol > -500, 1)[0]
    for z in range(body.shape[0]):  # per slice: the airways open the lungs to the scan's top
        body[z] = ndi.binary_fill_holes(body[z])
    labels = np.zeros(vol.shape, np.uint8)
    for n, lung in enumerate(largest(body & (vol < -320), 2), start=1):
        labels[ndi.binary_fill_holes(lung)] = n
    labels[body & (vol >= 300) & (vol < 3000)] = 3
    ml = float(np.prod(spacing)) / 1000.0
    metrics = {n: {"ml": float((labels == n).sum() * ml), "mean_hu": float(vol[labels == n].mean())}
               for n in (1, 2, 3)}
    for n, name in ((1, "lung_a"), (2, "lung_b"), (3, "bone")):
        verts, faces, _, _ = marching_cubes(np.pad(labels == n, 1).astype(np.float32), 0.5,
                                            spacing=spacing)
        trimesh.Trimesh(verts, faces).export(out / f"{name}.ply")
    aff = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0), aff), str(out / "volume.nii.gz"))
    nib.save(nib.Nifti1Image(labels.transpose(2, 1, 0), aff), str(out / "labels.nii.gz"))
    (out / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
