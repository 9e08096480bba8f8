"""Helpers shared by the feature families: band checks, value ranges, wrapping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import ConfigError

__all__ = ["band_indices", "source_dtype", "value_range", "per_pixel", "overlap", "wrap",
           "spatial_dims", "spacing"]


def spatial_dims(image: xr.DataArray) -> tuple[str, ...]:
    """Return the image's dims without ``band``: ``("y", "x")`` or ``("z", "y", "x")``."""
    return tuple(str(d) for d in image.dims if d != "band")


def spacing(image: xr.DataArray) -> tuple[float, ...]:
    """Return the voxel size per spatial dim (dims order) from ``attrs["geometry"]``.

    Without a geometry every spacing is 1.

    Raises
    ------
    ValueError
        If the geometry does not name every spatial dim of the image.
    """
    dims = spatial_dims(image)
    geometry = image.attrs.get("geometry")
    if geometry is None:
        return (1.0,) * len(dims)
    by_dim = dict(zip(geometry.dims, geometry.spacing, strict=True))
    missing = [d for d in dims if d not in by_dim]
    if missing:
        raise ValueError(f"the image's geometry has dims {tuple(geometry.dims)}, not the "
                         f"image's spatial dims {dims}")
    return tuple(float(by_dim[d]) for d in dims)


def band_indices(image: xr.DataArray, numbers: Sequence[int], family: str) -> list[int]:
    """Return 0-based indices of 1-based band numbers, checked against the image.

    Raises
    ------
    ConfigError
        If a band number does not exist in the image.
    """
    count = image.sizes["band"]
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise ConfigError(
            f"features: {family}: band {bad[0]} does not exist; expected 1-based numbers "
            f"from 1 to {count}"
        )
    return [int(n) - 1 for n in numbers]


def source_dtype(image: xr.DataArray) -> np.dtype | None:
    """Return the data type the image had on disk, or ``None`` if nothing records it.

    The feature functions see the masked float32 image; the original type survives in
    the encoding that xarray and rioxarray keep (``rasterio_dtype`` for GDAL rasters,
    ``dtype`` for Zarr stores and for arrays whose encoding the caller set).
    """
    for where in (image.attrs, image.encoding):
        for key in ("source_dtype", "rasterio_dtype", "dtype"):
            if where.get(key) is not None:
                return np.dtype(where[key])
    return None


def value_range(image: xr.DataArray, max_value: float | None, family: str) -> float:
    """Return the value that maps to 1.0: ``max_value``, else the source type's range.

    Integer types map their largest value to 1 (uint8 255, uint16 65535, int16 32767);
    float types are taken as already in [0, 1] (scikit-image's convention).

    Raises
    ------
    ConfigError
        If ``max_value`` is not given and the source data type is unknown (an in-memory
        array without ``encoding["dtype"]``).
    """
    if max_value is not None:
        return float(max_value)
    dtype = source_dtype(image)
    if dtype is None:
        raise ConfigError(
            f"features: {family}: cannot tell the input's data type to scale it; "
            f"expected {{{family}: {{max: VALUE}}}} (the value that means full scale, "
            "e.g. 255 or 10000)"
        )
    if dtype.kind in "ui":
        return float(np.iinfo(dtype).max)
    return 1.0


def per_pixel(
    image: xr.DataArray,
    func: Callable[..., np.ndarray],
    n_out: int,
    *args: Any,
    **kwargs: Any,
) -> da.Array:
    """Apply ``func(block, *args) -> (n_out, *spatial) float32`` to every block (lazy).

    Blocks are ``(band, y, x)`` or ``(band, z, y, x)``. The band axis is made one chunk
    first, so ``func`` sees every band of its pixels.
    ``block_info`` is passed through when ``func`` asks for it.
    """
    data = image.data.rechunk({0: -1})
    return data.map_blocks(
        func,
        *args,
        chunks=((n_out,),) + data.chunks[1:],
        dtype=np.float32,
        meta=np.empty((0,) * data.ndim, np.float32),
        **kwargs,
    )


def overlap(
    data: da.Array, func: Callable[..., np.ndarray], halo: int | Sequence[int], **kwargs: Any
) -> da.Array:
    """``map_overlap`` with a halo of ``halo`` pixels, same chunks back.

    ``halo`` is one radius for every axis, or one per axis of ``data`` (exact: an
    anisotropic kernel reads only its own reach along each axis).
    ``boundary="none"``: nothing is padded at the array edge, so ``func`` must treat the
    edge itself, exactly as the whole-array reference does (scipy's ``mode=``). Axes
    with one chunk need no halo; an axis shorter than the halo is made one chunk (dask
    cannot overlap it). ``map_overlap`` also merges chunks thinner than the halo; the
    result is rechunked to ``data``'s chunks so every feature shares one chunking.
    """
    halos = [int(halo)] * data.ndim if isinstance(halo, int | np.integer) else list(halo)
    if len(halos) != data.ndim:
        raise ValueError(f"expected one halo per axis of a {data.ndim}-D array, got {halo!r}")
    depth: dict[int, int] = {}
    single: dict[int, int] = {}
    for axis, (chunks, h) in enumerate(zip(data.chunks, halos, strict=True)):
        if len(chunks) > 1 and sum(chunks) <= h:
            single[axis] = -1
        depth[axis] = int(h) if len(chunks) > 1 and axis not in single else 0
    src = data.rechunk(single) if single else data
    out = src.map_overlap(func, depth=depth, boundary="none", **kwargs)
    if out.chunks != data.chunks:
        out = out.rechunk(data.chunks)
    return out


def wrap(image: xr.DataArray, data: da.Array, names: Sequence[str]) -> xr.DataArray:
    """Wrap a lazy ``(feature, *spatial)`` array with the image's spatial coordinates.

    The spatial dims are the image's own: ``(y, x)`` or ``(z, y, x)``.
    """
    coords = {k: v for k, v in image.coords.items() if "band" not in v.dims}
    coords["feature"] = list(names)
    return xr.DataArray(data, dims=("feature", *spatial_dims(image)), coords=coords)
