"""Block kernels of the segment stage, compiled with numba.

scipy and scikit-image label binary images only, so a class map would need one pass
per class; :func:`label_chunk` labels every class in one scan (two-pass union-find).
:func:`_piece_kernel` sums each piece's statistics in the same kind of scan.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

__all__ = ["FIXED_POINT_BITS", "Runs", "label_chunk", "label_runs", "paint_runs"]

#: Feature sums are exact integers: each standardised value is rounded to a multiple of
#: ``2**-FIXED_POINT_BITS`` and summed as two int64 words (high and low 32 bits).
#: Integer addition is associative, so sums, means and every decision taken from them
#: (the merge order) are the same for any chunking.
FIXED_POINT_BITS = 24
_UNIT = float(2**FIXED_POINT_BITS)
#: standardised values are clipped to +-2**29, so a pixel's value fits in 53 bits and a
#: piece's low words cannot overflow below 2**31 pixels per chunk
_CLIP = float(2**29)

#: What :func:`_piece_kernel` and :func:`_reduce_kernel` return, one row per piece
#: (segment): klass, first, count, rmin, rmax, cmin, cmax, hi, lo
PieceArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                    np.ndarray, np.ndarray, np.ndarray]


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
def _label_kernel(cls, nodata, conn8):  # pragma: no cover - compiled
    """Run-based union-find labelling; segments numbered by first pixel.

    Union-find over horizontal runs (maximal stretches of one class in a row) instead
    of pixels: a run is joined to the runs of its class on the row above that overlap
    it (or touch it by a corner under 8-connectivity), so the forest holds one node per
    run and each pixel is read once. A union keeps the smaller run index as the root;
    runs are created in raster order, so every component's root is its first run,
    whose start is the component's first pixel in raster order: numbering the roots in
    index order numbers the segments by first pixel.

    Returns the number of segments and the runs of valid pixels in raster order:
    ``start``, ``end`` (exclusive) and ``label`` (1..n) per run, and ``row_ptr``
    (runs ``row_ptr[i]:row_ptr[i + 1]`` are row ``i``'s). The statistics, contacts
    and painted rasters are all derived from the runs, without reading the pixels
    again (see :func:`paint_runs`, :func:`_piece_kernel`, :func:`_contact_kernel`).
    """
    h, w = cls.shape
    n_max = h * w
    parent = np.empty(n_max, dtype=np.int32)
    r_start = np.empty(n_max, dtype=np.int32)
    r_end = np.empty(n_max, dtype=np.int32)  # exclusive
    r_cls = np.empty(n_max, dtype=cls.dtype)
    row_ptr = np.empty(h + 1, dtype=np.int64)
    bounds = np.empty(w + 1, dtype=np.int32)
    reach = 1 if conn8 else 0  # how far past its ends a run touches the row above
    n = 0
    prev_lo = 0
    prev_hi = 0
    for i in range(h):
        cur_lo = n
        row_ptr[i] = n
        if w == 0:
            continue
        # where the class changes, without a branch per pixel: every column is
        # written and the count moves on only at a change (a run's end is a branch
        # the processor cannot predict)
        row = cls[i]
        bounds[0] = 0
        m = 1
        for j in range(1, w):
            bounds[m] = j
            m += np.int64(row[j] != row[j - 1])
        bounds[m] = w
        for r in range(m):
            j = bounds[r]
            c = row[j]
            if c != nodata:
                r_start[n] = j
                r_end[n] = bounds[r + 1]
                r_cls[n] = c
                parent[n] = n
                n += 1
        # join the runs of this row with those of the row above (both sorted by start)
        p = prev_lo
        for k in range(cur_lo, n):
            lo = r_start[k] - reach
            hi = r_end[k] + reach
            while p < prev_hi and r_end[p] <= lo:  # ends before this run's reach
                p += 1
            q = p
            while q < prev_hi and r_start[q] < hi:
                if r_cls[q] == r_cls[k]:
                    a = _find(parent, q)
                    b = _find(parent, k)
                    if a < b:
                        parent[b] = a
                    elif b < a:
                        parent[a] = b
                q += 1
        prev_lo = cur_lo
        prev_hi = n
    row_ptr[h] = n
    # roots in index order = segments in order of first pixel
    final = np.empty(n, dtype=np.int32)
    count = 0
    for k in range(n):
        root = _find(parent, k)
        if root == k:
            count += 1
            final[k] = count
        else:
            final[k] = final[root]  # root < k: already numbered
    return count, r_start[:n].copy(), r_end[:n].copy(), final, row_ptr


@numba.njit(cache=True, nogil=True)
def paint_runs(starts, ends, labels, row_ptr, lut, out):  # pragma: no cover - compiled
    """Paint every run with ``lut[label]``, and 0 between runs (nodata)."""
    h, w = out.shape
    for i in range(h):
        j = 0
        for k in range(row_ptr[i], row_ptr[i + 1]):
            for b in range(j, starts[k]):
                out[i, b] = 0
            v = lut[labels[k]]
            for b in range(starts[k], ends[k]):
                out[i, b] = v
            j = ends[k]
        for b in range(j, w):
            out[i, b] = 0


@numba.njit(cache=True, nogil=True)
def _piece_kernel(starts, ends, labels, row_ptr, n, cls, feats, bands, offset, scale,
                  y0, x0, width, integer_sums) -> PieceArrays:  # pragma: no cover - compiled
    """Per local piece: class, first pixel, count, bounding box, exact feature sums.

    Feature ``f`` is ``float32(feats[bands[f]])``: float32 features as they are, or
    the raw bands of an image (any dtype) converted as :func:`pipeline.io.masked_float`
    converts them, so ``features: [bands]`` needs no float32 copy of the image.

    The sums are fixed-point sums of ``(feature - offset) / scale`` (see
    :data:`FIXED_POINT_BITS`), or with ``integer_sums`` (raw bands of at most 16 bits,
    whose float32 values are the integers themselves) the plain integer sums of the
    raw values, from running sums along each row: a subtraction per run and feature
    instead of a conversion per pixel and feature (10 -> 4 ms per 1024^2 chunk of 4
    bands). Both are returned as two normalised words, ``sum = hi * 2**32 + lo``.

    int32 where it is enough (classes, counts within a chunk, row and column indices
    below 2**31): the pieces of every chunk are held in memory at once. Statistics are
    updated once per run of :func:`_label_kernel` (runs of one class are runs of one
    label), not once per pixel.
    """
    h = row_ptr.size - 1
    w = cls.shape[1]
    nf = bands.size
    klass = np.zeros(n, dtype=np.int32)
    first = np.zeros(n, dtype=np.int64)
    count = np.zeros(n, dtype=np.int32)
    rmin = np.zeros(n, dtype=np.int32)
    rmax = np.zeros(n, dtype=np.int32)
    cmin = np.full(n, np.iinfo(np.int32).max, dtype=np.int32)
    cmax = np.zeros(n, dtype=np.int32)
    hi = np.zeros((n, nf), dtype=np.int64)
    lo = np.zeros((n, nf), dtype=np.int64)
    q_hi = np.empty((nf, w), dtype=np.int64)
    q_lo = np.empty((nf, w), dtype=np.int64)
    run_sum = np.zeros((nf, w + 1), dtype=np.int64)  # 16-bit values: no overflow
    for i in range(h):
        if row_ptr[i] == row_ptr[i + 1]:
            continue  # a row of nodata
        if integer_sums:
            for f in range(nf):
                row = feats[bands[f], i]
                acc = np.int64(0)
                for j in range(w):
                    acc += np.int64(row[j])
                    run_sum[f, j + 1] = acc
        # else a whole row of fixed-point values first, feature by feature: a
        # branch-free loop that vectorises (every pixel, nodata too: never summed)
        for f in range(0 if integer_sums else nf):
            off = offset[f]
            scl = scale[f]
            row = feats[bands[f], i]
            for j in range(w):
                v = (np.float64(np.float32(row[j])) - off) / scl
                v = v if np.isfinite(v) else 0.0
                v = min(max(v, -_CLIP), _CLIP)
                q = np.int64(np.rint(v * _UNIT))
                q_hi[f, j] = q >> 32
                q_lo[f, j] = q & 0xFFFFFFFF
        # then one update per run (integer sums: any grouping is exact)
        r = y0 + i
        for t in range(row_ptr[i], row_ptr[i + 1]):
            k = labels[t] - 1
            j = starts[t]
            e = ends[t]
            if count[k] == 0:
                klass[k] = cls[i, j]
                first[k] = r * width + x0 + j
                rmin[k] = r
            count[k] += e - j
            rmax[k] = r
            cmin[k] = min(cmin[k], x0 + j)
            cmax[k] = max(cmax[k], x0 + e - 1)
            if integer_sums:  # whole sums in `lo` (a chunk's fit: < 2**47)
                for f in range(nf):
                    lo[k, f] += run_sum[f, e] - run_sum[f, j]
                continue
            for f in range(nf):
                s_hi = np.int64(0)
                s_lo = np.int64(0)
                for b in range(j, e):
                    s_hi += q_hi[f, b]
                    s_lo += q_lo[f, b]
                hi[k, f] += s_hi
                lo[k, f] += s_lo
    for k in range(n):
        for f in range(nf):  # arithmetic shift: negative sums keep lo in [0, 2**32)
            hi[k, f] += lo[k, f] >> 32
            lo[k, f] &= 0xFFFFFFFF
    return klass, first, count, rmin, rmax, cmin, cmax, hi, lo


@numba.njit(cache=True, nogil=True)
def _run_edges(starts, ends, labels, row_ptr, w):  # pragma: no cover - compiled
    """Labels of a block's first and last rows and columns (0: nodata), from its runs."""
    h = row_ptr.size - 1
    top = np.zeros(w, dtype=np.int64)
    bottom = np.zeros(w, dtype=np.int64)
    left = np.zeros(h, dtype=np.int64)
    right = np.zeros(h, dtype=np.int64)
    if h == 0:
        return top, bottom, left, right
    for k in range(row_ptr[0], row_ptr[1]):
        top[starts[k]:ends[k]] = labels[k]
    for k in range(row_ptr[h - 1], row_ptr[h]):
        bottom[starts[k]:ends[k]] = labels[k]
    for i in range(h):
        if row_ptr[i] < row_ptr[i + 1]:
            if starts[row_ptr[i]] == 0:
                left[i] = labels[row_ptr[i]]
            if ends[row_ptr[i + 1] - 1] == w:
                right[i] = labels[row_ptr[i + 1] - 1]
    return top, bottom, left, right


class Runs(NamedTuple):
    """The runs of a labelled block (see :func:`label_runs`)."""

    n: int
    starts: np.ndarray
    ends: np.ndarray
    labels: np.ndarray
    row_ptr: np.ndarray


def label_runs(classes: np.ndarray, nodata: int | None, connectivity: int) -> Runs:
    """Label the connected segments of one block of a class map, as runs.

    Parameters are those of :func:`label_chunk`. Returns the number of segments ``n``
    and the runs of valid pixels in raster order: ``starts``, ``ends`` (exclusive
    columns) and ``labels`` (1..n, numbered by each segment's first pixel in raster
    order) per run; row ``i``'s runs are ``row_ptr[i]:row_ptr[i + 1]``.
    """
    cls = np.ascontiguousarray(classes)
    nd = -1 if nodata is None else int(nodata)
    if cls.dtype.kind == "b":
        cls = cls.astype(np.int64)
    return Runs(*_label_kernel(cls, nd, connectivity == 8))


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
    out = np.empty(np.shape(classes), dtype=np.int32)
    if out.size == 0:
        return out, 0
    runs = label_runs(classes, nodata, connectivity)
    paint_runs(runs.starts, runs.ends, runs.labels, runs.row_ptr,
               np.arange(runs.n + 1, dtype=np.int32), out)
    return out, runs.n


@numba.njit(cache=True, nogil=True)
def _reduce_kernel(group, n, klass, first, count, rmin, rmax, cmin, cmax, hi,  # pragma: no cover
                   lo) -> PieceArrays:
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
def _contacts(starts, ends, labels, row_ptr, small, conn8, lo, hi, length
              ):  # pragma: no cover - compiled
    """Write the contacts of :func:`_contact_kernel` while they fit; return how many.

    Per row: the side contacts of consecutive runs (length 1), then the runs of the
    row below that each run touches, found as :func:`_label_kernel` finds them: their
    side contact has the length of the overlap (0: a corner, under 8-connectivity).
    Past the capacity contacts are only counted, and the caller retries with room.
    """
    h = row_ptr.size - 1
    cap = lo.size
    reach = 1 if conn8 else 0
    m = 0
    for i in range(h):
        a0 = row_ptr[i]
        a1 = row_ptr[i + 1]
        for k in range(a0, a1 - 1):
            p = labels[k]
            q = labels[k + 1]
            if ends[k] == starts[k + 1] and p != q and (small[p] or small[q]):
                if m < cap:
                    lo[m] = min(p, q)
                    hi[m] = max(p, q)
                    length[m] = 1
                m += 1
        if i + 1 == h:
            continue
        b1 = row_ptr[i + 2]
        t = a1  # the row below starts where this row's runs end
        for k in range(a0, a1):
            s = starts[k] - reach
            e = ends[k] + reach
            while t < b1 and ends[t] <= s:
                t += 1
            u = t
            p = labels[k]
            while u < b1 and starts[u] < e:
                q = labels[u]
                if p != q and (small[p] or small[q]):
                    if m < cap:
                        lo[m] = min(p, q)
                        hi[m] = max(p, q)
                        length[m] = max(min(ends[k], ends[u]) - max(starts[k], starts[u]), 0)
                    m += 1
                u += 1
    return m


@numba.njit(cache=True, nogil=True)
def _contact_kernel(starts, ends, labels, row_ptr, count, conn8, min_pixels
                    ):  # pragma: no cover - compiled
    """Every contact of two different pieces of a block, one of them small.

    From the runs of :func:`_label_kernel`. Returns ``(lo, hi, length)`` per pair of
    touching runs (``lo < hi``): the number of side-touching pixel pairs (0 for a corner
    contact, 8-connectivity); :func:`_combine_kernel` sums them per pair of pieces.
    Within a block, touching runs of one class share a label, so two labels that touch
    belong to two classes.
    """
    # one flag per label (index 0 unused): a byte lookup instead of two count compares
    small = np.zeros(count.size + 1, dtype=np.bool_)
    for k in range(count.size):
        small[k + 1] = count[k] < min_pixels
    # one pass into a guessed capacity (only borders of small pieces count); a second
    # pass only when it overflows
    cap = max(1024, starts.size)
    while True:
        lo = np.empty(cap, dtype=np.int32)
        hi = np.empty(cap, dtype=np.int32)
        length = np.empty(cap, dtype=np.int32)
        m = _contacts(starts, ends, labels, row_ptr, small, conn8, lo, hi, length)
        if m <= cap:
            return lo[:m], hi[:m], length[:m]
        cap = m


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
