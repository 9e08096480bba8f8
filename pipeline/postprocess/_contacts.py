"""Contacts between the pieces of a block, for the merge of small segments (numba).

From the runs of :mod:`._kernels` (2-D) or :mod:`._kernels3d` (volumes): every pair of
touching runs of two different pieces, one of them small, with the length of their
border; :func:`_combine_kernel` sums them per pair of pieces. Within a block, touching
runs of one class share a label, so two labels that touch belong to two classes.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

__all__: list[str] = []


@numba.njit(cache=True, nogil=True)
def _side_contacts(starts, ends, labels, small, a0, a1, lo, hi, length, m
                   ):  # pragma: no cover - compiled
    """Contacts of consecutive runs ``a0:a1`` of one row (length 1 each); return ``m``."""
    cap = lo.size
    for k in range(a0, a1 - 1):
        p = labels[k]
        q = labels[k + 1]
        if ends[k] == starts[k + 1] and p != q and (small[p] or small[q]):
            if m < cap:
                lo[m] = min(p, q)
                hi[m] = max(p, q)
                length[m] = 1
            m += 1
    return m


@numba.njit(cache=True, nogil=True)
def _row_contacts(starts, ends, labels, small, k0, k1, p, p_end, reach, face, lo, hi, length,
                  m):  # pragma: no cover - compiled
    """Contacts of the runs ``k0:k1`` with those ``p:p_end`` of another row; return ``m``.

    The runs that each run touches are found as :func:`._kernels._join_rows` finds them; with
    ``face`` a contact has the length of the overlap (0: a corner), else 0.
    """
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
def _small_flags(count, min_pixels):  # pragma: no cover - compiled
    """One flag per label (index 0 unused): a byte lookup instead of two count compares."""
    small = np.zeros(count.size + 1, dtype=np.bool_)
    for k in range(count.size):
        small[k + 1] = count[k] < min_pixels
    return small


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
    reach = 1 if conn8 else 0
    m = 0
    for i in range(h):
        a0 = row_ptr[i]
        a1 = row_ptr[i + 1]
        m = _side_contacts(starts, ends, labels, small, a0, a1, lo, hi, length, m)
        if i + 1 == h:
            continue
        # the row below starts where this row's runs end
        m = _row_contacts(starts, ends, labels, small, a0, a1, a1, row_ptr[i + 2], reach, True,
                          lo, hi, length, m)
    return m


def _with_room(fill: Callable[[np.ndarray, np.ndarray, np.ndarray], int], guess: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the contacts ``fill(lo, hi, length)`` writes, given room for them all.

    One pass into a guessed capacity (only borders of small pieces count); a second
    pass, with the count the first returned, only when it overflows.
    """
    cap = max(1024, guess)
    while True:
        lo = np.empty(cap, dtype=np.int32)
        hi = np.empty(cap, dtype=np.int32)
        length = np.empty(cap, dtype=np.int32)
        m = int(fill(lo, hi, length))
        if m <= cap:
            return lo[:m], hi[:m], length[:m]
        cap = m


def _contact_kernel(starts: np.ndarray, ends: np.ndarray, labels: np.ndarray,
                    row_ptr: np.ndarray, count: np.ndarray, conn8: bool, min_pixels: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every contact of two different pieces of a block, one of them small.

    From the runs of :func:`_label_kernel`. Returns ``(lo, hi, length)`` per pair of
    touching runs (``lo < hi``): the number of side-touching pixel pairs (0 for a corner
    contact, 8-connectivity); :func:`_combine_kernel` sums them per pair of pieces.
    Within a block, touching runs of one class share a label, so two labels that touch
    belong to two classes.
    """
    small = _small_flags(count, min_pixels)
    return _with_room(lambda lo, hi, length: _contacts(starts, ends, labels, row_ptr, small,
                                                       conn8, lo, hi, length), starts.size)


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
    bucket_hi = np.empty(m, dtype=hi.dtype)
    bucket_len = np.empty(m, dtype=length.dtype)
    for e in range(m):
        k = fill[lo[e]]
        bucket_hi[k] = hi[e]
        bucket_len[k] = length[e]
        fill[lo[e]] += 1
    pos = np.full(n + 1, -1, dtype=np.int64)
    out_a = np.empty(m, dtype=lo.dtype)  # the input's integer types (32-bit IDs stay so)
    out_b = np.empty(m, dtype=hi.dtype)
    out_l = np.empty(m, dtype=length.dtype)
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
