"""Test helpers for the CT segmentation tests: cached real series and independent references.

* :func:`chest_series` / :func:`load_series` -- the shared chest CT series, loaded once per test
  session (``functools.lru_cache``: the volumes are read-only by convention).
* :func:`sitk_lung_ml` -- an independent lung volume: a SimpleITK-only pipeline (threshold, body
  mask, air inside it, components over 100 mL, vessels filled) that shares no code with
  :mod:`medscan.ct.segment`.
* :func:`reoriented` -- the same voxels stored another way (axis permutation and flips), with
  the affine that keeps every voxel at its LPS position.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from medscan.volume import Volume

#: The chest series of ``../shared/data/ct``.
CHEST_SERIES = (
    "lungdx-a0001-chest-5mm",
    "lungdx-a0002-b40f",
    "lungdx-a0002-b70f",
    "ricord-1a-000082-jpegll",
)


@lru_cache(maxsize=8)
def load_series(folder: str) -> Volume:
    """Load one series (cached for the session; do not modify the returned volume)."""
    from medscan.dicom import load_path

    volume = load_path(Path(folder))
    volume.hu.setflags(write=False)
    return volume


@lru_cache(maxsize=8)
def sitk_lung_ml(folder: str) -> float:
    """Lung volume (mL) of a series by an independent SimpleITK pipeline.

    Steps (plain SimpleITK filters on the HU image, no medscan code except loading):

    1. body = largest connected component above -500 HU, holes filled slice by slice;
    2. air inside the body = below -320 HU within the filled body;
    3. components of at least 100 mL (6-connected);
    4. vessels filled: binary closing (radius 2 voxels in-plane) and a slice-wise hole fill.
    """
    import SimpleITK as sitk

    volume = load_series(folder)
    sz, sy, sx = volume.spacing
    image = sitk.GetImageFromArray(volume.hu.astype(np.int16))
    image.SetSpacing((sx, sy, sz))
    dense = sitk.BinaryThreshold(image, -500, 32767, 1, 0)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(dense, False))
    body = _fill_slices(sitk.BinaryThreshold(cc, 1, 1, 1, 0))
    air = sitk.And(sitk.BinaryThreshold(image, -32768, -321, 1, 0), body)
    voxel_ml = sx * sy * sz / 1000.0
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(air, False),
                               minimumObjectSize=int(np.ceil(100.0 / voxel_ml)))
    lungs = sitk.BinaryThreshold(cc, 1, 65535, 1, 0)
    lungs = sitk.BinaryMorphologicalClosing(lungs, (2, 2, 0))
    lungs = _fill_slices(lungs)
    return float(sitk.GetArrayViewFromImage(lungs).sum()) * voxel_ml


def _fill_slices(mask):
    """SimpleITK hole fill of every axial slice of a 3-D binary image."""
    import SimpleITK as sitk

    n = mask.GetSize()[2]
    filled = [sitk.BinaryFillhole(mask[:, :, k]) for k in range(n)]
    out = sitk.JoinSeries(filled)
    out.CopyInformation(mask)
    return out


def reoriented(volume: Volume, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]
               ) -> Volume:
    """The same voxels stored with array axes permuted and flipped (lossless).

    Parameters
    ----------
    volume : Volume
        Source volume.
    perm : tuple of int
        New array axis ``a`` is old array axis ``perm[a]`` (``np.transpose`` order).
    flips : tuple of bool
        Reverse new array axis ``a`` when ``flips[a]``.

    Returns
    -------
    Volume
        Every voxel keeps its LPS position: ``new.world_from_zyx(p_new)`` equals
        ``volume.world_from_zyx(p_old)`` for corresponding voxels.
    """
    hu = np.transpose(volume.hu, perm)
    # old array index (z, y, x) of new index q: old[perm[a]] = q[a] (flipped: n-1-q[a])
    m = np.zeros((4, 4))  # homogeneous map new zyx -> old zyx
    for a, old in enumerate(perm):
        n = hu.shape[a]
        if flips[a]:
            m[old, a], m[old, 3] = -1.0, n - 1.0
        else:
            m[old, a] = 1.0
    m[3, 3] = 1.0
    for a in range(3):
        if flips[a]:
            hu = np.flip(hu, axis=a)
    # affine maps (i, j, k) = (x, y, z); go through zyx order
    swap = np.zeros((4, 4))
    swap[0, 2] = swap[1, 1] = swap[2, 0] = swap[3, 3] = 1.0  # xyz <-> zyx
    affine = volume.affine @ swap @ m @ swap
    return Volume(hu=np.ascontiguousarray(hu), affine=affine, case_id=volume.case_id,
                  metadata=dict(volume.metadata))


def write_resliced_dicom(source: Path, out: Path, plane: str = "coronal") -> Path:
    """Re-store a real axial DICOM series as coronal or sagittal slices (pydicom, lossless).

    Every output file takes the first source file's header (same patient/study, a new
    SeriesInstanceUID derived deterministically from the source one) and one stored row
    (``coronal``: ImageOrientationPatient ``1\\0\\0\\0\\0\\-1``, rows running from head to
    feet) or column (``sagittal``: ``0\\1\\0\\0\\0\\-1``) of the loaded volume, with the HU
    written as int16 (slope 1, intercept 0). Uncompressed Explicit VR Little Endian.

    Parameters
    ----------
    source : Path
        Folder of one axial series.
    out : Path
        Output folder (created).
    plane : str
        ``coronal`` or ``sagittal``.

    Returns
    -------
    Path
        ``out``.
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    volume = load_series(str(source))
    template = pydicom.dcmread(sorted(Path(source).glob("*.dcm"))[0])
    hu = np.asarray(volume.hu, dtype=np.int16)
    a = volume.affine
    if not np.allclose(a[:3, :3], np.diag(np.diag(a[:3, :3]))) or (np.diag(a)[:3] <= 0).any():
        raise ValueError("write_resliced_dicom needs an axis-aligned, canonical axial source")
    sx, sy, sz = np.diag(a)[:3]
    nz, ny, nx = hu.shape
    series_uid = generate_uid(entropy_srcs=[str(template.SeriesInstanceUID), plane])
    out.mkdir(parents=True, exist_ok=True)
    n_slices = ny if plane == "coronal" else nx
    for s in range(n_slices):
        if plane == "coronal":
            pixels = hu[::-1, s, :]  # rows: head to feet, columns: toward patient left
            orientation = [1, 0, 0, 0, 0, -1]
            spacing = [sz, sx]  # row spacing (between rows), column spacing
            first = (0, s, nz - 1)  # (x, y, z) index of the first stored pixel
            thickness = sy
        elif plane == "sagittal":
            pixels = hu[::-1, :, s]  # rows: head to feet, columns: toward posterior
            orientation = [0, 1, 0, 0, 0, -1]
            spacing = [sz, sy]
            first = (s, 0, nz - 1)
            thickness = sx
        else:
            raise ValueError(f"plane must be coronal or sagittal, not {plane!r}")
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        uid = generate_uid(entropy_srcs=[series_uid, str(s)])
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = s + 1
        ds.ImageOrientationPatient = orientation
        ds.ImagePositionPatient = [float(v) for v in (a[:3, :3] @ np.array(first, float)
                                                      + a[:3, 3])]
        ds.PixelSpacing = [float(v) for v in spacing]
        ds.SliceThickness = float(thickness)
        for keyword in ("SliceLocation", "SpacingBetweenSlices"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.save_as(out / f"{plane}-{s:04d}.dcm", enforce_file_format=True)
    return out


def labels_on_grid(ref: Volume, other: Volume, other_labels: np.ndarray) -> np.ndarray:
    """``other_labels`` sampled at the voxel centres of ``ref`` (nearest voxel, via affines).

    World-space comparison of two label maps on grids that share voxel centres but store them
    in another order: each ``ref`` voxel centre is mapped to LPS mm and back into ``other``'s
    index space. Voxels outside ``other`` get 255.
    """
    inv = np.linalg.inv(other.affine) @ ref.affine  # ref (i, j, k) -> other (i, j, k)
    rot = np.rint(inv[:3, :3])
    if np.allclose(inv[:3, :3], rot, atol=1e-6) and (np.abs(rot).sum(axis=0) == 1).all() \
            and (np.abs(rot).sum(axis=1) == 1).all():
        # grids related by a signed axis permutation: index each axis separately (fast)
        ref_xyz = [np.arange(n) for n in ref.shape[::-1]]  # i, j, k ranges
        idx = []
        for r in range(3):  # other axis i, j, k
            c = int(np.argmax(np.abs(rot[r])))
            vals = np.rint(rot[r, c] * ref_xyz[c] + inv[r, 3]).astype(np.int64)
            shape = [1, 1, 1]
            shape[2 - c] = vals.size  # ref array axis of ref voxel axis c
            idx.append(vals.reshape(shape))
        ok = all(((v >= 0) & (v < n)).all() for v, n in zip(idx, other.shape[::-1], strict=True))
        if ok:
            return other_labels[idx[2], idx[1], idx[0]]
    nz, ny, nx = ref.shape
    out = np.full(ref.shape, 255, dtype=np.uint8)
    jj, ii = np.mgrid[:ny, :nx]
    for k in range(nz):
        ijk = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)], axis=0).astype(float)
        o = np.rint(inv[:3, :3] @ ijk + inv[:3, 3:4]).astype(np.int64)  # other (i, j, k)
        inside = ((o >= 0) & (o < np.array(other.shape[::-1])[:, None])).all(axis=0)
        vals = np.full(ii.size, 255, dtype=np.uint8)
        vals[inside] = other_labels[o[2, inside], o[1, inside], o[0, inside]]
        out[k] = vals.reshape(ny, nx)
    return out


def cropped(volume: Volume, z: slice = slice(None), y: slice = slice(None),
            x: slice = slice(None), case_id: str | None = None) -> Volume:
    """A sub-block of a volume (array order), with the affine moved to its first voxel.

    This is what a scan with a shorter range (``z``) or a smaller reconstruction field of view
    (``y``, ``x``) of the same patient would store.
    """
    starts = [s.indices(n)[0] for s, n in zip((z, y, x), volume.shape, strict=True)]
    affine = volume.affine.copy()
    affine[:3, 3] = volume.world_from_zyx(np.array([starts], float))[0]
    return Volume(hu=np.ascontiguousarray(volume.hu[z, y, x]), affine=affine,
                  case_id=case_id or f"{volume.case_id}-crop", metadata=dict(volume.metadata))


def lung_z_range(labels: np.ndarray, ids: tuple[int, ...]) -> tuple[int, int]:
    """First and last slice index holding any of the label ``ids``."""
    hit = np.flatnonzero(np.isin(labels, ids).any(axis=(1, 2)))
    return int(hit[0]), int(hit[-1])
