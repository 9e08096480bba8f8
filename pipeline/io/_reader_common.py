"""What every reader shares: default chunk sides, supported data types, pyramid levels.

The GDAL reader (:mod:`._gdal`), plain Zarr (:mod:`._zarr`), NIfTI (:mod:`._nifti`),
DICOM (:mod:`._dicom`) and the microscopy readers (:mod:`._ome`) choose their chunks,
convert their data types, refuse missing pyramid levels and wrap their lazy arrays
with these, so every input comes out the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from ..errors import InputError
from ._geometry import Geometry

__all__ = [
    "MIN_FIT_CHUNK",
    "SUPPORTED_DTYPES",
    "VOLUME_CHUNK",
    "beyond_levels",
    "default_chunk",
    "fit_chunk",
    "make_image",
    "rescale",
    "scaled_dtype",
    "single_level",
    "spatial_chunk",
    "supported_dtype",
    "volume_chunk",
]

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_TARGET_CHUNK = 1024


def default_chunk(block_shape: tuple[int, int], shape: tuple[int, int]) -> int:
    """Return a square chunk side that is a multiple of the file's internal tiles.

    Parameters
    ----------
    block_shape : (int, int)
        The file's internal block (tile or strip) shape, (rows, columns).
    shape : (int, int)
        The raster's (height, width).

    Returns
    -------
    int
        About 1024 pixels, a multiple of the tile side when the file is tiled
        (for striped files, where blocks span the whole width, simply 1024).
    """
    by, bx = block_shape
    height, width = shape
    if by == bx and 16 <= by <= _TARGET_CHUNK:  # square tiles
        side = max(1, _TARGET_CHUNK // by) * by
    else:
        side = _TARGET_CHUNK
    return max(16, min(side, max(height, width)))


#: the smallest side :func:`fit_chunk` shrinks a chunk to (smaller ones cost more in
#: task overhead and tile re-reads than they save in memory)
MIN_FIT_CHUNK = 256


def fit_chunk(side: int, bytes_per_pixel: float, budget: float) -> int:
    """Return ``side``, halved until a chunk's working set fits ``budget`` bytes.

    Parameters
    ----------
    side : int
        The chunk side chosen from the file's tiles (:func:`default_chunk`).
    bytes_per_pixel : float
        The working set of one pixel while a chunk is processed (its bands as read
        and as float32, its features, its labels).
    budget : float
        The bytes one chunk may take: a worker thread's share of the memory over the
        number of chunks a thread may hold at once.

    Returns
    -------
    int
        ``side`` itself when it fits; else ``side`` halved (a multiple of the file's
        tiles as long as it stays one of ``side``'s halvings), down to
        :data:`MIN_FIT_CHUNK` at least: a hyperspectral image of 200 bands takes
        ~2.8 KB a pixel, 3 GB a 1024^2 chunk.
    """
    floor = min(side, MIN_FIT_CHUNK)
    while side > floor and side * side * bytes_per_pixel > budget:
        side = max(floor, side // 2)
    return side


# --- chunks of volumes, data types, levels, the image ------------------------------

#: default chunk side of a volume, per spatial axis
VOLUME_CHUNK = 128

#: data types a reader converts to a supported one (losslessly where one exists)
_WIDER_DTYPES = {"bool": "uint8", "int8": "int16", "float16": "float32",
                 "int64": "float64", "uint64": "float64"}


def volume_chunk(store_side: int | None, shape: Sequence[int]) -> int:
    """Default chunk side of a volume: 128, capped by the shape.

    A multiple of the store's own chunk side when that is smaller (so no stored chunk is
    read twice), the store's side when it is larger.
    """
    side = VOLUME_CHUNK
    if store_side and store_side > 0:
        side = max(1, VOLUME_CHUNK // store_side) * store_side
    return max(1, min(side, max(shape)))


def spatial_chunk(chunks: int | None, shape: Sequence[int],
                  block: Sequence[int] | None = None) -> int:
    """Return the chunk side of every spatial axis: ``chunks`` as given, else a default.

    Volumes: :func:`volume_chunk`; 2-D images: :func:`default_chunk` (a multiple of
    the file's tiles ``block`` near 1024).
    """
    if chunks:
        return int(chunks)
    if len(shape) == 3:
        sides = {int(b) for b in block} if block else set()
        return volume_chunk(sides.pop() if len(sides) == 1 else None, shape)
    by, bx = block if block else (1, shape[-1])
    return default_chunk((int(by), int(bx)), (int(shape[0]), int(shape[1])))


def supported_dtype(dtype: Any, path: str) -> np.dtype:
    """Return the supported data type that holds ``dtype`` (int8 -> int16, ...).

    Raises
    ------
    InputError
        Complex, string or other non-numeric types.
    """
    dt = np.dtype(dtype)
    name = np.dtype(dt.str.replace(">", "<").replace("|", "<")).name if dt.kind in "biuf" \
        else dt.name
    name = _WIDER_DTYPES.get(name, name)
    if name not in SUPPORTED_DTYPES:
        raise InputError(f"{path}: data type {dt.name} is not supported; expected one of "
                         + ", ".join(SUPPORTED_DTYPES))
    return np.dtype(name)


def scaled_dtype(dtype: Any, slope: float, inter: float,
                 value_range: tuple[float, float] | None = None) -> np.dtype:
    """Return the data type of ``stored * slope + inter``.

    The stored type itself when there is no scaling; an integer type wide enough for
    ``value_range`` (default: the stored type's range) shifted by ``inter`` when the
    slope is 1 and the intercept integral; else float32 (float64 for float64 data).
    """
    dt = np.dtype(dtype)
    if slope == 1 and inter == 0:
        return dt
    if slope == 1 and float(inter).is_integer():
        if dt.kind == "f":
            return dt
        info = np.iinfo(dt)
        lo, hi = value_range if value_range is not None else (info.min, info.max)
        lo, hi = lo + inter, hi + inter
        for name in ("uint8", "int16", "uint16", "int32", "uint32"):
            ti = np.iinfo(name)
            if ti.min <= lo and hi <= ti.max:
                return np.dtype(name)
        return np.dtype("float64")
    return np.dtype("float64") if dt == np.float64 else np.dtype("float32")


def rescale(block: np.ndarray, slope: float, inter: float, dtype: Any) -> np.ndarray:
    """``block * slope + inter`` as ``dtype`` (one chunk; exact for integer results)."""
    dtype = np.dtype(dtype)
    if slope == 1 and inter == 0:
        return np.asarray(block).astype(dtype, copy=False)
    if dtype.kind in "iu":  # slope 1, integral intercept: exact in the wider type
        return np.asarray(block).astype(dtype) + dtype.type(int(inter))
    out = np.asarray(block).astype(dtype)
    out *= dtype.type(slope)
    out += dtype.type(inter)
    return out


def single_level(path: str, level: int) -> None:
    """Refuse a pyramid level > 0 on a format without pyramids."""
    if level:
        raise InputError(f"{path}: input_level {level} asks for a pyramid level but the "
                         "file has one level only; expected input_level 0")


def beyond_levels(path: str, level: int, n_levels: int) -> InputError:
    """Return the error for a pyramid level the file does not have."""
    return InputError(f"{path}: input_level {level} is beyond the {n_levels} pyramid "
                      f"level(s) of the file; expected input_level 0 to {n_levels - 1}")


def make_image(data: Any, geometry: Geometry, source: str,
               nodata: float | None = None) -> xr.DataArray:
    """Wrap a Dask array ``(band, [z,] y, x)`` as the readers' DataArray."""
    dims = ("band", *geometry.dims)
    arr = xr.DataArray(data, dims=dims, name="image")
    if nodata is not None:
        arr = arr.rio.write_nodata(nodata, encoded=False)
    arr.attrs["source"] = source
    arr.attrs["geometry"] = geometry
    return arr

