"""Connected segments of a volume ``(z, y, x)`` with global IDs, exact for any chunking.

The 3-D chunk, join and relabel tasks behind :func:`._segments.segment_tasks`,
:func:`._segments.resolve_segments` and :func:`._segments.relabel_segments` (which
dispatch here on ``labels.ndim``); the resolver, the merge and the table are shared.

A segment is a connected set of voxels of one class under 6-, 18- or 26-connectivity
(``scipy.ndimage.generate_binary_structure(3, 1 | 2 | 3)``); its ID is the rank of its
first voxel in C order over ``(z, y, x)``: the IDs of ``scipy.ndimage.label`` class by
class on the whole volume, renumbered by first voxel.

1. A chunk task labels its chunk (runs along ``x``, union-find, see
   :mod:`._kernels3d`) and returns its pieces' summaries (:class:`ChunkPieces3`) and
   its six outer faces of local labels and classes (:class:`ChunkFaces`).
2. A join task per chunk ``M`` pairs pieces across every boundary whose chunks'
   lowest corner is ``M``: for chunks ``M + a`` and ``M + b`` (``a``, ``b`` in
   ``{0, 1}^3`` with no axis in common, 13 pairs: 3 faces, 6 edges, 4 corners), the
   voxel pairs whose offset is in the structuring element; faces, edges and corners
   the connectivity cannot reach are skipped. It holds only the faces of its up to 8
   chunks.
3. The resolver and the relabel pass are those of 2-D, with one lookup table per
   chunk in C order.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ._bounded import BoundedIndex
from ._chunk_tasks import (
    Joins,
    SegmentTasks,
    _collect_joins,
    _no_edges,
    _pairs,
    _piece_edges,
    _sum_units,
)
from ._kernels3d import (
    RANKS,
    _contact_kernel3,
    _piece_kernel3,
    label_runs3,
    paint_volume,
)
from ._relabel import _check_lut
from ._resolve import SegmentIndex
from ._segments import _feature_blocks, _Prepared

__all__ = ["ChunkFaces", "ChunkPieces3", "relabel_volume", "volume_tasks"]


class ChunkPieces3(NamedTuple):
    """What one chunk of a volume tells the resolver about its local pieces.

    As :class:`._segments.ChunkPieces`, plus ``zmin``/``zmax`` and ``coord_sum``
    (shape (n, 3): sums of the global z, y, x indices); ``edge_len`` counts
    face-adjacent voxel pairs (0 for an edge or corner contact).
    """

    klass: np.ndarray
    first: np.ndarray
    count: np.ndarray  # type: ignore[assignment]  # shadows tuple.count, as ChunkPieces
    zmin: np.ndarray
    zmax: np.ndarray
    rmin: np.ndarray
    rmax: np.ndarray
    cmin: np.ndarray
    cmax: np.ndarray
    coord_sum: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    edge_a: np.ndarray
    edge_b: np.ndarray
    edge_len: np.ndarray


class ChunkFaces(NamedTuple):
    """Local labels and classes of a chunk's outer faces.

    ``labels[axis]`` is ``(first, last)``: the chunk's first and last layer along
    ``axis``, kept as 3-D arrays of size 1 along it (copies, not views of the chunk).
    """

    index: int  # type: ignore[assignment]  # a field shadowing tuple.index (the chunk)
    labels: tuple[tuple[np.ndarray, np.ndarray], ...]
    classes: tuple[tuple[np.ndarray, np.ndarray], ...]


def _faces(a: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    out = []
    for axis in range(a.ndim):
        first = [slice(None)] * a.ndim
        last = [slice(None)] * a.ndim
        first[axis] = slice(0, 1)
        last[axis] = slice(-1, None)
        out.append((a[tuple(first)].copy(), a[tuple(last)].copy()))
    return tuple(out)


def _chunk_task3(classes: np.ndarray, feats: np.ndarray | None, bands: np.ndarray, index: int,
                 origin: tuple[int, int, int], gh: int, gw: int, nodata: int | None,
                 rank: int, offset: np.ndarray, scale: np.ndarray, min_pixels: int | None,
                 integer_sums: bool = False) -> tuple[ChunkPieces3, ChunkFaces]:
    cls = np.ascontiguousarray(classes)
    if cls.dtype.kind == "b":
        cls = cls.astype(np.int64)
    d, h, w = cls.shape
    runs = label_runs3(cls, nodata, rank)
    if feats is None:
        flat_feats = np.empty((0, d * h, w), dtype=np.float32)
    else:
        flat_feats = np.ascontiguousarray(feats).reshape(feats.shape[0], d * h, w)
    z0, y0, x0 = origin
    stats = _piece_kernel3(runs.starts, runs.ends, runs.labels, runs.row_ptr, runs.n,
                           cls.reshape(d * h, w), flat_feats, bands, offset, scale, h,
                           z0, y0, x0, gh, gw, integer_sums)
    if min_pixels is None or runs.n == 0:
        edges = _no_edges()
    else:
        edges = _piece_edges(_contact_kernel3(runs.starts, runs.ends, runs.labels,
                                              runs.row_ptr, h, stats[2], rank, min_pixels),
                             runs.n)
    pieces = ChunkPieces3(*stats, *edges)
    if cls.size == 0:
        faces = ChunkFaces(index, (), ())
    else:
        local = paint_volume(runs, (d, h, w), np.arange(runs.n + 1, dtype=np.int32))
        faces = ChunkFaces(index, _faces(local), _faces(cls))
    return pieces, faces


def _slab(f: ChunkFaces, corner: tuple[int, ...], fixed: list[int]
          ) -> tuple[np.ndarray, np.ndarray]:
    """Return chunk ``M + corner``'s layer on the boundary along the ``fixed`` axes.

    Its last layer along an axis where it is the low chunk, else its first.
    """
    side = 0 if corner[fixed[0]] else 1
    lab, cls = f.labels[fixed[0]][side], f.classes[fixed[0]][side]
    for axis in fixed[1:]:
        sl = [slice(None)] * lab.ndim
        sl[axis] = slice(0, 1) if corner[axis] else slice(-1, None)
        lab, cls = lab[tuple(sl)], cls[tuple(sl)]
    return lab, cls


def _join_task3(faces: list[ChunkFaces | None], rank: int, with_edges: bool) -> Joins:
    """Pair the pieces across the chunk boundaries whose lowest chunk is ``M``.

    ``faces``: those of the chunks ``M + {0, 1}^3`` in ``np.ndindex(2, 2, 2)`` order
    (``faces[0]`` is ``M``; ``None``: no such chunk, or not reachable).

    For chunks ``A = M + a`` and ``B = M + b`` (no axis in common), the voxels on
    either side of the boundary along the axes of ``a | b`` are paired with every
    offset of the structuring element along the other axes; a pair is a join (one
    class) or an edge (two classes; length 1 across a face, else 0).
    """
    ndim = 3
    corners = list(np.ndindex(*(2,) * ndim))
    joins: list = []
    edges: list | None = [] if with_edges else None
    for ia, a in enumerate(corners):
        for ib in range(ia + 1, len(corners)):
            b = corners[ib]
            fa, fb = faces[ia], faces[ib]
            if fa is None or fb is None or not fa.labels or not fb.labels:
                continue
            if any(x and y for x, y in zip(a, b, strict=True)):
                continue  # not a boundary between A and B alone
            fixed = [ax for ax in range(ndim) if a[ax] or b[ax]]
            if len(fixed) > rank:
                continue
            la, ca = _slab(fa, a, fixed)
            lb, cb = _slab(fb, b, fixed)
            free = [ax for ax in range(ndim) if ax not in fixed]
            for shift in itertools.product((-1, 0, 1), repeat=len(free)):
                order = len(fixed) + sum(abs(s) for s in shift)
                if order > rank:
                    continue
                sa = [slice(None)] * ndim
                sb = [slice(None)] * ndim
                for ax, s in zip(free, shift, strict=True):
                    n = la.shape[ax]
                    sa[ax] = slice(max(0, -s), n - max(0, s))
                    sb[ax] = slice(max(0, s), n - max(0, -s))
                _pairs(la[tuple(sa)].ravel(), ca[tuple(sa)].ravel(), fa.index,
                       lb[tuple(sb)].ravel(), cb[tuple(sb)].ravel(), fb.index,
                       1 if order == 1 else 0, joins, edges)
    return _collect_joins(joins, edges)


def volume_tasks(labels: xr.DataArray, features: xr.DataArray | None, prep: _Prepared,
                 connectivity: int, min_pixels: int | None) -> SegmentTasks:
    """Build the lazy chunk and join tasks of a volume (see :func:`segment_tasks`)."""
    data, nodata, band_index, off, scl, integer_sums = prep
    rank = RANKS[connectivity]
    if data.size and any(0 in c for c in data.chunks):
        raise ValueError(f"labels have an empty chunk (chunks {data.chunks}): rechunk them")
    blocks = data.to_delayed(optimize_graph=False)
    if features is not None:
        feat_blocks = _feature_blocks(features, data.chunks)
    starts = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in data.chunks]
    nb = blocks.shape
    _, gh, gw = (int(s) for s in labels.shape)
    task = dask.delayed(_chunk_task3, pure=True, nout=2)
    pieces: list[Any] = []
    faces: dict[tuple[int, ...], Any] = {}
    for flat, idx in enumerate(np.ndindex(*nb)):
        fb = None if features is None else feat_blocks[idx]
        origin = tuple(int(s[i]) for s, i in zip(starts, idx, strict=True))
        p, f = task(blocks[idx], fb, band_index, flat, origin, gh, gw, nodata, rank, off, scl,
                    min_pixels, integer_sums)
        pieces.append(p)
        faces[idx] = f
    join = dask.delayed(_join_task3, pure=True)
    offsets = list(np.ndindex(2, 2, 2))
    joins = [join([faces.get(tuple(i + o for i, o in zip(idx, off_, strict=True)))
                   if sum(off_) <= rank else None for off_ in offsets],
                  rank, min_pixels is not None)
             for idx in np.ndindex(*nb)]
    return SegmentTasks(pieces, joins, data.chunks, connectivity, min_pixels,
                        *_sum_units(len(band_index), integer_sums, off, scl),
                        strips=[faces[idx] for idx in np.ndindex(*nb)])


def _relabel_block3(classes: np.ndarray, lut: np.ndarray, nodata: int | None, rank: int
                    ) -> np.ndarray:
    runs = label_runs3(classes, nodata, rank)
    _check_lut(runs.n, lut)
    return paint_volume(runs, np.shape(classes), lut)


def relabel_volume(data: da.Array, index: SegmentIndex | BoundedIndex, nodata: int | None
                   ) -> da.Array:
    """Segment IDs of every voxel, lazily, one task (and one lookup table) per chunk."""
    rank = RANKS[index.connectivity]
    dtype = index.dtype
    blocks = data.to_delayed(optimize_graph=False)
    task = dask.delayed(_relabel_block3, pure=True)
    nb = blocks.shape
    parts = np.empty(nb, dtype=object)
    for flat, idx in enumerate(np.ndindex(*nb)):
        shape = tuple(c[i] for c, i in zip(data.chunks, idx, strict=True))
        parts[idx] = da.from_delayed(task(blocks[idx], index.luts[flat], nodata, rank),
                                     shape=shape, dtype=dtype, meta=np.empty((0, 0, 0), dtype))
    return da.block(parts.tolist())
