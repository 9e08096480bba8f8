"""Rasters through GDAL: GeoTIFF/COG, plain images, mosaics of tiles, GDAL overviews.

A list (or glob) of tiles on one grid is mosaicked lazily through a hand-written VRT
(:func:`_mosaic_vrt`); a pyramid level ``n > 0`` is GDAL's overview ``n - 1``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from ..errors import InputError, first_line
from ._geometry import Geometry
from ._reader_common import SUPPORTED_DTYPES, beyond_levels, default_chunk

__all__ = ["GDAL_TYPES", "gdal_overview", "read_gdal"]

#: GDAL's names of the supported data types (for hand-written VRTs).
GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def _describe(path: str, **open_options: Any) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path, **open_options) as ds:
                info = {
                    "overviews": len(ds.overviews(1)) if ds.count else 0,
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
        raise InputError(f"{path}: not a readable raster ({first_line(exc)})") from None
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


def _gdal_target(paths: list[str],
                 level: int) -> tuple[str, dict[str, Any], int, dict[str, Any]]:
    """Return what GDAL opens (path or VRT), its options for ``level``, levels, info."""
    label = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} tiles)"
    target = paths[0] if len(paths) == 1 else _mosaic_vrt(paths)
    info = _describe(target)
    levels = 1 + info["overviews"] if len(paths) == 1 else 1
    if level >= levels:
        raise beyond_levels(label, level, levels)
    if not level:
        return target, {}, levels, info
    options = {"overview_level": level - 1}
    return target, options, levels, _describe(target, **options)


def read_gdal(paths: list[str], chunks: int | None,
              level: int) -> tuple[xr.DataArray, Geometry]:
    """Open a raster (or a mosaic of tiles) through rioxarray, chunked near its tiles."""
    target, options, levels, info = _gdal_target(paths, level)
    side = chunks or default_chunk(info["block"], info["shape"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        da = rioxarray.open_rasterio(
            target,
            chunks={"band": -1, "y": side, "x": side},
            lock=False,  # one dataset handle per read, no process-wide lock
            cache=False,
            parse_coordinates=True,
            **options,
        )
    # a list or Dataset only for subdatasets: _describe refused a raster without bands
    assert isinstance(da, xr.DataArray)
    da = da.drop_vars([c for c in ("band",) if c in da.coords])
    geometry = Geometry(dims=("y", "x"), shape=tuple(da.shape[1:]), kind="gdal",
                        crs=da.rio.crs, transform=da.rio.transform(),
                        extra={"levels": levels, "level": level})
    return da, geometry


def _gdal_read_small(target: str, options: dict[str, Any],
                     out: tuple[int, int, int]) -> np.ndarray:
    from rasterio.enums import Resampling

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(target, **options) as ds:
            return ds.read(out_shape=out, resampling=Resampling.nearest)


def gdal_overview(paths: list[str], max_side: int,
                  level: int) -> tuple[Any, tuple[float, ...]]:
    """:func:`~._read.read_overview` of a GDAL raster: one decimated read, its factors."""
    import dask
    import dask.array as dsa

    target, options, _, _ = _gdal_target(paths, level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(target, **options) as ds:
            h, w, count, dtype = ds.height, ds.width, ds.count, ds.dtypes[0]
    stride = max(1, max(h, w) // max_side)
    out = (count, -(-h // stride), -(-w // stride))
    # one task: GDAL reads the decimated raster from its overviews when it has them
    small = dsa.from_delayed(dask.delayed(_gdal_read_small, pure=True)(target, options, out),
                             shape=out, dtype=dtype)
    return small, (h / out[1], w / out[2])
