"""Open images lazily, choosing the reader by the input's kind.

GeoTIFF/COG, plain images and mosaics of tiles go through GDAL (:mod:`._gdal`); NIfTI,
DICOM series, OME-TIFF and whole-slide TIFFs, OME-Zarr and plain Zarr stores through
their own readers (:mod:`._nifti`, :mod:`._dicom`, :mod:`._ome`, :mod:`._zarr`). Every
reader returns the lazy array and its :class:`~._geometry.Geometry`. This module holds
the registry (:data:`READERS`) that picks one, and the public entry points.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from .._secrets import redact
from ..errors import InputError
from ._faults import guard_reads
from ._gdal import GDAL_TYPES, gdal_overview, read_gdal
from ._geometry import Geometry
from ._reader_common import SUPPORTED_DTYPES, default_chunk, fit_chunk, single_level
from ._zarr import open_zarr

__all__ = ["open_image", "open_with_geometry", "read_overview", "default_chunk", "fit_chunk",
           "SUPPORTED_DTYPES", "SomeSource", "READERS", "GDAL_TYPES"]

SomeSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def _expand_sources(source: SomeSource) -> list[str]:
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    if not items:
        raise InputError("input: expected a raster path, a list of tiles or a .zarr store")
    paths: list[str] = []
    for item in items:
        text = os.fspath(item)
        if "://" not in text and any(ch in text for ch in "*?["):  # URLs: ? is a query
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
    return open_zarr(paths[0], chunks)


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
    _Reader("gdal", lambda paths: True, read_gdal),
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
    level: int = 0, input_errors: str = "fail",
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
    input_errors : {"fail", "nodata"}
        A GDAL raster's chunk that cannot be read (a corrupt tile): raise an
        :class:`~pipeline.io._faults.UnreadableWindowError` naming the file and the
        window when computed, or read it as nodata (all bands), listed in the
        :class:`~pipeline.io._faults.FaultLog` ``attrs["input_faults"]``.

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
    label = redact(label)  # a signed URL's signature, a URL's password
    da, geometry = reader.open(paths, chunks, level)
    if nodata is not None:
        da = da.rio.write_nodata(nodata, encoded=False)
    faults = None
    if reader.kind == "gdal":
        da, faults = guard_reads(da, label, input_errors)
    da.attrs["source"] = label
    if faults is not None:
        da.attrs["input_faults"] = faults
    da.attrs["geometry"] = geometry
    da.name = "image"
    return da, geometry


def open_image(
    source: SomeSource, *, chunks: int | None = None, nodata: float | None = None,
    level: int = 0, input_errors: str = "fail",
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
    input_errors : {"fail", "nodata"}
        What an unreadable chunk of a GDAL raster does (see :func:`open_with_geometry`).

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
    da, geometry = open_with_geometry(source, chunks=chunks, nodata=nodata, level=level,
                                      input_errors=input_errors)
    da.attrs.pop("input_faults", None)
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
        return gdal_overview(paths, max_side, level)
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
