"""The per-chunk work of the segment stage: summaries of local pieces, face joins.

Every chunk is labelled on its own (local labels in raster order) and summarised
(:class:`ChunkPieces`: per local piece its class, first pixel, pixel count, bounding
box and exact feature sums, optionally its adjacency); the edge rows and columns of
its local labels (:class:`ChunkStrips`) go to one join task per chunk, which pairs
pieces across the chunk's right and bottom faces and its bottom-right corner
(:class:`Joins`). The 3-D tasks (:mod:`._segments3d`) return the same joins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ._contacts import _combine_kernel, _contact_kernel
from ._kernels import FIXED_POINT_BITS, PieceArrays, _piece_kernel, _run_edges, label_runs

__all__ = ["ChunkPieces", "ChunkStrips", "Joins", "SegmentTasks", "KEY_SHIFT"]

KEY_SHIFT = 32  # piece key = chunk index << 32 | local label


def _sum_units(nf: int, integer_sums: bool, offset: np.ndarray, scale: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_offset, sum_scale)`` of :class:`SegmentStats` for the sums of a kernel."""
    if integer_sums:
        return offset.astype(np.float64), scale.astype(np.float64)
    return np.zeros(nf), np.full(nf, 2.0**FIXED_POINT_BITS)



class ChunkPieces(NamedTuple):
    """What one chunk tells the resolver about its local pieces (one row each).

    ``edge_a``/``edge_b`` are local labels (1-based) of pieces that touch under the
    connectivity, ``edge_len`` the number of 4-adjacent pixel pairs between them (0 for
    a corner contact); kept only when one of the two pieces is smaller than the
    minimum size (a piece at least that large belongs to a large segment).
    """

    klass: np.ndarray
    first: np.ndarray
    # a field shadowing tuple.count (mypy rejects that), named as SegmentStats.count
    count: np.ndarray  # type: ignore[assignment]
    rmin: np.ndarray
    rmax: np.ndarray
    cmin: np.ndarray
    cmax: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    edge_a: np.ndarray
    edge_b: np.ndarray
    edge_len: np.ndarray


class ChunkStrips(NamedTuple):
    """Local labels and classes of a chunk's outer rows and columns."""

    index: int  # type: ignore[assignment]  # a field shadowing tuple.index (the chunk)
    top: np.ndarray
    top_cls: np.ndarray
    bottom: np.ndarray
    bottom_cls: np.ndarray
    left: np.ndarray
    left_cls: np.ndarray
    right: np.ndarray
    right_cls: np.ndarray


class Joins(NamedTuple):
    """Piece pairs across a chunk's faces and corner (piece keys: chunk << 32 | local)."""

    join_a: np.ndarray
    join_b: np.ndarray
    edge_a: np.ndarray
    edge_b: np.ndarray
    edge_len: np.ndarray


