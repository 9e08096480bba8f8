"""The ``nifti`` output format: a result streamed into ``{stem}.nii.gz``.

A ``.nii.gz`` is one gzip stream, written front to back, while blocks arrive in any
order: they are written into a temporary uncompressed ``.npy`` memory map (hidden, in
the output directory), and :meth:`NiftiSink.close` writes the header and compresses
the map into the NIfTI file a slab at a time, so memory stays bounded whatever the
volume's size.

The file holds voxels with ``x`` fastest: our ``(z, y, x)`` array in C order is the
file's ``(x, y, z)`` in Fortran order, byte for byte; a ``(y, x)`` image becomes
``(x, y, 1)``.
"""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.lib.format import open_memmap

from ._geometry import Geometry
from ._sinks import Role, encode_block, sink_shape, stored_dtype

__all__ = ["NiftiSink", "nifti_codes", "nifti_units"]

#: Bytes compressed at a time by :meth:`NiftiSink.close`.
_SLAB_BYTES = 32 << 20
#: Length units NIfTI names, from the NGFF names of :class:`Geometry`.
_NIFTI_UNITS = {"meter": "meter", "millimeter": "mm", "micrometer": "micron"}
#: Units NIfTI lacks: the affine is converted to (factor, NIfTI unit).
_CONVERTED_UNITS = {"centimeter": (10.0, "mm"), "nanometer": (1e-3, "micron")}


def nifti_codes(geometry: Geometry) -> tuple[int, int]:
    """Return the ``(sform_code, qform_code)`` to write ``geometry`` with.

    The codes of the input when it was NIfTI (``geometry.extra``); scanner coordinates
    (1, 1) for DICOM, as dcm2niix writes them; else nibabel's choice for a new image
    with an affine: sform 2 (aligned), qform 0 (unknown).
    """
    codes = nib.nifti1.xform_codes.code
    default = (1, 1) if geometry.kind == "dicom" else (2, 0)
    out = []
    for key, fallback in zip(("sform_code", "qform_code"), default, strict=True):
        value = geometry.extra.get(key)
        if value is None:
            out.append(fallback)
            continue
        if isinstance(value, (bytes, str)):
            value = value.decode() if isinstance(value, bytes) else value
        else:
            value = int(value)
        # ignore: nibabel types Recoder values as Hashable; xform codes are ints
        out.append(int(codes[value]))  # type: ignore[call-overload]
    return out[0], out[1]


def nifti_units(geometry: Geometry) -> tuple[Any, str, float]:
    """Return the header's ``xyzt_units`` setting and a scale for the affine.

    Returns ``(xyzt_units, space_unit, factor)``: the raw ``xyzt_units`` byte of the input
    when it was NIfTI, else the NIfTI name of the unit shared by every axis
    (``"unknown"`` when the axes differ or say nothing); ``factor`` multiplies the
    affine of the units NIfTI lacks (centimetres are written in millimetres,
    nanometres in micrometres).
    """
    raw = geometry.extra.get("xyzt_units")
    if raw is not None:
        if isinstance(raw, (tuple, list)):
            xyz = raw[0]
            t = raw[1] if len(raw) > 1 else "unknown"
            return (xyz, t), str(nib.nifti1.unit_codes.label[xyz]), 1.0
        if isinstance(raw, str):
            return (raw, "unknown"), str(nib.nifti1.unit_codes.label[raw]), 1.0
        raw = int(raw)
        return raw, str(nib.nifti1.unit_codes.label[raw & 0x07]), 1.0
    unit = geometry.unit
    if unit in _NIFTI_UNITS:
        return (_NIFTI_UNITS[unit], "unknown"), _NIFTI_UNITS[unit], 1.0
    if unit in _CONVERTED_UNITS:
        factor, name = _CONVERTED_UNITS[unit]
        return (name, "unknown"), name, factor
    return ("unknown", "unknown"), "unknown", 1.0


