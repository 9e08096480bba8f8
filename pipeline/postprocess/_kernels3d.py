"""Block kernels of the segment stage for volumes ``(z, y, x)``, compiled with numba.

The 2-D kernels of :mod:`._kernels` generalised to three axes, on the same runs: a
run is a maximal stretch of one class along ``x`` in one row ``(z, y)``; rows are
numbered ``z * h + y`` (C order), so the runs of a block are in C order of their
first voxel and the run-based union-find numbers every piece by its first voxel.

Connectivity is the rank of ``scipy.ndimage.generate_binary_structure(3, rank)``:
1 (6-connected: faces), 2 (18: faces and edges), 3 (26: faces, edges and corners).
A row ``(z, y)`` touches the rows ``(z + dz, y + dy)`` with ``|dz| + |dy| <= rank``;
a run reaches ``min(1, rank - |dz| - |dy|)`` voxels past its ends along ``x`` there.
"""

from __future__ import annotations

import numba
import numpy as np

from ._kernels import _CLIP, _UNIT, Runs, _find, paint_runs

__all__ = ["RANKS", "label_runs3", "label_volume"]

#: 3-D connectivity -> rank of the structuring element
RANKS = {6: 1, 18: 2, 26: 3}


@numba.njit(cache=True, nogil=True)
def _join_rows(parent, r_start, r_end, r_cls, p, p_end, k0, k1, reach
               ):  # pragma: no cover - compiled
    """Union runs ``k0:k1`` with the touching runs ``p:p_end`` of one class.

    ``p:p_end`` are the runs of an earlier row; both are sorted by start.
    """
    for k in range(k0, k1):
        lo = r_start[k] - reach
        hi = r_end[k] + reach
        while p < p_end and r_end[p] <= lo:
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
def _label_kernel3(cls, nodata, rank):  # pragma: no cover - compiled
    """Run-based union-find labelling of a block ``(z, y, x)``; pieces by first voxel.

    As :func:`._kernels._label_kernel`, with up to four earlier rows per row:
    ``(z, y - 1)`` and ``(z - 1, y)`` (faces), ``(z - 1, y -+ 1)`` (edges, rank >= 2).
    Returns ``n`` and the runs (``start``, ``end``, ``label``, ``row_ptr`` over the
    ``d * h`` rows).
    """
    d, h, w = cls.shape
    n_max = d * h * w
    parent = np.empty(n_max, dtype=np.int32)
    r_start = np.empty(n_max, dtype=np.int32)
    r_end = np.empty(n_max, dtype=np.int32)
    r_cls = np.empty(n_max, dtype=cls.dtype)
    row_ptr = np.empty(d * h + 1, dtype=np.int64)
    bounds = np.empty(w + 1, dtype=np.int32)
    face_reach = 1 if rank >= 2 else 0
    diag_reach = 1 if rank >= 3 else 0
    n = 0
    for z in range(d):
        for y in range(h):
            r = z * h + y
            cur_lo = n
            row_ptr[r] = n
            if w == 0:
                continue
            row = cls[z, y]
            bounds[0] = 0
            m = 1
            for j in range(1, w):
                bounds[m] = j
                m += np.int64(row[j] != row[j - 1])
            bounds[m] = w
            for t in range(m):
                j = bounds[t]
                c = row[j]
                if c != nodata:
                    r_start[n] = j
                    r_end[n] = bounds[t + 1]
                    r_cls[n] = c
                    parent[n] = n
                    n += 1
            if n == cur_lo:
                continue
            if y > 0:
                _join_rows(parent, r_start, r_end, r_cls, row_ptr[r - 1], cur_lo, cur_lo, n,
                           face_reach)
            if z > 0:
                b = r - h
                _join_rows(parent, r_start, r_end, r_cls, row_ptr[b], row_ptr[b + 1], cur_lo,
                           n, face_reach)
                if rank >= 2:
                    if y > 0:
                        _join_rows(parent, r_start, r_end, r_cls, row_ptr[b - 1], row_ptr[b],
                                   cur_lo, n, diag_reach)
                    if y + 1 < h:
                        _join_rows(parent, r_start, r_end, r_cls, row_ptr[b + 1],
                                   row_ptr[b + 2], cur_lo, n, diag_reach)
    row_ptr[d * h] = n
    final = np.empty(n, dtype=np.int32)
    count = 0
    for k in range(n):
        root = _find(parent, k)
        if root == k:
            count += 1
            final[k] = count
        else:
            final[k] = final[root]
    return count, r_start[:n].copy(), r_end[:n].copy(), final, row_ptr


