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

from ._contacts import _row_contacts, _side_contacts, _small_flags, _with_room
from ._kernels import (
    Runs,
    _join_rows,
    _normalise_words,
    _number_pieces,
    _row_values,
    _split_row,
    paint_runs,
)

__all__ = ["RANKS", "label_runs3", "label_volume"]

#: 3-D connectivity -> rank of the structuring element
RANKS = {6: 1, 18: 2, 26: 3}


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
            n = _split_row(cls[z, y], nodata, bounds, r_start, r_end, r_cls, parent, n)
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
    count, final = _number_pieces(parent, n)
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
        _row_values(feats, bands, i, offset, scale, integer_sums, run_sum, q_hi, q_lo)
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
            if integer_sums:  # inline for speed, as in _kernels._piece_kernel
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
    _normalise_words(hi, lo)
    return klass, first, count, zmin, zmax, rmin, rmax, cmin, cmax, csum, hi, lo


@numba.njit(cache=True, nogil=True)
def _contacts3(starts, ends, labels, row_ptr, h, small, rank, lo, hi, length
               ):  # pragma: no cover - compiled
    """Write the contacts of :func:`_contact_kernel3` while they fit; return how many."""
    nrows = row_ptr.size - 1
    face_reach = 1 if rank >= 2 else 0
    diag_reach = 1 if rank >= 3 else 0
    m = 0
    for r in range(nrows):
        a0 = row_ptr[r]
        a1 = row_ptr[r + 1]
        if a0 == a1:
            continue
        m = _side_contacts(starts, ends, labels, small, a0, a1, lo, hi, length, m)
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


def _contact_kernel3(starts: np.ndarray, ends: np.ndarray, labels: np.ndarray,
                     row_ptr: np.ndarray, h: int, count: np.ndarray, rank: int,
                     min_pixels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every contact of two different pieces of a block, one of them small.

    ``(lo, hi, length)`` per pair of touching runs: ``length`` is the number of
    face-adjacent voxel pairs between them (0 for an edge or corner contact);
    :func:`._kernels._combine_kernel` sums them per pair of pieces.
    """
    small = _small_flags(count, min_pixels)
    return _with_room(lambda lo, hi, length: _contacts3(starts, ends, labels, row_ptr, h, small,
                                                        rank, lo, hi, length), starts.size)


@numba.njit(cache=True, nogil=True)
def _reduce_extra(group, n, zmin, zmax, csum):  # pragma: no cover - compiled
    """Reduce the z extent and coordinate sums of groups of rows (``SegmentStats.reduce``)."""
    o_zmin, o_zmax, o_csum = _reduce_extra_empty(n, csum.shape[1])
    _reduce_extra_add(group, zmin, zmax, csum, o_zmin, o_zmax, o_csum)
    return o_zmin, o_zmax, o_csum


@numba.njit(cache=True, nogil=True)
def _reduce_extra_empty(n, n_axes):  # pragma: no cover - compiled
    """Empty z extents and coordinate sums of ``n`` groups, for :func:`_reduce_extra_add`."""
    big = np.iinfo(np.int64).max
    return (np.full(n, big, dtype=np.int64), np.full(n, -1, dtype=np.int64),
            np.zeros((n, n_axes), dtype=np.int64))


@numba.njit(cache=True, nogil=True)
def _reduce_extra_add(group, zmin, zmax, csum, o_zmin, o_zmax, o_csum):  # pragma: no cover
    """Add rows' z extents and coordinate sums to their groups', in place."""
    for i in range(group.size):
        g = group[i]
        o_zmin[g] = min(o_zmin[g], zmin[i])
        o_zmax[g] = max(o_zmax[g], zmax[i])
        for a in range(csum.shape[1]):
            o_csum[g, a] += csum[i, a]
