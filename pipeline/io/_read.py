"""Open images lazily, choosing the reader by the input's kind.

GeoTIFF/COG, plain images and mosaics of tiles go through GDAL; NIfTI, DICOM series,
OME-TIFF and whole-slide TIFFs, OME-Zarr and plain Zarr stores through their own
readers (:mod:`._nifti`, :mod:`._dicom`, :mod:`._ome`). Every reader returns the lazy
array and its :class:`~._geometry.Geometry`.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from ..errors import InputError
from ._geometry import Geometry

__all__ = ["open_image", "open_with_geometry", "read_overview", "default_chunk", "fit_chunk",
           "SUPPORTED_DTYPES", "SomeSource"]

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


# --- helpers shared by the readers (_nifti, _dicom, _ome) ------------------------------

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


# --- GDAL and plain Zarr ---------------------------------------------------------------


def _open_zarr(path: str, chunks: int | None) -> tuple[xr.DataArray, Geometry]:
    try:
        with warnings.catch_warnings():
            # stores without consolidated metadata (ours among them) are fine to open
            warnings.simplefilter("ignore", RuntimeWarning)
            ds = xr.open_zarr(path, mask_and_scale=False, consolidated=None)
    except Exception as exc:  # zarr raises many types for a bad store
        # a bare array, or arrays without xarray's dimension names
        from ._ome import open_zarr_array

        return open_zarr_array(path, chunks=chunks, error=str(exc))
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
    volume = da.ndim == 4 or (da.ndim == 3 and da.dims[0] == "z")
    if da.ndim == 2 or (da.ndim == 3 and volume):
        da = da.expand_dims("band")
    if da.ndim not in (3, 4):
        raise InputError(f"{path}: variable {name!r} has dims {da.dims}; expected (band, y, x) "
                         "or (band, z, y, x)")
    new = ("band", "z", "y", "x") if volume else ("band", "y", "x")
    da = da.rename({old: n for old, n in zip(da.dims, new, strict=True) if old != n})
    if str(da.dtype) not in SUPPORTED_DTYPES:
        da = da.astype(supported_dtype(da.dtype, path))
    fill = da.encoding.get("_FillValue", da.attrs.get("_FillValue", da.attrs.get("nodata")))
    da = da.rio.write_nodata(fill, encoded=False) if fill is not None else da
    if volume:
        store = tuple(da.encoding.get("chunks") or ())[-3:]  # the stored (z, y, x) chunks
        side = spatial_chunk(chunks, da.shape[1:], store or None)
        da = da.chunk({"band": -1, "z": side, "y": side, "x": side})
        geometry = Geometry(dims=("z", "y", "x"), shape=tuple(da.shape[1:]), kind="zarr",
                            spacing=(1.0, 1.0, 1.0), affine=np.eye(4))
    else:
        da = da.chunk({"band": -1, "y": chunks, "x": chunks} if chunks else {"band": -1})
        crs = da.rio.crs
        transform = None
        if crs is not None or ("x" in da.coords and "y" in da.coords):
            try:
                transform = da.rio.transform()
            except Exception:  # coordinates rioxarray cannot turn into a transform
                transform = None
        geometry = Geometry(dims=("y", "x"), shape=tuple(da.shape[1:]), kind="zarr",
                            crs=crs, transform=transform)
    return da, geometry


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


def _read_gdal(paths: list[str], chunks: int | None,
               level: int) -> tuple[xr.DataArray, Geometry]:
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


# --- the registry: which reader opens which input --------------------------------------

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf2", ".tf8", ".scn", ".bif")


def _local(path: str) -> bool:
    return "://" not in path and not path.startswith("/vsi")


def _has_dicom_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _accepts_dicom(paths: list[str]) -> bool:
    first = paths[0]
    if not _local(first):
        return False
    if len(paths) == 1 and os.path.isdir(first):
        return not _is_zarr(first)
    return first.lower().endswith(_DICOM_SUFFIXES) or _has_dicom_magic(first)


def _accepts_nifti(paths: list[str]) -> bool:
    return len(paths) == 1 and paths[0].lower().endswith((".nii", ".nii.gz"))


def _accepts_ome_zarr(paths: list[str]) -> bool:
    if len(paths) != 1 or not _is_zarr(paths[0]):
        return False
    from ._ome import is_ome_zarr

    return is_ome_zarr(paths[0])


def _accepts_zarr(paths: list[str]) -> bool:
    return len(paths) == 1 and _is_zarr(paths[0])


def _accepts_tifffile(paths: list[str]) -> bool:
    if len(paths) != 1 or not _local(paths[0]) or not paths[0].lower().endswith(_TIFF_SUFFIXES):
        return False
    from ._ome import is_slide_tiff

    return is_slide_tiff(paths[0])


def _read_dicom(paths: list[str], chunks: int | None,
                level: int) -> tuple[xr.DataArray, Geometry]:
    from ._dicom import open_dicom

    return open_dicom(paths[0] if len(paths) == 1 else paths, chunks=chunks, level=level)


def _read_nifti(paths: list[str], chunks: int | None,
                level: int) -> tuple[xr.DataArray, Geometry]:
    from ._nifti import open_nifti

    return open_nifti(paths[0], chunks=chunks, level=level)


def _read_ome_zarr(paths: list[str], chunks: int | None,
                   level: int) -> tuple[xr.DataArray, Geometry]:
    from ._ome import open_ome_zarr

    return open_ome_zarr(paths[0], chunks=chunks, level=level)


def _read_zarr(paths: list[str], chunks: int | None,
               level: int) -> tuple[xr.DataArray, Geometry]:
    single_level(paths[0], level)
    return _open_zarr(paths[0], chunks)


def _read_tifffile(paths: list[str], chunks: int | None,
                   level: int) -> tuple[xr.DataArray, Geometry]:
    from ._ome import open_tiff

    return open_tiff(paths[0], chunks=chunks, level=level)


@dataclass(frozen=True)
class _Reader:
    kind: str
    accepts: Callable[[list[str]], bool]
    open: Callable[[list[str], int | None, int], tuple[xr.DataArray, Geometry]]


#: tried in order; the first that accepts the (expanded) input opens it; GDAL takes the rest
READERS: tuple[_Reader, ...] = (
    _Reader("dicom", _accepts_dicom, _read_dicom),
    _Reader("nifti", _accepts_nifti, _read_nifti),
    _Reader("ome-zarr", _accepts_ome_zarr, _read_ome_zarr),
    _Reader("zarr", _accepts_zarr, _read_zarr),
    _Reader("tiff", _accepts_tifffile, _read_tifffile),
    _Reader("gdal", lambda paths: True, _read_gdal),
)


def _reader_for(paths: list[str]) -> _Reader:
    return next(r for r in READERS if r.accepts(paths))


def _check_args(chunks: int | None, level: int) -> None:
    if chunks is not None and chunks < 16:
        raise ValueError(f"chunks: expected a chunk side >= 16 pixels, got {chunks}")
    if level < 0:
        raise InputError(f"input_level: expected a pyramid level >= 0, got {level}")


def open_with_geometry(
    source: SomeSource, *, chunks: int | None = None, nodata: float | None = None,
    level: int = 0,
) -> tuple[xr.DataArray, Geometry]:
    """Open an image lazily with the reader its kind needs; return it and its geometry.

    Parameters
    ----------
    source : path, glob, or list of paths
        A GeoTIFF/COG or any GDAL raster, a glob or list of tiles on one grid, a
        ``.zarr`` store (plain or OME-Zarr NGFF 0.4/0.5), a NIfTI-1/2 file
        (``.nii``, ``.nii.gz``), a DICOM series (a directory, or a list of files),
        an OME-TIFF or whole-slide TIFF (SVS, NDPI, pyramidal TIFF).
    chunks : int, optional
        Chunk side in pixels/voxels (>= 16) along every spatial axis, honoured as
        given. By default a multiple of the file's tiles near 1024 (2-D) or 128
        (volumes); plain 2-D Zarr keeps the store's chunks.
    nodata : float, optional
        Overrides the file's nodata value.
    level : int
        Pyramid level (0 = full resolution) of OME-TIFF, whole-slide TIFF and
        OME-Zarr inputs, or GDAL overview (``level - 1``); other formats have one.

    Returns
    -------
    DataArray, shape (band, y, x) or (band, z, y, x)
        Lazy (Dask), the band axis one chunk; ``attrs["source"]`` names the input and
        ``attrs["geometry"]`` holds the geometry.
    Geometry
        Where the pixels are (CRS and transform, or affine, spacing and units).

    Raises
    ------
    InputError
        Missing or unreadable input, unsupported data type, a level the file lacks,
        inconsistent series (DICOM) or time series (several timepoints).
    """
    _check_args(chunks, level)
    paths = _expand_sources(source)
    reader = _reader_for(paths)
    parts = "tiles" if reader.kind == "gdal" else "files"
    label = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} {parts})"
    da, geometry = reader.open(paths, chunks, level)
    if nodata is not None:
        da = da.rio.write_nodata(nodata, encoded=False)
    da.attrs["source"] = label
    da.attrs["geometry"] = geometry
    da.name = "image"
    return da, geometry


def open_image(
    source: SomeSource, *, chunks: int | None = None, nodata: float | None = None,
    level: int = 0,
) -> xr.DataArray:
    """Open a raster or volume lazily as a chunked ``DataArray(band, [z,] y, x)``.

    Parameters
    ----------
    source : path, glob, or list of paths
        A GeoTIFF/COG or any GDAL raster (plain PNG/JPEG/TIFF included, with pixel
        coordinates), a glob or list of tiles on one grid (mosaicked lazily through a
        GDAL VRT), a ``.zarr`` store with one ``(band, y, x)``, ``(y, x)`` or
        ``(band, z, y, x)`` variable, or any input :func:`open_with_geometry` reads
        (NIfTI, DICOM, OME-TIFF, whole-slide TIFF, OME-Zarr).
    chunks : int, optional
        Chunk side in pixels (>= 16), honoured as given. By default a multiple of the
        file's internal tiles near 1024 (Zarr: the store's chunks; volumes: 128).
    nodata : float, optional
        Overrides the file's nodata value. NaN is always nodata.
    level : int
        Pyramid level (see :func:`open_with_geometry`).

    Returns
    -------
    DataArray, shape (band, y, x) or (band, z, y, x)
        Lazy (Dask); georeferencing through ``.rio`` (CRS, transform), nodata as
        ``.rio.nodata``, ``attrs["source"]`` naming the input, and (all but GDAL
        rasters) ``attrs["geometry"]``.

    Raises
    ------
    InputError
        Missing file, unreadable raster, unsupported data type, tiles not on one grid.
    """
    da, geometry = open_with_geometry(source, chunks=chunks, nodata=nodata, level=level)
    if geometry.kind == "gdal":
        # GDAL rasters keep their historical attrs: a Geometry is no Zarr/netCDF
        # attribute, and these images are written back with xarray (their geometry is
        # all in .rio); open_with_geometry returns it
        del da.attrs["geometry"]
    return da


# --- small in-memory overviews ----------------------------------------------------------


def read_overview(
    source: SomeSource, max_side: int = 1024, *, level: int = 0,
) -> tuple[Any, tuple[float, ...]]:
    """Define a small copy of an image, from its pyramid when it has one (lazily).

    Parameters
    ----------
    source : path, glob, or list of paths
        Any input :func:`open_with_geometry` reads.
    max_side : int
        The overview's long spatial side is about this (at least this, less than
        twice it) unless the image is smaller.
    level : int
        The pyramid level the factors refer to (the one the run reads).

    Returns
    -------
    dask.array.Array, shape (band, y, x) or (band, z, y, x)
        Lazy (the caller computes it: it is small): from the coarsest pyramid level
        (or GDAL overview) whose long side is still >= ``max_side``, decimated further
        by an integer stride; images without a pyramid are read strided (only the
        chunks they need are read, but each whole).
    tuple of float
        The decimation factor of each spatial axis relative to level ``level``: pixel
        ``i`` of the overview is pixel ``i * factor`` there.
    """
    if max_side < 1:
        raise ValueError(f"max_side: expected a positive side, got {max_side}")
    _check_args(None, level)
    paths = _expand_sources(source)
    reader = _reader_for(paths)
    if reader.kind == "gdal":
        return _gdal_overview(paths, max_side, level)
    da, geometry = reader.open(paths, None, level)
    base = geometry.shape
    levels = int(geometry.extra.get("levels", 1))
    shapes = geometry.extra.get("level_shapes")
    chosen = level
    for lvl in range(level + 1, levels):
        shape = tuple(shapes[lvl]) if shapes else reader.open(paths, None, lvl)[1].shape
        if max(shape) < max_side:
            break
        chosen = lvl
    if chosen != level:
        da, geometry = reader.open(paths, None, chosen)
    stride = max(1, max(geometry.shape) // max_side)
    small = da.data[(slice(None),) + (slice(None, None, stride),) * geometry.ndim]
    factors = tuple(float(b) / s * stride for b, s in zip(base, geometry.shape, strict=True))
    return small, factors


def _gdal_read_small(target: str, options: dict[str, Any],
                     out: tuple[int, int, int]) -> np.ndarray:
    from rasterio.enums import Resampling

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(target, **options) as ds:
            return ds.read(out_shape=out, resampling=Resampling.nearest)


def _gdal_overview(paths: list[str], max_side: int,
                   level: int) -> tuple[Any, tuple[float, ...]]:
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
