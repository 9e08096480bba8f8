"""Synthetic scenes with a known segmentation, for the demo, the tests and benchmarks.

The class map is a jittered-grid Voronoi mosaic: the image is cut into cells of
``cell`` pixels, each cell has a seed point and a class drawn from a hash of the cell
index, and every pixel takes the class of the nearest seed among the 3 x 3 cells
around it. Any window can be computed on its own, so scenes of any size are written
tile by tile in bounded memory. Each class has a spectral signature; Gaussian noise
is added per band; a border of ``border`` pixels is nodata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

__all__ = ["SceneInfo", "class_window", "signatures", "make_scene"]


@dataclass(frozen=True)
class SceneInfo:
    """What :func:`make_scene` wrote."""

    path: Path
    truth_path: Path | None
    size: int
    bands: int
    n_classes: int
    nodata: float
    truth_nodata: int = 255


def _cell_hash(cy: np.ndarray, cx: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Hash cell indices to uint64, deterministically (vectorised SplitMix64)."""
    with np.errstate(over="ignore"):
        x = (cy.astype(np.uint64) * np.uint64(0x1F3D5B79) + cx.astype(np.uint64)
             + np.uint64(seed * 0x9E3779B9 + salt * 0x85EBCA6B))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _unit(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def class_window(
    y0: int, x0: int, height: int, width: int, *, cell: int = 256, n_classes: int = 6,
    seed: int = 0,
) -> np.ndarray:
    """Return the true classes (uint8) of the window at ``(y0, x0)`` of a scene."""
    yy = np.arange(y0, y0 + height)[:, None].astype(np.float64)
    xx = np.arange(x0, x0 + width)[None, :].astype(np.float64)
    cy0 = int(y0 // cell)
    cx0 = int(x0 // cell)
    cy1 = int((y0 + height - 1) // cell)
    cx1 = int((x0 + width - 1) // cell)
    best = np.full((height, width), np.inf)
    out = np.zeros((height, width), dtype=np.uint8)
    for cy in range(cy0 - 1, cy1 + 2):
        for cx in range(cx0 - 1, cx1 + 2):
            a, b = np.array([cy]), np.array([cx])
            sy = (cy + 0.1 + 0.8 * _unit(_cell_hash(a, b, seed, 1)))[0] * cell
            sx = (cx + 0.1 + 0.8 * _unit(_cell_hash(a, b, seed, 2)))[0] * cell
            cls = int(_cell_hash(a, b, seed, 3)[0] % np.uint64(n_classes))
            d = (yy - sy) ** 2 + (xx - sx) ** 2
            closer = d < best
            best = np.where(closer, d, best)
            out[closer] = cls
    return out


def signatures(n_classes: int, bands: int, seed: int = 0) -> np.ndarray:
    """Per-class mean reflectance in [0.05, 0.6], shape (n_classes, bands).

    Classes are spread so that each pair differs by at least 0.12 in some band.
    """
    rng = np.random.default_rng(seed + 7919)
    while True:
        sig = rng.uniform(0.05, 0.6, size=(n_classes, bands))
        d = np.abs(sig[:, None, :] - sig[None, :, :]).max(-1)
        np.fill_diagonal(d, 1.0)
        if d.min() >= 0.12:
            return sig


def make_scene(
    path: str | os.PathLike[str],
    *,
    size: int = 4096,
    bands: int = 4,
    n_classes: int = 6,
    cell: int = 256,
    noise: float = 0.02,
    border: int = 64,
    dtype: str = "uint16",
    nodata: float | None = None,
    tile: int = 512,
    seed: int = 0,
    truth_path: str | os.PathLike[str] | None = None,
    crs: str | None = "EPSG:32633",
    driver_options: dict | None = None,
) -> SceneInfo:
    """Write a synthetic multiband scene (and optionally its truth) as tiled GeoTIFF.

    Parameters
    ----------
    path : path
        The GeoTIFF to write (tiled, DEFLATE with predictor 2).
    size : int
        Width and height in pixels.
    bands, n_classes, cell, noise :
        Band count, number of true classes, Voronoi cell size in pixels, noise standard
        deviation in reflectance units (the signatures span 0.05..0.6).
    border : int
        Width of the nodata frame.
    dtype : str
        ``uint16`` (reflectance x 10000), ``uint8`` (x 255), ``int16`` or ``float32``
        / ``float64`` (reflectance).
    nodata : float, optional
        Nodata value; by default 0 for integers and -99999 for floats.
    tile : int
        Internal tile size, and the window written at a time (memory stays bounded).
    seed : int
        Seed of the layout, the signatures and the noise.
    truth_path : path, optional
        Also write the true classes as uint8 (nodata 255).
    crs : str or None
        CRS of the scene; ``None`` writes an image without georeferencing.

    Returns
    -------
    SceneInfo
    """
    path = Path(path)
    if nodata is None:
        nodata = -99999.0 if dtype.startswith("float") else 0
    factor = {"uint16": 10000.0, "int16": 10000.0, "uint8": 255.0}.get(dtype, 1.0)
    sig = signatures(n_classes, bands, seed)
    profile = dict(
        driver="GTiff", width=size, height=size, count=bands, dtype=dtype,
        nodata=nodata, tiled=True, blockxsize=tile, blockysize=tile,
        compress="deflate", predictor=2, BIGTIFF="IF_SAFER",
    )
    if crs is not None:
        profile.update(crs=CRS.from_string(crs), transform=from_origin(500000.0, 5000000.0,
                                                                        10.0, 10.0))
    profile.update(driver_options or {})
    truth = None
    if truth_path is not None:
        tprof = dict(profile, count=1, dtype="uint8", nodata=255, predictor=2)
        truth = rasterio.open(truth_path, "w", **tprof)
    try:
        with rasterio.open(path, "w", **profile) as dst:
            for y0 in range(0, size, tile):
                for x0 in range(0, size, tile):
                    h, w = min(tile, size - y0), min(tile, size - x0)
                    cls = class_window(y0, x0, h, w, cell=cell, n_classes=n_classes,
                                       seed=seed)
                    rng = np.random.default_rng([seed, y0, x0])
                    refl = sig[cls].transpose(2, 0, 1) + rng.normal(0, noise, (bands, h, w))
                    yy = np.arange(y0, y0 + h)[:, None]
                    xx = np.arange(x0, x0 + w)[None, :]
                    frame = ((yy < border) | (yy >= size - border)
                             | (xx < border) | (xx >= size - border))
                    if np.issubdtype(np.dtype(dtype), np.integer):
                        info = np.iinfo(dtype)
                        vals = np.clip(np.rint(refl * factor), max(info.min, 1), info.max)
                    else:
                        vals = refl
                    vals = vals.astype(dtype)
                    vals[:, frame] = nodata
                    window = ((y0, y0 + h), (x0, x0 + w))
                    dst.write(vals, window=window)
                    if truth is not None:
                        t = cls.copy()
                        t[frame] = 255
                        truth.write(t, 1, window=window)
    finally:
        if truth is not None:
            truth.close()
    return SceneInfo(path=path, truth_path=Path(truth_path) if truth_path else None,
                     size=size, bands=bands, n_classes=n_classes, nodata=float(nodata))
