"""The resolver of the segment stage: global, canonically numbered segments.

Pure and in memory, on the computed per-chunk summaries (:mod:`._chunk_tasks`,
:mod:`._segments3d`): union-find over the face pairs, canonical renumbering,
per-segment statistics (:class:`SegmentStats`) from the partial sums, and one lookup
table (local label -> global ID) per chunk, gathered in a :class:`SegmentIndex`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numba
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._chunk_tasks import KEY_SHIFT, ChunkPieces, Joins, SegmentTasks
from ._contacts import _combine_kernel
from ._kernels import (
    FIXED_POINT_BITS,
    PieceArrays,
    _min_into,
    _reduce_add,
    _reduce_empty,
    _reduce_kernel,
)
from ._kernels3d import _reduce_extra, _reduce_extra_add, _reduce_extra_empty

if TYPE_CHECKING:
    from ._segments3d import ChunkPieces3

__all__ = ["SegmentIndex", "SegmentStats", "fixed_to_float", "resolve_segments",
           "segment_dtype"]

_LOW = np.int64(0xFFFFFFFF)
#: the fields of :class:`SegmentStats` every segment has, in the reduce kernels' order,
#: and those of a volume's segments only
STAT_FIELDS = ("klass", "first", "count", "rmin", "rmax", "cmin", "cmax", "hi", "lo")
VOLUME_FIELDS = ("zmin", "zmax", "coord_sum")


def segment_dtype(n_segments: int) -> np.dtype:
    """uint32 IDs, or uint64 when ``n_segments`` does not fit (0 is nodata)."""
    return np.dtype(np.uint32) if n_segments <= np.iinfo(np.uint32).max else np.dtype(np.uint64)


def _words_to_float(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return hi.astype(np.float64) * 4294967296.0 + lo.astype(np.float64)


def fixed_to_float(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Value of normalised two-word fixed-point sums, ``(hi * 2**32 + lo) / 2**bits``.

    The result depends only on the exact integer sums, never on how they were added.
    """
    return _words_to_float(hi, lo) / 2.0**FIXED_POINT_BITS


