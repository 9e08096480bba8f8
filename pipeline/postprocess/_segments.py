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
per-piece summaries (the size of the segment table) come back to the caller. The chunk
and join tasks are in :mod:`._chunk_tasks`, the resolver in :mod:`._resolve`, the
relabel pass in :mod:`._relabel`; this module checks the arguments and builds the graph.

Volumes ``(z, y, x)`` (6-, 18- or 26-connectivity) take the same three steps, with the
3-D chunk and join tasks of :mod:`._segments3d`; the functions here dispatch on
``labels.ndim``.
"""


from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from ._chunk_tasks import SegmentTasks, _chunk_task, _join_task, _sum_units
from ._kernels import FIXED_POINT_BITS
from ._relabel import _dask, _nodata, relabel_segments
from ._resolve import (
    SegmentIndex,
    SegmentStats,
    fixed_to_float,
    resolve_segments,
    segment_dtype,
)

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

#: raw band types whose float32 values are their integers: their segments sum the
#: integers themselves (exact in int64 below 2**47 pixels), not fixed-point values
_INTEGER_SUM_DTYPES = frozenset(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16"))


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
    data = _dask(labels.data)
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
        feat_blocks = _feature_blocks(features, data.chunks)
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
                        *_sum_units(len(band_index), integer_sums, off, scl),
                        strips=[strips[i, j] for i in range(ny) for j in range(nx)])


def _feature_blocks(features: xr.DataArray, chunks: tuple[tuple[int, ...], ...]) -> Any:
    """Return the feature blocks (every feature in each) over the class map's ``chunks``."""
    fdata = _dask(features.data).rechunk((-1,) + chunks)
    return fdata.to_delayed(optimize_graph=False)[0]
