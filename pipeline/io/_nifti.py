"""Read NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) lazily through nibabel's array proxy.

nibabel orders voxels ``(x, y, z[, t])`` with ``x`` the file's fastest axis; the array
is ``(band, z, y, x)`` (the 4th axis, if any, is the bands) or ``(band, y, x)`` for 2-D
files. Voxels are read window by window (``.nii``) or in z-slabs of full x, y extent
(``.nii.gz``, which has no random access: every read decompresses from the start), and
the stored values are scaled (``scl_slope``/``scl_inter``) chunk by chunk.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError, first_line
from ._geometry import Geometry, unit_name
from ._reader_common import (
    make_image,
    rescale,
    scaled_dtype,
    single_level,
    spatial_chunk,
    supported_dtype,
)

__all__ = ["open_nifti"]


class _NiftiVoxels:
    """A picklable, lazily read array of a NIfTI file's voxels, in nibabel's order.

    Holds plain values only (no open file, no lock), so Dask graphs that hold it can be
    sent to worker processes; each read opens the file through a fresh ArrayProxy.
    """

    def __init__(self, path: str, shape: tuple[int, ...], stored: np.dtype, offset: int,
                 order: str, slope: float, inter: float, dtype: np.dtype) -> None:
        self.path, self.shape, self.stored, self.offset = path, shape, stored, offset
        self.order, self.slope, self.inter = order, slope, inter
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        st = os.stat(self.path)
        return ("nifti", self.path, st.st_mtime_ns, st.st_size, self.shape, str(self.stored),
                self.offset, self.slope, self.inter, str(self.dtype))

    def __getitem__(self, key: Any) -> np.ndarray:
        from nibabel.arrayproxy import ArrayProxy

        proxy = ArrayProxy(self.path, (self.shape, self.stored, self.offset, 1.0, 0.0),
                           mmap=False, order=self.order, keep_file_open=False)
        return rescale(proxy[key], self.slope, self.inter, self.dtype)


def _load(path: str) -> Any:
    import nibabel as nib

    try:
        img = nib.load(path, mmap=False)
    except Exception as exc:  # nibabel raises many types for a broken file
        raise InputError(f"{path}: NIfTI header is unreadable ({first_line(exc)}); "
                         "expected a NIfTI-1/2 file") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path}: nibabel reads it as {type(img).__name__}; expected a "
                         "single-file NIfTI-1/2 image")
    return img


def open_nifti(path: str | os.PathLike[str], *, chunks: int | None = None,
               level: int = 0) -> tuple[xr.DataArray, Geometry]:
    """Open a NIfTI-1/2 file lazily.

    Parameters
    ----------
    path : path
        ``.nii`` or ``.nii.gz``.
    chunks : int, optional
        Chunk side along every spatial axis; by default 128 (volumes) or ~1024 (2-D).
    level : int
        Must be 0 (NIfTI has no pyramid).

    Returns
    -------
    DataArray, shape (band, z, y, x) or (band, y, x)
        Lazy, scaled by ``scl_slope``/``scl_inter`` (float32 unless the scaling is an
        integral shift).
    Geometry
        ``affine`` is nibabel's best affine (sform, else qform, else from the zooms);
        ``spacing`` the header's zooms; ``extra`` holds ``sform_code``,
        ``qform_code``, ``xyzt_units``, ``nifti_version``, ``qform``, ``sform``,
        ``scl_slope`` and ``scl_inter``.

    Raises
    ------
    InputError
        Unreadable header, data shorter than the header says, more than 4 dims,
        unsupported data type, ``level`` > 0.
    """
    import nibabel as nib

    source = os.fspath(path)
    single_level(source, level)
    img = _load(source)
    header = img.header
    proxy = img.dataobj
    full = tuple(int(n) for n in proxy.shape)
    shape = full
    while len(shape) > 3 and shape[-1] == 1:  # trailing singleton dims (t, u, ...)
        shape = shape[:-1]
    if len(shape) > 4 or len(shape) < 2:
        raise InputError(f"{source}: NIfTI data of shape {full}; expected 2, 3 or 4 dims "
                         "(x, y[, z][, bands])")
    stored = np.dtype(proxy.dtype)
    if stored.kind not in "biuf":
        raise InputError(f"{source}: NIfTI data type {stored} is not supported; expected "
                         "integer or floating point voxels")
    offset = int(proxy.offset)
    nbytes = int(np.prod(full)) * stored.itemsize
    gz = source.lower().endswith(".gz")
    if not gz and os.path.getsize(source) < offset + nbytes:
        raise InputError(f"{source}: the file holds {os.path.getsize(source)} bytes, its "
                         f"header needs {offset + nbytes}; expected a complete NIfTI file")
    # nibabel moves the header's scaling into the proxy (the loaded header has none)
    slope, inter = float(proxy.slope), float(proxy.inter)
    slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    base = supported_dtype(stored, source)
    dtype = scaled_dtype(base, slope, inter)
    voxels = _NiftiVoxels(source, full, stored, offset, proxy.order, slope, inter, dtype)

    import dask.array as da

    ndim = 2 if len(shape) == 2 else 3
    spatial = shape[:ndim]  # nibabel order (x, y[, z])
    side = spatial_chunk(chunks, spatial[::-1])
    read_chunks = []
    for i, n in enumerate(full):
        if i < ndim:  # .nii.gz: slabs of full x, y extent along the slowest spatial axis
            read_chunks.append(n if gz and i < ndim - 1 else side)
        else:
            read_chunks.append(n if i == 3 else 1)
    arr = da.from_array(voxels, chunks=tuple(read_chunks), lock=False, fancy=False,
                        meta=np.empty((0,) * len(full), dtype=dtype))
    if len(full) == ndim:
        arr = arr[..., None]
    elif len(full) > 4:
        arr = arr[(slice(None),) * 4 + (0,) * (len(full) - 4)]
    arr = arr.transpose(tuple(range(ndim, -1, -1)))  # (band, [z,] y, x)
    arr = arr.rechunk((-1,) + (side,) * ndim)

    zooms = tuple(float(z) for z in header.get_zooms()[:ndim])
    space_unit, _ = header.get_xyzt_units()
    unit = None if space_unit in (None, "unknown") else unit_name(space_unit)
    version = 2 if isinstance(img, nib.Nifti2Image) else 1
    extra = {
        "sform_code": int(header["sform_code"]),
        "qform_code": int(header["qform_code"]),
        "xyzt_units": int(header["xyzt_units"]),
        "nifti_version": version,
        "qform": np.asarray(header.get_qform(), dtype=np.float64),
        "sform": np.asarray(header.get_sform(), dtype=np.float64),
        "scl_slope": slope,
        "scl_inter": inter,
        "levels": 1,
        "level": 0,
    }
    geometry = Geometry(dims=("y", "x") if ndim == 2 else ("z", "y", "x"),
                        shape=tuple(spatial[::-1]), kind="nifti", spacing=zooms[::-1],
                        units=(unit,) * ndim,
                        affine=np.asarray(img.affine, dtype=np.float64), extra=extra)
    return make_image(arr, geometry, source), geometry
