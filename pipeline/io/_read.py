"""Open rasters lazily: GeoTIFF/COG, plain images, mosaics of tiles, Zarr stores."""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from ..errors import InputError

__all__ = ["open_image", "default_chunk", "fit_chunk", "SUPPORTED_DTYPES", "SomeSource"]

SomeSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_TARGET_CHUNK = 1024
#: GDAL's names of the supported data types (for hand-written VRTs).
GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "float32": "Float32", "float64": "Float64"}


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


def _expand_sources(source: SomeSource) -> list[str]:
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    if not items:
        raise InputError("input: expected a raster path, a list of tiles or a .zarr store")
    paths: list[str] = []
    for item in items:
        text = os.fspath(item)
        if any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text))
            if not matches:
                raise InputError(f"{text}: no file matches this pattern")
            paths.extend(matches)
        else:
            paths.append(text)
    for p in paths:
        if "://" not in p and not p.startswith("/vsi") and not os.path.exists(p):
            raise InputError(f"{p}: no such file; expected a raster or a .zarr store")
    return paths


def _is_zarr(path: str) -> bool:
    p = Path(path)
    return p.suffix == ".zarr" or (
        p.is_dir() and any((p / n).exists() for n in ("zarr.json", ".zgroup", ".zarray"))
    )


def _describe(path: str) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                info = {
                    "count": ds.count,
                    "dtypes": set(ds.dtypes),
                    "block": tuple(ds.block_shapes[0]),
                    "shape": (ds.height, ds.width),
                    "nodata": ds.nodata,
                    "crs": ds.crs,
                    "transform": ds.transform,
                    "res": ds.res,
                }
    except RasterioError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable raster ({first})") from None
    if len(info["dtypes"]) != 1:
        raise InputError(f"{path}: bands have different data types {sorted(info['dtypes'])}")
    dtype = next(iter(info["dtypes"]))
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"{path}: data type {dtype} is not supported; expected one of "
            + ", ".join(SUPPORTED_DTYPES)
        )
    info["dtype"] = dtype
    return info


def _mosaic_vrt(paths: list[str]) -> str:
    """Return a GDAL VRT (XML text) placing tiles that share one grid into a mosaic.

    Hand-written because rasterio has no ``gdalbuildvrt``; the VRT is read by GDAL
    lazily, window by window, so the mosaic never exists in memory.
    """
    infos = [_describe(p) for p in paths]
    first = infos[0]
    for p, info in zip(paths, infos, strict=True):
        for key in ("count", "dtype", "crs"):
            if info[key] != first[key]:
                raise InputError(
                    f"{p}: {key} {info[key]} differs from {paths[0]} ({first[key]}); "
                    "tiles of one input must share band count, data type and CRS"
                )
        t, t0 = info["transform"], first["transform"]
        if not np.allclose((t.a, t.b, t.d, t.e), (t0.a, t0.b, t0.d, t0.e)):
            raise InputError(f"{p}: pixel size differs from {paths[0]}; expected one grid")
        col, row = ~t0 @ (t.c, t.f)
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            raise InputError(f"{p}: not aligned to the pixel grid of {paths[0]}")
        info["offset"] = (int(round(row)), int(round(col)))
    r0 = min(i["offset"][0] for i in infos)
    c0 = min(i["offset"][1] for i in infos)
    height = max(i["offset"][0] + i["shape"][0] for i in infos) - r0
    width = max(i["offset"][1] + i["shape"][1] for i in infos) - c0
    origin = first["transform"] @ (c0, r0)
    t0 = first["transform"]
    gdal_type = GDAL_TYPES[first["dtype"]]
    by, bx = first["block"]
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if first["crs"] is not None:
        lines.append(f"  <SRS>{escape(first['crs'].to_wkt())}</SRS>")
    lines.append(
        f"  <GeoTransform>{origin[0]!r}, {t0.a!r}, {t0.b!r}, {origin[1]!r}, {t0.d!r}, "
        f"{t0.e!r}</GeoTransform>"
    )
    for b in range(1, first["count"] + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{b}" blockXSize="{bx}" '
                     f'blockYSize="{by}">')
        if first["nodata"] is not None:
            lines.append(f"    <NoDataValue>{first['nodata']!r}</NoDataValue>")
        for p, info in zip(paths, infos, strict=True):
            h, w = info["shape"]
            r, c = info["offset"][0] - r0, info["offset"][1] - c0
            lines += [
                "    <SimpleSource>",
                f'      <SourceFilename relativeToVRT="0">{escape(os.path.abspath(p))}'
                "</SourceFilename>",
                f"      <SourceBand>{b}</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                f'      <DstRect xOff="{c}" yOff="{r}" xSize="{w}" ySize="{h}"/>',
                "    </SimpleSource>",
            ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines)


