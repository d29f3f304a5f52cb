"""Mask operations written once against a :class:`~medscan.backend.Backend`.

Hole filling uses connected components of the background (``be.label``) rather than
``ndimage.binary_fill_holes``: on a 255x512x512 chest CT SciPy's iterative fill takes about
1.7 s, labelling the background (3-D, or slice by slice) 0.2-0.4 s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medscan.backend import Backend


def bbox(be: Backend, mask: Any, margin: tuple[int, int, int] = (0, 0, 0)) -> tuple[slice, ...]:
    """Bounding box of a 3-D mask as slices, grown by ``margin`` voxels and clipped.

    Returns an empty box (zero-length slices) for an empty mask.
    """
    xp = be.xp
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = be.asnumpy(xp.any(mask, axis=other))
        idx = np.flatnonzero(hit)
        if idx.size == 0:
            return (slice(0, 0),) * 3
        lo = max(int(idx[0]) - margin[axis], 0)
        hi = min(int(idx[-1]) + 1 + margin[axis], mask.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def label_bbox(
    be: Backend, labels: Any, label: int, margin: tuple[int, int, int] = (0, 0, 0),
    slab: int = 16,
) -> tuple[slice, ...]:
    """:func:`bbox` of ``labels == label``, computed slab by slab (no whole-volume mask)."""
    xp = be.xp
    nz, ny, nx = labels.shape
    hit_z = np.zeros(nz, dtype=bool)
    hit_y = xp.zeros(ny, dtype=bool)
    hit_x = xp.zeros(nx, dtype=bool)
    for k in range(0, nz, slab):
        m = labels[k : k + slab] == label
        hit_z[k : k + slab] = be.asnumpy(xp.any(m, axis=(1, 2)))
        hit_y |= xp.any(m, axis=(0, 2))
        hit_x |= xp.any(m, axis=(0, 1))
    box = []
    for axis, hit in enumerate((hit_z, be.asnumpy(hit_y), be.asnumpy(hit_x))):
        idx = np.flatnonzero(hit)
        if idx.size == 0:
            return (slice(0, 0),) * 3
        lo = max(int(idx[0]) - margin[axis], 0)
        hi = min(int(idx[-1]) + 1 + margin[axis], labels.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def component_sizes(be: Backend, labels: Any, n: int, slab: int = 16) -> np.ndarray:
    """Voxel count of components ``0..n`` (index 0 = background), on the host.

    Counted slab by slab along axis 0: ``bincount`` widens its input to 64-bit integers, which
    for a whole 3-D label array would cost twice the array's memory again.
    """
    xp = be.xp
    counts = xp.zeros(n + 1, dtype=xp.int64)
    for k in range(0, labels.shape[0], slab):
        counts += xp.bincount(labels[k : k + slab].ravel(), minlength=n + 1)
    return be.asnumpy(counts).astype(np.int64)


def largest_component(
    be: Backend, mask: Any, connectivity: int = 6, slab: int = 16, overwrite: bool = False
) -> Any:
    """The largest connected component of ``mask`` (empty if ``mask`` is empty).

    Ties go to the component met first in raster-scan order (``np.argmax`` over the ids).

    A mask of more than ``slab`` slices is labelled ``slab`` slices at a time
    (:func:`_largest_by_slabs`): a whole-volume uint32 label array of a chest CT's body box is
    235 MB (the peak of ``segment``), and touching that much fresh memory is a good part of
    the labelling time.

    A smaller mask is labelled whole. Counting every component's voxels
    (:func:`component_sizes`) would cost as much as the labelling itself, so a candidate is
    taken from a strided 1-in-64 sample of the labels and counted exactly: when it holds more
    than half of the mask's voxels no other component can be as large, and it is the answer of
    the full count. Otherwise (no clear majority) every component is counted. Both paths give
    the voxels of counting every component of the whole mask (``tests/test_ct_ops.py``).

    With ``overwrite=True`` a mask of more than ``slab`` slices (a writable bool array the
    caller no longer needs) receives the result, which is returned: no fresh whole-volume mask.
    """
    if mask.shape[0] > slab:
        return _largest_by_slabs(be, mask, connectivity, slab, overwrite)
    labels, n = be.label(mask, connectivity)
    if n == 0:
        return be.xp.zeros(mask.shape, dtype=bool)
    xp = be.xp
    sample = xp.ascontiguousarray(labels[::4, ::4, ::4]).ravel()
    guess = int(xp.argmax(xp.bincount(sample, minlength=n + 1)[1:])) + 1
    comp = labels == guess
    if 2 * int(xp.count_nonzero(comp)) > int(xp.count_nonzero(mask)):
        return comp
    del comp
    sizes = component_sizes(be, labels, n)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _seam_offsets(connectivity: int) -> list[tuple[int, int]]:
    """In-plane offsets ``(dy, dx)`` at which voxels of adjacent slices are neighbours."""
    if connectivity == 6:
        return [(0, 0)]
    if connectivity == 18:
        return [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 26:
        return [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    raise ValueError(f"connectivity {connectivity}: use 6, 18 or 26")


def _seam_pairs(be: Backend, upper: Any, lower: Any, connectivity: int,
                n_upper: int, n_lower: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``(id above, id below)`` local-id pairs of neighbouring voxels across a seam.

    ``upper`` and ``lower`` are the local ids of the last slice of one slab (``1..n_upper``)
    and of the first slice of the next (``1..n_lower``); 0 is background.
    """
    xp = be.xp
    ny, nx = upper.shape
    width = n_lower + 1
    keys = []
    for dy, dx in _seam_offsets(connectivity):
        a = upper[max(0, -dy) : ny - max(0, dy), max(0, -dx) : nx - max(0, dx)]
        b = lower[max(0, dy) : ny - max(0, -dy), max(0, dx) : nx - max(0, -dx)]
        both = (a > 0) & (b > 0)
        keys.append(a[both].astype(xp.int64) * width + b[both])
    key = xp.concatenate(keys)
    if (n_upper + 1) * width <= 1 << 22:  # a table of every pair: cheaper than sorting
        key = xp.flatnonzero(xp.bincount(key, minlength=(n_upper + 1) * width))
    else:
        key = xp.unique(key)
    key = be.asnumpy(key)
    return key // width, key % width


