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
    """Lung volume (mL) of :func:`sitk_lung_mask` on a series (cached for the session)."""
    volume = load_series(folder)
    return float(np.count_nonzero(sitk_lung_mask(volume))) * volume.voxel_volume_ml


def sitk_lung_mask(volume: Volume) -> np.ndarray:
    """Lung mask of a canonical axial volume by an independent SimpleITK pipeline.

    Steps (plain SimpleITK filters on the HU image, no medscan code except loading):

    1. body = largest connected component above -500 HU, holes filled slice by slice;
    2. air inside the body = below -320 HU within the filled body;
    3. components of at least 100 mL (6-connected) that reach the upper half of the largest
       one's slice range (every lung reaches up toward its apex; gas in the stomach or bowel
       lies wholly below the middle of the lungs);
    4. vessels filled: binary closing (radius 2 voxels in-plane) and a slice-wise hole fill.

    Returns
    -------
    numpy.ndarray
        bool ``(z, y, x)`` lung mask (both lungs and the airways connected to them).
    """
    import SimpleITK as sitk

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
    lungs = _drop_low_components(sitk.GetArrayFromImage(cc))
    lungs = sitk.GetImageFromArray(lungs.astype(np.uint8))
    lungs.CopyInformation(image)
    lungs = sitk.BinaryMorphologicalClosing(lungs, (2, 2, 0))
    lungs = _fill_slices(lungs)
    return sitk.GetArrayFromImage(lungs).astype(bool)


def _drop_low_components(components: np.ndarray) -> np.ndarray:
    """Keep components (ids >= 1, largest first) whose top reaches the upper half of id 1's."""
    z_top = {}
    ids = components[::1, ::4, ::4]  # subsampled in-plane: only slice ranges are needed
    for k in range(ids.shape[0]):
        for i in np.unique(ids[k]):
            if i:
                z_top.setdefault(int(i), [k, k])[1] = k
    if 1 not in z_top:
        return np.zeros(components.shape, dtype=bool)
    lo, hi = z_top[1]
    keep = [i for i, (_a, top) in z_top.items() if top >= (lo + hi) / 2.0]
    return np.isin(components, keep)


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


def reference_airway(volume: Volume, body: np.ndarray, bronchi_mm: float = 20.0):
    """Trachea and main bronchi grown from the trachea with SimpleITK (independent reference).

    The seed is the air region (< -900 HU) inside ``body`` nearest the body's left-right centre
    with a trachea-sized cross-section (0.5-6 cm²) on the highest slice that has one (the
    volume must be canonical: slice index toward the head). The lumen is grown with
    ``sitk.ConnectedThreshold`` below an upper threshold raised from -1000 HU in 10 HU steps
    until the grown volume explodes into the lung (more than 1.5 times the previous step and
    10 mL more, or over 200 mL): the last threshold before that is kept. The carina is the
    first slice below the seed where the airway has two parts of at least 0.2 cm²; the result
    keeps the trachea and, down to ``bronchi_mm`` below the carina, the in-plane airway parts
    of at least 0.5 cm² (the main bronchi, not the small bronchi branching at the hilum).

    Returns
    -------
    tuple or None
        ``(mask, carina_slice, threshold_hu)``, or None when no trachea is in the volume.
    """
    import SimpleITK as sitk
    from scipy import ndimage as ndi

    hu = volume.hu
    sz, sy, sx = volume.spacing
    px_cm2 = sy * sx / 100.0
    seed = None
    for k in range(hu.shape[0] - 1, hu.shape[0] // 2, -1):
        if not body[k].any():
            continue
        lab, n = ndi.label((hu[k] < -900) & body[k])
        sizes = np.bincount(lab.ravel())
        body_x = np.nonzero(body[k])[1].mean()
        best = None
        for i in range(1, n + 1):
            if not 0.5 < sizes[i] * px_cm2 < 6.0:
                continue
            y, x = np.argwhere(lab == i).mean(axis=0)
            off = abs(x - body_x) * sx
            if off < 30 and (best is None or off < best[0]):
                best = (off, round(y), round(x))
        if best is not None:
            seed = (k, best[1], best[2])
            break
    if seed is None:
        return None
    image = sitk.GetImageFromArray(np.asarray(hu, dtype=np.int16))
    image.SetSpacing((sx, sy, sz))
    voxel_ml = sx * sy * sz / 1000.0
    kept, kept_t, previous = None, None, 0.0
    for t in range(-1000, -860, 10):
        grown = sitk.ConnectedThreshold(image, seedList=[(seed[2], seed[1], seed[0])],
                                        lower=-32768, upper=t)
        mask = sitk.GetArrayFromImage(grown).astype(bool)
        ml = float(mask.sum()) * voxel_ml
        if ml > 200 or (previous > 0 and ml > 1.5 * previous and ml > previous + 10):
            break
        if ml > 0:
            kept, kept_t, previous = mask, t, ml
    if kept is None:
        return None
    carina = None
    for k in range(seed[0], -1, -1):
        lab, n = ndi.label(kept[k])
        sizes = np.bincount(lab.ravel())[1:] * px_cm2
        if (sizes >= 0.2).sum() >= 2:
            carina = k
            break
    if carina is None:
        return kept, None, kept_t
    lowest = max(carina - round(bronchi_mm / sz), 0)
    kept[:lowest] = False
    # below the carina keep the main bronchi only: in-plane parts of at least 0.5 cm² (the
    # lobar and segmental bronchi branching off at the hilum are smaller)
    for k in range(lowest, carina + 1):
        lab, n = ndi.label(kept[k])
        sizes = np.bincount(lab.ravel()) * px_cm2
        sizes[0] = 0
        kept[k] = (sizes >= 0.5)[lab]
    return kept, carina, kept_t


@lru_cache(maxsize=8)
def segment_series(folder: str):
    """medscan's :func:`~medscan.ct.segment.segment` of a series with the default tissues.

    Cached for the session (several test files check the same segmentations); do not modify
    the returned object or its label map.
    """
    from medscan.ct.segment import segment
    from medscan.ct.tissues import default_tissues

    seg = segment(load_series(folder), default_tissues())
    seg.labels.setflags(write=False)
    return seg
