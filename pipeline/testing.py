"""Helpers shared by the test suite (and usable by anyone testing a tileseg setup)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

__all__ = ["write_raster", "assert_same_labelling", "SHARED_DATA"]

#: Real sample data shipped beside the repository (absent in a user's clone).
SHARED_DATA = Path(os.environ.get("TILESEG_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))


def write_raster(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    nodata: float | None = None,
    crs: str | None = "EPSG:32633",
    transform: Any = None,
    tile: int | None = 64,
    driver: str = "GTiff",
    **options: Any,
) -> Path:
    """Write ``data`` (band, y, x) or (y, x) as a raster and return its path."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    profile: dict[str, Any] = dict(driver=driver, width=width, height=height, count=count,
                                   dtype=data.dtype.name)
    if nodata is not None:
        profile["nodata"] = nodata
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or from_origin(300000.0, 4000000.0, 30.0, 30.0)
    if driver == "GTiff" and tile:
        profile.update(tiled=True, blockxsize=tile, blockysize=tile, compress="deflate")
    profile.update(options)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return Path(path)


def assert_same_labelling(a: np.ndarray, b: np.ndarray) -> None:
    """Assert two label maps are equal up to a one-to-one renaming of the labels."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    assert a.shape == b.shape
    pairs = np.unique(np.stack([a, b]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "a label of a maps to several of b"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "a label of b maps to several of a"
