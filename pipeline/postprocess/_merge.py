"""Minimum mapping unit: merge small segments into their most similar neighbour.

Pure and in memory: it works on the :class:`SegmentIndex` (segment statistics and the
adjacency of small segments) that :func:`resolve_segments` built from the per-chunk
summaries, so it sees exactly the same integers for any chunking and gives exactly
the same merges. The rasters are then relabelled lazily with the composed tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numba
import numpy as np
from affine import Affine

from ._chunk_tasks import SegmentTasks, _chunk_task, _combine_pairs, _join_task, _sum_units
from ._kernels import _find, _min_by_group
from ._resolve import SegmentIndex, resolve_segments, segment_dtype

__all__ = ["merge_small_segments", "pixels_for_area", "voxels_for_volume"]


def _count_for(amount: float, unit: float) -> int:
    """Smallest ``n`` with ``n * unit >= amount``, guarded against the division's rounding."""
    n = max(1, math.ceil(amount / unit))
    while n > 1 and (n - 1) * unit >= amount:
        n -= 1
    while n * unit < amount:
        n += 1
    return n


def pixels_for_area(area: float, transform: Affine) -> int:
    """Smallest pixel count whose area is at least ``area`` map units squared.

    Parameters
    ----------
    area : float
        Minimum area in squared map units (> 0).
    transform : Affine
        Pixel-to-map transform; ``|det|`` is the area of one pixel.

    Returns
    -------
    int
        ``n`` such that a segment of ``m`` pixels is small exactly when ``m < n``.
    """
    if not area > 0:
        raise ValueError(f"area must be > 0, got {area!r}")
    pixel = abs(transform.a * transform.e - transform.b * transform.d)
    if not pixel > 0:
        raise ValueError("the transform has a zero pixel area")
    return _count_for(area, pixel)


def voxels_for_volume(volume: float, voxel_volume: float) -> int:
    """Smallest voxel count whose volume is at least ``volume``.

    Parameters
    ----------
    volume : float
        Minimum volume (> 0), in the unit of ``voxel_volume`` (e.g. mm^3).
    voxel_volume : float
        Volume of one voxel (> 0), e.g. :attr:`pipeline.io.Geometry.voxel_size`.

    Returns
    -------
    int
        ``n`` such that a segment of ``m`` voxels is small exactly when ``m < n``.
    """
    if not volume > 0:
        raise ValueError(f"volume must be > 0, got {volume!r}")
    if not (voxel_volume > 0 and math.isfinite(voxel_volume)):
        raise ValueError(f"voxel_volume must be > 0, got {voxel_volume!r}")
    return _count_for(volume, voxel_volume)


@numba.njit(cache=True, nogil=True)
def _mean(hi, lo, count, g, sum_offset, sum_scale, out):  # pragma: no cover - compiled
    """Mean feature vector of group g, as :meth:`SegmentStats.means` computes it."""
    for f in range(hi.shape[1]):
        m = (np.float64(hi[g, f]) * 4294967296.0 + np.float64(lo[g, f])) / count[g]
        out[f] = (m - sum_offset[f]) / sum_scale[f]


@numba.njit(cache=True, nogil=True)
def _count_rows(a, b, small, ptr):  # pragma: no cover - compiled
    """Count the row entries of edges ``(a, b)`` (1-based IDs) into ``ptr[id]``.

    Every edge gives a row entry to each of its small endpoints. With
    :func:`_fill_rows`, a counting sort (linear time) that may see the edges in
    batches: numpy's argsort of the row sources took 5 s and twice the memory for the
    75 million entries of 4096^2 noise.
    """
    for e in range(a.size):
        if small[a[e] - 1]:
            ptr[a[e]] += 1
        if small[b[e] - 1]:
            ptr[b[e]] += 1


@numba.njit(cache=True, nogil=True)
def _fill_rows(a, b, length, small, fill, dst, blen):  # pragma: no cover - compiled
    """Place the row entries of edges ``(a, b)``; ``fill[i]``: row ``i``'s next free slot.

    Entries are 0-based IDs; the order within a row does not matter to the merge.
    """
    for e in range(a.size):
        i, j = a[e] - 1, b[e] - 1
        if small[i]:
            dst[fill[i]] = j
            blen[fill[i]] = length[e]
            fill[i] += 1
        if small[j]:
            dst[fill[j]] = i
            blen[fill[j]] = length[e]
            fill[j] += 1


