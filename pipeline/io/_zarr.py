"""Plain Zarr stores: an xarray dataset of one image variable, or a bare Zarr array.

OME-Zarr (NGFF) multiscale images are :mod:`._ome`'s.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from ..errors import InputError, first_line
from ._geometry import Geometry
from ._reader_common import SUPPORTED_DTYPES, make_image, spatial_chunk, supported_dtype

__all__ = ["open_zarr", "open_zarr_array"]


def open_zarr(path: str, chunks: int | None) -> tuple[xr.DataArray, Geometry]:
    """Open a plain Zarr store with xarray, else as a bare array (:func:`open_zarr_array`)."""
    try:
        with warnings.catch_warnings():
            # stores without consolidated metadata (ours among them) are fine to open
            warnings.simplefilter("ignore", RuntimeWarning)
            ds = xr.open_zarr(path, mask_and_scale=False, consolidated=None)
    except Exception as exc:  # zarr raises many types for a bad store
        # a bare array, or arrays without xarray's dimension names
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


_BAND_NAMES = ("band", "bands", "c", "channel", "channels")
_ASSUMED = {2: ("y", "x"), 3: ("z", "y", "x"), 4: ("band", "z", "y", "x")}


def open_zarr_array(path: str | os.PathLike[str], *, chunks: int | None = None,
                    error: str | None = None) -> tuple[xr.DataArray, Geometry]:
    """Open a bare Zarr array (or a group of one array) lazily, as an image or volume.

    Dims come from the array's ``dimension_names`` (Zarr v3) or xarray's
    ``_ARRAY_DIMENSIONS`` (v2), else are assumed ``(y, x)``, ``(z, y, x)`` or
    ``(band, z, y, x)`` by the number of dims. Voxels are of unit size.

    Parameters
    ----------
    path : path
        The store.
    chunks : int, optional
        Chunk side along every spatial axis; by default near 128 (volumes), a
        multiple of the store's chunks, or the store's chunks (2-D).
    error : str, optional
        Why xarray could not open the store (for the message when zarr cannot either).

    Raises
    ------
    InputError
        Not a Zarr store, a group of several arrays, unexpected dims.
    """
    import dask.array as da
    import zarr

    source = os.fspath(path)
    try:
        node = zarr.open(source, mode="r")
    except Exception as exc:
        raise InputError(f"{source}: not a readable Zarr store ({error or first_line(exc)})"
                         ) from None
    if isinstance(node, zarr.Group):
        arrays = [a for _, a in node.arrays() if a.ndim >= 2]
        if len(arrays) != 1:
            raise InputError(f"{source}: a Zarr group of {len(arrays)} arrays and no "
                             "variables xarray reads; expected one array (or one 'image' "
                             "variable)")
        node = arrays[0]
    names = getattr(node.metadata, "dimension_names", None) or \
        node.attrs.get("_ARRAY_DIMENSIONS")
    dims = (tuple(str(n).lower() if n is not None else "" for n in names)
            if names and isinstance(names, list | tuple) else None)
    if dims is not None:
        dims = tuple("band" if d in _BAND_NAMES else d for d in dims)
    if dims is None or set(dims) - {"band", "z", "y", "x"} or len(set(dims)) != len(dims):
        if node.ndim not in _ASSUMED:
            raise InputError(f"{source}: a Zarr array of shape {node.shape}; expected "
                             "(y, x), (z, y, x) or (band, z, y, x)")
        dims = _ASSUMED[node.ndim]
    if not {"y", "x"} <= set(dims):
        raise InputError(f"{source}: array dims {dims}; expected y and x among them")
    spatial_dims = tuple(d for d in ("z", "y", "x") if d in dims)
    arr = da.from_zarr(node)
    arr = arr.transpose([dims.index(d) for d in ("band", *spatial_dims) if d in dims])
    if "band" not in dims:
        arr = arr[None]
    dtype = supported_dtype(node.dtype, source)
    if dtype != node.dtype:
        arr = arr.astype(dtype)
    spatial = tuple(int(n) for n in arr.shape[1:])
    store = tuple(int(node.chunks[dims.index(d)]) for d in spatial_dims)
    if len(spatial) == 3 or chunks:
        side = spatial_chunk(chunks, spatial, store)
        arr = arr.rechunk((-1,) + (side,) * len(spatial))
    else:
        arr = arr.rechunk({0: -1})
    fill = node.attrs.get("_FillValue")  # zarr's own fill value is no nodata
    nodata = fill if isinstance(fill, int | float) else None
    geometry = Geometry(dims=spatial_dims, shape=spatial, kind="zarr",
                        spacing=(1.0,) * len(spatial), affine=np.eye(4))
    return make_image(arr, geometry, source, nodata), geometry
