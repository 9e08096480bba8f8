"""Block kernels of the segment stage, compiled with numba.

scipy and scikit-image label binary images only, so a class map would need one pass
per class; :func:`label_chunk` labels every class in one scan (two-pass union-find).
:func:`_piece_kernel` sums each piece's statistics in the same kind of scan. The
contacts between pieces are in :mod:`._contacts`.
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
def _split_row(row, nodata, bounds, r_start, r_end, r_cls, parent, n):  # pragma: no cover
    """Append the runs of valid pixels of one row; return the new run count.

    Finds where the class changes without a branch per pixel: every column is
    written and the count moves on only at a change (a run's end is a branch the
    processor cannot predict). Each new run is its own union-find root.
    """
    w = row.size
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
    return n


@numba.njit(cache=True, nogil=True)
def _join_rows(parent, r_start, r_end, r_cls, p, p_end, k0, k1, reach
               ):  # pragma: no cover - compiled
    """Union runs ``k0:k1`` with the touching runs ``p:p_end`` of one class.

    ``p:p_end`` are the runs of an earlier row; both are sorted by start. A run
    touches those that overlap it, or come within ``reach`` columns of its ends.
    A union keeps the smaller run index as the root.
    """
    for k in range(k0, k1):
        lo = r_start[k] - reach
        hi = r_end[k] + reach
        while p < p_end and r_end[p] <= lo:  # ends before this run's reach
            p += 1
        q = p
        while q < p_end and r_start[q] < hi:
            if r_cls[q] == r_cls[k]:
                a = _find(parent, q)
                b = _find(parent, k)
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
            q += 1


@numba.njit(cache=True, nogil=True)
def _number_pieces(parent, n):  # pragma: no cover - compiled
    """Return the number of pieces and every run's piece, roots numbered in index order.

    Roots are their components' first runs, so in index order the pieces are numbered
    1.. by their first pixel.
    """
    final = np.empty(n, dtype=np.int32)
    count = 0
    for k in range(n):
        root = _find(parent, k)
        if root == k:
            count += 1
            final[k] = count
        else:
            final[k] = final[root]  # root < k: already numbered
    return count, final


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
    again (see :func:`paint_runs`, :func:`_piece_kernel` and
    :func:`._contacts._contact_kernel`).
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
        n = _split_row(cls[i], nodata, bounds, r_start, r_end, r_cls, parent, n)
        # join the runs of this row with those of the row above (both sorted by start)
        _join_rows(parent, r_start, r_end, r_cls, prev_lo, prev_hi, cur_lo, n, reach)
        prev_lo = cur_lo
        prev_hi = n
    row_ptr[h] = n
    # roots in index order = segments in order of first pixel
    count, final = _number_pieces(parent, n)
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
def _row_values(feats, bands, i, offset, scale, integer_sums, run_sum, q_hi, q_lo
                ):  # pragma: no cover - compiled
    """Prepare row ``i``'s feature values for the per-run sums of the piece kernels.

    ``integer_sums``: running sums of the raw integers along the row (``run_sum``);
    else the whole row's fixed-point values first, feature by feature, as two words
    (``q_hi``, ``q_lo``): a branch-free loop that vectorises (every pixel, nodata too:
    never summed).
    """
    nf = bands.size
    w = run_sum.shape[1] - 1
    if integer_sums:
        for f in range(nf):
            row = feats[bands[f], i]
            acc = np.int64(0)
            for j in range(w):
                acc += np.int64(row[j])
                run_sum[f, j + 1] = acc
        return
    for f in range(nf):
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


@numba.njit(cache=True, nogil=True)
def _normalise_words(hi, lo):  # pragma: no cover - compiled
    """Carry each sum's low word into its high word: ``lo`` in ``[0, 2**32)``."""
    for k in range(hi.shape[0]):
        for f in range(hi.shape[1]):  # arithmetic shift: negative sums keep lo >= 0
            hi[k, f] += lo[k, f] >> 32
            lo[k, f] &= 0xFFFFFFFF


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
        _row_values(feats, bands, i, offset, scale, integer_sums, run_sum, q_hi, q_lo)
        # then one update per run
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
            # the per-run sums stay inline (here and in _kernels3d._piece_kernel3): as a
            # function, even one numba inlines, they made the kernels 2-5x slower
            if integer_sums:  # whole sums in `lo` (a chunk's fit: < 2**47)
                for f in range(nf):
                    lo[k, f] += run_sum[f, e] - run_sum[f, j]
                continue
            for f in range(nf):  # integer sums: any grouping is exact
                s_hi = np.int64(0)
                s_lo = np.int64(0)
                for b in range(j, e):
                    s_hi += q_hi[f, b]
                    s_lo += q_lo[f, b]
                hi[k, f] += s_hi
                lo[k, f] += s_lo
    _normalise_words(hi, lo)
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
    out = _reduce_empty(n, hi.shape[1])
    _reduce_add(group, klass, first, count, rmin, rmax, cmin, cmax, hi, lo, *out)
    return out


@numba.njit(cache=True, nogil=True)
def _reduce_empty(n, nf) -> PieceArrays:  # pragma: no cover - compiled
    """Empty statistics of ``n`` groups, for :func:`_reduce_add` to add rows to."""
    big = np.iinfo(np.int64).max
    o_klass = np.zeros(n, dtype=np.int64)
    o_first = np.full(n, big, dtype=np.int64)
    o_count = np.zeros(n, dtype=np.int64)
    o_rmin = np.full(n, big, dtype=np.int64)
    o_rmax = np.full(n, -1, dtype=np.int64)
    o_cmin = np.full(n, big, dtype=np.int64)
    o_cmax = np.full(n, -1, dtype=np.int64)
    o_hi = np.zeros((n, nf), dtype=np.int64)
    o_lo = np.zeros((n, nf), dtype=np.int64)
    return o_klass, o_first, o_count, o_rmin, o_rmax, o_cmin, o_cmax, o_hi, o_lo


@numba.njit(cache=True, nogil=True)
def _reduce_add(group, klass, first, count, rmin, rmax, cmin, cmax, hi, lo,  # pragma: no cover
                o_klass, o_first, o_count, o_rmin, o_rmax, o_cmin, o_cmax, o_hi, o_lo):
    """Add rows to the statistics of their groups (``group[i]``), in place."""
    nf = hi.shape[1]
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


@numba.njit(cache=True, nogil=True)
def _min_by_group(group, n, values):  # pragma: no cover - compiled
    out = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    _min_into(group, values, out)
    return out


@numba.njit(cache=True, nogil=True)
def _min_into(group, values, out):  # pragma: no cover - compiled
    """``out[g] = min(out[g], values[i])`` for every row ``i`` of group ``g``."""
    for i in range(group.size):
        out[group[i]] = min(out[group[i]], values[i])