@numba.njit(cache=True, nogil=True)
def _small_rows(a, b, length, small, id_type):  # pragma: no cover - compiled
    """Adjacency rows of the small segments (CSR over 0-based IDs), in linear time.

    ``id_type`` (int32 or int64) types the entries.
    """
    n = small.size
    ptr = np.zeros(n + 1, dtype=np.int64)
    _count_rows(a, b, small, ptr)
    for i in range(n):
        ptr[i + 1] += ptr[i]
    fill = ptr[:-1].copy()
    dst = np.empty(ptr[n], dtype=np.asarray(id_type).dtype)
    blen = np.empty(ptr[n], dtype=np.int32)
    _fill_rows(a, b, length, small, fill, dst, blen)
    return ptr, dst, blen


@numba.njit(cache=True, nogil=True)
def _init_groups(start, stop, count, hi, lo, sum_offset, sum_scale, mean, parent, nxt, tail,
                 stamp):  # pragma: no cover - compiled
    """Every segment ``start..stop-1`` its own group, with its mean feature vector."""
    for i in range(start, stop):
        _mean(hi, lo, count, i, sum_offset, sum_scale, mean[i])
        parent[i] = i
        nxt[i] = -1  # members as linked lists
        tail[i] = i
        stamp[i] = -1


@numba.njit(cache=True, nogil=True)
def _push(g, size, step, head, entry_id, entry_next, n_entries):  # pragma: no cover
    """Queue group ``g`` in bucket ``size``, in the list of its window (``g // step``).

    Each bucket is a linked list of entries per window of ``step`` IDs: a window's
    groups are taken in ID order without sorting the whole bucket (the singletons of
    8192^2 noise are 23 million).
    """
    entry_id[n_entries] = g
    entry_next[n_entries] = head[size, g // step]
    head[size, g // step] = n_entries
    return n_entries + 1


@numba.njit(cache=True, nogil=True)
def _queue_small(start, stop, count, min_pixels, step, head, entry_id, entry_next,
                 n_entries):  # pragma: no cover - compiled
    """Queue the small segments of ``start..stop-1`` in their size buckets."""
    for i in range(start, stop):
        if count[i] < min_pixels:
            n_entries = _push(i, count[i], step, head, entry_id, entry_next, n_entries)
    return n_entries


@numba.njit(cache=True, nogil=True)
def _bucket(head, entry_id, entry_next, size, w):  # pragma: no cover - compiled
    """Return the IDs queued in bucket ``size`` and window ``w``, ascending."""
    k = 0
    e = head[size, w]
    while e != -1:
        k += 1
        e = entry_next[e]
    ids = np.empty(k, dtype=entry_id.dtype)
    k = 0
    e = head[size, w]
    while e != -1:
        ids[k] = entry_id[e]
        k += 1
        e = entry_next[e]
    ids.sort()
    return ids


@numba.njit(cache=True, nogil=True)
def _merge_events(ids, size, count, hi, lo, sum_offset, sum_scale, ptr, nbr,  # pragma: no cover
                  blen, min_pixels, n_similar, mean, parent, nxt, tail, stamp, acc, touched, step,
                  head, entry_id, entry_next, n_entries, it):
    """Merge the small groups ``ids`` of bucket ``size``, in order, into their closest neighbour.

    ``parent`` is a union-find forest whose roots are the groups; a group is named by
    the segment that the others merged into. Only small segments have adjacency rows
    (``ptr``/``nbr``/``blen``, CSR); a small group's members are all small segments,
    so its neighbours are found by walking its members' rows.

    The queue is a bucket queue by size (``head``, ``entry_id``, ``entry_next``: linked
    lists of entries): a merged group is larger than the group just taken, so it only
    ever enters a later bucket. Every group's mean (``mean``) is kept up to date: the
    distances read 8 bytes a feature instead of recomputing the means from their sums.
    ``it`` numbers the events (``stamp``). Returns ``(n_entries, it)``: a bucket may be
    given in slices, one call each.
    """
    nf = hi.shape[1]
    for g in ids:
        if parent[g] != g or count[g] != size:
            continue  # merged away, or grown since it was queued
        it += 1
        nt = 0
        m = g
        while m != -1:
            for e in range(ptr[m], ptr[m + 1]):
                h = _find(parent, nbr[e])
                if h == g:
                    continue
                if stamp[h] != it:
                    stamp[h] = it
                    acc[h] = 0
                    touched[nt] = h
                    nt += 1
                acc[h] += blen[e]
            m = nxt[m]
        if nt == 0:
            continue  # no neighbour: it stays small
        best = -1
        best_d = 0.0
        for t in range(nt):
            h = touched[t]
            d = 0.0  # squared distance of the mean feature vectors
            for f in range(n_similar):
                d += (mean[g, f] - mean[h, f]) * (mean[g, f] - mean[h, f])
            if (best < 0 or d < best_d or (d == best_d and acc[h] > acc[best])
                    or (d == best_d and acc[h] == acc[best] and h < best)):
                best = h
                best_d = d
        parent[g] = best
        count[best] += count[g]
        for f in range(nf):
            s = lo[best, f] + lo[g, f]
            hi[best, f] += hi[g, f] + (s >> 32)
            lo[best, f] = s & 0xFFFFFFFF
        _mean(hi, lo, count, best, sum_offset, sum_scale, mean[best])
        nxt[tail[best]] = g
        tail[best] = tail[g]
        if count[best] < min_pixels:  # larger than size: a later bucket
            n_entries = _push(best, count[best], step, head, entry_id, entry_next, n_entries)
    return n_entries, it


@numba.njit(cache=True, nogil=True)
def _find_all(start, stop, parent):  # pragma: no cover - compiled
    """Point every segment of ``start..stop-1`` at its group's root."""
    for i in range(start, stop):
        parent[i] = _find(parent, i)


class MergeArrays(NamedTuple):
    """The working arrays of the merge (:func:`_merge_events`), allocated by the caller.

    In memory for :func:`merge_parents`; file-backed for the paged merge
    (:mod:`._bounded`), which gives every kernel a slice of IDs at a time.
    """

    count: np.ndarray  # type: ignore[assignment]  # a field shadowing tuple.count
    hi: np.ndarray
    lo: np.ndarray
    mean: np.ndarray
    parent: np.ndarray
    nxt: np.ndarray
    tail: np.ndarray
    stamp: np.ndarray
    acc: np.ndarray
    touched: np.ndarray
    entry_id: np.ndarray
    entry_next: np.ndarray


def merge_arrays(n: int, nf: int, n_small: int, id_type: Any,
                 empty: Callable[[str, tuple[int, ...], Any], np.ndarray] | None = None
                 ) -> MergeArrays:
    """Allocate the merge's arrays for ``n`` segments (``empty(name, shape, dtype)``).

    IDs and queue entries in ``id_type`` (32 bits below 2**30 segments: 1.3 GB less at
    8192^2 noise); every merge adds at most one queue entry, so ``2 * n_small + 1``.
    """
    def alloc(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype) if empty is None else empty(name, shape, dtype)

    e = 2 * n_small + 1
    return MergeArrays(alloc("count", (n,), np.int64), alloc("hi", (n, nf), np.int64),
                       alloc("lo", (n, nf), np.int64), alloc("mean", (n, nf), np.float64),
                       alloc("parent", (n,), id_type), alloc("nxt", (n,), id_type),
                       alloc("tail", (n,), id_type), alloc("stamp", (n,), id_type),
                       # touched: a neighbour list, only its first entries are used
                       alloc("acc", (n,), np.int64), np.empty(n, id_type),
                       alloc("entry_id", (e,), id_type), alloc("entry_next", (e,), id_type))


def run_merge(w: MergeArrays, rows: tuple[np.ndarray, np.ndarray, np.ndarray],
              sum_offset: np.ndarray, sum_scale: np.ndarray, min_pixels: int, n_similar: int,
              step: int | None = None,
              release: Callable[[], None] | None = None) -> np.ndarray:
    """Run the merge on ``w`` (``count``, ``hi``, ``lo`` filled in); return ``parent``.

    Smallest groups first (bucket by bucket, each in ID order). ``step``: give the
    kernels ``step`` IDs at a time and call ``release()`` after each slice (the paged
    merge drops the pages it touched); default: all at once.
    """
    n = w.count.size
    step = max(n, 1) if step is None else step
    off = np.asarray(sum_offset, np.float64)
    scl = np.asarray(sum_scale, np.float64)

    def slices(total: int, by: int = step) -> Iterator[tuple[int, int]]:
        for s in range(0, total, by):
            yield s, min(s + by, total)
            if release is not None:
                release()

    # buckets up to the size a small group can reach: the small segments' total + 1
    small_pixels = 0
    for s, e in slices(n):
        part = w.count[s:e]
        small_pixels += int(part[part < min_pixels].sum())
    levels = int(min(min_pixels, small_pixels + 1))
    n_windows = max(-(-n // step), 1)
    head = np.full((levels, n_windows), -1, dtype=np.int64)
    n_entries = 0
    for s, e in slices(n):
        _init_groups(s, e, w.count, w.hi, w.lo, off, scl, w.mean, w.parent, w.nxt, w.tail,
                     w.stamp)
        n_entries = _queue_small(s, e, w.count, min_pixels, step, head, w.entry_id,
                                 w.entry_next, n_entries)
    it = 0
    ptr, nbr, blen = rows
    for size in range(1, levels):
        for win, _ in slices(n_windows, 1):  # a window of IDs at a time, in ID order
            ids = _bucket(head, w.entry_id, w.entry_next, size, win)
            if ids.size:
                n_entries, it = _merge_events(
                    ids, size, w.count, w.hi, w.lo, off, scl, ptr, nbr, blen, min_pixels,
                    n_similar, w.mean, w.parent, w.nxt, w.tail, w.stamp, w.acc, w.touched,
                    step, head, w.entry_id, w.entry_next, n_entries, it)
    for s, e in slices(n):
        _find_all(s, e, w.parent)
    return w.parent


def merge_small_segments(index: SegmentIndex, min_pixels: int, *,
                         keep_edges: bool = False, n_similar: int | None = None
                         ) -> SegmentIndex:
    """Merge every segment smaller than ``min_pixels`` into its most similar neighbour.

    Smallest segments first (ties: lowest ID); the neighbour with the closest mean
    feature vector wins (squared Euclidean distance in the units of
    :func:`segment_tasks`' ``offset``/``scale``), ties going to the longest shared
    border (4-adjacent pixel pairs; 6-adjacent voxel pairs in a volume), then to the
    lowest ID. The statistics of the
    merged segment are updated after each merge, and it keeps the class of the
    segment it merged into; a merged segment still too small goes on merging. A
    segment without neighbours (surrounded by nodata) stays as it is.

    The merged segments are renumbered canonically again (by first pixel), so the
    result is what a single-chunk run gives, exactly. Volumes ``(z, y, x)`` follow the
    same rule on their (3-D) index.

    Parameters
    ----------
    index : SegmentIndex
        From :func:`resolve_segments` with ``min_pixels`` given to
        :func:`segment_tasks` (the adjacency of small segments).
    min_pixels : int
        Segments with fewer pixels are merged; at most the ``min_pixels`` the
        adjacency was collected with.
    keep_edges : bool
        Return the adjacency of the merged segments (lengths added up), for an index
        whose edges are every contact (``min_pixels`` of :func:`segment_tasks` at
        least the largest segment, as region merging collects them).
    n_similar : int, optional
        Only the first ``n_similar`` summed features measure similarity; the others are
        carried along (summed) only (region merging sums the squared features too).

    Returns
    -------
    SegmentIndex
        New statistics, lookup tables composed with the merge, and no edges (unless
        ``keep_edges``).

    Raises
    ------
    ValueError
        If the index has no adjacency, or it was collected for a smaller size.
    """
    if index.edges is None:
        raise ValueError("the index has no adjacency: pass min_pixels to segment_tasks")
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels!r}")
    if index.min_pixels is not None and min_pixels > index.min_pixels:
        raise ValueError(f"the adjacency was collected for min_pixels={index.min_pixels}; "
                         f"pass at least {min_pixels} to segment_tasks")
    stats = index.stats
    n = len(stats)
    a, b, length = index.edges
    parent = merge_parents(stats.count, stats.hi, stats.lo, stats.sum_offset,
                           stats.sum_scale, a, b, length, min_pixels,
                           stats.hi.shape[1] if n_similar is None else int(n_similar))
    # a group is numbered by its first pixel: the lowest ID among its members
    roots = np.flatnonzero(parent == np.arange(n))
    group_min = _min_by_group(parent, n, np.arange(n, dtype=np.int64))
    order = np.argsort(group_min[roots], kind="stable")
    new_id = np.zeros(n, dtype=np.int64)
    new_id[roots[order]] = np.arange(1, roots.size + 1)
    merged = stats.reduce(new_id[parent] - 1, roots.size)
    merged.klass = stats.klass[roots[order]]  # the class of the segment merged into
    table = np.concatenate([[0], new_id[parent]]).astype(segment_dtype(roots.size))
    luts = [table[lut] for lut in index.luts]
    edges = None
    if keep_edges:
        na, nb = new_id[parent[a - 1]], new_id[parent[b - 1]]
        apart = na != nb
        edges = _combine_pairs(na[apart], nb[apart], length[apart], roots.size)
    return SegmentIndex(stats=merged, luts=luts, edges=edges, chunks=index.chunks,
                        connectivity=index.connectivity,
                        min_pixels=index.min_pixels if keep_edges else None)


def merge_parents(count: np.ndarray, hi: np.ndarray, lo: np.ndarray, sum_offset: np.ndarray,
                  sum_scale: np.ndarray, a: np.ndarray, b: np.ndarray, length: np.ndarray,
                  min_pixels: int, n_similar: int) -> np.ndarray:
    """Run the merge of :func:`merge_small_segments` on bare arrays, in memory.

    ``count``, ``hi``, ``lo``: the segments' statistics (not modified); ``a``, ``b``,
    ``length``: their adjacency (1-based IDs). Returns ``parent`` (0-based roots).
    """
    n = count.size
    small = count < min_pixels
    id_type = np.int32 if n < 2**30 else np.int64
    rows = _small_rows(a, b, length, small, id_type(0))
    w = merge_arrays(n, hi.shape[1], int(small.sum()), id_type)
    w.count[:] = count
    w.hi[:] = hi
    w.lo[:] = lo
    return run_merge(w, rows, sum_offset, sum_scale, min_pixels, n_similar)


def load_kernels(ndim: int = 2) -> None:
    """Resolve and merge the segments of a tiny class map, to load their kernels.

    numba loads a cached kernel on its first call in a process: the resolve and merge
    kernels take ~0.8 s of one core to load, at a point of the run where they are the
    only work left for that core. The orchestrator calls this in a thread while the
    pass over the input runs instead. Plain NumPy calls of the chunk tasks (no Dask,
    no xarray, no warning filters: safe beside the pass); changes nothing but numba's
    loaded kernels. ``ndim=3``: the kernels of volumes ``(z, y, x)``.
    """
    if ndim == 3:
        _load_kernels3()
        return
    classes = np.zeros((6, 6), dtype=np.uint8)
    classes[2:4, 2:4] = 1
    classes[0, 5] = 255
    raw = np.arange(36, dtype=np.uint16).reshape(1, 6, 6)
    one = np.ones(1)
    for feats, integer_sums in ((raw, True), (raw.astype(np.float32), False)):
        blocks = {(i, j): _chunk_task(classes[3 * i:3 * i + 3, 3 * j:3 * j + 3],
                                      feats[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3],
                                      np.zeros(1, np.int64), 2 * i + j, 3 * i, 3 * j, 6, 255,
                                      8, one - 1, one, 5, integer_sums)
                  for i in range(2) for j in range(2)}
        none = (None, None)
        joins = [_join_task(blocks[i, j][1], blocks.get((i, j + 1), none)[1],
                            blocks.get((i + 1, j), none)[1],
                            blocks.get((i + 1, j + 1), none)[1], 8, True)
                 for i in range(2) for j in range(2)]
        pieces = [blocks[i, j][0] for i in range(2) for j in range(2)]
        _resolve_and_merge(pieces, joins, ((3, 3), (3, 3)), 8, 5, integer_sums)


def _load_kernels3() -> None:
    """:func:`load_kernels` for volumes: a 4^3 class map in 8 chunks of 2^3."""
    from ._segments3d import _chunk_task3, _join_task3

    classes = np.zeros((4, 4, 4), dtype=np.uint8)
    classes[1:3, 1:3, 1:3] = 1
    classes[0, 0, 3] = 255
    raw = np.arange(64, dtype=np.uint16).reshape(1, 4, 4, 4)
    one = np.ones(1)
    corners = list(np.ndindex(2, 2, 2))
    for feats, integer_sums in ((raw, True), (raw.astype(np.float32), False)):
        blocks = [_chunk_task3(classes[2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2],
                               feats[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2],
                               np.zeros(1, np.int64), n, (2 * i, 2 * j, 2 * k), 4, 4, 255, 3,
                               one - 1, one, 9, integer_sums)
                  for n, (i, j, k) in enumerate(corners)]
        faces = {c: b[1] for c, b in zip(corners, blocks, strict=True)}
        joins = [_join_task3([faces.get(tuple(a + b for a, b in zip(c, o, strict=True)))
                              for o in corners], 3, True) for c in corners]
        _resolve_and_merge([b[0] for b in blocks], joins, ((2, 2),) * 3, 26, 9, integer_sums)


def _resolve_and_merge(pieces: list, joins: list, chunks: tuple[tuple[int, ...], ...],
                       connectivity: int, min_pixels: int, integer_sums: bool) -> None:
    """Resolve and merge the computed chunk tasks of :func:`load_kernels`."""
    one = np.ones(1)
    tasks = SegmentTasks([None] * len(pieces), [None] * len(joins), chunks, connectivity,
                         min_pixels, *_sum_units(1, integer_sums, one - 1, one))
    merge_small_segments(resolve_segments(tasks, pieces, joins), min_pixels)
