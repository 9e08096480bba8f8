"""Rasters through GDAL: GeoTIFF/COG, plain images, mosaics of tiles, GDAL overviews.

A list (or glob) of tiles on one grid is mosaicked lazily through a hand-written VRT
(:func:`_mosaic_vrt`); a pyramid level ``n > 0`` is GDAL's overview ``n - 1``.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable
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


#: what GDAL reads over the network (a URL rasterio hands to /vsicurl/, /vsis3/ ...)
_REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "/vsicurl",
                    "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift")


def _is_remote(target: str) -> bool:
    return target.startswith(_REMOTE_PREFIXES)


def _clear_network_cache() -> None:
    """Forget what GDAL's network file systems cached (a response cut short included).

    GDAL keeps a 206 response cut short by a dropped connection (curl's "Recv
    failure") as if complete, and caches it: a retry must not read it again.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            lib = next(line.split()[-1] for line in maps if "libgdal" in line)
        ctypes.CDLL(lib).VSICurlClearCache()
    except (OSError, StopIteration, AttributeError):  # pragma: no cover - not Linux
        pass


#: errors that another try would not mend: the file is missing or refused, or no
#: server listens (GDAL has already retried what it knows to be transient)
_PERMANENT = re.compile(r"HTTP response code: 4\d\d|No such file|does not exist|"
                        r"Could not connect|Access Denied|Forbidden", re.IGNORECASE)

#: tries after a failed remote open or read, on top of GDAL's own HTTP retries
READ_RETRIES = 2


def _with_retries(target: str, read: Callable[[], Any]) -> Any:
    """Call ``read``; for a remote ``target``, retry a failure after a cache clear.

    GDAL itself retries HTTP errors (:data:`pipeline.compute.GDAL_HTTP_RETRIES`); a
    connection dropped mid-response surfaces as a read or format error instead, which
    is retried here :data:`READ_RETRIES` times (0.5 s, then 1 s, apart by default).
    """
    from ..compute import set_gdal_http_retries  # here: compute imports config, io

    remote = _is_remote(target)
    if remote:
        set_gdal_http_retries()
    delay = float(os.environ.get("GDAL_HTTP_RETRY_DELAY", "0.5"))
    for attempt in range(READ_RETRIES + 1):
        try:
            return read()
        except RasterioError as exc:
            if not remote or attempt == READ_RETRIES or _PERMANENT.search(str(exc)):
                raise
            _clear_network_cache()
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _info(path: str, **open_options: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, **open_options) as ds:
            return {
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


def _describe(path: str, **open_options: Any) -> dict[str, Any]:
    try:
        info = _with_retries(path, lambda: _info(path, **open_options))
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
    if _is_remote(target):
        # the same blocks, each read by a task that retries a dropped connection
        import dask.array as dsa

        assert da.chunks is not None
        da = da.copy(data=dsa.map_blocks(_read_block, target, options, dtype=da.dtype,
                                         chunks=da.chunks, meta=np.empty((0, 0, 0), da.dtype)))
    da = da.drop_vars([c for c in ("band",) if c in da.coords])
    geometry = Geometry(dims=("y", "x"), shape=tuple(da.shape[1:]), kind="gdal",
                        crs=da.rio.crs, transform=da.rio.transform(),
                        extra={"levels": levels, "level": level})
    return da, geometry


def _read_block(target: str, options: dict[str, Any],
                block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """Read one block of a remote raster (a task of :func:`read_gdal`), with retries."""
    from rasterio.windows import Window

    assert block_info is not None
    (b0, b1), (y0, y1), (x0, x1) = block_info[None]["array-location"]

    def read() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(target, **options) as ds:
                return ds.read(list(range(b0 + 1, b1 + 1)),
                               window=Window(x0, y0, x1 - x0, y1 - y0))

    result: np.ndarray = _with_retries(target, read)
    return result


def _gdal_read_small(target: str, options: dict[str, Any],
                     out: tuple[int, int, int]) -> np.ndarray:
    from rasterio.enums import Resampling

    def read() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(target, **options) as ds:
                return ds.read(out_shape=out, resampling=Resampling.nearest)

    result: np.ndarray = _with_retries(target, read)
    return result


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