def label_runs3(classes: np.ndarray, nodata: int | None, rank: int) -> Runs:
    """Label the connected pieces of one block ``(z, y, x)`` of a class map, as runs.

    ``rank`` is 1, 2 or 3 (6-, 18-, 26-connectivity). Rows are ``z * h + y``; see
    :func:`pipeline.postprocess._kernels.label_runs`.
    """
    cls = np.ascontiguousarray(classes)
    nd = -1 if nodata is None else int(nodata)
    if cls.dtype.kind == "b":
        cls = cls.astype(np.int64)
    return Runs(*_label_kernel3(cls, nd, int(rank)))


def paint_volume(runs: Runs, shape: tuple[int, ...], lut: np.ndarray) -> np.ndarray:
    """``lut[label]`` of every voxel of a block (0 between runs), shape ``shape``."""
    out = np.empty(shape, dtype=lut.dtype)
    if out.size:
        paint_runs(runs.starts, runs.ends, runs.labels, runs.row_ptr, lut,
                   out.reshape(-1, shape[-1]))
    return out


def label_volume(classes: np.ndarray, nodata: int | None, connectivity: int
                 ) -> tuple[np.ndarray, int]:
    """Local labels ``(z, y, x)`` int32 of one block, 1..n by first voxel; 0 nodata."""
    runs = label_runs3(classes, nodata, RANKS[connectivity])
    return paint_volume(runs, np.shape(classes), np.arange(runs.n + 1, dtype=np.int32)), runs.n


@numba.njit(cache=True, nogil=True)
def _piece_kernel3(starts, ends, labels, row_ptr, n, cls, feats, bands, offset, scale, h,
                   z0, y0, x0, gh, gw, integer_sums):  # pragma: no cover - compiled
    """Sum every local piece's class, first voxel, count, box, coordinates, features.

    As :func:`._kernels._piece_kernel` on the block seen as ``(d * h, w)`` rows
    (``cls`` and ``feats`` reshaped so); row ``i`` is ``(z0 + i // h, y0 + i % h)``.
    ``first`` is the global flat index in C order over the volume's ``(z, y, x)``
    (``gh``, ``gw``: the volume's y and x sizes); ``csum[k]`` the sums of the global
    ``z``, ``y`` and ``x`` indices of the piece's voxels (exact integers).
    """
    nrows = row_ptr.size - 1
    w = cls.shape[1]
    nf = bands.size
    big = np.iinfo(np.int32).max
    klass = np.zeros(n, dtype=np.int32)
    first = np.zeros(n, dtype=np.int64)
    count = np.zeros(n, dtype=np.int32)
    zmin = np.zeros(n, dtype=np.int32)
    zmax = np.zeros(n, dtype=np.int32)
    rmin = np.full(n, big, dtype=np.int32)
    rmax = np.zeros(n, dtype=np.int32)
    cmin = np.full(n, big, dtype=np.int32)
    cmax = np.zeros(n, dtype=np.int32)
    csum = np.zeros((n, 3), dtype=np.int64)
    hi = np.zeros((n, nf), dtype=np.int64)
    lo = np.zeros((n, nf), dtype=np.int64)
    q_hi = np.empty((nf, w), dtype=np.int64)
    q_lo = np.empty((nf, w), dtype=np.int64)
    run_sum = np.zeros((nf, w + 1), dtype=np.int64)
    for i in range(nrows):
        if row_ptr[i] == row_ptr[i + 1]:
            continue
        if integer_sums:
            for f in range(nf):
                row = feats[bands[f], i]
                acc = np.int64(0)
                for j in range(w):
                    acc += np.int64(row[j])
                    run_sum[f, j + 1] = acc
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
        z = z0 + i // h
        y = y0 + i % h
        base = (np.int64(z) * gh + y) * gw + x0
        for t in range(row_ptr[i], row_ptr[i + 1]):
            k = labels[t] - 1
            j = starts[t]
            e = ends[t]
            length = e - j
            if count[k] == 0:
                klass[k] = cls[i, j]
                first[k] = base + j
                zmin[k] = z
            count[k] += length
            zmax[k] = z
            rmin[k] = min(rmin[k], y)
            rmax[k] = max(rmax[k], y)
            cmin[k] = min(cmin[k], x0 + j)
            cmax[k] = max(cmax[k], x0 + e - 1)
            csum[k, 0] += np.int64(z) * length
            csum[k, 1] += np.int64(y) * length
            csum[k, 2] += (np.int64(x0 + j) + (x0 + e - 1)) * length // 2
            if integer_sums:
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
        for f in range(nf):
            hi[k, f] += lo[k, f] >> 32
            lo[k, f] &= 0xFFFFFFFF
    return klass, first, count, zmin, zmax, rmin, rmax, cmin, cmax, csum, hi, lo


