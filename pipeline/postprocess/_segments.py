"""Connected segments of a class map with global IDs, exact for any chunking.

A segment is a connected set of pixels of one class (4- or 8-connectivity). Its ID is
its rank in raster order of its first pixel, so the IDs equal those of a single-chunk
run (``scipy.ndimage.label`` class by class, renumbered by first pixel), not just a
permutation of them. Three steps, in the order the orchestrator runs them:

1. :func:`segment_tasks` (lazy): every chunk is labelled on its own (local labels in
   raster order) and summarised: per local piece its class, first pixel, pixel count,
   bounding box and feature sums (exact integers), optionally its adjacency; the edge
   rows and columns of the local labels go to one join task per chunk, which pairs
   pieces across the chunk's right and bottom faces and its bottom-right corner.
2. :func:`resolve_segments` (pure, in memory, on the computed summaries): union-find
   over the face pairs, canonical renumbering, per-segment statistics from the partial
   sums, one lookup table (local label -> global ID) per chunk.
3. :func:`relabel_segments` (lazy): labels each chunk again and applies its table.

No task ever holds more than one chunk and its neighbours' edge strips; only the
per-piece summaries (the size of the segment table) come back to the caller.

Volumes ``(z, y, x)`` (6-, 18- or 26-connectivity) take the same three steps, with the
3-D chunk and join tasks of :mod:`._segments3d`; the functions here dispatch on
``labels.ndim``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._kernels import (
    FIXED_POINT_BITS,
    PieceArrays,
    Runs,
    _combine_kernel,
    _contact_kernel,
    _min_by_group,
    _piece_kernel,
    _reduce_kernel,
    _run_edges,
    label_runs,
    paint_runs,
)
from ._kernels3d import _reduce_extra

if TYPE_CHECKING:
    from ._segments3d import ChunkPieces3  # imports this module

__all__ = [
    "CONNECTIVITIES",
    "FIXED_POINT_BITS",
    "SegmentIndex",
    "SegmentStats",
    "SegmentTasks",
    "fixed_to_float",
    "relabel_segments",
    "resolve_segments",
    "segment_dtype",
    "segment_tasks",
]

_LOW = np.int64(0xFFFFFFFF)
_KEY_SHIFT = 32  # piece key = chunk index << 32 | local label


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


#: raw band types whose float32 values are their integers: their segments sum the
#: integers themselves (exact in int64 below 2**47 pixels), not fixed-point values
_INTEGER_SUM_DTYPES = frozenset(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16"))


def _sum_units(nf: int, integer_sums: bool, offset: np.ndarray, scale: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_offset, sum_scale)`` of :class:`SegmentStats` for the sums of a kernel."""
    if integer_sums:
        return offset.astype(np.float64), scale.astype(np.float64)
    return np.zeros(nf), np.full(nf, 2.0**FIXED_POINT_BITS)


