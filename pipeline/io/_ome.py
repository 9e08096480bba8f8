"""Read microscopy images lazily: OME-TIFF and whole-slide TIFFs, OME-Zarr, plain Zarr.

- OME-TIFF, SVS, NDPI and other pyramidal TIFFs go through tifffile: its Zarr view of
  one pyramid level, read tile-aligned. tifffile's Zarr group carries no units: the
  physical pixel size comes from the OME-XML, the SVS description (``MPP``) or the
  TIFF resolution tags.
- OME-Zarr (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3): one dataset of ``multiscales[0]``
  with the axes, units and scale/translation of that level.

Plain Zarr stores and bare Zarr arrays are :mod:`._zarr`'s.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError, first_line
from ._geometry import Geometry, unit_name
from ._reader_common import beyond_levels, make_image, spatial_chunk, supported_dtype

__all__ = ["open_tiff", "open_ome_zarr", "is_slide_tiff", "is_ome_zarr"]

#: TIFF tags that make a file GDAL's (GeoTIFF keys, GDAL's nodata and metadata)
_GDAL_TAGS = (33550, 33922, 34264, 34735, 42112, 42113)
_SLIDE_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.tf2", ".ome.tf8", ".ome.btf", ".svs",
                   ".ndpi")


# --- TIFF through tifffile ---------------------------------------------------------------


def is_slide_tiff(path: str) -> bool:
    """Whether tifffile rather than GDAL should read this TIFF.

    OME-TIFF, SVS, NDPI, or any TIFF with more than one pyramid level, unless it has
    GeoTIFF (or GDAL nodata/metadata) tags: those keep GDAL's path.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            if any(code in page.tags for code in _GDAL_TAGS):
                return False
            if path.lower().endswith(_SLIDE_SUFFIXES):
                return True
            if tf.is_ome or tf.is_svs or tf.is_ndpi:
                return True
            return bool(tf.series) and len(tf.series[0].levels) > 1
    except Exception:  # not a TIFF tifffile reads: GDAL will say what it is
        return False


