"""Validity masks: nodata values and NaN become NaN in a float32 image."""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["masked_float", "valid_mask"]


def _masked_float_block(block: np.ndarray, nodata: float | None) -> np.ndarray:
    out = block.astype(np.float32)
    bad = np.zeros(block.shape[1:], dtype=bool)
    if nodata is not None and not np.isnan(nodata):
        bad |= (block == np.asarray(nodata).astype(block.dtype)).any(axis=0)
    if block.dtype.kind == "f":
        bad |= ~np.isfinite(out).all(axis=0)
    if bad.any():
        out[:, bad] = np.nan
    return out


def masked_float(image: xr.DataArray) -> xr.DataArray:
    """Return the image as float32 with every band NaN where any band is nodata.

    Parameters
    ----------
    image : DataArray, shape (band, y, x)
        Any supported dtype; nodata from ``image.rio.nodata``.

    Returns
    -------
    DataArray, shape (band, y, x), float32
        Lazy, same chunks and coordinates. A pixel is invalid when any band equals
        the nodata value or is NaN/inf; all its bands become NaN.
    """
    nodata = image.rio.nodata
    nodata = None if nodata is None else float(nodata)
    data = image.data.map_blocks(
        _masked_float_block,
        nodata,
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )
    out = image.copy(data=data)
    # colour features scale by the source dtype's range (uint8 / 255, uint16 / 65535)
    out.encoding["source_dtype"] = str(image.dtype)
    return out


def valid_mask(image: xr.DataArray) -> xr.DataArray:
    """Return a lazy boolean ``DataArray(y, x)``: True where the pixel is valid."""
    return masked_float(image).notnull().all("band")
