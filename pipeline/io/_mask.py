"""Validity masks: nodata values and NaN become NaN in a float32 image."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import xarray as xr

__all__ = ["masked_float", "valid_mask"]


@numba.njit(cache=True, nogil=True)
def _mask_rows(block, nodata, use_nodata, out):  # pragma: no cover - compiled
    # One pass, row by row (numpy needs a copy, a comparison per band, a reduction and
    # a boolean scatter: about 4x the time): convert to float32, and make every band
    # NaN where any band equals nodata or is not finite.
    nb, h, w = block.shape
    bad = np.empty(w, dtype=np.bool_)
    for i in range(h):
        for j in range(w):
            bad[j] = False
        for b in range(nb):
            row = block[b, i]
            orow = out[b, i]
            for j in range(w):
                v = row[j]
                f = np.float32(v)
                orow[j] = f
                if (use_nodata and v == nodata) or not np.isfinite(f):
                    bad[j] = True
        for b in range(nb):
            orow = out[b, i]
            for j in range(w):
                if bad[j]:
                    orow[j] = np.nan


def nodata_in(dtype: np.dtype, nodata: float | None) -> tuple[Any, bool]:
    """Return the nodata value in a block's own type (as stored) and whether to use it.

    Comparing in the block's type matters: -99999 is -99999.0 in float32, not in float64.
    NaN nodata is not compared (NaN is invalid anyway).
    """
    use = nodata is not None and not np.isnan(nodata)
    return np.asarray(nodata if use else 0).astype(dtype)[()], use


def _masked_float_block(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """Mask one ``(band, y, x)`` or ``(band, z, y, x)`` block (any number of axes).

    A contiguous block is viewed as ``(band, rows, x)`` (no copy): the kernel walks
    rows, and a row of a volume is a row of one ``z`` slice.
    """
    block = np.ascontiguousarray(block)
    if block.size == 0:  # an empty block has no -1 axis to infer
        return np.empty(block.shape, dtype=np.float32)
    rows = block.reshape(block.shape[0], -1, block.shape[-1])
    out = np.empty(rows.shape, dtype=np.float32)
    _mask_rows(rows, *nodata_in(block.dtype, nodata), out)
    return out.reshape(block.shape)


def masked_float(image: xr.DataArray) -> xr.DataArray:
    """Return the image as float32 with every band NaN where any band is nodata.

    Parameters
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x)
        Any supported dtype; nodata from ``image.rio.nodata``.

    Returns
    -------
    DataArray, same shape, float32
        Lazy, same chunks, coordinates and attrs (``geometry`` included). A pixel or
        voxel is invalid when any band equals the nodata value or is NaN/inf; all its
        bands become NaN.
    """
    nodata = image.rio.nodata
    nodata = None if nodata is None else float(nodata)
    data = image.data.map_blocks(
        _masked_float_block,
        nodata,
        dtype=np.float32,
        meta=np.empty((0,) * image.ndim, np.float32),
    )
    out = image.copy(data=data)
    # colour features scale by the source dtype's range (uint8 / 255, uint16 / 65535)
    out.encoding["source_dtype"] = str(image.dtype)
    return out


def valid_mask(image: xr.DataArray) -> xr.DataArray:
    """Return a lazy boolean ``DataArray(y, x)`` or ``(z, y, x)``: True where valid.

    Reduces over ``band``, whatever the number of spatial dims.
    """
    return masked_float(image).notnull().all("band")
