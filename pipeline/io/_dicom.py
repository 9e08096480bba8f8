"""Read a DICOM series (a directory or a list of files) lazily as one volume.

The headers are read first (``stop_before_pixels``) to sort the slices along the slice
normal (the cross product of the ImageOrientationPatient rows) by their
ImagePositionPatient projected on it, never by InstanceNumber, and to check that they
form one regular volume. The pixels are read by the Dask tasks, a z-slab of slices at a
time, and rescaled (RescaleSlope/Intercept) slice by slice. Multi-frame files (enhanced
CT/MR, with per-frame positions in PerFrameFunctionalGroupsSequence) are volumes too.

The affine follows the NIfTI RAS+ convention, as dcm2niix writes it: the LPS affine of
DICOM with the sign of its first two rows flipped.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ._geometry import Geometry
from ._reader_common import (
    make_image,
    rescale,
    scaled_dtype,
    single_level,
    spatial_chunk,
    supported_dtype,
)

__all__ = ["open_dicom"]

#: a gap larger than this many median spacings is a missing slice
_GAP = 1.5
#: spacings deviating more than this from the median (relative) are irregular
_IRREGULAR = 0.01


@dataclass(frozen=True)
class _Slice:
    """One 2-D image of the series: a file, and the frame in it for multi-frame files."""

    path: str
    frame: int | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    spacing: tuple[float, ...] | None  # (row, column) spacing
    slope: float
    inter: float


class _DicomSlices:
    """A picklable, lazily read ``(band, z, y, x)`` stack of sorted DICOM slices."""

    def __init__(self, slices: Sequence[_Slice], shape: tuple[int, ...], dtype: np.dtype,
                 samples: int) -> None:
        self.slices = tuple(slices)
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)
        self.samples = samples

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        stats = tuple((s.path, s.frame, os.stat(s.path).st_mtime_ns) for s in self.slices)
        return ("dicom", stats, self.shape, str(self.dtype))

    def _read(self, s: _Slice) -> np.ndarray:
        from pydicom.pixels import pixel_array

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pydicom's notes on odd values
            data = pixel_array(s.path, index=s.frame)
        data = data.reshape(data.shape[:2] + (-1,))  # (rows, cols, samples)
        return rescale(np.moveaxis(data, -1, 0), s.slope, s.inter, self.dtype)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        bands, zs, ys, xs = key
        planes = [self._read(self.slices[k])[bands, ys, xs]
                  for k in range(*zs.indices(len(self.slices)))]
        if not planes:
            n_b = len(range(*bands.indices(self.samples)))
            return np.empty((n_b, 0, 0, 0), dtype=self.dtype)
        return np.stack(planes, axis=1)


def _label(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    items = [os.fspath(p) for p in source]
    return items[0] if len(items) == 1 else f"{items[0]} (+{len(items) - 1} files)"


def _files(source: Any, label: str) -> list[str]:
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if os.path.isdir(path):
            return sorted(os.path.join(path, n) for n in os.listdir(path)
                          if os.path.isfile(os.path.join(path, n)))
        return [path]
    return [os.fspath(p) for p in source]


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _item(seq: Any) -> Any:
    return seq[0] if seq is not None and len(seq) else None


def _group(ds: Any, per_frame: Any, name: str) -> Any:
    """Return the first item of functional group ``name``, per frame first, else shared."""
    for groups in (per_frame, _item(ds.get("SharedFunctionalGroupsSequence"))):
        if groups is not None and name in groups:
            item = _item(groups[name].value)
            if item is not None:
                return item
    return None


def _slices_of(path: str, ds: Any) -> list[_Slice]:
    """Return the slices one file holds: itself, or each of its frames."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    top = (_floats(ds.get("ImagePositionPatient"), 3),
           _floats(ds.get("ImageOrientationPatient"), 6),
           _floats(ds.get("PixelSpacing"), 2))
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    if frames == 1:
        return [_Slice(path, None, *top, slope, inter)]
    per = ds.get("PerFrameFunctionalGroupsSequence")
    offsets = ds.get("GridFrameOffsetVector")  # RT dose: offsets along the normal
    out = []
    for k in range(frames):
        item = per[k] if per is not None and k < len(per) else None
        pos = _group(ds, item, "PlanePositionSequence")
        ori = _group(ds, item, "PlaneOrientationSequence")
        meas = _group(ds, item, "PixelMeasuresSequence")
        value = _group(ds, item, "PixelValueTransformationSequence")
        position = _floats(pos.get("ImagePositionPatient"), 3) if pos is not None else None
        orientation = (_floats(ori.get("ImageOrientationPatient"), 6) if ori is not None
                       else None) or top[1]
        spacing = (_floats(meas.get("PixelSpacing"), 2) if meas is not None
                   else None) or top[2]
        s, i = slope, inter
        if value is not None:
            s = float(value.get("RescaleSlope", s) or s)
            i = float(value.get("RescaleIntercept", i) or i)
        if position is None and top[0] is not None and orientation is not None:
            normal = np.cross(orientation[:3], orientation[3:])
            step = (float(offsets[k]) if offsets is not None and k < len(offsets)
                    else k * float(ds.get("SpacingBetweenSlices", 0) or 0))
            position = tuple(float(v) for v in np.asarray(top[0]) + step * normal)
        out.append(_Slice(path, k, position, orientation, spacing, s, i))
    return out


