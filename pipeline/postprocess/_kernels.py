"""Block kernels of the segment stage, compiled with numba.

scipy and scikit-image label binary images only, so a class map would need one pass
per class; :func:`label_chunk` labels every class in one scan (two-pass union-find).
:func:`_piece_kernel` sums each piece's statistics in the same kind of scan.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["FIXED_POINT_BITS", "label_chunk"]

#: Feature sums are exact integers: each standardised value is rounded to a multiple of
#: ``2**-FIXED_POINT_BITS`` and summed as two int64 words (high and low 32 bits).
#: Integer addition is associative, so sums, means and every decision taken from them
#: (the merge order) are the same for any chunking.
FIXED_POINT_BITS = 24
_UNIT = float(2**FIXED_POINT_BITS)
#: standardised values are clipped to +-2**29, so a pixel's value fits in 53 bits and a
#: piece's low words cannot overflow below 2**31 pixels per chunk
_CLIP = float(2**29)




@numba.njit(cache=True, nogil=True)
def _find(parent, a):  # pragma: no cover - compiled
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:
        nxt = parent[a]
        parent[a] = root
        a = nxt
    return root


@numba.njit(cache=True, nogil=True)
def _label_kernel(cls, nodata, conn8, out):  # pragma: no cover - compiled
    """Two-pass union-find labelling; final labels numbered by first pixel."""
    h, w = cls.shape
    parent = np.empty(h * w + 1, dtype=np.int32)
    n = 0
    for i in range(h):
        for j in range(w):
            c = cls[i, j]
            if c == nodata:
                out[i, j] = 0
                continue
            lab = 0
            # the already visited neighbours: left, up-left, up, up-right
            for di, dj in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):
                if not conn8 and di != 0 and dj != 0:
                    continue
                ii = i + di
                jj = j + dj
                if ii < 0 or jj < 0 or jj >= w or cls[ii, jj] != c:
                    continue
                other = _find(parent, out[ii, jj])
                if lab == 0:
                    lab = other
                elif other != lab:
                    if other < lab:
                        parent[lab] = other
                        lab = other
                    else:
                        parent[other] = lab
            if lab == 0:
                n += 1
                parent[n] = n
                lab = n
            out[i, j] = lab
    final = np.zeros(n + 1, dtype=np.int32)
    count = 0
    for i in range(h):
        for j in range(w):
            lab = out[i, j]
            if lab == 0:
                continue
            root = _find(parent, lab)
            if final[root] == 0:
                count += 1
                final[root] = count
            out[i, j] = final[root]
    return count


@numba.njit(cache=True, nogil=True)
def _piece_kernel(lab, n, cls, feats, offset, scale, y0, x0, width):  # pragma: no cover
    """Per local piece: class, first pixel, count, bounding box, fixed-point sums.

    int32 where it is enough (classes, counts within a chunk, row and column indices
    below 2**31): the pieces of every chunk are held in memory at once.
    """
    h, w = lab.shape
    nf = feats.shape[0]
    klass = np.zeros(n, dtype=np.int32)
    first = np.zeros(n, dtype=np.int64)
    count = np.zeros(n, dtype=np.int32)
    rmin = np.zeros(n, dtype=np.int32)
    rmax = np.zeros(n, dtype=np.int32)
    cmin = np.full(n, np.iinfo(np.int32).max, dtype=np.int32)
    cmax = np.zeros(n, dtype=np.int32)
    hi = np.zeros((n, nf), dtype=np.int64)
    lo = np.zeros((n, nf), dtype=np.int64)
    for i in range(h):
        for j in range(w):
            k = lab[i, j] - 1
            if k < 0:
                continue
            r = y0 + i
            c = x0 + j
            if count[k] == 0:
                klass[k] = cls[i, j]
                first[k] = r * width + c
                rmin[k] = r
            count[k] += 1
            rmax[k] = r
            cmin[k] = min(cmin[k], c)
            cmax[k] = max(cmax[k], c)
            for f in range(nf):
                v = (np.float64(feats[f, i, j]) - offset[f]) / scale[f]
                if not np.isfinite(v):
                    v = 0.0
                v = min(max(v, -_CLIP), _CLIP)
                q = np.int64(np.rint(v * _UNIT))
                hi[k, f] += q >> 32
                lo[k, f] += q & 0xFFFFFFFF
    for k in range(n):
        for f in range(nf):
            hi[k, f] += lo[k, f] >> 32
            lo[k, f] &= 0xFFFFFFFF
    return klass, first, count, rmin, rmax, cmin, cmax, hi, lo


def label_chunk(
    classes: np.ndarray, nodata: int | None, connectivity: int
) -> tuple[np.ndarray, int]:
    """Label the connected segments of one block of a class map.

    Parameters
    ----------
    classes : ndarray, shape (y, x), integer
        Class of every pixel.
    nodata : int or None
        Class value that marks invalid pixels (label 0); ``None``: every pixel is valid.
    connectivity : {4, 8}
        8 joins diagonal neighbours of the same class.

    Returns
    -------
    labels : ndarray, shape (y, x), int32
        1..n, numbered by each segment's first pixel in raster order; 0 is nodata.
    n : int
        Number of segments.
    """
    cls = np.ascontiguousarray(classes)
    out = np.empty(cls.shape, dtype=np.int32)
    nd = -1 if nodata is None else int(nodata)
    if cls.size == 0:
        return out, 0
    n = _label_kernel(cls.astype(np.int64, copy=False) if cls.dtype.kind == "b" else cls,
                      nd, connectivity == 8, out)
    return out, int(n)


@numba.njit(cache=True, nogil=True)
def _reduce_kernel(group, n, klass, first, count, rmin, rmax, cmin, cmax, hi,  # pragma: no cover
                   lo):
    """Statistics of groups of rows in one pass (no sort); ``group[i]`` in ``0..n-1``.

    A group's class is the class of its member with the smallest first pixel.
    """
    big = np.iinfo(np.int64).max
    nf = hi.shape[1]
    o_klass = np.zeros(n, dtype=np.int64)
    o_first = np.full(n, big, dtype=np.int64)
    o_count = np.zeros(n, dtype=np.int64)
    o_rmin = np.full(n, big, dtype=np.int64)
    o_rmax = np.full(n, -1, dtype=np.int64)
    o_cmin = np.full(n, big, dtype=np.int64)
    o_cmax = np.full(n, -1, dtype=np.int64)
    o_hi = np.zeros((n, nf), dtype=np.int64)
    o_lo = np.zeros((n, nf), dtype=np.int64)
    for i in range(group.size):
        g = group[i]
        if first[i] < o_first[g]:
            o_first[g] = first[i]
            o_klass[g] = klass[i]
        o_count[g] += count[i]
        o_rmin[g] = min(o_rmin[g], rmin[i])
        o_rmax[g] = max(o_rmax[g], rmax[i])
        o_cmin[g] = min(o_cmin[g], cmin[i])
        o_cmax[g] = max(o_cmax[g], cmax[i])
        for f in range(nf):
            s = o_lo[g, f] + lo[i, f]  # normalised words: no overflow however many rows
            o_hi[g, f] += hi[i, f] + (s >> 32)
            o_lo[g, f] = s & 0xFFFFFFFF
    return o_klass, o_first, o_count, o_rmin, o_rmax, o_cmin, o_cmax, o_hi, o_lo


@numba.njit(cache=True, nogil=True)
def _min_by_group(group, n, values):  # pragma: no cover - compiled
    out = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    for i in range(group.size):
        out[group[i]] = min(out[group[i]], values[i])
    return out


@numba.njit(cache=True, nogil=True)
def _contacts(lab, count, conn8, min_pixels, lo, hi, length, fill):  # pragma: no cover
    """Count (``fill`` false) or write the contacts of :func:`_contact_kernel`."""
    h, w = lab.shape
    offs = ((0, 1, 1), (1, 0, 1), (1, 1, 0), (1, -1, 0))  # (di, dj, side length)
    nrel = 4 if conn8 else 2
    m = 0
    for i in range(h):
        for j in range(w):
            p = lab[i, j]
            if p == 0:
                continue
            for r in range(nrel):
                di, dj, side = offs[r]
                ii = i + di
                jj = j + dj
                if ii >= h or jj < 0 or jj >= w:
                    continue
                q = lab[ii, jj]
                if q == 0 or q == p:
                    continue
                if count[p - 1] >= min_pixels and count[q - 1] >= min_pixels:
                    continue
                if fill:
                    lo[m] = min(p, q)
                    hi[m] = max(p, q)
                    length[m] = side
                m += 1
    return m


@numba.njit(cache=True, nogil=True)
def _contact_kernel(lab, count, conn8, min_pixels):  # pragma: no cover - compiled
    """Every contact of two different pieces of a block, one of them small.

    Returns ``(lo, hi, length)`` per touching pixel pair (``lo < hi``): length 1 for a
    side, 0 for a corner (8-connectivity). Within a block, touching pixels of one class
    share a label, so two labels that touch belong to two classes.
    """
    # int32 labels and int8 lengths: at most 4 contacts per pixel, 36 bytes per pixel
    m = _contacts(lab, count, conn8, min_pixels, np.empty(0, dtype=np.int32),
                  np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int8), False)
    lo = np.empty(m, dtype=np.int32)
    hi = np.empty(m, dtype=np.int32)
    length = np.empty(m, dtype=np.int8)
    _contacts(lab, count, conn8, min_pixels, lo, hi, length, True)
    return lo, hi, length


@numba.njit(cache=True, nogil=True)
def _combine_kernel(lo, hi, length, n):  # pragma: no cover - compiled
    """Merge duplicate pairs and sum their lengths, sorted by (lo, hi), in linear time.

    ``lo < hi``, both in ``1..n``: a counting sort by ``lo`` makes short buckets, in
    which a position table finds the duplicates; buckets are then sorted by ``hi``.
    """
    m = lo.size
    ptr = np.zeros(n + 2, dtype=np.int64)
    for e in range(m):
        ptr[lo[e] + 1] += 1
    for i in range(n + 1):
        ptr[i + 1] += ptr[i]
    fill = ptr.copy()
    bucket_hi = np.empty(m, dtype=np.int64)
    bucket_len = np.empty(m, dtype=np.int64)
    for e in range(m):
        k = fill[lo[e]]
        bucket_hi[k] = hi[e]
        bucket_len[k] = length[e]
        fill[lo[e]] += 1
    pos = np.full(n + 1, -1, dtype=np.int64)
    out_a = np.empty(m, dtype=np.int64)
    out_b = np.empty(m, dtype=np.int64)
    out_l = np.empty(m, dtype=np.int64)
    k = 0
    for a in range(1, n + 1):
        start = k
        for e in range(ptr[a], ptr[a + 1]):
            b = bucket_hi[e]
            if pos[b] < start:  # first time in this bucket
                pos[b] = k
                out_a[k] = a
                out_b[k] = b
                out_l[k] = bucket_len[e]
                k += 1
            else:
                out_l[pos[b]] += bucket_len[e]
        if k - start > 16:
            order = np.argsort(out_b[start:k])
            out_b[start:k] = out_b[start:k][order]
            out_l[start:k] = out_l[start:k][order]
        else:  # short bucket: insertion sort
            for i in range(start + 1, k):
                vb = out_b[i]
                vl = out_l[i]
                j = i - 1
                while j >= start and out_b[j] > vb:
                    out_b[j + 1] = out_b[j]
                    out_l[j + 1] = out_l[j]
                    j -= 1
                out_b[j + 1] = vb
                out_l[j + 1] = vl
    return out_a[:k], out_b[:k], out_l[:k]
