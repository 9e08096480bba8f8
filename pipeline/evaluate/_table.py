"""The streamed contingency table of two label maps, and the helpers that feed it."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import scipy.sparse as sparse
import xarray as xr

from ..errors import InputError

__all__ = [
    "ContingencyTable",
    "SomeLabels",
    "check_same_grid",
    "class_instances",
    "contingency",
    "contingency_table",
    "labels_from_masks",
]

SomeLabels = str | os.PathLike[str] | xr.DataArray | np.ndarray

_SHIFT = np.uint64(32)
_LOW = np.uint64(0xFFFFFFFF)
_DEFAULT_CHUNK = 1024
_DEFAULT_VOLUME_CHUNK = 128


@dataclass(frozen=True, eq=False)
class ContingencyTable:
    """Sparse counts of (truth label, predicted label) pairs over the valid pixels.

    Attributes
    ----------
    truth_labels, pred_labels : ndarray of int64
        The distinct label values found, sorted.
    rows, cols : ndarray of intp, shape (nnz,)
        Indices into ``truth_labels`` and ``pred_labels`` of each non-zero count.
    counts : ndarray of int64, shape (nnz,)
        Pixels per pair.
    ignore : tuple of int
        Label values that mean "no label" (see the module notes).
    nodata_pixels : int
        Pixels left out because either map was nodata there.
    """

    truth_labels: np.ndarray
    pred_labels: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    ignore: tuple[int, ...] = ()
    nodata_pixels: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_arrays(
        cls,
        pred: np.ndarray,
        truth: np.ndarray,
        *,
        ignore: Iterable[int] = (),
        pred_nodata: float | None = None,
        truth_nodata: float | None = None,
    ) -> ContingencyTable:
        """Count the pairs of two in-memory label arrays of the same shape.

        Parameters
        ----------
        pred, truth : ndarray of int (or whole floats, NaN as nodata)
            Label maps of any dimensionality.
        ignore : iterable of int
            Label values that mean "no label".
        pred_nodata, truth_nodata : float, optional
            Values whose pixels are left out of everything.

        Returns
        -------
        ContingencyTable

        Raises
        ------
        InputError
            Different shapes, labels that are not whole numbers or do not fit 32 bits.
        """
        pred, truth = np.asarray(pred), np.asarray(truth)
        if pred.shape != truth.shape:
            raise InputError(f"truth: shape {truth.shape} differs from the prediction's "
                             f"{pred.shape}; expected label maps of the same shape")
        part = _block_pairs(truth, pred, truth_nodata, pred_nodata,
                            _offset(truth.dtype), _offset(pred.dtype), ("truth", "prediction"))
        return _finish(part, _offset(truth.dtype), _offset(pred.dtype), _ignore(ignore))

    @property
    def n(self) -> int:
        """Number of pixels counted."""
        return int(self.counts.sum())

    @property
    def matrix(self) -> sparse.csr_array:
        """The table as a sparse ``(truth label, predicted label)`` array."""
        shape = (len(self.truth_labels), len(self.pred_labels))
        return sparse.csr_array((self.counts, (self.rows, self.cols)), shape=shape)

    def dense(self) -> np.ndarray:
        """Return the table as a dense int64 array (rows: truth, columns: prediction)."""
        out = np.zeros((len(self.truth_labels), len(self.pred_labels)), dtype=np.int64)
        out[self.rows, self.cols] = self.counts
        return out

    def truth_sizes(self) -> np.ndarray:
        """Pixels per true label."""
        return _sum_by(self.rows, self.counts, len(self.truth_labels))

    def pred_sizes(self) -> np.ndarray:
        """Pixels per predicted label."""
        return _sum_by(self.cols, self.counts, len(self.pred_labels))

    def truth_ignored(self) -> np.ndarray:
        """Boolean mask over ``truth_labels``: True where the label is ignored."""
        return np.isin(self.truth_labels, self.ignore)

    def pred_ignored(self) -> np.ndarray:
        """Boolean mask over ``pred_labels``: True where the label is ignored."""
        return np.isin(self.pred_labels, self.ignore)

    def compared(self) -> ContingencyTable:
        """Return the part the class and region measures use: truth not ignored.

        Labels that no longer occur are dropped.
        """
        if "compared" not in self._cache:
            if not self.ignore:
                self._cache["compared"] = self
            else:
                keep = ~self.truth_ignored()[self.rows]
                self._cache["compared"] = _compact(
                    self.truth_labels, self.pred_labels, self.rows[keep], self.cols[keep],
                    self.counts[keep], self.ignore, self.nodata_pixels)
        return self._cache["compared"]


def _sum_by(index: np.ndarray, counts: np.ndarray, size: int) -> np.ndarray:
    # float64 weights are exact for counts below 2**53
    return np.bincount(index, weights=counts, minlength=size).astype(np.int64)


def _compact(truth_labels, pred_labels, rows, cols, counts, ignore, nodata) -> ContingencyTable:
    used_t, rows = np.unique(rows, return_inverse=True)
    used_p, cols = np.unique(cols, return_inverse=True)
    return ContingencyTable(truth_labels[used_t], pred_labels[used_p], rows.ravel(),
                            cols.ravel(), counts, ignore, nodata)


def _ignore(values: Iterable[int]) -> tuple[int, ...]:
    out = []
    for v in values:
        if isinstance(v, bool) or not float(v).is_integer():
            raise ValueError(f"ignore: expected integer label values, got {v!r}")
        out.append(int(v))
    return tuple(sorted(set(out)))


def _offset(dtype: np.dtype) -> int:
    """Labels are stored as 32-bit codes ``value - offset``."""
    return 0 if np.dtype(dtype).kind in "ub" else -(2**31)


def _valid(block: np.ndarray, nodata: float | None) -> np.ndarray | None:
    bad = None
    if block.dtype.kind == "f":
        bad = np.isnan(block)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        eq = block == nodata
        bad = eq if bad is None else bad | eq
    return None if bad is None or not bad.any() else ~bad


def _check(values: np.ndarray, offset: int, name: str) -> None:
    """Raise unless the 1-D labels are whole numbers in ``[offset, offset + 2**32)``."""
    kind, size = values.dtype.kind, values.dtype.itemsize
    if kind == "f":
        finite = np.isfinite(values)
        if not finite.all() or not np.array_equal(values, np.floor(values)):
            bad = values[~finite | (values != np.floor(values))][0]
            raise InputError(f"{name}: label {bad!r} is not a whole number; expected "
                             "integer labels (NaN and the nodata value are left out)")
    if values.size and (kind == "f" or size > 4):
        lo, hi = values.min(), values.max()
        if lo < offset or hi >= offset + 2**32:
            bad = lo if lo < offset else hi
            raise InputError(f"{name}: label {bad!r} is out of range; expected labels from "
                             f"{offset} to {offset + 2**32 - 1}")


def _block_pairs(truth, pred, truth_nodata, pred_nodata, truth_offset, pred_offset, names):
    """Sorted pair codes ``(truth - offset) << 32 | (pred - offset)``, counts, nodata pixels.

    Works in place on one int64 array per chunk, so a task needs a few times the
    chunk's pixel count in bytes.
    """
    vt, vp = _valid(truth, truth_nodata), _valid(pred, pred_nodata)
    valid = vt if vp is None else vp if vt is None else vt & vp
    if valid is None:
        t, p, nodata = truth.ravel(), pred.ravel(), 0
    else:
        t, p, nodata = truth[valid], pred[valid], int(truth.size - valid.sum())
    del vt, vp, valid
    _check(t, truth_offset, names[0])
    _check(p, pred_offset, names[1])
    if t.size == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64), nodata
    t0, t1, p0, p1 = int(t.min()), int(t.max()), int(p.min()), int(p.max())
    span_t, span_p = t1 - t0 + 1, p1 - p0 + 1
    flat = t.astype(np.int64)
    if span_t * span_p <= max(4 * t.size, 1 << 16):  # few labels: one bincount
        flat -= t0
        flat *= span_p
        np.add(flat, p, out=flat, casting="unsafe")
        flat -= p0
        counts = np.bincount(flat, minlength=span_t * span_p)
        del flat
        nz = np.flatnonzero(counts)
        keys = (nz // span_p + (t0 - truth_offset)).astype(np.uint64) << _SHIFT
        keys |= (nz % span_p + (p0 - pred_offset)).astype(np.uint64)
        return keys, counts[nz].astype(np.int64), nodata
    flat -= truth_offset
    keys = flat.view(np.uint64)
    keys <<= _SHIFT
    low = p.astype(np.int64)
    low -= pred_offset
    keys |= low.view(np.uint64)
    del low
    keys.sort()
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    counts = np.diff(np.append(starts, keys.size)).astype(np.int64)
    return keys[starts], counts, nodata


def _merge(parts: Sequence[tuple[np.ndarray, np.ndarray, int]]):
    """Sum sparse pair tables (exact int64)."""
    keys = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    nodata = sum(p[2] for p in parts)
    if keys.size == 0:
        return keys, counts, nodata
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.add.reduceat(counts, starts), nodata


def _finish(part, truth_offset: int, pred_offset: int, ignore: tuple[int, ...]):
    keys, counts, nodata = part
    t = (keys >> _SHIFT).astype(np.int64) + truth_offset
    p = (keys & _LOW).astype(np.int64) + pred_offset
    truth_labels, rows = np.unique(t, return_inverse=True)
    pred_labels, cols = np.unique(p, return_inverse=True)
    return ContingencyTable(truth_labels, pred_labels, rows.ravel(), cols.ravel(),
                            counts.astype(np.int64), ignore, int(nodata))


def _as_labels(x: SomeLabels, name: str, chunks: int | None) -> tuple[xr.DataArray, str]:
    """Normalise a path, DataArray or ndarray into a lazy label map, (y, x) or (z, y, x)."""
    if isinstance(x, str | os.PathLike):
        from ..io import open_image

        img = open_image(x, chunks=chunks)
        if img.sizes["band"] != 1:
            raise InputError(f"{os.fspath(x)}: {img.sizes['band']} bands; expected a "
                             "single-band label raster")
        img = img.isel(band=0)
        if img.rio.nodata is None and _is_tileseg_labels(os.fspath(x), img):
            img = img.rio.write_nodata(0, encoded=False)  # 0 = no label
        return img, os.fspath(x)
    if isinstance(x, np.ndarray):
        x = xr.DataArray(x, dims=_ARRAY_DIMS.get(x.ndim))
    if not isinstance(x, xr.DataArray):
        raise TypeError(f"{name}: expected a path, a DataArray or an ndarray, got "
                        f"{type(x).__name__}")
    label = str(x.attrs.get("source", name))
    if x.ndim >= 3 and x.sizes[x.dims[0]] == 1 and (x.ndim == 4 or x.dims[0] != "z"):
        x = x.isel({x.dims[0]: 0})  # a single band
    if x.ndim not in (2, 3):
        raise InputError(f"{label}: dims {x.dims}; expected a 2-D label map (y, x) or a "
                         "label volume (z, y, x)")
    if x.chunks is None:
        x = x.chunk(chunks or (_DEFAULT_CHUNK if x.ndim == 2 else _DEFAULT_VOLUME_CHUNK))
    return x, label


#: dims given to in-memory arrays, by their number of dims
_ARRAY_DIMS = {2: ("y", "x"), 3: ("z", "y", "x"), 4: ("band", "z", "y", "x")}


def _is_tileseg_labels(path: str, img: xr.DataArray) -> bool:
    """Whether a NIfTI or OME-Zarr file is a tileseg class map or segment-ID image.

    Such files have no nodata value: 0 means "no label" (classes are stored as c + 1).
    NIfTI: the header's ``descrip`` starts with "tileseg classes" or "tileseg segment";
    OME-Zarr: an ``image-label`` written by tileseg (``multiscales[0].metadata.tileseg``).
    """
    geometry = img.attrs.get("geometry")
    kind = getattr(geometry, "kind", None)
    try:
        if kind == "nifti":
            import nibabel as nib

            header = nib.load(path).header
            if not isinstance(header, nib.AnalyzeHeader):  # NIfTI-1/2 (no descrip elsewhere)
                return False
            descrip = bytes(np.asarray(header["descrip"]).tobytes())
            return descrip.startswith((b"tileseg classes", b"tileseg segment"))
        if kind == "ome-zarr":
            from ..io._ome import _multiscales

            found = _multiscales(path)
            if found is None:
                return False
            _, multiscales, _, attrs = found
            meta = (multiscales[0].get("metadata") or {}).get("tileseg")
            return ("image-label" in attrs and isinstance(meta, dict)
                    and meta.get("role") in ("classes", "ids") and meta.get("nodata", 0) == 0)
    except Exception:  # unreadable metadata: not one of ours, the reader said the rest
        return False
    return False


def check_same_grid(pred: xr.DataArray, truth: xr.DataArray, names: tuple[str, str] = (
        "prediction", "truth")) -> None:
    """Raise unless two label maps lie on the same pixel (or voxel) grid.

    Shapes must be equal. When both are georeferenced, so must be their CRS and
    transform; when both are in physical space (NIfTI, DICOM, OME-TIFF, OME-Zarr: the
    ``Geometry`` in ``attrs["geometry"]``), their voxel size, and their affine when both
    formats can state it (NIfTI and DICOM share RAS+ with orientation; OME-TIFF and
    OME-Zarr a scale and translation). Maps without such a geometry (arrays, plain
    images, plain Zarr), or one of each kind, are compared pixel by pixel.

    Raises
    ------
    InputError
        Naming both maps and what differs.
    """
    if pred.ndim == 2 and truth.ndim == 2:
        (h1, w1), (h2, w2) = pred.shape, truth.shape
        if (h1, w1) != (h2, w2):
            raise InputError(f"{names[1]}: {w2} x {h2} pixels but {names[0]} is {w1} x {h1} "
                             "(width x height); expected two rasters on the same grid "
                             "(resample one onto the other's grid first)")
    elif pred.shape != truth.shape:
        def size(x: xr.DataArray) -> str:
            return " x ".join(str(n) for n in x.shape[::-1])

        axes = "x, y, z" if truth.ndim == 3 else "x, y"
        raise InputError(f"{names[1]}: {size(truth)} voxels ({axes}) but {names[0]} is "
                         f"{size(pred)} ({'x, y, z' if pred.ndim == 3 else 'x, y'}); "
                         "expected two label maps on the same grid (resample one onto "
                         "the other's grid first)")
    c1, c2 = pred.rio.crs, truth.rio.crs
    if c1 is not None and c2 is not None:
        _check_georeferencing(pred, truth, c1, c2, names)
        return
    g1, g2 = pred.attrs.get("geometry"), truth.attrs.get("geometry")
    if _physical(g1) and _physical(g2):
        _check_physical(g1, g2, names)


def _check_georeferencing(pred: xr.DataArray, truth: xr.DataArray, c1: Any, c2: Any,
                          names: tuple[str, str]) -> None:
    if c1 != c2:
        raise InputError(f"{names[1]}: CRS {c2.to_string()} differs from {names[0]}'s "
                         f"{c1.to_string()}; expected two rasters on the same grid")
    t1, t2 = pred.rio.transform(), truth.rio.transform()
    size = max(abs(t1.a), abs(t1.e), 1e-300)
    if not np.allclose(tuple(t1)[:6], tuple(t2)[:6], rtol=0, atol=1e-6 * size):
        raise InputError(f"{names[1]}: transform {tuple(t2)[:6]} differs from {names[0]}'s "
                         f"{tuple(t1)[:6]} (origin or pixel size); expected two rasters "
                         "on the same grid")


#: formats whose geometry is in physical space, by the convention of their affine:
#: NIfTI and DICOM in RAS+ with orientation, OME-TIFF and OME-Zarr scale and translation
_AFFINE_FAMILY = {"nifti": "ras", "dicom": "ras", "tiff": "ngff", "ome-zarr": "ngff"}
#: length units in millimetres (NGFF names, as :class:`pipeline.io.Geometry` has them)
_UNIT_MM = {"meter": 1e3, "centimeter": 10.0, "millimeter": 1.0, "micrometer": 1e-3,
            "nanometer": 1e-6}


def _physical(geometry: Any) -> bool:
    return getattr(geometry, "kind", None) in _AFFINE_FAMILY


def _check_physical(g1: Any, g2: Any, names: tuple[str, str]) -> None:
    """Voxel size (and affine, within one convention) of two physical geometries."""
    u1, u2 = g1.unit, g2.unit
    # an unknown unit is taken to be the other's
    f1 = f2 = 1.0
    if u1 in _UNIT_MM and u2 in _UNIT_MM:
        f1, f2 = _UNIT_MM[u1], _UNIT_MM[u2]
    s1 = np.asarray(g1.spacing, dtype=np.float64) * f1
    s2 = np.asarray(g2.spacing, dtype=np.float64) * f2
    axes = "x, y, z" if g1.ndim == 3 else "x, y"

    def spacing(g: Any) -> str:
        unit = f" {g.unit}" if g.unit else ""
        return " x ".join(f"{v:g}" for v in g.spacing[::-1]) + unit

    if s1.shape != s2.shape or not np.allclose(s1, s2, rtol=1e-4, atol=0):
        raise InputError(f"{names[1]}: voxel size {spacing(g2)} ({axes}) differs from "
                         f"{names[0]}'s {spacing(g1)}; expected two label maps on the same "
                         "grid")
    if _AFFINE_FAMILY[g1.kind] != _AFFINE_FAMILY[g2.kind]:
        return  # e.g. NIfTI and OME-Zarr: no common orientation to compare
    a1, a2 = g1.world_affine() * f1, g2.world_affine() * f2
    # a hundredth of a voxel, and float32 rounding (NIfTI's sform) of large origins
    tol = 1e-2 * float(s1.min()) + 1e-6 * float(np.abs(a1[:3, 3]).max())
    if not np.allclose(a1[:3], a2[:3], rtol=0, atol=tol):
        def rows(a: np.ndarray, f: float) -> str:
            return str(np.round(a[:3] / f, 4).tolist())

        raise InputError(f"{names[1]}: affine {rows(a2, f2)} differs from {names[0]}'s "
                         f"{rows(a1, f1)} (origin or orientation); expected two label maps "
                         "on the same grid")


def contingency(
    pred: SomeLabels,
    truth: SomeLabels,
    *,
    ignore: Iterable[int] = (),
    chunks: int | None = None,
    split_every: int = 16,
) -> Any:
    """Build the contingency table of two label maps lazily.

    Parameters
    ----------
    pred, truth : path, DataArray or ndarray
        Label maps on the same grid, 2-D ``(y, x)`` (or ``(1, y, x)``) or volumes
        ``(z, y, x)`` (or ``(1, z, y, x)``): paths (GDAL rasters, NIfTI, OME-Zarr, Zarr,
        DICOM, OME-TIFF) are opened with :func:`pipeline.open_image` (the truth with the
        prediction's chunks), DataArrays keep their chunks (the truth is rechunked like
        the prediction), ndarrays are chunked. Integer labels (up to 32-bit values;
        whole-number floats too). The nodata value (``rio.nodata``) and NaN leave a
        pixel out; so does 0 in a tileseg class map or segment-ID image read from a
        NIfTI or OME-Zarr path (it has no nodata value: 0 means "no label").
    ignore : iterable of int
        Label values that mean "no label" (see the module notes).
    chunks : int, optional
        Chunk side for paths and in-memory arrays (default: the file's, or 1024 for
        images and 128 for volumes).
    split_every : int
        Fan-in of the tree that merges the per-chunk tables.

    Returns
    -------
    dask.delayed.Delayed
        Computes to a :class:`ContingencyTable`; nothing is read until then.

    Raises
    ------
    InputError
        Unreadable or multi-band input, maps on different grids (shape; CRS and
        transform, or voxel size and affine: :func:`check_same_grid`). Labels that are
        not whole numbers or do not fit in 32 bits raise it when computed.
    """
    ignore = _ignore(ignore)
    if split_every < 2:
        raise ValueError(f"split_every: expected at least 2, got {split_every}")
    p, pname = _as_labels(pred, "prediction", chunks)
    if chunks is None and isinstance(truth, str | os.PathLike):
        assert p.chunks is not None  # _as_labels returns Dask-backed maps
        chunks = max(16, int(p.chunks[-1][0]))
    t, tname = _as_labels(truth, "truth", chunks)
    if p.ndim != t.ndim:  # a 2-D image stored as a volume of one slice (NIfTI)
        p, t = _flat(p), _flat(t)
    check_same_grid(p, t, (pname, tname))
    pdata, tdata = p.data, t.data
    if tdata.chunks != pdata.chunks:
        tdata = tdata.rechunk(pdata.chunks)
    t_off, p_off = _offset(tdata.dtype), _offset(pdata.dtype)
    nd_t, nd_p = _nodata(t), _nodata(p)
    block = dask.delayed(_block_pairs, pure=True)
    merge = dask.delayed(_merge, pure=True)
    parts = [
        block(tb, pb, nd_t, nd_p, t_off, p_off, (tname, pname))
        for tb, pb in zip(tdata.to_delayed().ravel(), pdata.to_delayed().ravel(),
                          strict=True)
    ]
    while len(parts) > 1:
        parts = [merge(parts[i:i + split_every]) for i in range(0, len(parts), split_every)]
    return dask.delayed(_finish, pure=True)(parts[0], t_off, p_off, ignore)


def _flat(x: xr.DataArray) -> xr.DataArray:
    """Drop the z axis of a volume of one slice, keeping what the reader said."""
    if x.ndim != 3 or x.shape[0] != 1:
        return x
    out = x.isel({x.dims[0]: 0})
    out.attrs.pop("geometry", None)  # a 3-D geometry: such a pair compares by pixel
    return out


def _nodata(x: xr.DataArray) -> float | None:
    value = x.rio.nodata
    return None if value is None else float(value)


def contingency_table(
    pred: xr.DataArray,
    truth: xr.DataArray,
    pred_values: np.ndarray,
    truth_values: np.ndarray,
    *,
    ignore_pred: tuple = (),
    ignore_truth: tuple = (),
) -> da.Array:
    """Dense lazy contingency table ``(len(pred_values), len(truth_values))``.

    For label sets known in advance (e.g. a model's classes); :func:`contingency`
    finds the labels itself and stays sparse.

    Parameters
    ----------
    pred, truth : DataArray, shape (y, x)
        Integer label rasters on the same grid, chunked alike.
    pred_values, truth_values : ndarray
        Sorted label values present (every pixel's value must be listed).
    ignore_pred, ignore_truth : tuple
        Values whose pixels are left out (e.g. nodata).

    Returns
    -------
    dask.array.Array, shape (len(pred_values), len(truth_values)), int64
    """
    p = pred.data
    t = truth.data.rechunk(p.chunks)
    pv = np.asarray(pred_values)
    tv = np.asarray(truth_values)
    parts = da.map_blocks(
        _dense_block, p, t, pv, tv, tuple(ignore_pred), tuple(ignore_truth),
        new_axis=[2, 3],
        chunks=((1,) * p.numblocks[0], (1,) * p.numblocks[1], (len(pv),), (len(tv),)),
        dtype=np.int64,
        meta=np.empty((0, 0, 0, 0), np.int64),
    )
    return parts.sum(axis=(0, 1))


def _dense_block(pred, truth, pred_values, truth_values, skip_p, skip_t):
    pi = np.searchsorted(pred_values, pred)
    ti = np.searchsorted(truth_values, truth)
    ok = np.ones(pred.shape, dtype=bool)
    for v in skip_p:
        ok &= pred != v
    for v in skip_t:
        ok &= truth != v
    n_t = len(truth_values)
    code = pi[ok].astype(np.int64) * n_t + ti[ok]
    table = np.bincount(code, minlength=len(pred_values) * n_t)
    return table.reshape(1, 1, len(pred_values), n_t)


def labels_from_masks(masks: Iterable[np.ndarray | str | os.PathLike[str]]) -> np.ndarray:
    """Stack binary masks (one per object) into one instance label map.

    Parameters
    ----------
    masks : iterable of 2-D arrays or image paths
        Non-zero pixels belong to the object; all masks share one shape. Paths
        (PNG, TIFF, ...) are read with their first band. A directory path reads every
        image in it, sorted by name.

    Returns
    -------
    ndarray of int32, shape (y, x)
        0 for the background, ``i + 1`` for the ``i``-th mask; where masks overlap,
        the later mask wins.
    """
    if isinstance(masks, str | os.PathLike) and Path(masks).is_dir():
        masks = sorted(p for p in Path(masks).iterdir() if p.is_file())
    out: np.ndarray | None = None
    for i, m in enumerate(masks):
        arr = _read_mask(m) if isinstance(m, str | os.PathLike) else np.asarray(m)
        if arr.ndim == 3:
            arr = arr[..., 0] if arr.shape[-1] <= 4 else arr[0]
        if out is None:
            out = np.zeros(arr.shape, dtype=np.int32)
        elif arr.shape != out.shape:
            raise InputError(f"mask {i}: shape {arr.shape} differs from the first mask's "
                             f"{out.shape}; expected masks of one image")
        out[arr != 0] = i + 1
    if out is None:
        raise InputError("masks: none given; expected one binary mask per object")
    return out


def class_instances(segments: xr.DataArray, labels: xr.DataArray,
                    classes: int | Iterable[int]) -> xr.DataArray:
    """Turn a segment raster into an instance map of some classes, lazily.

    Parameters
    ----------
    segments : DataArray, shape (y, x)
        Segment IDs (``segments.tif``: 0 is nodata).
    labels : DataArray, shape (y, x)
        The class map the segments were built from (``labels.tif``).
    classes : int or iterable of int
        The classes whose segments are objects (e.g. the nuclei class).

    Returns
    -------
    DataArray, shape (y, x), uint32 or uint64
        The segment ID where the class is one of ``classes``, 0 (background) elsewhere,
        and the dtype's maximum (also ``rio.nodata``) where ``labels`` is nodata.
        Evaluate it with ``ignore=[0]``.
    """
    wanted = [int(classes)] if isinstance(classes, int | np.integer) else [
        int(c) for c in classes]
    if segments.shape != labels.shape:
        raise InputError(f"labels: shape {labels.shape} differs from the segments' "
                         f"{segments.shape}; expected the class map of these segments")
    dtype = (np.dtype(np.uint64) if np.dtype(segments.dtype).itemsize > 4
             else np.dtype(np.uint32))
    nodata = int(np.iinfo(dtype).max)
    out = xr.where(labels.isin(wanted), segments, 0).astype(dtype)
    label_nodata = labels.rio.nodata
    if label_nodata is not None:
        out = xr.where(labels == label_nodata, dtype.type(nodata), out).astype(dtype)
    out.attrs = {}
    out.encoding = {}
    out.name = "instances"
    return out.rio.write_nodata(nodata, encoded=False)


def _read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                return ds.read(1)
    except RasterioError as exc:
        raise InputError(f"{os.fspath(path)}: not a readable mask image ({exc})") from None