def _read_headers(files: list[str], label: str) -> list[tuple[str, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not DICOM (notes, DICOMDIR's companions, ...): ignored
        if "Rows" in ds and "Columns" in ds:  # images only (not DICOMDIR, SR, ...)
            headers.append((f, ds))
    if not headers:
        raise InputError(f"{label}: no DICOM image found in {len(files)} file(s); expected "
                         "the DICOM files of one series")
    return headers


def _same(label: str, headers: list[tuple[str, Any]], key: str, what: str) -> Any:
    values = {str(ds.get(key)) for _, ds in headers}
    if len(values) > 1:
        raise InputError(f"{label}: the files differ in {what} ({', '.join(sorted(values))}); "
                         "expected one series of images alike")
    return headers[0][1].get(key)


def _sort(label: str, slices: list[_Slice]) -> tuple[list[_Slice], float]:
    """Return the slices sorted along the normal, and the slice spacing."""
    first = slices[0]
    if any(s.position is None or s.orientation is None for s in slices):
        raise InputError(f"{label}: a slice lacks ImagePositionPatient or "
                         "ImageOrientationPatient; expected them on every slice")
    ori = np.array([s.orientation for s in slices])
    if np.abs(ori - ori[0]).max() > 1e-4:
        raise InputError(f"{label}: the slices differ in ImageOrientationPatient; "
                         "expected one orientation for the whole series")
    assert first.orientation is not None  # checked above, as every position
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row, col)
    where = np.array([np.dot(s.position, normal) for s in slices if s.position is not None])
    order = np.argsort(where, kind="stable")
    slices = [slices[i] for i in order]
    where = where[order]
    steps = np.diff(where)
    if (steps < 1e-3).any():
        k = int(np.argmax(steps < 1e-3))
        raise InputError(f"{label}: two slices at {where[k]:.3f} mm along the slice normal "
                         f"({slices[k].path}, {slices[k + 1].path}); expected one slice per "
                         "position (one acquisition, echo or time point)")
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > _GAP * median)
    if gaps.size:
        k = int(gaps[0])
        raise InputError(f"{label}: a slice is missing between {where[k]:.3f} and "
                         f"{where[k + 1]:.3f} mm along the slice normal (a gap of "
                         f"{steps[k]:.3f} mm, the spacing is {median:.3f} mm); expected a "
                         "complete series")
    dev = np.abs(steps - median) / median
    if (dev > _IRREGULAR).any():
        raise InputError(f"{label}: irregular slice spacing (from {steps.min():.4f} to "
                         f"{steps.max():.4f} mm, more than {_IRREGULAR:.0%} apart); expected "
                         "evenly spaced slices")
    spacing = float((where[-1] - where[0]) / (len(slices) - 1))
    return slices, spacing


def open_dicom(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
               chunks: int | None = None, level: int = 0) -> tuple[xr.DataArray, Geometry]:
    """Open a DICOM series lazily as a volume ``(band, z, y, x)``.

    Parameters
    ----------
    source : path or list of paths
        A directory (every file in it; files that are not DICOM images are ignored), a
        list of files, or one (multi-frame) file.
    chunks : int, optional
        Chunk side along every spatial axis; by default 128.
    level : int
        Must be 0.

    Returns
    -------
    DataArray, shape (band, z, y, x), or (band, y, x) for a single image
        Lazy; ``band`` holds the samples (3 for RGB). Rescaled by RescaleSlope and
        RescaleIntercept (float32 unless every slope is 1 and the intercepts one integer).
    Geometry
        Spacing from PixelSpacing (rows, columns) and the slice positions; the affine in
        NIfTI's RAS+ convention; ``extra`` holds ``lps_affine``, ``modality`` and the
        series, study and frame-of-reference UIDs.

    Raises
    ------
    InputError
        No DICOM image; files of more than one series; slices that differ in rows,
        columns, pixel type or orientation; a missing slice; irregular spacing.
    """
    label = _label(source)
    single_level(label, level)
    headers = _read_headers(_files(source, label), label)
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in headers})
    if len(series) > 1:
        raise InputError(f"{label}: files of {len(series)} series ({', '.join(series)}); "
                         "expected the files of one series")
    rows = int(_same(label, headers, "Rows", "Rows"))
    cols = int(_same(label, headers, "Columns", "Columns"))
    samples = int(_same(label, headers, "SamplesPerPixel", "SamplesPerPixel") or 1)
    bits = int(_same(label, headers, "BitsAllocated", "BitsAllocated") or 16)
    signed = int(_same(label, headers, "PixelRepresentation", "PixelRepresentation") or 0)
    stored_bits = int(headers[0][1].get("BitsStored", bits) or bits)
    slices = [s for path, ds in headers for s in _slices_of(path, ds)]

    if len(slices) > 1:
        slices, dz = _sort(label, slices)
    else:
        dz = float(headers[0][1].get("SliceThickness", 1) or 1)
    first = slices[0]
    if len({s.spacing for s in slices}) > 1:
        raise InputError(f"{label}: the slices differ in PixelSpacing; expected one pixel "
                         "size for the whole series")
    dy, dx = first.spacing or (1.0, 1.0)

    if bits not in (8, 16, 32):
        raise InputError(f"{label}: {bits}-bit pixels are not supported; expected 8, 16 or "
                         "32 bits")
    stored = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
    lo, hi = ((-(2 ** (stored_bits - 1)), 2 ** (stored_bits - 1) - 1) if signed
              else (0, 2 ** stored_bits - 1))
    scalings = {(s.slope, s.inter) for s in slices}
    if len(scalings) == 1:
        slope, inter = next(iter(scalings))
        dtype = scaled_dtype(supported_dtype(stored, label), slope, inter, (lo, hi))
    else:
        dtype = np.dtype("float32")

    import dask.array as da

    n = len(slices)
    volume = n > 1
    side = spatial_chunk(chunks, (n, rows, cols) if volume else (rows, cols))
    stack = _DicomSlices(slices, (samples, n, rows, cols), dtype, samples)
    # one task reads a slab of whole slices (each file is read once), then split
    arr = da.from_array(stack, chunks=(samples, side if volume else 1, rows, cols),
                        lock=False, fancy=False, meta=np.empty((0, 0, 0, 0), dtype=dtype))
    if volume:
        arr = arr.rechunk((-1, side, side, side))
    else:
        arr = arr[:, 0].rechunk((-1, side, side))

    ori = first.orientation or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    row, col = np.asarray(ori[:3]), np.asarray(ori[3:])
    lps = np.eye(4)
    lps[:3, 0] = row * dx  # x: along a row, column index increasing
    lps[:3, 1] = col * dy  # y: down a column, row index increasing
    if volume:
        lps[:3, 2] = (np.asarray(slices[-1].position) - np.asarray(first.position)) / (n - 1)
    else:
        lps[:3, 2] = np.cross(row, col) * dz
    lps[:3, 3] = first.position or (0.0, 0.0, 0.0)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    ds0 = headers[0][1]
    extra = {
        "lps_affine": lps,
        "modality": str(ds0.get("Modality", "")),
        "series_instance_uid": series[0],
        "study_instance_uid": str(ds0.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(ds0.get("FrameOfReferenceUID", "")),
        "levels": 1,
        "level": 0,
    }
    if volume:
        geometry = Geometry(dims=("z", "y", "x"), shape=(n, rows, cols), kind="dicom",
                            spacing=(abs(dz), float(dy), float(dx)),
                            units=("millimeter",) * 3, affine=ras, extra=extra)
    else:
        geometry = Geometry(dims=("y", "x"), shape=(rows, cols), kind="dicom",
                            spacing=(float(dy), float(dx)), units=("millimeter",) * 2,
                            affine=ras, extra=extra)
    return make_image(arr, geometry, label), geometry
