"""The relabel pass of the segment stage: every pixel's global segment ID, lazily.

Each chunk is labelled again and its lookup table (from :class:`~._resolve.SegmentIndex`)
applied in the same write; volumes go through :func:`._segments3d.relabel_volume`.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from ._bounded import BoundedIndex
from ._kernels import label_runs, paint_runs
from ._resolve import SegmentIndex

__all__ = ["relabel_segments"]


def _dask(data: Any) -> da.Array:
    """Return ``data`` as a Dask array (a NumPy array as one chunk)."""
    return data if isinstance(data, da.Array) else da.from_array(data)


def _nodata(labels: xr.DataArray) -> int | None:
    nodata = labels.rio.nodata
    return None if nodata is None or not np.isfinite(nodata) else int(nodata)


def _check_lut(n: int, lut: np.ndarray) -> None:
    """Refuse a lookup table made for another labelling of the chunk (``n`` pieces)."""
    if n + 1 != lut.size:
        raise RuntimeError(f"chunk has {n} segments, its lookup table {lut.size - 1}: "
                           "the class map changed between the summary and the relabel pass")


def _relabel_block(classes: np.ndarray, lut: np.ndarray, nodata: int | None,
                   connectivity: int) -> np.ndarray:
    runs = label_runs(classes, nodata, connectivity)
    _check_lut(runs.n, lut)
    out = np.empty(np.shape(classes), dtype=lut.dtype)
    paint_runs(runs.starts, runs.ends, runs.labels, runs.row_ptr, lut, out)  # labels and
    return out  # table in one write


def relabel_segments(labels: xr.DataArray, index: SegmentIndex | BoundedIndex
                     ) -> xr.DataArray:
    """Give every pixel its global segment ID, lazily, one chunk at a time.

    Parameters
    ----------
    labels : DataArray, shape (y, x) or (z, y, x)
        The class map :func:`segment_tasks` summarised (same values, same chunks).
    index : SegmentIndex or BoundedIndex
        From :func:`resolve_segments` (or :func:`merge_small_segments`), or the
        bounded resolver (each chunk's table loaded by its task).

    Returns
    -------
    DataArray, shape (y, x) or (z, y, x), uint32 (uint64 above 2**32 - 1 segments)
        Segment IDs, 0 for nodata (also in ``rio.nodata``); coordinates and
        georeferencing of ``labels``. Each task carries only its chunk's lookup table.
    """
    data = _dask(labels.data)
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