@dataclass
class SegmentStats:
    """Per-segment statistics; row ``i`` is segment ID ``i + 1``.

    Attributes
    ----------
    klass, first, count : ndarray, shape (n,), int64
        Class, first pixel (global flat index in raster order; for a volume in C
        order over ``(z, y, x)``), pixel (voxel) count.
    rmin, rmax, cmin, cmax : ndarray, shape (n,), int64
        Bounding box in global pixel indices (inclusive): rows ``y``, columns ``x``.
    hi, lo : ndarray, shape (n, feature), int64
        Exact integer feature sums as two normalised words, ``hi * 2**32 + lo``.
    sum_offset, sum_scale : ndarray, shape (feature,), float64
        The mean in the units of :func:`segment_tasks`' ``offset``/``scale`` is
        ``(sum / count - sum_offset) / sum_scale``: fixed-point sums of the scaled
        values (0 and ``2**FIXED_POINT_BITS``), or sums of raw integer bands (the
        ``offset`` and ``scale`` themselves).
    zmin, zmax : ndarray, shape (n,), int64, or None
        Volumes only (``None`` for 2-D): the bounding box along ``z`` (inclusive).
    coord_sum : ndarray, shape (n, 3), int64, or None
        Volumes only: exact sums of the global ``z``, ``y`` and ``x`` indices of each
        segment's voxels (its centroid is ``coord_sum / count``).
    """

    klass: np.ndarray
    first: np.ndarray
    count: np.ndarray
    rmin: np.ndarray
    rmax: np.ndarray
    cmin: np.ndarray
    cmax: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    sum_offset: np.ndarray
    sum_scale: np.ndarray
    zmin: np.ndarray | None = None
    zmax: np.ndarray | None = None
    coord_sum: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.count.size)

    @property
    def ndim(self) -> int:
        """Number of spatial dims of the segments (2, or 3 for a volume)."""
        return 2 if self.zmin is None else 3

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)``: inclusive bounding boxes, shape (n, ndim), axes in dims order."""
        lo = [self.rmin, self.cmin] if self.zmin is None else [self.zmin, self.rmin, self.cmin]
        hi = [self.rmax, self.cmax] if self.zmax is None else [self.zmax, self.rmax, self.cmax]
        return (np.stack(lo, axis=1).astype(np.int64).reshape(-1, len(lo)),
                np.stack(hi, axis=1).astype(np.int64).reshape(-1, len(hi)))

    def centroids(self) -> np.ndarray:
        """Mean voxel index per segment, shape (n, 3) in ``(z, y, x)`` (volumes only)."""
        if self.coord_sum is None:
            raise ValueError("centroids are summed for volumes (z, y, x) only")
        return self.coord_sum / np.maximum(self.count, 1)[:, None].astype(np.float64)

    def means(self) -> np.ndarray:
        """Mean of each (offset and scaled) feature, shape (n, feature), float64."""
        sums = _words_to_float(self.hi, self.lo) / np.maximum(self.count, 1)[:, None]
        return (sums - self.sum_offset) / self.sum_scale

    def first_features(self, k: int) -> SegmentStats:
        """Return the same statistics with only the first ``k`` summed features."""
        return dataclasses.replace(
            self, hi=np.ascontiguousarray(self.hi[:, :k]),
            lo=np.ascontiguousarray(self.lo[:, :k]),
            sum_offset=np.asarray(self.sum_offset)[:k],
            sum_scale=np.asarray(self.sum_scale)[:k])

    def reduce(self, group: np.ndarray, n_groups: int) -> SegmentStats:
        """Statistics of groups of segments; ``group[i]`` in ``0..n_groups-1``.

        A group's class is that of its member with the smallest first pixel.
        """
        fields: PieceArrays = _reduce_kernel(
            np.ascontiguousarray(group, dtype=np.int64), int(n_groups),
            *(np.ascontiguousarray(getattr(self, f)) for f in STAT_FIELDS),
        )
        out = SegmentStats(*fields, self.sum_offset, self.sum_scale)
        if self.zmin is not None:
            out.zmin, out.zmax, out.coord_sum = _reduce_extra(
                np.ascontiguousarray(group, dtype=np.int64), int(n_groups),
                *(np.ascontiguousarray(getattr(self, f), dtype=np.int64)
                  for f in VOLUME_FIELDS))
        return out


class ChunkedIds:
    """What an index of segments over chunks derives from ``n_segments`` and ``chunks``."""

    n_segments: int
    chunks: tuple[tuple[int, ...], ...]

    @property
    def dtype(self) -> np.dtype:
        """Integer type of the segment IDs."""
        return segment_dtype(self.n_segments)

    @property
    def ndim(self) -> int:
        """Number of spatial dims of the class map (2 or 3)."""
        return len(self.chunks)


@dataclass
class SegmentIndex(ChunkedIds):
    """Everything known about the segments after :func:`resolve_segments`.

    Attributes
    ----------
    stats : SegmentStats
        One row per segment, ID order.
    luts : list of ndarray
        Per chunk (row-major, C order), local label -> segment ID (index 0 -> 0, nodata).
    edges : tuple of ndarray or None
        ``(a, b, length)``: 1-based IDs ``a < b`` of touching segments, of which at
        least one is smaller than ``min_pixels``, and their border length (4-adjacent
        pixel pairs, 6-adjacent voxel pairs; 0 for a corner or edge contact). ``None``
        without ``min_pixels``.
    chunks : tuple of tuple of int
    connectivity : int
    min_pixels : int or None
        The size the adjacency was collected for.
    """

    stats: SegmentStats
    luts: list[np.ndarray] = field(repr=False)
    edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(repr=False)
    chunks: tuple[tuple[int, ...], ...]
    connectivity: int
    min_pixels: int | None = None

    @property
    def n_segments(self) -> int:  # type: ignore[override]  # derived, not stored
        """Number of segments."""
        return len(self.stats)


@numba.njit(cache=True, nogil=True)
def _segment_pairs(pa, pb, length, seg, base, count, min_pixels, out_a, out_b, out_l,
                   k):  # pragma: no cover - compiled
    """Append the segment pairs of piece pairs ``(pa, pb)`` at ``k``; return the new end.

    ``seg[base + p]`` is piece ``p``'s segment ID (1-based); a pair is kept when one
    of its segments is smaller than ``min_pixels``, lower ID first.
    """
    for e in range(pa.size):
        a = seg[base + pa[e]]
        b = seg[base + pb[e]]
        if count[a - 1] < min_pixels or count[b - 1] < min_pixels:
            out_a[k] = min(a, b)
            out_b[k] = max(a, b)
            out_l[k] = length[e]
            k += 1
    return k


def resolve_segments(
    tasks: SegmentTasks, pieces: Sequence[ChunkPieces | ChunkPieces3],
    joins: Sequence[Joins]
) -> SegmentIndex:
    """Join the chunk pieces into global, canonically numbered segments.

    Pure and in memory: union-find (connected components of the face-pair graph) over
    the pieces, then every segment is numbered by the rank of its first pixel in
    raster order (C order over ``(z, y, x)`` for a volume), and its statistics are
    reduced from the pieces' partial sums.

    Parameters
    ----------
    tasks : SegmentTasks
        What :func:`segment_tasks` returned.
    pieces, joins : sequence
        ``dask.compute(tasks.pieces, tasks.joins)``.

    Returns
    -------
    SegmentIndex
    """
    if len(pieces) != len(tasks.pieces) or len(joins) != len(tasks.joins):
        raise ValueError("pieces and joins must be the computed tasks.pieces and tasks.joins")
    counts = np.array([p.count.size for p in pieces], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])

    def dense(key: np.ndarray) -> np.ndarray:
        return offsets[key >> KEY_SHIFT] + (key & _LOW) - 1

    ja = np.concatenate([dense(j.join_a) for j in joins]) if joins else np.empty(0, np.int64)
    jb = np.concatenate([dense(j.join_b) for j in joins]) if joins else np.empty(0, np.int64)
    graph = coo_matrix((np.ones(ja.size, dtype=np.int32), (ja, jb)), shape=(total, total))
    n_comp, comp = connected_components(graph.tocsr(), directed=False)
    # canonical IDs: components ranked by their first pixel in raster order
    comp_first = np.full(n_comp, np.iinfo(np.int64).max, dtype=np.int64)
    for c, p in enumerate(pieces):
        _min_into(comp[offsets[c]:offsets[c + 1]], p.first, comp_first)
    rank = np.empty(n_comp, dtype=np.int64)
    rank[np.argsort(comp_first)] = np.arange(n_comp)
    del comp_first
    seg_of_piece = rank[comp] + 1
    del rank, comp
    # each chunk's pieces added to their segments' statistics in place: no copy of
    # every piece's statistics (2.7 GB at 8192^2 noise)
    nf = pieces[0].hi.shape[1] if pieces else 0
    stats = SegmentStats(*_reduce_empty(n_comp, nf), tasks.sum_offset, tasks.sum_scale)
    if tasks.ndim == 3:
        stats.zmin, stats.zmax, stats.coord_sum = _reduce_extra_empty(n_comp, 3)
    for c, p in enumerate(pieces):
        group = seg_of_piece[offsets[c]:offsets[c + 1]] - 1
        _reduce_add(group, *(np.ascontiguousarray(getattr(p, f)) for f in STAT_FIELDS),
                    *(getattr(stats, f) for f in STAT_FIELDS))
        if tasks.ndim == 3:
            zmin, zmax, csum = (np.ascontiguousarray(getattr(p, f), dtype=np.int64)
                                for f in VOLUME_FIELDS)
            _reduce_extra_add(group, zmin, zmax, csum, stats.zmin, stats.zmax,
                              stats.coord_sum)
    dtype = segment_dtype(n_comp)
    luts = [np.concatenate([[0], seg_of_piece[offsets[c]:offsets[c + 1]]]).astype(dtype)
            for c in range(len(pieces))]
    edges = None
    if tasks.min_pixels is not None:
        # the pieces' contacts as segment pairs (lower ID first), only those of a
        # segment smaller than min_pixels (the merge's), in one pass per chunk: 32-bit
        # IDs and lengths where they fit (four times less memory than the int64 copies
        # of every contact, and 4 s less at 4096^2 noise)
        m = sum(p.edge_a.size for p in pieces) + sum(j.edge_a.size for j in joins)
        ids = np.int32 if n_comp < 2**31 else np.int64
        a, b = np.empty(m, dtype=ids), np.empty(m, dtype=ids)
        length = np.empty(m, dtype=np.int64 if tasks.min_pixels > 2**29 else np.int32)
        k = 0
        for c, p in enumerate(pieces):
            k = _segment_pairs(p.edge_a, p.edge_b, p.edge_len, seg_of_piece, offsets[c] - 1,
                               stats.count, tasks.min_pixels, a, b, length, k)
        for j in joins:
            k = _segment_pairs(dense(j.edge_a), dense(j.edge_b), j.edge_len, seg_of_piece, 0,
                               stats.count, tasks.min_pixels, a, b, length, k)
        edges = _combine_kernel(a[:k], b[:k], length[:k], n_comp) if k else \
            (a[:0].astype(np.int64), b[:0].astype(np.int64), length[:0].astype(np.int64))
    return SegmentIndex(stats=stats, luts=luts, edges=edges, chunks=tasks.chunks,
                        connectivity=tasks.connectivity, min_pixels=tasks.min_pixels)
