"""Unreadable windows of a GDAL raster: named in the error, or read as nodata.

rioxarray's lazy array reads each Dask chunk with one ``getter`` task on the
array xarray wraps. :func:`guard_reads` re-creates the Dask array on a thin
wrapper of that same array (same chunks, same reads, no copy), whose
``__getitem__`` turns a GDAL read failure into an :class:`UnreadableWindowError`
naming the file and the pixel window, or (``input_errors: nodata``) into a block
of nodata recorded in a :class:`FaultLog`.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ConfigError, InputError, first_line

__all__ = ["FaultLog", "UnreadableWindowError", "guard_reads", "INPUT_ERRORS"]

#: values of the ``input_errors`` key
INPUT_ERRORS = ("fail", "nodata")


class UnreadableWindowError(InputError):
    """A window of the input cannot be read (a corrupt tile); the staging is kept."""

    keep_staging = True


class FaultLog:
    """The windows read as nodata, thread-safe (threaded scheduler only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[tuple[int, int, int, int], str] = {}

    def add(self, rows: tuple[int, int], cols: tuple[int, int], error: str) -> None:
        with self._lock:
            self._windows[(*rows, *cols)] = error

    def report(self) -> list[dict[str, Any]]:
        """``report.json``'s ``input_errors``: ``[{"rows", "cols", "error"}]``, sorted."""
        with self._lock:
            return [{"rows": [a, b], "cols": [c, d], "error": e}
                    for (a, b, c, d), e in sorted(self._windows.items())]

    def __reduce__(self) -> Any:  # a worker process gets a log of its own (refused there)
        return (FaultLog, ())


def _span(index: Any, size: int) -> tuple[int, int]:
    if isinstance(index, slice):
        start, stop, _ = index.indices(size)
        return start, stop
    return int(index), int(index) + 1  # pragma: no cover - dask passes slices


class _GuardedArray:
    """The array rioxarray reads from, its read failures named by window."""

    def __init__(self, array: Any, source: str, fill: float | None,
                 log: FaultLog | None) -> None:
        self.array = array
        self.source = source
        self.fill = fill
        self.log = log
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        from rasterio.errors import RasterioError

        try:
            return np.asarray(self.array[key])
        except RasterioError as exc:
            key = key if isinstance(key, tuple) else (key,)
            band = _span(key[0], self.shape[0]) if len(key) == 3 else (0, self.shape[0])
            rows = _span(key[-2], self.shape[-2])
            cols = _span(key[-1], self.shape[-1])
            if self.fill is None or self.log is None:
                raise UnreadableWindowError(
                    f"{self.source}: cannot read pixels rows {rows[0]}-{rows[1]}, cols "
                    f"{cols[0]}-{cols[1]} ({_cause(exc)}); expected a complete, readable "
                    "raster") from None
            return self._pieces(band, rows, cols, exc)

    def _pieces(self, band: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int],
                exc: BaseException) -> np.ndarray:
        """Read a window that failed in pieces of PIECE pixels, the unreadable as nodata."""
        from rasterio.errors import RasterioError

        assert self.log is not None and self.fill is not None
        out = np.empty((band[1] - band[0], rows[1] - rows[0], cols[1] - cols[0]),
                       dtype=self.dtype)
        if rows[1] - rows[0] <= PIECE and cols[1] - cols[0] <= PIECE:
            self.log.add(rows, cols, _cause(exc))
            out[...] = self.fill
            return out
        for r, r1 in _steps(rows):
            for c, c1 in _steps(cols):
                where = (slice(*band), slice(r, r1), slice(c, c1))
                target = out[:, r - rows[0]:r1 - rows[0], c - cols[0]:c1 - cols[0]]
                try:
                    target[...] = np.asarray(self.array[where])
                except RasterioError as piece_exc:
                    self.log.add((r, r1), (c, c1), _cause(piece_exc))
                    target[...] = self.fill
        return out


#: side of the pieces a failed window is read again in (input_errors: nodata), aligned
#: to multiples of it (GDAL tiles are multiples of 16, usually of 64 or more)
PIECE = 64


def _steps(span: tuple[int, int]) -> list[tuple[int, int]]:
    """Split ``span`` at the multiples of PIECE."""
    out, start = [], span[0]
    while start < span[1]:
        stop = min(span[1], (start // PIECE + 1) * PIECE)
        out.append((start, stop))
        start = stop
    return out


def _cause(exc: BaseException) -> str:
    """GDAL's reason (``TIFFReadEncodedTile() failed``), not "See previous exception"."""
    text = first_line(exc)
    previous = exc.__cause__ or exc.__context__
    if "previous exception" in text and previous is not None:
        text = first_line(previous)
    return text


def _source_array(arr: Any) -> Any:
    """Return the array a ``from_array`` Dask array reads from (None if not one)."""
    graph = arr.__dask_graph__()
    originals = [name for name in getattr(graph, "layers", {}) if name.startswith("original-")]
    if len(originals) != 1 or len(graph.layers) != 2:
        return None
    return next(iter(dict(graph.layers[originals[0]]).values()))


def _fill_value(da: xr.DataArray, source: str) -> float:
    nodata = da.rio.nodata
    if nodata is not None:
        return float(nodata)
    if np.issubdtype(da.dtype, np.floating):
        return float("nan")
    raise ConfigError(f"input_errors: nodata needs a nodata value, and {source} "
                      f"({da.dtype}) has none; set the key nodata (a value no valid pixel "
                      "has) or use input_errors: fail")


def guard_reads(da: xr.DataArray, source: str, input_errors: str = "fail"
                ) -> tuple[xr.DataArray, FaultLog | None]:
    """Name the window of a failed read of ``da`` (a rioxarray array), or read nodata.

    Returns the array (the same reads, results and speed) and, with
    ``input_errors="nodata"``, the log of the windows read as nodata.

    Raises
    ------
    ConfigError
        ``nodata`` for an integer image without a nodata value.
    """
    import dask.array as dsa

    arr = da.data
    src = _source_array(arr) if isinstance(arr, dsa.Array) else None
    if src is None:  # pragma: no cover - rioxarray changed how it chunks
        return da, None
    if input_errors == "nodata":
        fill, log = _fill_value(da, source), FaultLog()
    else:
        fill, log = None, None
    guarded = dsa.from_array(_GuardedArray(src, source, fill, log), chunks=arr.chunks,
                             name=f"guarded-{arr.name}-{input_errors}", lock=False,
                             meta=np.empty((0,) * arr.ndim, dtype=arr.dtype))
    return da.copy(data=guarded), log