def _merge_roots(n_nodes: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Root of every node ``0..n_nodes`` after joining each pair ``(u[i], v[i])``.

    The root of a group is its smallest node (hooking roots to the smaller one, then full
    path compression, until every pair shares a root).
    """
    parent = np.arange(n_nodes + 1, dtype=np.int64)
    while u.size:
        pu, pv = parent[u], parent[v]
        lo, hi = np.minimum(pu, pv), np.maximum(pu, pv)
        todo = lo != hi
        if not todo.any():
            break
        np.minimum.at(parent, hi[todo], lo[todo])
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


class _SlabComponents:
    """Connected components of a 3-D mask found ``slab`` slices at a time.

    Each slab is labelled on its own; its component ids become global node ids (slab offset
    + local id, so node order is the raster order of each component's first voxel) and the
    components of adjacent slabs that touch across a seam are joined (:func:`_merge_roots`):
    ``root[node]`` is the smallest node of its whole-volume component. Only the local ids are
    kept per slab, in the smallest unsigned type that holds them: a whole-volume uint32 label
    array (235 MB for a chest CT's body box) is never built, and touching that much fresh
    memory was a good part of the labelling time.

    Attributes
    ----------
    local : list of (int, int, array)
        ``(offset, count, local ids)`` per slab.
    root : numpy.ndarray
        int64 ``(nodes + 1,)``; node 0 is the background.
    sampled : numpy.ndarray
        int64 ``(nodes + 1,)`` voxel counts of each node in a strided 1-in-64 sample.
    on_border : numpy.ndarray
        bool ``(nodes + 1,)``: the node touches a face of the whole array.
    """

    def __init__(self, be: Backend, mask: Any, connectivity: int, slab: int) -> None:
        xp = be.xp
        nz = mask.shape[0]
        self.slab = slab
        self.local: list[tuple[int, int, Any]] = []
        sampled = [np.zeros(1, dtype=np.int64)]
        border = [np.zeros(1, dtype=bool)]
        pairs_u, pairs_v = [], []
        offset = 0
        last = None  # local ids of the previous slab's last slice, and their count
        for k in range(0, nz, slab):
            labels, n = be.label(mask[k : k + slab], connectivity)
            if n:
                sample = xp.ascontiguousarray(labels[::4, ::4, ::4]).ravel()
                sampled.append(be.asnumpy(xp.bincount(sample, minlength=n + 1))[1:])
                faces = [labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
                faces += [labels[0]] if k == 0 else []
                faces += [labels[-1]] if k + slab >= nz else []
                flags = xp.zeros(n + 1, dtype=bool)
                for face in faces:
                    flags[face.ravel()] = True
                border.append(be.asnumpy(flags)[1:])
                if last is not None and last[1]:
                    u, v = _seam_pairs(be, last[0], labels[0], connectivity, last[1], n)
                    pairs_u.append(u + (offset - last[1]))
                    pairs_v.append(v + offset)
            last = (labels[-1].copy(), n)
            dtype = xp.uint8 if n < 256 else xp.uint16 if n < 65536 else xp.uint32
            self.local.append((offset, n, labels.astype(dtype)))
            del labels
            offset += n
        self.nodes = offset
        empty = np.zeros(0, dtype=np.int64)
        self.root = _merge_roots(offset, np.concatenate(pairs_u or [empty]),
                                 np.concatenate(pairs_v or [empty]))
        self.sampled = np.concatenate(sampled)
        self.on_border = np.concatenate(border)

    def write(self, be: Backend, keep: np.ndarray, out: Any) -> int:
        """``out`` = the voxels of the nodes with ``keep[node]``; returns their count."""
        count = 0
        for k, (off, n, ids) in zip(range(0, out.shape[0], self.slab), self.local, strict=True):
            dst = out[k : k + self.slab]
            select_labels(be, ids, keep[off + 1 : off + n + 1], dst)
            count += int(be.xp.count_nonzero(dst))
        return count

    def sizes(self, be: Backend) -> np.ndarray:
        """Exact voxel count of every node (``bincount`` of every slab)."""
        parts = [np.zeros(1, dtype=np.int64)]
        parts += [component_sizes(be, ids, n)[1:] for _, n, ids in self.local]
        return np.concatenate(parts)


def _largest_by_slabs(
    be: Backend, mask: Any, connectivity: int, slab: int, overwrite: bool = False
) -> Any:
    """:func:`largest_component` from :class:`_SlabComponents`.

    The group with the most voxels is kept (ties: the smallest root, i.e. the group met first
    in raster order, as ``np.argmax`` over whole-volume ids). As in :func:`largest_component`,
    the group is first guessed from the strided sample and counted while it is written out;
    only without a clear majority is every component counted.
    """
    xp = be.xp
    comps = _SlabComponents(be, mask, connectivity, slab)
    if comps.nodes == 0:  # nothing set: the mask is its own (empty) answer
        return mask if overwrite else xp.zeros(mask.shape, dtype=bool)
    total = int(xp.count_nonzero(mask))  # before ``out`` may overwrite the mask
    out = mask if overwrite else xp.empty(mask.shape, dtype=bool)
    root = comps.root

    def write(weights: np.ndarray) -> int:
        group = np.bincount(root, weights=weights.astype(np.float64), minlength=root.size)
        group[0] = 0
        return comps.write(be, root == root[int(np.argmax(group))], out)

    if comps.sampled.any() and 2 * write(comps.sampled) > total:
        return out
    write(comps.sizes(be))
    return out


def select_labels(be: Backend, ids: Any, keep: Any, out: Any = None) -> Any:
    """Voxels whose component id ``j`` (``1..len(keep)``) has ``keep[j - 1]``; 0 never.

    The same as ``concatenate([[False], keep])[ids]``. A few ids kept, or a few dropped (the
    usual case: one body, one outside-air region): comparisons on the ids; otherwise that
    look-up table (a fancy index, which first widens every id to 64 bits: several times
    slower, and a temporary of eight bytes per voxel).

    Parameters
    ----------
    be : Backend
        Array backend.
    ids : array
        Unsigned integer component ids, any shape.
    keep : array
        bool, one entry per id ``1..len(keep)`` (host or device).
    out : array, optional
        bool array of ``ids``' shape to write into.

    Returns
    -------
    array
        bool, ``ids``' shape (``out`` when given).
    """
    xp = be.xp
    keep = be.asnumpy(keep).astype(bool, copy=False)
    if out is None:
        out = xp.empty(ids.shape, dtype=bool)
    kept = np.flatnonzero(keep) + 1
    dropped = np.flatnonzero(~keep) + 1
    if kept.size == 0:
        out[...] = False
    elif kept.size <= 3:
        xp.equal(ids, int(kept[0]), out=out)
        for j in kept[1:]:
            out |= ids == int(j)
    elif dropped.size <= 3:
        xp.not_equal(ids, 0, out=out)
        for j in dropped:
            out &= ids != int(j)
    else:
        lut = np.concatenate([[False], keep])
        out[...] = be.asarray(lut)[ids]
    return out


def _outside_lut(be: Backend, labels: Any, n: int, faces: list[Any]) -> Any:
    """Boolean LUT over component ids: True for ids seen on the given border faces."""
    xp = be.xp
    lut = xp.zeros(n + 1, dtype=bool)
    for face in faces:
        lut[face.ravel()] = True
    lut[0] = False
    return lut


def fill_holes_3d(be: Backend, mask: Any, slab: int = 32) -> Any:
    """Fill background cavities of ``mask`` not connected (6-conn.) to the array border.

    The background of a mask of more than ``slab`` slices is labelled slab by slab and joined
    across the seams (:class:`_SlabComponents`; no whole-volume uint32 labels).
    """
    xp = be.xp
    if mask.shape[0] > slab:
        comps = _SlabComponents(be, ~mask, 6, slab)
        root = comps.root
        outside = np.isin(root, root[comps.on_border])
        outside[0] = False
        out = xp.empty(mask.shape, dtype=bool)
        comps.write(be, outside, out)
        return xp.logical_not(out, out=out)
    labels, n = be.label(~mask, 6)
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    outside = _outside_lut(be, labels, n, faces)
    filled = select_labels(be, labels, outside[1:])
    return xp.logical_not(filled, out=filled)


def fill_holes_2d(be: Backend, mask: Any, slab: int = 32) -> Any:
    """Fill holes slice by slice (axis 0), in-plane 4-connectivity of the background.

    ``slab`` slices are labelled in one call, stacked one below the other as one image of
    ``slab * rows`` rows (a reshape, no copy): the only contacts between stacked slices are
    their first and last rows, which are border rows of both slices, so a background region
    that crosses from one slice into the next touches a border and is outside anyway, and a
    hole (touching no border) is exactly a hole of its own slice. One labelling call instead
    of one per slice (255 calls of a chest CT cost 0.08 s in call overhead).
    """
    xp = be.xp
    nz, ny, nx = mask.shape
    out = xp.empty(mask.shape, dtype=bool)
    for k in range(0, nz, slab):
        part = ~mask[k : k + slab]
        s = part.shape[0]
        labels, n = be.label(part.reshape(1, s * ny, nx), 6)
        planes = labels.reshape(s, ny, nx)
        outside = _outside_lut(be, labels, n, [planes[:, 0], planes[:, -1], planes[:, :, 0],
                                               planes[:, :, -1]])
        dst = out[k : k + s]
        select_labels(be, planes, outside[1:], dst)
        xp.logical_not(dst, out=dst)
    return out


def binary_closing_mm(
    be: Backend, mask: Any, radius_mm: float, spacing: tuple[float, float, float]
) -> Any:
    """Morphological closing with a box of half-width ``radius_mm`` on an anisotropic grid.

    Separable maximum/minimum filters (cost independent of the radius); ``mask`` is padded so
    that the array border does not erode.
    """
    r = tuple(round(radius_mm / s) for s in spacing)
    if not any(r):
        return mask
    work = be.xp.pad(mask, tuple((k, k) for k in r))
    size = tuple(2 * k + 1 for k in r)
    work = erode(be, dilate(be, work, size), size)  # type: ignore[arg-type]
    nz, ny, nx = mask.shape
    return work[r[0] : r[0] + nz, r[1] : r[1] + ny, r[2] : r[2] + nx]


def block_factors(spacing: tuple[float, float, float], work_mm: float) -> tuple[int, int, int]:
    """Integer down-sampling factors per axis that bring the voxel size close to ``work_mm``.

    ``work_mm <= 0`` means full resolution (all factors 1).
    """
    if work_mm <= 0:
        return (1, 1, 1)
    return tuple(max(1, round(work_mm / s)) for s in spacing)  # type: ignore[return-value]


def block_mean(be: Backend, array: Any, factors: tuple[int, int, int], slab: int = 16) -> Any:
    """float32 mean over ``factors`` blocks, keeping every voxel (``ceil(n / f)`` per axis).

    A trailing partial block is the mean of the voxels it has. A one-slice series with a z
    factor of 2 gives one low-resolution slice, not zero; the last slices of any series are
    never dropped.

    Summed from strided views, ``slab`` output slices at a time into one preallocated result
    (far faster than a 6-D reshape reduction, and without whole-volume temporaries); partial
    blocks at the ends of each axis are rescaled by their true voxel count afterwards.

    Parameters
    ----------
    be : Backend
        Array backend (NumPy or CuPy).
    array : array
        ``(z, y, x)`` values (any real dtype).
    factors : tuple of int
        Block size per axis, each >= 1.
    slab : int
        Output slices summed per pass.

    Returns
    -------
    array
        float32, shape ``ceil(array.shape / factors)``.
    """
    xp = be.xp
    fz, fy, fx = factors
    full = tuple(int(s) for s in array.shape)
    nz, ny, nx = (-(-s // f) for s, f in zip(full, factors, strict=True))
    out = xp.empty((nz, ny, nx), dtype=xp.float32)
    scale = 1.0 / float(fz * fy * fx)
    for k0 in range(0, nz, slab):
        k1 = min(k0 + slab, nz)
        acc = out[k0:k1]
        acc[...] = 0
        for oz in range(fz):
            zs = array[k0 * fz + oz : k1 * fz : fz]
            if zs.shape[0] == 0:
                continue
            for oy in range(fy):
                for ox in range(fx):
                    part = zs[:, oy::fy, ox::fx]
                    acc[: part.shape[0], : part.shape[1], : part.shape[2]] += part
        if scale != 1.0:
            acc *= scale
    # Partial blocks at the far end of an axis hold fewer voxels than fz * fy * fx.
    for axis, (n, f) in enumerate(zip(full, factors, strict=True)):
        rest = n % f
        if rest:
            index: list[Any] = [slice(None)] * 3
            index[axis] = -1
            out[tuple(index)] *= float(f) / float(rest)
    return out


def _repeat_last(be: Backend, a: Any, f: int) -> Any:
    """Repeat each element of the last axis ``f`` times (1-byte arrays, fast paths f=2, 4)."""
    xp = be.xp
    if a.dtype.itemsize == 1 and f in (2, 4):
        wide = xp.uint16 if f == 2 else xp.uint32
        mult = 0x0101 if f == 2 else 0x01010101
        u = xp.ascontiguousarray(a).view(xp.uint8).astype(wide) * wide(mult)
        return u.view(xp.uint8).reshape(*a.shape[:-1], a.shape[-1] * f).view(a.dtype)
    return xp.repeat(a, f, axis=-1)


def upsample(be: Backend, low: Any, factors: tuple[int, int, int], shape: tuple[int, ...]) -> Any:
    """Nearest-neighbour up-sampling of ``low`` by ``factors`` into an array of ``shape``.

    ``low * factors`` larger than ``shape`` (the partial last blocks of :func:`block_mean`) is
    cropped; a part of ``shape`` beyond it is zero.
    """
    xp = be.xp
    fz, fy, fx = factors
    up = low
    if fx > 1:
        up = _repeat_last(be, up, fx)
    if fy > 1:
        up = xp.repeat(up, fy, axis=1)
    if fz > 1:
        up = xp.repeat(up, fz, axis=0)
    if tuple(up.shape) == tuple(shape):
        return up
    up = up[: shape[0], : shape[1], : shape[2]]
    if tuple(up.shape) == tuple(shape):
        return up
    out = xp.zeros(shape, dtype=low.dtype)
    out[: up.shape[0], : up.shape[1], : up.shape[2]] = up
    return out


def _window_1d(be: Backend, a: Any, axis: int, r: int, op: Any) -> Any:
    """``op`` (logical or / and) over the window ``[i - r, i + r]`` along ``axis``.

    The window is clipped to the array (voxels outside the array take no part).

    Written here rather than calling ``ndimage.maximum_filter`` / ``minimum_filter``: SciPy
    copies every line into a float64 buffer, and those filters were the largest single cost
    of ``segment`` (0.5 s of 2.6 s on a 255-slice chest CT, issue 15); whole-array boolean
    operations on shifted views do the same in a third of the time. The window is built by
    doubling (``ceil(log2(r + 1))`` operations per direction). Inputs and outputs of each
    operation never overlap except at the same index, which is safe on CuPy too.
    """
    n = a.shape[axis]
    r = min(r, n - 1)
    if r <= 0:
        return a

    def part(lo: int, hi: int) -> tuple[slice, ...]:
        index = [slice(None)] * a.ndim
        index[axis] = slice(lo, hi)
        return tuple(index)

    if r == 1:  # the common case: one operation per direction
        out = a.copy()
        op(out[part(0, n - 1)], a[part(1, n)], out=out[part(0, n - 1)])
        op(out[part(1, n)], a[part(0, n - 1)], out=out[part(1, n)])
        return out
    windows = []
    for forward in (True, False):  # windows [i, i + r] and [i - r, i]
        w, length = a, 1
        while length < r + 1:
            step = min(length, r + 1 - length)
            grown = w.copy()
            if forward:
                op(w[part(0, n - step)], w[part(step, n)], out=grown[part(0, n - step)])
            else:
                op(w[part(step, n)], w[part(0, n - step)], out=grown[part(step, n)])
            w, length = grown, length + step
        windows.append(w)
    return op(windows[0], windows[1], out=windows[0])


def _box(be: Backend, mask: Any, size: tuple[int, int, int], op: Any) -> Any:
    if any(s % 2 == 0 for s in size):
        raise ValueError(f"box size {size}: every side must be odd (2 r + 1)")
    out = be.xp.asarray(mask, dtype=bool)
    for axis, s in enumerate(size):
        out = _window_1d(be, out, axis, s // 2, op)
    return out.copy() if out is mask else out


def dilate(be: Backend, mask: Any, size: tuple[int, int, int]) -> Any:
    """Binary dilation with a box ``size`` (odd sizes; separable, outside counts as unset).

    The voxels of ``ndimage.maximum_filter(mask.view(uint8), size)`` (default ``reflect``
    border: equivalent to a window clipped to the array); ``tests/test_ct_ops.py``.
    """
    return _box(be, mask, size, be.xp.logical_or)


def erode(be: Backend, mask: Any, size: tuple[int, int, int]) -> Any:
    """Binary erosion with a box ``size`` (odd sizes; separable, outside counts as set).

    The voxels of ``ndimage.minimum_filter(mask.view(uint8), size, mode="nearest")`` (a
    window clipped to the array); ``tests/test_ct_ops.py``.
    """
    return _box(be, mask, size, be.xp.logical_and)


def refine_mask(
    be: Backend, low: Any, factors: tuple[int, int, int], condition: Any, slab: int = 8,
    overwrite: bool = False,
) -> Any:
    """Full-resolution mask from a low-resolution one and a full-resolution condition.

    The interior (the low mask eroded by one in-plane voxel) is taken as is, so filled vessels
    stay filled; in the one-voxel band around the low-resolution border the full-resolution
    ``condition`` (a threshold) decides, so the border has full-resolution precision.
    ``condition`` has the shape of the full-resolution grid (``low.shape * factors``, or larger:
    the remainder beyond is outside the mask). The erosion and dilation are in-plane, so the
    work is done ``slab`` low-resolution slices at a time (no whole-volume temporaries).

    With ``overwrite=True`` the result is written into ``condition`` (a writable bool array
    the caller no longer needs) and returned: no second full-resolution array (on a chest CT
    a fresh 60 MB mask, whose first touch alone costs tens of milliseconds).
    """
    xp = be.xp
    if factors == (1, 1, 1):
        return low.copy()
    fz = factors[0]
    out = condition if overwrite else xp.zeros(condition.shape, dtype=bool)
    for k0 in range(0, low.shape[0], slab):
        k1 = min(k0 + slab, low.shape[0])
        part = low[k0:k1]
        inner = erode(be, part, (1, 3, 3))
        code = dilate(be, part, (1, 3, 3)).view(xp.uint8).copy()  # 1 = band
        code[inner] = 2
        dst = out[k0 * fz : k1 * fz]
        up = upsample(be, code, factors, dst.shape)
        if overwrite:  # dst is the condition: keep it in the band, set the interior
            dst &= up == 1
        else:
            dst[...] = up == 1
            dst &= condition[k0 * fz : k1 * fz]
        dst |= up == 2
    if overwrite:
        out[low.shape[0] * fz :] = False
    return out


def _unique_half_pixel_points(pts: np.ndarray) -> np.ndarray:
    """``np.unique(pts, axis=0)`` for points on the half-pixel lattice (coordinates >= -0.5).

    The same rows in the same (lexicographic) order, from a 1-D unique of integer keys: the
    row-wise unique sorts a structured view and cost a seventh of :func:`convex_hull_2d`.
    """
    twice = np.rint(pts * 2.0).astype(np.int64) + 1  # exact: multiples of 0.5, >= 0
    span = int(twice[:, 1].max()) + 1
    keys = np.unique(twice[:, 0] * span + twice[:, 1])
    return np.stack([keys // span, keys % span], 1).astype(np.float64) / 2.0 - 0.5


def convex_hull_2d(mask: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Pixels inside the convex hull of a 2-D mask (borders included), on the host.

    The same pixels as :func:`skimage.morphology.convex_hull_image` with its defaults
    (``offset_coordinates=True``: each pixel is represented by the midpoints of its four edges;
    ``include_borders=True``): the hull comes from the same candidate points (the first and
    last set pixel of every row and column, as scikit-image's ``possible_hull``) through
    ``scipy.spatial.ConvexHull``. Written here because scikit-image then tests every pixel of
    the image against the hull polygon (``grid_points_in_poly``: 11 ms per 256 x 256 slice,
    3.1 s of a 19-s ``medscan segment`` on a 255-slice chest CT); a convex polygon meets each
    row in one interval, found from the hull's edge equations, so filling the rows costs
    about 0.1 ms. ``tests/test_ct_ops.py`` checks the equality on real CT slices and random
    shapes.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(rows, columns)`` bool.
    tol : float
        Distance (pixels) within which a pixel centre on the hull's border counts as inside
        (floating-point slack; the candidate points are on the half-pixel lattice).

    Returns
    -------
    numpy.ndarray
        ``(rows, columns)`` bool; all False for an empty mask.
    """
    from scipy.spatial import ConvexHull, QhullError

    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return out
    ncol, nrow = mask.shape[1], mask.shape[0]
    sub = mask[rows]
    first_c = np.argmax(sub, axis=1)
    last_c = ncol - 1 - np.argmax(sub[:, ::-1], axis=1)
    # Every hull vertex is the first or last pixel of its row (any other pixel lies between
    # those two), so the row extremes alone give the hull's vertices; the column extremes of
    # ``possible_hull`` are needed only when the points are degenerate (one line), where
    # all of them are offset as before.
    pts = np.concatenate([np.stack([rows, first_c], 1), np.stack([rows, last_c], 1)])
    try:  # hull(P + diamond) = hull(vertices of hull(P) + diamond): fewer points to offset
        pts = pts[ConvexHull(pts.astype(np.float64)).vertices].astype(np.float64)
    except QhullError:  # fewer than 3 points or all on one line: offset them all
        first_r = np.argmax(mask[:, cols], axis=0)
        last_r = nrow - 1 - np.argmax(mask[::-1, cols], axis=0)
        pts = np.concatenate([
            pts, np.stack([first_r, cols], 1), np.stack([last_r, cols], 1),
        ]).astype(np.float64)
    diamond = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])
    pts = _unique_half_pixel_points((pts[:, None, :] + diamond).reshape(-1, 2))
    eq = ConvexHull(pts).equations  # (H, 3): a*r + b*c + d <= 0 inside, (a, b) unit
    r = np.arange(rows[0], rows[-1] + 1, dtype=np.float64)
    a, b, d = eq[:, 0:1], eq[:, 1:2], eq[:, 2:3]
    rhs = -(a * r + d)  # b * c <= rhs, per equation and row
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = rhs / b
    pos, neg, flat = b[:, 0] > tol, b[:, 0] < -tol, np.abs(b[:, 0]) <= tol
    hi = np.min(bound[pos] + tol / b[pos], axis=0, initial=np.inf)
    lo = np.max(bound[neg] + tol / b[neg], axis=0, initial=-np.inf)
    ok = np.all(rhs[flat] >= -tol, axis=0)  # equations of horizontal edges bound rows only
    lo_i = np.clip(np.ceil(lo), 0, ncol).astype(np.int64)
    hi_i = np.clip(np.floor(hi), -1, ncol - 1).astype(np.int64)
    c = np.arange(ncol)
    span = (c >= lo_i[:, None]) & (c <= hi_i[:, None]) & ok[:, None]
    out[rows[0] : rows[-1] + 1] = span
    return out