def _combine_pairs(a: np.ndarray, b: np.ndarray, length: np.ndarray, n: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order each pair (min, max), merge duplicates, sum their lengths; sorted output.

    With ``n`` (every value in ``1..n``), a linear-time counting sort; else a sort of
    the pairs (for piece keys, which are not dense).
    """
    if n is not None and a.size:
        return _combine_kernel(np.minimum(a, b), np.maximum(a, b), length, int(n))
    lo, hi, (length,) = _sum_by_pair(np.minimum(a, b).astype(np.int64, copy=False),
                                     np.maximum(a, b).astype(np.int64, copy=False),
                                     length.astype(np.int64, copy=False))
    return lo, hi, length


def _sum_by_pair(a: np.ndarray, b: np.ndarray, *values: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Sort the pairs ``(a, b)``, merge duplicates and sum each of ``values`` over them."""
    if a.size == 0:
        return a, b, list(values)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    start = np.ones(a.size, dtype=bool)
    start[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    idx = np.flatnonzero(start)
    return a[idx], b[idx], [np.add.reduceat(v[order], idx) for v in values]


def _no_edges() -> tuple[np.ndarray, ...]:
    empty = np.empty(0, dtype=np.int32)
    return empty, empty, empty


def _piece_edges(contacts: tuple[np.ndarray, np.ndarray, np.ndarray], n: int
                 ) -> tuple[np.ndarray, ...]:
    """Return a chunk's piece adjacency (``ChunkPieces.edge_*``) from its run contacts.

    ``contacts``: what a contact kernel returns, ``(lo, hi, length)`` per pair of
    touching runs; ``n``: the number of local pieces.
    """
    a, b, length = _combine_pairs(*contacts, n)
    return a.astype(np.int32), b.astype(np.int32), length.astype(np.int32)



def _chunk_task(classes: np.ndarray, feats: np.ndarray | None, bands: np.ndarray, index: int,
                y0: int, x0: int, width: int, nodata: int | None, connectivity: int,
                offset: np.ndarray, scale: np.ndarray, min_pixels: int | None,
                integer_sums: bool = False) -> tuple[ChunkPieces, ChunkStrips]:
    cls = np.ascontiguousarray(classes)
    h, w = cls.shape
    runs = label_runs(cls, nodata, connectivity)
    if feats is None:
        feats = np.empty((0, h, w), dtype=np.float32)
    stats: PieceArrays = _piece_kernel(
        runs.starts, runs.ends, runs.labels, runs.row_ptr, runs.n, cls,
        np.ascontiguousarray(feats), bands, offset, scale, y0, x0, width, integer_sums)
    if min_pixels is None:
        edges = _no_edges()
    else:
        edges = _piece_edges(_contact_kernel(runs.starts, runs.ends, runs.labels, runs.row_ptr,
                                             stats[2], connectivity == 8, min_pixels),
                             stats[2].size)
    pieces = ChunkPieces(*stats, *edges)
    top, bottom, left, right = _run_edges(runs.starts, runs.ends, runs.labels, runs.row_ptr,
                                          w)

    def strip(a: np.ndarray) -> np.ndarray:
        return a.astype(np.int64)  # a copy: the chunk itself is not kept

    strips = ChunkStrips(index, top, strip(cls[0]), bottom, strip(cls[-1]),
                         left, strip(cls[:, 0]), right, strip(cls[:, -1]))
    return pieces, strips


def _pairs(la: np.ndarray, ca: np.ndarray, ia: int, lb: np.ndarray, cb: np.ndarray, ib: int,
           length: int, joins: list, edges: list | None) -> None:
    """Sort aligned pixel pairs into same-class joins and different-class edges."""
    valid = (la > 0) & (lb > 0)
    same = valid & (ca == cb)
    diff = valid & (ca != cb)
    ka = (np.int64(ia) << KEY_SHIFT) | la.astype(np.int64)
    kb = (np.int64(ib) << KEY_SHIFT) | lb.astype(np.int64)
    joins.append((ka[same], kb[same]))
    if edges is not None:
        edges.append((ka[diff], kb[diff], np.full(int(diff.sum()), length, dtype=np.int64)))


def _join_task(c00: ChunkStrips, c01: ChunkStrips | None, c10: ChunkStrips | None,
               c11: ChunkStrips | None, connectivity: int, with_edges: bool) -> Joins:
    """Pairs across the right face, the bottom face and the bottom-right corner."""
    conn8 = connectivity == 8
    joins: list = []
    edges: list | None = [] if with_edges else None
    faces = []
    if c01 is not None:  # right face: my last column against its first column
        faces.append((c00.right, c00.right_cls, c01.left, c01.left_cls, c01.index))
    if c10 is not None:  # bottom face: my last row against its first row
        faces.append((c00.bottom, c00.bottom_cls, c10.top, c10.top_cls, c10.index))
    for la, ca, lb, cb, ib in faces:
        _pairs(la, ca, c00.index, lb, cb, ib, 1, joins, edges)
        if conn8 and la.size > 1:  # diagonals along the face
            _pairs(la[:-1], ca[:-1], c00.index, lb[1:], cb[1:], ib, 0, joins, edges)
            _pairs(la[1:], ca[1:], c00.index, lb[:-1], cb[:-1], ib, 0, joins, edges)
    if conn8 and c11 is not None:  # the two diagonals across the corner
        assert c01 is not None and c10 is not None
        _pairs(c00.bottom[-1:], c00.bottom_cls[-1:], c00.index, c11.top[:1], c11.top_cls[:1],
               c11.index, 0, joins, edges)
        _pairs(c01.bottom[:1], c01.bottom_cls[:1], c01.index, c10.top[-1:], c10.top_cls[-1:],
               c10.index, 0, joins, edges)
    return _collect_joins(joins, edges)


def _collect_joins(joins: list, edges: list | None) -> Joins:
    """Return the :class:`Joins` of the pairs :func:`_pairs` put in ``joins``, ``edges``."""
    empty = np.empty(0, dtype=np.int64)
    ja = np.concatenate([j[0] for j in joins]) if joins else empty
    jb = np.concatenate([j[1] for j in joins]) if joins else empty
    ja, jb, _ = _combine_pairs(ja, jb, np.zeros(ja.size, dtype=np.int64))
    if edges:
        ea, eb, el = _combine_pairs(np.concatenate([e[0] for e in edges]),
                                    np.concatenate([e[1] for e in edges]),
                                    np.concatenate([e[2] for e in edges]))
    else:
        ea, eb, el = empty, empty, empty
    return Joins(ja, jb, ea, eb, el)


@dataclass(frozen=True)
class SegmentTasks:
    """The lazy per-chunk work of :func:`segment_tasks`.

    Attributes
    ----------
    pieces : list of Delayed
        One :class:`ChunkPieces` per chunk, chunks in row-major (C) order
        (:class:`._segments3d.ChunkPieces3` for a volume).
    joins : list of Delayed
        One :class:`Joins` per chunk (its right face, bottom face and corner; for a
        volume its far faces, edges and corner).
    chunks : tuple of tuple of int
        The chunking of the class map (one tuple per spatial dim).
    connectivity : int
    min_pixels : int or None
    sum_offset, sum_scale : ndarray, shape (feature,)
        What the pieces' sums are in: see :class:`SegmentStats`.
    """

    pieces: list[Any] = field(repr=False)
    joins: list[Any] = field(repr=False)
    chunks: tuple[tuple[int, ...], ...]
    connectivity: int
    min_pixels: int | None
    sum_offset: np.ndarray
    sum_scale: np.ndarray
    #: the chunks' :class:`ChunkStrips` (Delayed, row-major; a volume's
    #: :class:`._segments3d.ChunkFaces`)
    strips: list[Any] = field(default_factory=list, repr=False)

    @property
    def ndim(self) -> int:
        """Number of spatial dims of the class map (2 or 3)."""
        return len(self.chunks)