# ---------------------------------------------------------------------------------
# Per-chunk summaries (the lazy part)
# ---------------------------------------------------------------------------------


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
    lo = np.minimum(a, b).astype(np.int64, copy=False)
    hi = np.maximum(a, b).astype(np.int64, copy=False)
    length = length.astype(np.int64, copy=False)
    if lo.size == 0:
        return lo, hi, length
    order = np.lexsort((hi, lo))
    lo, hi, length = lo[order], hi[order], length[order]
    start = np.ones(lo.size, dtype=bool)
    start[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    idx = np.flatnonzero(start)
    return lo[idx], hi[idx], np.add.reduceat(length, idx)


def _interior_edges(runs: Runs, count: np.ndarray, conn8: bool, min_pixels: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi, length = _contact_kernel(runs.starts, runs.ends, runs.labels, runs.row_ptr,
                                     count, conn8, min_pixels)
    a, b, length = _combine_pairs(lo, hi, length, count.size)
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
        empty = np.empty(0, dtype=np.int32)
        edges = (empty, empty, empty)
    else:
        edges = _interior_edges(runs, stats[2], connectivity == 8, min_pixels)
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
    ka = (np.int64(ia) << _KEY_SHIFT) | la.astype(np.int64)
    kb = (np.int64(ib) << _KEY_SHIFT) | lb.astype(np.int64)
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

    @property
    def ndim(self) -> int:
        """Number of spatial dims of the class map (2 or 3)."""
        return len(self.chunks)


def _nodata(labels: xr.DataArray) -> int | None:
    nodata = labels.rio.nodata
    return None if nodata is None or not np.isfinite(nodata) else int(nodata)


#: allowed connectivities by number of spatial dims
CONNECTIVITIES = {2: (4, 8), 3: (6, 18, 26)}


def _check_connectivity(connectivity: int, labels: Any = None) -> int:
    ndim = 2 if labels is None else labels.ndim
    allowed = CONNECTIVITIES.get(ndim, ())
    if connectivity not in allowed:
        dims = "" if labels is None else f" for labels with dims {tuple(labels.dims)}"
        names = " or ".join(", ".join(map(str, allowed)).rsplit(", ", 1)) if allowed else \
            "4 or 8 (y, x), 6, 18 or 26 (z, y, x)"
        raise ValueError(f"connectivity must be {names}, got {connectivity!r}{dims}")
    return int(connectivity)


class _Prepared(NamedTuple):
    data: da.Array
    nodata: int | None
    band_index: np.ndarray
    offset: np.ndarray
    scale: np.ndarray
    integer_sums: bool


def _prepare(labels: xr.DataArray, features: xr.DataArray | None, connectivity: int,
             min_pixels: int | None, offset: Any, scale: Any, bands: Sequence[int] | None
             ) -> _Prepared:
    """Check the arguments of :func:`segment_tasks` (2-D and 3-D alike)."""
    if labels.ndim not in CONNECTIVITIES or labels.dtype.kind not in "iub":
        raise TypeError(f"labels must be a 2-D (y, x) or 3-D (z, y, x) integer DataArray, "
                        f"got {labels.ndim}-D {labels.dtype}")
    _check_connectivity(connectivity, labels)
    if min_pixels is not None and min_pixels < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels!r}")
    data = labels.data if isinstance(labels.data, da.Array) else da.from_array(labels.data)
    nodata = _nodata(labels)
    nf = 0 if features is None else int(features.shape[0])
    if bands is not None:
        if features is None or not all(0 <= b < nf for b in bands):
            raise ValueError(f"bands {list(bands)} must index the {nf} bands of features")
        nf = len(bands)
    band_index = np.asarray(range(nf) if bands is None else bands, dtype=np.int64)
    if features is not None and features.shape[1:] != labels.shape:
        raise ValueError(f"features have shape {features.shape[1:]}, labels {labels.shape}; "
                         f"expected the same {tuple(labels.dims)} shape")
    off = np.zeros(nf) if offset is None else np.asarray(offset, dtype=np.float64)
    scl = np.ones(nf) if scale is None else np.asarray(scale, dtype=np.float64)
    if off.shape != (nf,) or scl.shape != (nf,):
        raise ValueError(f"offset and scale must have one value per feature ({nf})")
    integer_sums = (bands is not None and features is not None
                    and np.dtype(features.dtype) in _INTEGER_SUM_DTYPES)
    return _Prepared(data, nodata, band_index, off, scl, bool(integer_sums))


def segment_tasks(
    labels: xr.DataArray,
    features: xr.DataArray | None = None,
    *,
    connectivity: int = 8,
    min_pixels: int | None = None,
    offset: Sequence[float] | np.ndarray | None = None,
    scale: Sequence[float] | np.ndarray | None = None,
    bands: Sequence[int] | None = None,
) -> SegmentTasks:
    """Build the lazy per-chunk summaries of a class map's segments.

    Nothing is computed: compute ``tasks.pieces`` and ``tasks.joins`` together (one
    pass over the class map) and give the results to :func:`resolve_segments`.

    Parameters
    ----------
    labels : DataArray, shape (y, x) or (z, y, x), integer
        Class map, Dask-backed (chunks as they come); ``rio.nodata`` marks invalid
        pixels, which belong to no segment. A volume ``(z, y, x)`` is summarised by
        :mod:`._segments3d` (its pixels are voxels, its raster order C order).
    features : DataArray, shape (feature, y, x) or (feature, z, y, x), optional
        Per-pixel features whose per-segment means go into the table; finite wherever
        ``labels`` is valid. Rechunked to the class map's chunks.
    connectivity : {4, 8} for (y, x), {6, 18, 26} for (z, y, x)
        Pixels of one class touching by a side (4) or also by a corner (8) are one
        segment; voxels touching by a face (6), also by an edge (18), also by a corner
        (26): ``scipy.ndimage.generate_binary_structure(3, 1 | 2 | 3)``.
    min_pixels : int, optional
        Collect the adjacency of pieces smaller than this (needed to merge small
        segments, see :func:`pipeline.postprocess.merge_small_segments`).
    offset, scale : array-like, shape (feature,), optional
        Features are summed as ``(x - offset) / scale`` (defaults 0 and 1): the units
        of the similarity used by the merge. Use the model's standardisation.
    bands : sequence of int, optional
        ``features`` is the raw image (any dtype, shape (band, [z,] y, x)) and feature ``f``
        its 0-based band ``bands[f]``, converted to float32 on the fly: the same sums
        as from :func:`pipeline.io.masked_float`'s copy (valid pixels are finite),
        without making that copy.

    Returns
    -------
    SegmentTasks

    Raises
    ------
    ValueError
        If ``connectivity`` is not one of those of the labels' dims,
        ``min_pixels < 1``, or the shapes differ.
    TypeError
        If ``labels`` is not an integer 2-D or 3-D array.
    """
    prep = _prepare(labels, features, connectivity, min_pixels, offset, scale, bands)
    if labels.ndim == 3:
        from ._segments3d import volume_tasks

        return volume_tasks(labels, features, prep, int(connectivity), min_pixels)
    data, nodata, band_index, off, scl, integer_sums = prep
    connectivity = int(connectivity)
    lab_blocks = data.to_delayed(optimize_graph=False)
    if features is not None:
        fdata = features.data if isinstance(features.data, da.Array) \
            else da.from_array(features.data)
        fdata = fdata.rechunk((-1,) + data.chunks)
        feat_blocks = fdata.to_delayed(optimize_graph=False)[0]
    ys = np.concatenate([[0], np.cumsum(data.chunks[0])])
    xs = np.concatenate([[0], np.cumsum(data.chunks[1])])
    ny, nx = lab_blocks.shape
    width = int(labels.shape[1])
    task = dask.delayed(_chunk_task, pure=True, nout=2)
    pieces, strips = [], {}
    for i in range(ny):
        for j in range(nx):
            fb = None if features is None else feat_blocks[i, j]
            p, s = task(lab_blocks[i, j], fb, band_index, i * nx + j, int(ys[i]), int(xs[j]),
                        width, nodata, connectivity, off, scl, min_pixels, integer_sums)
            pieces.append(p)
            strips[i, j] = s
    join = dask.delayed(_join_task, pure=True)
    joins = [join(strips[i, j], strips.get((i, j + 1)), strips.get((i + 1, j)),
                  strips.get((i + 1, j + 1)), connectivity, min_pixels is not None)
             for i in range(ny) for j in range(nx)]
    return SegmentTasks(pieces, joins, data.chunks, connectivity, min_pixels,
                        *_sum_units(len(band_index), integer_sums, off, scl))


# ---------------------------------------------------------------------------------
# The resolver (pure, in memory)
# ---------------------------------------------------------------------------------


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

    def reduce(self, group: np.ndarray, n_groups: int) -> SegmentStats:
        """Statistics of groups of segments; ``group[i]`` in ``0..n_groups-1``.

        A group's class is that of its member with the smallest first pixel.
        """
        fields: PieceArrays = _reduce_kernel(
            np.ascontiguousarray(group, dtype=np.int64), int(n_groups),
            *(np.ascontiguousarray(getattr(self, f))
              for f in ("klass", "first", "count", "rmin", "rmax", "cmin", "cmax", "hi", "lo")),
        )
        out = SegmentStats(*fields, self.sum_offset, self.sum_scale)
        if self.zmin is not None:
            out.zmin, out.zmax, out.coord_sum = _reduce_extra(
                np.ascontiguousarray(group, dtype=np.int64), int(n_groups),
                *(np.ascontiguousarray(getattr(self, f), dtype=np.int64)
                  for f in ("zmin", "zmax", "coord_sum")))
        return out


@dataclass
class SegmentIndex:
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
    def n_segments(self) -> int:
        """Number of segments."""
        return len(self.stats)

    @property
    def dtype(self) -> np.dtype:
        """Integer type of the segment IDs."""
        return segment_dtype(self.n_segments)

    @property
    def ndim(self) -> int:
        """Number of spatial dims of the class map (2 or 3)."""
        return len(self.chunks)


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
        return offsets[key >> _KEY_SHIFT] + (key & _LOW) - 1

    ja = np.concatenate([dense(j.join_a) for j in joins]) if joins else np.empty(0, np.int64)
    jb = np.concatenate([dense(j.join_b) for j in joins]) if joins else np.empty(0, np.int64)
    graph = coo_matrix((np.ones(ja.size, dtype=np.int32), (ja, jb)), shape=(total, total))
    n_comp, comp = connected_components(graph.tocsr(), directed=False)
    stat_fields: tuple[str, ...] = ("klass", "first", "count", "rmin", "rmax", "cmin", "cmax",
                                    "hi", "lo")
    if tasks.ndim == 3:
        stat_fields += ("zmin", "zmax", "coord_sum")
    nf = pieces[0].hi.shape[1] if pieces else 0
    cat = {name: np.concatenate([getattr(p, name) for p in pieces]) if pieces
           else np.empty((0, nf) if name in ("hi", "lo") else
                         (0, 3) if name == "coord_sum" else 0, np.int64)
           for name in stat_fields}
    piece_stats = SegmentStats(**cat, sum_offset=tasks.sum_offset, sum_scale=tasks.sum_scale)
    del cat
    # canonical IDs: components ranked by their first pixel in raster order
    comp_first = _min_by_group(comp.astype(np.int64), n_comp, piece_stats.first)
    rank = np.empty(n_comp, dtype=np.int64)
    rank[np.argsort(comp_first)] = np.arange(n_comp)
    stats = piece_stats.reduce(rank[comp], n_comp)
    del piece_stats
    seg_of_piece = rank[comp] + 1
    dtype = segment_dtype(n_comp)
    luts = [np.concatenate([[0], seg_of_piece[offsets[c]:offsets[c + 1]]]).astype(dtype)
            for c in range(len(pieces))]
    edges = None
    if tasks.min_pixels is not None:
        ea = [seg_of_piece[offsets[c] + p.edge_a - 1] for c, p in enumerate(pieces)]
        eb = [seg_of_piece[offsets[c] + p.edge_b - 1] for c, p in enumerate(pieces)]
        el = [p.edge_len for p in pieces]
        ea += [seg_of_piece[dense(j.edge_a)] for j in joins]
        eb += [seg_of_piece[dense(j.edge_b)] for j in joins]
        el += [j.edge_len for j in joins]
        a, b, length = np.concatenate(ea), np.concatenate(eb), np.concatenate(el)
        # only contacts of a segment smaller than min_pixels matter to the merge
        keep = (stats.count[a - 1] < tasks.min_pixels) | (stats.count[b - 1] < tasks.min_pixels)
        edges = _combine_pairs(a[keep], b[keep], length[keep], len(stats))
    return SegmentIndex(stats=stats, luts=luts, edges=edges, chunks=tasks.chunks,
                        connectivity=tasks.connectivity, min_pixels=tasks.min_pixels)


# ---------------------------------------------------------------------------------
# Relabelling (lazy)
# ---------------------------------------------------------------------------------


def _relabel_block(classes: np.ndarray, lut: np.ndarray, nodata: int | None,
                   connectivity: int) -> np.ndarray:
    runs = label_runs(classes, nodata, connectivity)
    if runs.n + 1 != lut.size:
        raise RuntimeError(f"chunk has {runs.n} segments, its lookup table {lut.size - 1}: "
                           "the class map changed between the summary and the relabel pass")
    out = np.empty(np.shape(classes), dtype=lut.dtype)
    paint_runs(runs.starts, runs.ends, runs.labels, runs.row_ptr, lut, out)  # labels and
    return out  # table in one write


def relabel_segments(labels: xr.DataArray, index: SegmentIndex) -> xr.DataArray:
    """Give every pixel its global segment ID, lazily, one chunk at a time.

    Parameters
    ----------
    labels : DataArray, shape (y, x) or (z, y, x)
        The class map :func:`segment_tasks` summarised (same values, same chunks).
    index : SegmentIndex
        From :func:`resolve_segments` (or :func:`merge_small_segments`).

    Returns
    -------
    DataArray, shape (y, x) or (z, y, x), uint32 (uint64 above 2**32 - 1 segments)
        Segment IDs, 0 for nodata (also in ``rio.nodata``); coordinates and
        georeferencing of ``labels``. Each task carries only its chunk's lookup table.
    """
    data = labels.data if isinstance(labels.data, da.Array) else da.from_array(labels.data)
    if data.chunks != index.chunks:
        raise ValueError(f"labels have chunks {data.chunks}, the index {index.chunks}; "
                         "relabel the class map that was summarised")
    nodata = _nodata(labels)
    dtype = index.dtype
    if data.ndim == 3:
        from ._segments3d import relabel_volume

        out = relabel_volume(data, index, nodata)
        return _segment_array(labels, out)
    blocks = data.to_delayed(optimize_graph=False)
    task = dask.delayed(_relabel_block, pure=True)
    ny, nx = blocks.shape
    rows = [[da.from_delayed(task(blocks[i, j], index.luts[i * nx + j], nodata,
                                  index.connectivity),
                             shape=(data.chunks[0][i], data.chunks[1][j]), dtype=dtype,
                             meta=np.empty((0, 0), dtype))
             for j in range(nx)] for i in range(ny)]
    out = da.block(rows) if rows else data.astype(dtype)
    return _segment_array(labels, out)


def _segment_array(labels: xr.DataArray, out: da.Array) -> xr.DataArray:
    """Wrap the segment IDs ``out`` with the labels' dims and coordinates."""
    coords = {n: c for n, c in labels.coords.items()}
    seg = xr.DataArray(out, dims=labels.dims, coords=coords, name="segments")
    seg.attrs = {}
    return seg.rio.write_nodata(0, encoded=False)