class _TiffLevel:
    """A picklable array of one pyramid level of a TIFF, read through tifffile's Zarr view.

    The file is opened on first read (in each process the graph is sent to) and kept
    open; tifffile's store serialises seeks and reads with the file handle's lock.
    """

    def __init__(self, path: str, level: int, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.level, self.shape = path, level, tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._lock = threading.Lock()
        self._array: Any = None
        self._file: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "level": self.level, "shape": self.shape,
                "dtype": self.dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        st = os.stat(self.path)
        return ("tiff", self.path, st.st_mtime_ns, st.st_size, self.level, self.shape)

    def _zarr(self) -> Any:
        with self._lock:
            if self._array is None:
                import tifffile
                import zarr

                self._file = tifffile.TiffFile(self.path)
                store = self._file.series[0].aszarr(level=self.level)
                self._array = zarr.open_array(store, mode="r")
        return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._zarr()[key])

    def close(self) -> None:
        """Close the file (reads reopen it)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = self._array = None

    def __del__(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


def _ome_pixels(tf: Any) -> dict[str, Any]:
    import tifffile

    try:
        ome = tifffile.xml2dict(tf.ome_metadata).get("OME", {})
    except Exception:  # unparsable OME-XML: no physical size
        return {}
    images = ome.get("Image", {})
    image = images[0] if isinstance(images, list) else images
    return image.get("Pixels", {}) if isinstance(image, dict) else {}


def _tiff_pixel_size(tf: Any) -> dict[str, tuple[float, str | None]]:
    """Physical size and unit of X, Y (and Z) at level 0, where the file says."""
    out: dict[str, tuple[float, str | None]] = {}
    if tf.is_ome:
        pixels = _ome_pixels(tf)
        for ax in "XYZ":
            size = pixels.get(f"PhysicalSize{ax}")
            if size:
                unit = unit_name(str(pixels.get(f"PhysicalSize{ax}Unit", "µm")))
                out[ax] = (float(size), unit)
        if out:
            return out
    page = tf.pages.first
    if tf.is_svs:
        match = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
        if match and float(match.group(1)) > 0:
            mpp = float(match.group(1))
            return {"X": (mpp, "micrometer"), "Y": (mpp, "micrometer")}
    try:
        rx, ry = page.resolution
        res_unit = int(page.resolutionunit)
    except Exception:  # no resolution tags
        return out
    per = {2: 25400.0, 3: 10000.0}.get(res_unit)  # micrometres per inch / per centimetre
    if per and rx > 0 and ry > 0:
        out = {"X": (per / rx, "micrometer"), "Y": (per / ry, "micrometer")}
    return out


def _format_of(tf: Any) -> str:
    for name in ("ome", "svs", "ndpi", "scn", "bif", "philips"):
        if getattr(tf, f"is_{name}", False):
            return name
    return "tiff"


def open_tiff(path: str | os.PathLike[str], *, chunks: int | None = None,
              level: int = 0) -> tuple[xr.DataArray, Geometry]:
    """Open one pyramid level of an OME-TIFF or whole-slide TIFF lazily.

    Parameters
    ----------
    path : path
        OME-TIFF, SVS, NDPI or pyramidal TIFF (its first series).
    chunks : int, optional
        Chunk side along every spatial axis; by default a multiple of the tiles near
        1024 (2-D) or 128 (Z stacks).
    level : int
        Pyramid level, 0 = full resolution.

    Returns
    -------
    DataArray, shape (band, y, x) or (band, z, y, x)
        Lazy; channels (C) and samples (S, e.g. RGB) are the bands.
    Geometry
        Spacing from the OME-XML, the SVS ``MPP`` or the resolution tags, times the
        level's size ratio; ``extra`` holds ``levels``, ``level``, ``level_shapes``,
        ``axes`` and ``format``.

    Raises
    ------
    InputError
        Unreadable file, a level beyond the pyramid, several timepoints, an axis that is
        neither channel, sample, Z, Y nor X.
    """
    import dask.array as da
    import tifffile

    source = os.fspath(path)
    try:
        tf = tifffile.TiffFile(source)
    except Exception as exc:
        raise InputError(f"{source}: not a readable TIFF ({first_line(exc)}); expected an "
                         "OME-TIFF or whole-slide TIFF") from None
    with tf:
        if not tf.series:
            raise InputError(f"{source}: tifffile finds no image series; expected an "
                             "OME-TIFF or whole-slide TIFF")
        series = tf.series[0]
        levels = series.levels
        if level >= len(levels):
            raise beyond_levels(source, level, len(levels))
        axes = series.axes.upper()
        shape0 = tuple(int(n) for n in levels[0].shape)
        shapes = [tuple(int(n) for n in lvl.shape) for lvl in levels]
        shape = shapes[level]
        stored = np.dtype(levels[level].dtype)
        pixel = _tiff_pixel_size(tf)
        kind = _format_of(tf)
        page = levels[level].keyframe
        tile = (int(page.tilelength), int(page.tilewidth)) if page.is_tiled else None
    dtype = supported_dtype(stored, source)

    sizes = dict(zip(axes, shape, strict=True))
    if sizes.get("T", 1) > 1:
        raise InputError(f"{source}: several timepoints (T = {sizes['T']}); expected one "
                         "timepoint (split the series first)")
    other = [a for a in axes if a not in "CSZYXT" and sizes[a] > 1]
    if other:
        raise InputError(f"{source}: axes {series.axes} of shape {shape} have "
                         f"{', '.join(other)} of size > 1; expected channels, samples, Z, "
                         "Y and X only")
    volume = sizes.get("Z", 1) > 1
    spatial_axes = ("Z", "Y", "X") if volume else ("Y", "X")
    spatial = tuple(sizes[a] for a in spatial_axes)
    side = spatial_chunk(chunks, spatial, tile if not volume else None)
    read = tuple(side if a in spatial_axes else (sizes[a] if a in "CS" else 1)
                 for a in axes)
    arr = da.from_array(_TiffLevel(source, level, shape, stored), chunks=read, lock=False,
                        fancy=False, meta=np.empty((0,) * len(axes), dtype=stored))
    keep = [a for a in axes if a in "CS" or a in spatial_axes]
    arr = arr[tuple(slice(None) if a in keep else 0 for a in axes)]
    order = [a for a in "CS" if a in keep] + list(spatial_axes)
    arr = arr.transpose([keep.index(a) for a in order])
    nb = int(np.prod([sizes[a] for a in "CS" if a in keep], dtype=int))
    arr = arr.reshape((nb, *spatial)) if len(order) != len(spatial_axes) + 1 else arr
    if dtype != stored:
        arr = arr.astype(dtype)
    arr = arr.rechunk((-1,) + (side,) * len(spatial))

    ratio = {a: shape0[axes.index(a)] / sizes[a] for a in spatial_axes}
    spacing = tuple(pixel.get(a, (1.0, None))[0] * ratio[a] for a in spatial_axes)
    units = tuple(pixel.get(a, (1.0, None))[1] for a in spatial_axes)
    affine = np.eye(4)
    for i, s in enumerate(spacing[::-1]):
        affine[i, i] = s  # x, y, z columns
    extra = {"levels": len(levels), "level": level, "format": kind, "axes": series.axes,
             "level_shapes": [tuple(s[axes.index(a)] for a in spatial_axes) for s in shapes]}
    geometry = Geometry(dims=tuple(a.lower() for a in spatial_axes), shape=spatial,
                        kind="tiff", spacing=spacing, units=units, affine=affine,
                        extra=extra)
    return make_image(arr, geometry, source), geometry


# --- OME-Zarr (NGFF) ---------------------------------------------------------------------


def _group_attrs(path: str) -> tuple[Any, dict[str, Any]]:
    import zarr

    group = zarr.open_group(path, mode="r")
    return group, dict(group.attrs.asdict())


def _multiscales(path: str) -> tuple[Any, list[dict[str, Any]], str, dict[str, Any]] | None:
    """Return the group holding the image, its multiscales, NGFF version and attributes."""
    try:
        group, attrs = _group_attrs(path)
    except Exception:  # not a group (a bare array) or not Zarr at all
        return None
    for _ in range(2):
        ome = attrs.get("ome")
        if isinstance(ome, dict) and ome.get("multiscales"):
            return group, ome["multiscales"], str(ome.get("version", "0.5")), ome
        if attrs.get("multiscales"):
            ms = attrs["multiscales"]
            return group, ms, str(ms[0].get("version", "0.4")), attrs
        layout = (isinstance(ome, dict) and "bioformats2raw.layout" in ome) or \
            "bioformats2raw.layout" in attrs
        if not layout or "0" not in group:
            return None
        group = group["0"]  # bioformats2raw: the first image
        attrs = dict(group.attrs.asdict())
    return None


def is_ome_zarr(path: str) -> bool:
    """Whether a Zarr store is an OME-Zarr (NGFF) image."""
    return _multiscales(path) is not None


_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _axes(ms: dict[str, Any], ndim: int) -> list[dict[str, Any]]:
    axes = ms.get("axes") or list("tczyx"[-ndim:])
    out = []
    for a in axes:
        a = {"name": a} if isinstance(a, str) else dict(a)
        a.setdefault("type", _AXIS_TYPES.get(str(a["name"]).lower()))
        out.append(a)
    return out


def _transform(transforms: list[dict[str, Any]] | None, n: int, scale: np.ndarray,
               shift: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply NGFF scale/translation transforms after ``index * scale + shift``."""
    for t in transforms or ():
        kind = t.get("type")
        if kind == "identity":
            continue
        values = t.get(str(kind))  # str: JSON keys (kind None is refused below)
        if kind not in ("scale", "translation") or values is None or len(values) != n:
            raise InputError(f"{where}: coordinate transformation {t}; expected 'scale' or "
                             f"'translation' with {n} values")
        if kind == "scale":
            scale, shift = scale * np.asarray(values, float), shift * np.asarray(values, float)
        else:
            shift = shift + np.asarray(values, float)
    return scale, shift