@numba.njit(cache=True, nogil=True)
def _row_contacts(starts, ends, labels, small, k0, k1, p, p_end, reach, face, lo, hi, length,
                  m):  # pragma: no cover - compiled
    """Contacts of the runs ``k0:k1`` with those ``p:p_end`` of an earlier row."""
    cap = lo.size
    for k in range(k0, k1):
        s = starts[k] - reach
        e = ends[k] + reach
        while p < p_end and ends[p] <= s:
            p += 1
        u = p
        a = labels[k]
        while u < p_end and starts[u] < e:
            b = labels[u]
            if a != b and (small[a] or small[b]):
                if m < cap:
                    lo[m] = min(a, b)
                    hi[m] = max(a, b)
                    length[m] = max(min(ends[k], ends[u]) - max(starts[k], starts[u]), 0) \
                        if face else 0
                m += 1
            u += 1
    return m


@numba.njit(cache=True, nogil=True)
def _contacts3(starts, ends, labels, row_ptr, h, small, rank, lo, hi, length
               ):  # pragma: no cover - compiled
    """Write the contacts of :func:`_contact_kernel3` while they fit; return how many."""
    nrows = row_ptr.size - 1
    cap = lo.size
    face_reach = 1 if rank >= 2 else 0
    diag_reach = 1 if rank >= 3 else 0
    m = 0
    for r in range(nrows):
        a0 = row_ptr[r]
        a1 = row_ptr[r + 1]
        if a0 == a1:
            continue
        for k in range(a0, a1 - 1):
            p = labels[k]
            q = labels[k + 1]
            if ends[k] == starts[k + 1] and p != q and (small[p] or small[q]):
                if m < cap:
                    lo[m] = min(p, q)
                    hi[m] = max(p, q)
                    length[m] = 1
                m += 1
        y = r % h
        if y > 0:
            m = _row_contacts(starts, ends, labels, small, a0, a1, row_ptr[r - 1], row_ptr[r],
                              face_reach, True, lo, hi, length, m)
        if r >= h:
            b = r - h
            m = _row_contacts(starts, ends, labels, small, a0, a1, row_ptr[b], row_ptr[b + 1],
                              face_reach, True, lo, hi, length, m)
            if rank >= 2:
                if y > 0:
                    m = _row_contacts(starts, ends, labels, small, a0, a1, row_ptr[b - 1],
                                      row_ptr[b], diag_reach, False, lo, hi, length, m)
                if y + 1 < h:
                    m = _row_contacts(starts, ends, labels, small, a0, a1, row_ptr[b + 1],
                                      row_ptr[b + 2], diag_reach, False, lo, hi, length, m)
    return m


@numba.njit(cache=True, nogil=True)
def _contact_kernel3(starts, ends, labels, row_ptr, h, count, rank, min_pixels
                     ):  # pragma: no cover - compiled
    """Every contact of two different pieces of a block, one of them small.

    ``(lo, hi, length)`` per pair of touching runs: ``length`` is the number of
    face-adjacent voxel pairs between them (0 for an edge or corner contact);
    :func:`._kernels._combine_kernel` sums them per pair of pieces.
    """
    small = np.zeros(count.size + 1, dtype=np.bool_)
    for k in range(count.size):
        small[k + 1] = count[k] < min_pixels
    cap = max(1024, starts.size)
    while True:
        lo = np.empty(cap, dtype=np.int32)
        hi = np.empty(cap, dtype=np.int32)
        length = np.empty(cap, dtype=np.int32)
        m = _contacts3(starts, ends, labels, row_ptr, h, small, rank, lo, hi, length)
        if m <= cap:
            return lo[:m], hi[:m], length[:m]
        cap = m


@numba.njit(cache=True, nogil=True)
def _reduce_extra(group, n, zmin, zmax, csum):  # pragma: no cover - compiled
    """Reduce the z extent and coordinate sums of groups of rows (``SegmentStats.reduce``)."""
    big = np.iinfo(np.int64).max
    o_zmin = np.full(n, big, dtype=np.int64)
    o_zmax = np.full(n, -1, dtype=np.int64)
    o_csum = np.zeros((n, csum.shape[1]), dtype=np.int64)
    for i in range(group.size):
        g = group[i]
        o_zmin[g] = min(o_zmin[g], zmin[i])
        o_zmax[g] = max(o_zmax[g], zmax[i])
        for a in range(csum.shape[1]):
            o_csum[g, a] += csum[i, a]
    return o_zmin, o_zmax, o_csum
