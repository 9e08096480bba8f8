"""Majority (mode) filter of a class map, exact for any chunking.

The 2-D kernels are here; those of volumes, and of anisotropic 2-D windows (a
one-slice volume), are in :mod:`._majority3d`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import xarray as xr

from ._majority3d import _majority_boxcount3, _majority_direct3, _majority_sliding3

__all__ = ["majority_filter", "majority_block"]

#: Up to this many class bins :func:`_majority_boxcount` beats the sliding histogram
#: (measured with scattered column updates: 2.5x at 8 classes, 1.5-2x at 64, for
#: radius 1 to 12; the compare-based updates are faster still at 8)
_BOX_MAX_BINS = 64


@numba.njit(cache=True, nogil=True)
def _max_valid(block, nodata):  # pragma: no cover - compiled
    """Largest class ID other than nodata, -1 if none (no boolean mask, no copy)."""
    best = -1
    for v in block.ravel():
        if v != nodata and v > best:
            best = v
    return best


# _majority_direct and _majority_sliding are _majority3d's direct3 and sliding3 for one
# slice (rz = 0), kept apart for speed: the 3-D ones were 2-8 % slower on 2-D maps.


@numba.njit(cache=True, nogil=True)
def _majority_direct(block, radius, nodata, counts, out):  # pragma: no cover - compiled
    """Count each window afresh: 3 visits of (2r+1)^2 pixels, whatever the class count."""
    h, w = block.shape
    for i in range(h):
        i0 = max(i - radius, 0)
        i1 = min(i + radius + 1, h)
        for j in range(w):
            c = block[i, j]
            if c == nodata:
                out[i, j] = nodata
                continue
            j0 = max(j - radius, 0)
            j1 = min(j + radius + 1, w)
            for a in range(i0, i1):
                for b in range(j0, j1):
                    v = block[a, b]
                    if v != nodata:
                        counts[v] += 1
            best_n = 0
            best_v = c
            for a in range(i0, i1):
                for b in range(j0, j1):
                    v = block[a, b]
                    if v != nodata:
                        n = counts[v]
                        if n > best_n or (n == best_n and v < best_v):
                            best_n = n
                            best_v = v
            out[i, j] = c if counts[c] == best_n else best_v
            for a in range(i0, i1):
                for b in range(j0, j1):
                    counts[block[a, b]] = 0


@numba.njit(cache=True, nogil=True)
def _majority_sliding(block, radius, nodata, n_bins, counts, out):  # pragma: no cover
    """Slide a class histogram along each row, for few classes.

    Per pixel: 2 (2r+1) updates and ``n_bins`` (largest class + 1) bins to scan.
    """
    h, w = block.shape
    for i in range(h):
        i0 = max(i - radius, 0)
        i1 = min(i + radius + 1, h)
        for v in range(n_bins):
            counts[v] = 0
        for b in range(min(radius, w)):
            for a in range(i0, i1):
                v = block[a, b]
                if v != nodata:
                    counts[v] += 1
        for j in range(w):
            enter = j + radius
            if enter < w:
                for a in range(i0, i1):
                    v = block[a, enter]
                    if v != nodata:
                        counts[v] += 1
            leave = j - radius - 1
            if leave >= 0:
                for a in range(i0, i1):
                    v = block[a, leave]
                    if v != nodata:
                        counts[v] -= 1
            c = block[i, j]
            if c == nodata:
                out[i, j] = nodata
                continue
            best_n = 0
            best_v = c
            for v in range(n_bins):  # ascending: ties go to the smallest ID
                if counts[v] > best_n:
                    best_n = counts[v]
                    best_v = v
            out[i, j] = c if counts[c] == best_n else best_v


@numba.njit(cache=True, nogil=True)
def _majority_boxcount(block, radius, nodata, n_bins, col, out):  # pragma: no cover
    """Separable per-class box counts, for very few classes.

    ``col[v, radius + j]`` holds the count of class ``v`` in column ``j`` of the rows of
    the current window (one row in, one row out); its ``radius`` zero columns either
    side stand for pixels beyond the block edge. Every loop runs along whole rows,
    class by class, with no branch and one integer type, so it vectorises: the column
    counts by comparing the entering and leaving rows with each class (a scattered
    increment per pixel instead was 1.5x slower), then the horizontal sums, the argmax
    and the tie rule: about ``n_bins * (2r + 7)`` SIMD lanes of work per pixel. The
    nodata class, when below ``n_bins``, is never counted.
    """
    h, w = block.shape
    side = 2 * radius + 1
    col[:, :] = 0
    ct = col.dtype.type
    one = ct(1)
    zero = ct(0)
    box = np.zeros(w, dtype=col.dtype)
    best_n = np.zeros(w, dtype=col.dtype)
    centre_n = np.zeros(w, dtype=col.dtype)
    best_v = np.zeros(w, dtype=col.dtype)
    for i in range(-radius, h):  # i < 0: the first rows enter before the first output
        enter = i + radius
        leave = i - radius - 1
        for v in range(n_bins):
            if v == nodata:
                continue
            cv = col[v, radius:radius + w]
            vb = block.dtype.type(v)
            if enter < h:
                row_in = block[enter]
                for j in range(w):
                    cv[j] += one if row_in[j] == vb else zero
            if leave >= 0:
                row_out = block[leave]
                for j in range(w):
                    cv[j] -= one if row_out[j] == vb else zero
        if i < 0:
            continue
        row = block[i]
        best_n[:] = 0
        centre_n[:] = 0
        best_v[:] = 0
        for v in range(n_bins):  # ascending with a strict >: ties go to the smallest ID
            vv = ct(v)
            vb = block.dtype.type(v)
            cv = col[v]
            for j in range(w):
                box[j] = cv[j]
            for d in range(1, side):
                for j in range(w):
                    box[j] += cv[j + d]
            for j in range(w):
                n = box[j]
                better = n > best_n[j]
                best_n[j] = n if better else best_n[j]
                best_v[j] = vv if better else best_v[j]
                centre_n[j] = n if row[j] == vb else centre_n[j]
        for j in range(w):
            c = row[j]
            # a valid centre is counted in its own window, so best_n >= 1 there
            out[i, j] = (c if (c == nodata or centre_n[j] == best_n[j])
                         else block.dtype.type(best_v[j]))


def majority_block3(block: np.ndarray, radii: tuple[int, int, int], nodata: int) -> np.ndarray:
    """Majority filter of one (halo-extended) ``(z, y, x)`` block, per-axis radii.

    The rule of :func:`majority_block` over a ``(2rz+1) x (2ry+1) x (2rx+1)`` window
    cut at the block edge. Few classes take separable box counts, more a sliding
    histogram along x, very many with a small window a direct count (all three give
    the same map; the choice is by measured cost).
    """
    block = np.ascontiguousarray(block)
    rz, ry, rx = (int(r) for r in radii)
    nodata_v = block.dtype.type(nodata)
    out = np.empty_like(block)
    if block.size == 0:
        return out
    n_bins = int(_max_valid(block, nodata_v)) + 1
    face = (2 * rz + 1) * (2 * ry + 1)
    window = face * (2 * rx + 1)
    # Measured on 128^3 uint8 maps (random and blocky), per 2.1 M voxels: box counts
    # ~3.5 ms per class bin; the sliding histogram ~3.5-5 ms per voxel of the window's
    # y-z face plus ~1.1 ms per bin; a direct count ~3.6-6.6 ms per window voxel. So:
    # box counts up to two bins per face voxel, then the histogram while its updates
    # and scan cost less than the direct count's visits.
    if n_bins <= 2 * face:
        ctype = np.int16 if window < 2**15 else np.int32
        d, h, w = block.shape
        _majority_boxcount3(
            block, rz, ry, rx, nodata_v, n_bins, np.empty(w + 2 * rx, ctype),
            np.empty((h, w), ctype), np.empty((2 * rz + 2, h, w), ctype),
            np.empty((h, w), ctype), np.empty(block.shape, ctype),
            np.empty(block.shape, ctype), np.empty(block.shape, ctype), out)
        return out
    counts = np.zeros(int(np.iinfo(block.dtype).max) + 1, dtype=np.int32)
    if 4 * face + n_bins < 6 * window:
        _majority_sliding3(block, rz, ry, rx, nodata_v, n_bins, counts, out)
    else:
        _majority_direct3(block, rz, ry, rx, nodata_v, counts, out)
    return out


def _whole(r: object) -> bool:
    if isinstance(r, bool):
        return False
    return isinstance(r, int | np.integer) or (isinstance(r, float) and r.is_integer())


def _radii(radius: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """One radius per spatial axis, checked: integers >= 0.

    Raises
    ------
    ValueError
        If a radius is not a whole number >= 0, or there is not one per axis.
    """
    if isinstance(radius, Sequence) and not isinstance(radius, str):
        radii = tuple(radius)
        if len(radii) != ndim:
            raise ValueError(f"majority_filter: expected one radius per axis of the "
                             f"{ndim}-D labels, got {radius!r}")
    else:
        radii = (radius,) * ndim
    if not all(_whole(r) for r in radii) or min(radii) < 0:
        raise ValueError(f"majority_filter: radius must be an integer >= 1 (or one "
                         f"integer >= 0 per axis, the largest >= 1), got {radius!r}")
    return tuple(int(r) for r in radii)


def majority_block(block: np.ndarray, radius: int | Sequence[int], nodata: int) -> np.ndarray:
    """Majority filter of one (halo-extended) block; also the whole-image reference.

    Parameters
    ----------
    block : ndarray, shape (y, x) or (z, y, x), uint8 or uint16
        Class IDs; ``nodata`` marks invalid pixels.
    radius : int or sequence of int
        The window is ``(2 * radius + 1)`` pixels along every axis, or ``2 * r + 1``
        along each axis for per-axis radii (dims order), cut at the block edge.
    nodata : int
        The nodata label.

    Returns
    -------
    ndarray, same shape and dtype
        The most frequent class among the valid pixels of each window. Ties keep the
        centre pixel's class when it is among the most frequent, else the smallest ID.
        Nodata is never counted and nodata pixels stay nodata.
    """
    # Hand-written (numba) rather than skimage.filters.rank.majority: that kernel breaks
    # ties towards the smallest value only (not the centre class), and scans every
    # histogram bin per pixel (65536 for uint16 labels). Here separable box counts serve
    # a few classes, a sliding histogram more, and counting each window afresh many;
    # all three give the same map.
    radii = _radii(radius, block.ndim)
    if block.ndim == 3:
        return majority_block3(block, (radii[0], radii[1], radii[2]), nodata)
    if radii[0] != radii[1]:
        # an anisotropic 2-D window is a one-slice volume
        return majority_block3(block[None], (0, radii[0], radii[1]), nodata)[0]
    radius = radii[0]
    block = np.ascontiguousarray(block)
    nodata_v = block.dtype.type(nodata)
    out = np.empty_like(block)
    n_bins = int(_max_valid(block, nodata_v)) + 1
    side = 2 * int(radius) + 1
    if n_bins <= _BOX_MAX_BINS:
        # int16 counts (twice the SIMD lanes of int32) while a window cannot overflow
        ctype = np.int16 if side * side < 2**15 else np.int32
        col = np.empty((n_bins, block.shape[1] + 2 * int(radius)), dtype=ctype)
        _majority_boxcount(block, int(radius), nodata_v, n_bins, col, out)
        return out
    counts = np.zeros(int(np.iinfo(block.dtype).max) + 1, dtype=np.int32)
    if 2 * side + n_bins < 3 * side * side:
        _majority_sliding(block, int(radius), nodata_v, n_bins, counts, out)
    else:
        _majority_direct(block, int(radius), nodata_v, counts, out)
    return out


def majority_filter(
    labels: xr.DataArray, radius: int | Sequence[int] = 1, *, nodata: int | None = None
) -> xr.DataArray:
    """Replace each pixel's class by the most frequent class around it, lazily.

    Parameters
    ----------
    labels : DataArray, shape (y, x) or (z, y, x), uint8 or uint16
        A class map, e.g. from :func:`pipeline.predict`.
    radius : int or sequence of int
        Window of ``2 * radius + 1`` pixels (voxels) along every axis (>= 1): a square,
        or a cube on a volume. A sequence gives one radius per spatial axis in dims
        order (each >= 0, the largest >= 1), e.g. ``(1, 2, 2)`` for voxels twice as
        thick as they are wide. Each chunk reads a halo of the radius along its axis
        from its neighbours (``map_overlap``), no more.
    nodata : int, optional
        The nodata label; by default ``labels.rio.nodata``.

    Returns
    -------
    DataArray, same shape
        Lazy, same dtype, chunks, coordinates and nodata as ``labels``. Nodata pixels stay
        nodata and are never counted; pixels beyond the image edge are not counted either.
        Ties keep the centre class when it is among the most frequent, else the smallest
        class ID, so the result is deterministic and identical for any chunking.

    Raises
    ------
    TypeError
        If the labels are not uint8 or uint16.
    ValueError
        If the labels are not 2-D or 3-D, the radius is not as above, or no nodata
        label is known.

    Examples
    --------
    >>> smooth = majority_filter(predict(feats, model), radius=2)  # doctest: +SKIP
    """
    if labels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"majority_filter: expected uint8 or uint16 labels, got {labels.dtype}")
    if labels.ndim not in (2, 3):
        raise ValueError(f"majority_filter: expected (y, x) or (z, y, x) labels, got dims "
                         f"{labels.dims}")
    radii = _radii(radius, labels.ndim)
    if max(radii) < 1:
        raise ValueError(f"majority_filter: radius must be an integer >= 1 (or one "
                         f"integer >= 0 per axis, the largest >= 1), got {radius!r}")
    if nodata is None:
        nodata = labels.rio.nodata
    if nodata is None:
        raise ValueError("majority_filter: the labels have no nodata value; pass nodata=")
    data = labels.data
    # halo = the radius along each axis with several chunks; an axis shorter than its
    # halo is made one chunk (dask cannot overlap it)
    depth: dict[int, int] = {}
    single: dict[int, int] = {}
    for axis, (chunks, r) in enumerate(zip(data.chunks, radii, strict=True)):
        if len(chunks) > 1 and sum(chunks) <= r:
            single[axis] = -1
        depth[axis] = r if len(chunks) > 1 and axis not in single else 0
    src = data.rechunk(single) if single else data
    out = src.map_overlap(
        majority_block,
        depth=depth,
        boundary="none",  # the kernel cuts windows at the image edge: outside never counts
        dtype=labels.dtype,
        meta=np.empty((0,) * labels.ndim, labels.dtype),
        # the 2-D square window keeps its int (the same graph and kernel as before)
        radius=radii[0] if len(set(radii)) == 1 and labels.ndim == 2 else radii,
        nodata=int(nodata),
    )
    if out.chunks != data.chunks:
        # map_overlap merges chunks thinner than the halo; give back the input's chunks
        out = out.rechunk(data.chunks)
    return labels.copy(data=out)