def _write_gzip(path: Path, hdr: nib.Nifti1Header, data: np.ndarray) -> None:
    """Write a single-file NIfTI into a gzip stream at level 1.

    The header, zeros up to ``vox_offset``, then ``data`` in C order,
    :data:`_SLAB_BYTES` at a time.
    """
    flat = data.reshape(-1)  # C order of (z, y, x): the file's x-fastest order
    step = max(1, _SLAB_BYTES // data.dtype.itemsize)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                compresslevel=1, mtime=0) as f:
        hdr.write_to(f)
        f.write(b"\0" * (int(hdr["vox_offset"]) - f.tell()))
        for i in range(0, flat.size, step):
            f.write(np.ascontiguousarray(flat[i:i + step]).data)


class NiftiSink:
    """Stream a result into ``{stem}.nii.gz`` (see the module's notes).

    Parameters
    ----------
    directory : path
        Where the file (and, while writing, its hidden temporary map) goes.
    stem : str
        File stem: ``labels`` gives ``labels.nii.gz``.
    geometry : Geometry
        Its :meth:`~Geometry.world_affine` becomes the sform and qform, with the codes
        of :func:`nifti_codes` and the units of :func:`nifti_units`.
    shape, chunks : tuple
        Spatial shape ``(z, y, x)`` or ``(y, x)`` and the Dask chunks of the blocks.
    dtype : dtype
        The blocks' dtype.
    nodata : int
        The value of invalid voxels in the blocks.
    role : {"classes", "ids", "values"}
        Classes are stored as class + 1 with 0 for nodata, in the smallest unsigned type
        that holds them, with the NIfTI label intent; IDs (0 = none) and values as they
        are (uint64 IDs as int64, which viewers read more widely).
    n_classes : int, optional
        Number of classes (``role="classes"``): the display range ``cal_max``.
    class_names : list of str, optional
        Unused: NIfTI has no place for label names.
    """

    def __init__(self, directory: str | os.PathLike[str], stem: str, geometry: Geometry, *,
                 shape: tuple[int, ...], chunks: tuple[tuple[int, ...], ...],
                 dtype: np.dtype, nodata: int, role: Role,
                 n_classes: int | None = None, class_names: list[str] | None = None) -> None:
        shape = sink_shape(role, shape, geometry)
        self.directory = Path(directory)
        self.path = self.directory / f"{stem}.nii.gz"
        self.geometry = geometry
        self.shape = shape
        self.role = role
        self.nodata = nodata
        self.n_classes = n_classes
        self.dtype = stored_dtype(role, dtype, n_classes)
        if self.dtype == np.uint64:  # NIfTI-1 has uint64, but few readers do
            self.dtype = np.dtype(np.int64)
        self._tmp = self.directory / f".{stem}.nifti.npy"
        self._lock = threading.Lock()
        self._data: np.memmap | None = open_memmap(self._tmp, mode="w+", dtype=self.dtype,
                                                   shape=shape)
        self._closed = False

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        """Write one block into the temporary map (blocks never overlap: no lock)."""
        data = self._data
        if data is None:
            raise RuntimeError(f"{self.path.name}: the sink is closed")
        data[region] = encode_block(block, self.role, self.nodata, self.dtype)

    def header(self) -> nib.Nifti1Header:
        """Return the NIfTI header the file is written with."""
        xyzt, _, factor = nifti_units(self.geometry)
        affine = self.geometry.world_affine().copy()
        affine[:3, :] *= factor
        sform_code, qform_code = nifti_codes(self.geometry)
        hdr = nib.Nifti1Header()
        hdr.set_data_dtype(self.dtype)
        hdr.set_data_shape(self.shape[::-1] if len(self.shape) == 3 else
                           (*self.shape[::-1], 1))
        hdr.set_qform(affine, code=qform_code)  # sets the zooms (pixdim) too
        hdr.set_sform(affine, code=sform_code)
        if isinstance(xyzt, tuple):
            hdr.set_xyzt_units(*xyzt)
        else:
            hdr["xyzt_units"] = xyzt
        if self.role == "classes":
            hdr.set_intent("label", name="tileseg classes")
            hdr["descrip"] = b"tileseg classes: value = class + 1, 0 = no label"
            hdr["cal_min"] = 0
            hdr["cal_max"] = self.n_classes or np.iinfo(self.dtype).max
        elif self.role == "ids":
            hdr.set_intent("label", name="tileseg segments")
            hdr["descrip"] = b"tileseg segment IDs, 0 = none"
        else:
            hdr["descrip"] = f"tileseg values, {self.nodata} = no data".encode()[:79]
        hdr["vox_offset"] = hdr.single_vox_offset  # 352: no extensions
        return hdr

    def close(self) -> list[Path]:
        """Write the header and the data (DEFLATE level 1), remove the map; return the file."""
        with self._lock:
            if self._closed:
                return [self.path]
            data, self._data = self._data, None
            if data is None:
                raise RuntimeError(f"{self.path.name}: the sink was aborted")
            hdr = self.header()
            part = self.path.with_name(f".{self.path.name}.part")
            try:
                _write_gzip(part, hdr, data)
                os.replace(part, self.path)
            finally:
                del data  # closes the map
                part.unlink(missing_ok=True)
                self._tmp.unlink(missing_ok=True)
            self._closed = True
        return [self.path]

    def abort(self) -> None:
        """Drop the temporary map and any partial file."""
        with self._lock:
            self._data = None
            self._tmp.unlink(missing_ok=True)
            self.directory.joinpath(f".{self.path.name}.part").unlink(missing_ok=True)
            if not self._closed:
                self.path.unlink(missing_ok=True)