def open_ome_zarr(path: str | os.PathLike[str], *, chunks: int | None = None,
                  level: int = 0) -> tuple[xr.DataArray, Geometry]:
    """Open one level of an OME-Zarr (NGFF 0.4 or 0.5) image lazily.

    Parameters
    ----------
    path : path
        The image group (or a bioformats2raw store: its first image).
    chunks : int, optional
        Chunk side along every spatial axis; by default near 128 (volumes) or 1024
        (2-D), a multiple of the store's chunks.
    level : int
        ``multiscales[0].datasets[level]``; 0 = full resolution.

    Returns
    -------
    DataArray, shape (band, y, x) or (band, z, y, x)
        Lazy; the ``c`` axis is the bands (one band without one).
    Geometry
        Spacing, units and translation of that level's coordinate transformations
        (combined with the multiscales' own); ``extra`` holds ``ngff_version``,
        ``levels``, ``level``, ``level_shapes``, ``axes`` and ``channels`` (labels).

    Raises
    ------
    InputError
        No multiscales, a level beyond them, several timepoints, other axes of size > 1,
        fewer than 2 or more than 3 space axes.
    """
    import dask.array as da

    source = os.fspath(path)
    found = _multiscales(source)
    if found is None:
        raise InputError(f"{source}: no NGFF multiscales metadata; expected an OME-Zarr "
                         "image")
    group, multiscales, version, attrs = found
    ms = multiscales[0]
    datasets = ms.get("datasets") or []
    if level >= len(datasets):
        raise beyond_levels(source, level, len(datasets))
    try:
        arrays = [group[d["path"]] for d in datasets]
    except Exception as exc:
        raise InputError(f"{source}: a multiscales dataset is unreadable "
                         f"({first_line(exc)}); expected the arrays it lists") from None
    z = arrays[level]
    axes = _axes(ms, z.ndim)
    if len(axes) != z.ndim:
        raise InputError(f"{source}: {len(axes)} axes for an array of {z.ndim} dims; "
                         "expected one axis per dim")
    names = [str(a["name"]) for a in axes]
    types = [a.get("type") for a in axes]
    space = [i for i, t in enumerate(types) if t == "space"]
    if len(space) not in (2, 3):
        raise InputError(f"{source}: axes {names} have {len(space)} space axes; expected "
                         "2 (y, x) or 3 (z, y, x)")
    channel = [i for i, t in enumerate(types) if t == "channel"]
    for i, (name, t) in enumerate(zip(names, types, strict=True)):
        if t == "time" and z.shape[i] > 1:
            raise InputError(f"{source}: several timepoints ({name} = {z.shape[i]}); "
                             "expected one timepoint")
        if t not in ("space", "time", "channel") and z.shape[i] > 1 \
                or (t == "channel" and i != channel[0]):
            raise InputError(f"{source}: axis {name!r} of size {z.shape[i]}; expected "
                             "t, c and z, y, x axes only")

    n = z.ndim
    scale, shift = np.ones(n), np.zeros(n)
    scale, shift = _transform(datasets[level].get("coordinateTransformations"), n, scale,
                              shift, source)
    scale, shift = _transform(ms.get("coordinateTransformations"), n, scale, shift, source)

    spatial = tuple(int(z.shape[i]) for i in space)
    store = tuple(int(z.chunks[i]) for i in space)
    side = spatial_chunk(chunks, spatial, store)
    read = tuple(side if i in space else (z.shape[i] if i in channel else 1)
                 for i in range(n))
    arr = da.from_zarr(z, chunks=read)
    arr = arr[tuple(slice(None) if (i in space or i in channel) else 0 for i in range(n))]
    kept = sorted(space + channel)
    arr = arr.transpose([kept.index(i) for i in channel + space])
    if not channel:
        arr = arr[None]
    dtype = supported_dtype(z.dtype, source)
    if dtype != z.dtype:
        arr = arr.astype(dtype)
    arr = arr.rechunk((-1,) + (side,) * len(space))

    dims = ("z", "y", "x") if len(space) == 3 else ("y", "x")
    spacing = tuple(float(scale[i]) for i in space)
    units = tuple(unit_name(axes[i].get("unit")) for i in space)
    affine = np.eye(4)
    for col, i in enumerate(space[::-1]):  # x, y, z columns
        affine[col, col] = scale[i]
        affine[col, 3] = shift[i]
    omero = attrs.get("omero")
    omero = omero if isinstance(omero, dict) else {}
    extra = {
        "ngff_version": version,
        "levels": len(datasets),
        "level": level,
        "level_shapes": [tuple(int(a.shape[i]) for i in space) for a in arrays],
        "axes": names,
        "channels": [c.get("label") for c in omero.get("channels", [])],
        "name": ms.get("name"),
    }
    geometry = Geometry(dims=dims, shape=spatial, kind="ome-zarr", spacing=spacing,
                        units=units, affine=affine, extra=extra)
    return make_image(arr, geometry, source), geometry