def _open_zarr(path: str, chunks: int | None) -> xr.DataArray:
    try:
        with warnings.catch_warnings():
            # stores without consolidated metadata (ours among them) are fine to open
            warnings.simplefilter("ignore", RuntimeWarning)
            ds = xr.open_zarr(path, mask_and_scale=False, consolidated=None)
    except Exception as exc:  # zarr raises many types for a bad store
        raise InputError(f"{path}: not a readable Zarr store ({exc})") from None
    refs = {ds[v].attrs.get("grid_mapping") for v in ds.data_vars} | {"spatial_ref"}
    ds = ds.set_coords([v for v in ds.data_vars if v in refs])
    names = [v for v in ds.data_vars if ds[v].ndim >= 2]
    if len(names) == 1:
        name = names[0]
    elif "image" in names:
        name = "image"
    else:
        raise InputError(
            f"{path}: expected one data variable (or one named 'image'), found {names}"
        )
    da = ds[name]
    if da.ndim == 2:
        da = da.expand_dims("band")
    if da.ndim != 3:
        raise InputError(f"{path}: variable {name!r} has dims {da.dims}; expected (band, y, x)")
    band, ydim, xdim = da.dims
    da = da.rename({band: "band", ydim: "y", xdim: "x"})
    if str(da.dtype) not in SUPPORTED_DTYPES:
        raise InputError(f"{path}: data type {da.dtype} is not supported")
    fill = da.encoding.get("_FillValue", da.attrs.get("_FillValue", da.attrs.get("nodata")))
    da = da.rio.write_nodata(fill, encoded=False) if fill is not None else da
    da = da.chunk({"band": -1, "y": chunks, "x": chunks} if chunks else {"band": -1})
    return da


def open_image(
    source: SomeSource, *, chunks: int | None = None, nodata: float | None = None
) -> xr.DataArray:
    """Open a raster lazily as a chunked ``DataArray(band, y, x)``.

    Parameters
    ----------
    source : path, glob, or list of paths
        A GeoTIFF/COG or any GDAL raster (plain PNG/JPEG/TIFF included, with pixel
        coordinates), a glob or list of tiles on one grid (mosaicked lazily through a
        GDAL VRT), or a ``.zarr`` store with one ``(band, y, x)`` or ``(y, x)`` variable.
    chunks : int, optional
        Chunk side in pixels (>= 16), honoured as given. By default a multiple of the
        file's internal tiles near 1024 (Zarr: the store's chunks).
    nodata : float, optional
        Overrides the file's nodata value. NaN is always nodata.

    Returns
    -------
    DataArray, shape (band, y, x)
        Lazy (Dask); georeferencing through ``.rio`` (CRS, transform), nodata as
        ``.rio.nodata``, and ``attrs["source"]`` naming the input.

    Raises
    ------
    InputError
        Missing file, unreadable raster, unsupported data type, tiles not on one grid.
    """
    if chunks is not None and chunks < 16:
        raise ValueError(f"chunks: expected a chunk side >= 16 pixels, got {chunks}")
    paths = _expand_sources(source)
    label = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} tiles)"
    if len(paths) == 1 and _is_zarr(paths[0]):
        da = _open_zarr(paths[0], chunks)
    else:
        if len(paths) == 1:
            target = paths[0]
            info = _describe(target)
        else:
            target = _mosaic_vrt(paths)
            info = _describe(target)
        side = chunks or default_chunk(info["block"], info["shape"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            da = rioxarray.open_rasterio(
                target,
                chunks={"band": -1, "y": side, "x": side},
                lock=False,  # one dataset handle per read, no process-wide lock
                cache=False,
                parse_coordinates=True,
            )
        da = da.drop_vars([c for c in ("band",) if c in da.coords])
    if nodata is not None:
        da = da.rio.write_nodata(nodata, encoded=False)
    da.attrs["source"] = label
    da.name = "image"
    return da
