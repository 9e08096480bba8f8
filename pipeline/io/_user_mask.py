"""The ``mask:`` of a run: which pixels (voxels) are valid, besides the nodata value.

Three kinds of masks, all on the image's own grid and chunking:

- a raster or volume file on the same grid: nonzero is valid;
- ``otsu``: a foreground mask thresholded by Otsu's method on a small overview (the
  coarsest pyramid level that is still large enough, else a decimated read), cleaned
  morphologically and upsampled by nearest neighbour. The rule: on RGB images
  (brightfield slides) the foreground is *darker* than the threshold (tissue on bright
  glass); on single-band images and volumes (MRI, CT, fluorescence) it is *brighter*
  (signal on a dark background);
- a vector file (GeoPackage, GeoJSON, Shapefile; any CRS) for georeferenced images:
  an area of interest, rasterised per chunk (a pixel is inside when its centre is).

The mask is applied to the feature cube (:func:`apply_mask`): masked pixels become NaN,
hence invalid in every later stage, and a chunk that the mask leaves wholly out is a
constant NaN block that depends on no read: its pixels are never read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..errors import InputError, first_line

__all__ = ["UserMask", "open_mask", "apply_mask", "otsu_foreground", "otsu_overview"]

#: the Otsu mask is computed on the coarsest pyramid level (or a decimated read) whose
#: long side is at least this many pixels
OTSU_SIDE = 256
#: components smaller than 1 / SPECK of the Otsu overview are dropped as specks
SPECK = 10000


@dataclass
class UserMask:
    """A lazy validity mask on an image's grid.

    Attributes
    ----------
    data : dask.array.Array of bool
        True where valid; spatial shape and chunks of the image.
    kind : str
        ``"file"``, ``"otsu"`` or ``"vector"``.
    chunk_any : ndarray of bool or None
        Per chunk (spatial chunk grid): whether any pixel of it is valid. ``None``
        until known (a mask file must be read first: :meth:`summaries`).
    info : dict
        What ``report.json`` says of the mask.
    """

    data: da.Array = field(repr=False)
    kind: str
    chunk_any: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    valid_fraction: float | None = None

    def summaries(self) -> Any:
        """Return the lazy per-chunk valid-pixel counts (for the orchestrator to compute)."""
        # da.map_blocks: what the method calls (the method is typed as the function)
        return da.map_blocks(_count_block, self.data, dtype=np.int64,
                             chunks=tuple((1,) * len(c) for c in self.data.chunks))

    def summarised(self, counts: np.ndarray) -> None:
        """Take the computed :meth:`summaries`: ``chunk_any`` and ``valid_fraction``."""
        self.chunk_any = np.asarray(counts) > 0
        self.valid_fraction = float(np.sum(counts)) / max(int(np.prod(self.data.shape)), 1)

    def rechunk(self, chunks: tuple[tuple[int, ...], ...]) -> UserMask:
        """Return the same mask on another chunking (``chunk_any`` follows when known)."""
        if chunks == self.data.chunks:
            return self
        data = self.data.rechunk(chunks)
        out = UserMask(data, self.kind, None, dict(self.info), self.valid_fraction)
        if self.chunk_any is not None:
            out.chunk_any = _rechunk_flags(self, chunks)
        return out

    def report(self) -> dict[str, Any]:
        """``report.json``'s ``mask`` entry."""
        out = {"kind": self.kind, **self.info}
        if self.chunk_any is not None:
            out["chunks_total"] = int(self.chunk_any.size)
            out["chunks_skipped"] = int((~self.chunk_any).sum())
        return out


def _count_block(block: np.ndarray) -> np.ndarray:
    return np.full((1,) * block.ndim, int(np.count_nonzero(block)), dtype=np.int64)


def _edges(chunks: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)])


def _rechunk_flags(mask: UserMask, chunks: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Per new chunk: whether an old chunk with a valid pixel overlaps it."""
    assert mask.chunk_any is not None
    old = [_edges(c) for c in mask.data.chunks]
    new = [_edges(c) for c in chunks]
    flags = np.zeros(tuple(len(c) for c in chunks), dtype=bool)
    for idx in np.ndindex(flags.shape):
        sl = []
        for axis, i in enumerate(idx):
            lo, hi = new[axis][i], new[axis][i + 1]
            first = np.searchsorted(old[axis], lo, side="right") - 1
            last = np.searchsorted(old[axis], hi, side="left")
            sl.append(slice(first, last))
        flags[idx] = bool(mask.chunk_any[tuple(sl)].any())
    return flags


# ---------------------------------------------------------------------------------
# Otsu on an overview
# ---------------------------------------------------------------------------------


def otsu_foreground(small: np.ndarray, *, darker: bool) -> tuple[np.ndarray, float]:
    """Foreground of a small image (band first) by Otsu on the band mean, cleaned.

    Parameters
    ----------
    small : ndarray, shape (band, y, x) or (band, z, y, x)
        An overview of the image; NaN where invalid.
    darker : bool
        Whether the foreground is darker than the threshold (brightfield slides).

    Returns
    -------
    (ndarray of bool, float)
        The cleaned mask (spatial shape of ``small``) and the threshold.

    Notes
    -----
    Cleaning: an opening by one pixel (voxel), holes filled, and components smaller
    than ``1 / SPECK`` of the overview dropped.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    intensity = np.nanmean(small.astype(np.float64), axis=0) if small.shape[0] > 1 \
        else small[0].astype(np.float64)
    finite = np.isfinite(intensity)
    if not finite.any() or np.ptp(intensity[finite]) == 0:
        return finite, float("nan")
    threshold = float(threshold_otsu(intensity[finite]))
    with np.errstate(invalid="ignore"):
        fg = (intensity < threshold) if darker else (intensity > threshold)
    fg &= finite
    structure = ndi.generate_binary_structure(fg.ndim, 1)
    fg = ndi.binary_opening(fg, structure)  # one-pixel dust and noise
    fg = ndi.binary_fill_holes(fg)
    labels, n = ndi.label(fg, structure)
    if n:
        # specks: a closing or a larger cut-off would also drop small real objects
        # (nuclei-sized tissue fragments: measured 5-10 % of the stain lost at 1/1000)
        sizes = np.bincount(labels.ravel())
        small_parts = sizes < max(1, fg.size // SPECK)
        small_parts[0] = True
        fg = ~small_parts[labels]
    return fg, threshold


def _upsample_block(small: np.ndarray, starts: tuple[int, ...], shape: tuple[int, ...],
                    full: tuple[int, ...]) -> np.ndarray:
    """Nearest upsampling of ``small`` to one block of the full grid."""
    index = np.ix_(*[np.minimum((np.arange(s, s + n) * m) // f, m - 1)
                     for s, n, m, f in zip(starts, shape, small.shape, full, strict=True)])
    return small[index]


def otsu_overview(source: Any, level: int = 0) -> Any:
    """Define the lazy overview Otsu's mask is computed on (the orchestrator computes it)."""
    from ._read import read_overview

    return read_overview(source, OTSU_SIDE, level=level)[0]


def _otsu_mask(small: np.ndarray, image: xr.DataArray) -> UserMask:
    nodata = image.rio.nodata
    small = small.astype(np.float32)
    if nodata is not None and not np.isnan(nodata):
        small[:, np.any(small == np.float32(nodata), axis=0)] = np.nan
    spatial = image.shape[1:]
    if small.ndim != image.ndim:
        raise InputError(f"mask: the overview of {image.attrs.get('source')} has "
                         f"{small.ndim - 1} spatial dims, the image {image.ndim - 1}")
    darker = small.shape[0] >= 3 and image.ndim == 3
    fg, threshold = otsu_foreground(small, darker=darker)
    assert image.chunks is not None  # the image is opened with Dask chunks
    chunks = image.chunks[1:]
    edges = [_edges(c) for c in chunks]
    flags = np.zeros(tuple(len(c) for c in chunks), dtype=bool)
    for idx in np.ndindex(flags.shape):
        starts = tuple(int(edges[a][i]) for a, i in enumerate(idx))
        shape = tuple(int(chunks[a][i]) for a, i in enumerate(idx))
        # the overview pixels this chunk maps to (exactly those _upsample_block picks)
        sl = tuple(slice(int(s * m // f), int(min((s + n - 1) * m // f, m - 1)) + 1)
                   for s, n, m, f in zip(starts, shape, fg.shape, spatial, strict=True))
        flags[idx] = bool(fg[sl].any())
    data = da.map_blocks(_otsu_block, fg, spatial, dtype=bool, chunks=chunks,
                         meta=np.empty((0,) * len(spatial), bool))
    info = {"threshold": threshold, "foreground": "darker" if darker else "brighter",
            "overview_shape": list(fg.shape),
            "valid_fraction": round(float(fg.mean()), 6)}
    return UserMask(data, "otsu", flags, info, float(fg.mean()))


def _otsu_block(small: np.ndarray, full: tuple[int, ...],
                block_info: dict[Any, Any] | None = None) -> np.ndarray:
    assert block_info is not None
    loc = block_info[None]["array-location"]
    starts = tuple(int(a) for a, _ in loc)
    shape = tuple(int(b - a) for a, b in loc)
    return _upsample_block(small, starts, shape, full)


# ---------------------------------------------------------------------------------
# A mask file on the same grid
# ---------------------------------------------------------------------------------


def _same_grid(path: str, mask_geometry: Any, geometry: Any) -> None:
    if mask_geometry is None or geometry is None:
        return
    if geometry.transform is not None and mask_geometry.transform is not None:
        a, b = geometry.transform, mask_geometry.transform
        if not np.allclose(tuple(a)[:6], tuple(b)[:6], rtol=1e-9, atol=1e-6 * abs(a.a)):
            raise InputError(f"mask: {path} is on another grid (transform {tuple(b)[:6]}, "
                             f"the input's {tuple(a)[:6]}); expected the input's grid")
        return
    if geometry.affine is not None and mask_geometry.affine is not None:
        a, b = np.asarray(geometry.affine), np.asarray(mask_geometry.affine)
        scale = float(np.abs(a[:3, :3]).max()) or 1.0
        if not np.allclose(a, b, atol=1e-4 * scale):
            raise InputError(f"mask: {path} is on another grid (its affine differs from "
                             "the input's); expected the input's grid")


def _file_mask(path: str, image: xr.DataArray) -> UserMask:
    from ._read import open_with_geometry

    assert image.chunks is not None  # the image is opened with Dask chunks
    chunks = image.chunks[1:]
    side = max(max(c) for c in chunks)
    m, mgeom = open_with_geometry(path, chunks=max(16, side))
    if m.shape[1:] != image.shape[1:]:
        raise InputError(f"mask: {path} has shape {tuple(m.shape[1:])}, the input "
                         f"{tuple(image.shape[1:])}; expected a mask on the input's grid")
    _same_grid(path, mgeom, image.attrs.get("geometry"))
    data = m.data[0].rechunk(chunks)
    nodata = m.rio.nodata
    valid = data != 0
    if nodata is not None and not np.isnan(nodata) and nodata != 0:
        valid &= data != np.asarray(nodata).astype(m.dtype)
    return UserMask(valid, "file", None, {"path": str(path)})


# ---------------------------------------------------------------------------------
# A vector area of interest
# ---------------------------------------------------------------------------------

_VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet")


def _vector_block(geoms: list[Any], transform: Any, block_info: dict[Any, Any] | None = None
                  ) -> np.ndarray:
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    assert block_info is not None
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    shape = (y1 - y0, x1 - x0)
    if not geoms:
        return np.zeros(shape, dtype=bool)
    t = transform * Affine.translation(x0, y0)
    return rasterize(((g, 1) for g in geoms), out_shape=shape, transform=t, fill=0,
                     dtype="uint8").astype(bool)


def _vector_mask(path: str, image: xr.DataArray) -> UserMask:
    import geopandas as gpd
    from shapely import box
    from shapely.strtree import STRtree

    geometry = image.attrs.get("geometry")
    crs = image.rio.crs if image.ndim == 3 else None
    if crs is None:
        raise InputError(f"mask: {path} is a vector file, which needs a georeferenced "
                         "input (with a CRS); expected a raster mask or otsu")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as exc:  # pyogrio raises its own errors for unreadable files
        raise InputError(f"mask: {path} is not a readable vector file ({first_line(exc)})"
                         ) from None
    if frame.crs is None:
        raise InputError(f"mask: {path} has no CRS; expected a vector file with a CRS")
    frame = frame.to_crs(crs)
    geoms = [g for g in frame.geometry if g is not None and not g.is_empty]
    transform = image.rio.transform() if geometry is None or geometry.transform is None \
        else geometry.transform
    assert image.chunks is not None  # the image is opened with Dask chunks
    chunks = image.chunks[1:]
    edges = [_edges(c) for c in chunks]
    tree = STRtree(geoms) if geoms else None
    flags = np.zeros(tuple(len(c) for c in chunks), dtype=bool)
    per_chunk: dict[tuple[int, int], list[Any]] = {}
    for i, j in np.ndindex(flags.shape):
        y0, y1 = edges[0][i], edges[0][i + 1]
        x0, x1 = edges[1][j], edges[1][j + 1]
        xs, ys = zip(*[transform * (c, r) for c, r in ((x0, y0), (x1, y0), (x0, y1),
                                                      (x1, y1))], strict=True)
        cell = box(min(xs), min(ys), max(xs), max(ys))
        hits = [] if tree is None else [geoms[k] for k in tree.query(cell, "intersects")]
        per_chunk[i, j] = hits
        flags[i, j] = bool(hits)
    blocks = [[da.from_delayed(
        dask.delayed(_vector_block, pure=True)(
            per_chunk[i, j], transform,
            block_info={None: {"array-location": [(edges[0][i], edges[0][i + 1]),
                                                  (edges[1][j], edges[1][j + 1])]}}),
        shape=(chunks[0][i], chunks[1][j]), dtype=bool)
        for j in range(len(chunks[1]))] for i in range(len(chunks[0]))]
    data = da.block(blocks)
    # the share of the image the shapes cover: the sample's expected valid fraction
    (y1, x1) = (int(edges[0][-1]), int(edges[1][-1]))
    corners = [transform * c for c in ((0, 0), (x1, 0), (0, y1), (x1, y1))]
    xs, ys = zip(*corners, strict=True)
    extent = box(min(xs), min(ys), max(xs), max(ys))
    covered = 0.0
    if geoms and extent.area > 0:
        from shapely import union_all

        covered = float(union_all(geoms).intersection(extent).area / extent.area)
    return UserMask(data, "vector", flags, {"path": str(path), "shapes": len(geoms)},
                    covered)


def open_mask(spec: str, image: xr.DataArray, *, overview: np.ndarray | None = None
              ) -> UserMask:
    """Open the run's ``mask:`` on the grid and chunks of ``image`` (lazily).

    Parameters
    ----------
    spec : str
        ``"otsu"``, a vector file (``.gpkg``, ``.geojson``, ``.shp``, ...) or a raster /
        volume path on the same grid.
    image : DataArray, shape (band, y, x) or (band, z, y, x)
        The opened input (its chunks are the mask's).
    overview : ndarray, optional
        For ``otsu``: the computed :func:`otsu_overview` of the input.

    Raises
    ------
    InputError
        A missing or unreadable mask, another shape or grid, a vector mask on an input
        without CRS.
    """
    if spec == "otsu":
        if overview is None:
            raise ValueError("otsu: compute otsu_overview(input) and pass it as overview")
        return _otsu_mask(np.asarray(overview), image)
    path = os.fspath(spec)
    if not os.path.exists(path) and "://" not in path:
        raise InputError(f"mask: {path}: no such file; expected otsu, a raster or volume "
                         "on the input's grid, or a vector file")
    if path.lower().endswith(_VECTOR_SUFFIXES) and not path.lower().endswith(".zarr"):
        return _vector_mask(path, image)
    return _file_mask(path, image)


def _nan_where_not(block: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.array(block, dtype=np.float32, copy=True)
    out[:, ~valid[0]] = np.nan  # valid: (1, ...), aligned with the feature axis
    return out


def apply_mask(features: xr.DataArray, mask: UserMask) -> xr.DataArray:
    """Make ``features`` NaN wherever ``mask`` is False (lazily).

    A chunk with no valid pixel (``mask.chunk_any``) becomes a constant NaN block that
    depends on nothing: its pixels are never read or computed.

    Parameters
    ----------
    features : DataArray, shape (feature, y, x) or (feature, z, y, x), float32
    mask : UserMask
        On the features' grid; rechunked to their chunks.
    """
    data = features.data.rechunk({0: -1})
    spatial = data.chunks[1:]
    mask = mask.rechunk(spatial)
    masked = da.map_blocks(_nan_where_not, data, mask.data[None], dtype=np.float32,
                           meta=np.empty((0,) * data.ndim, np.float32))
    if mask.chunk_any is not None and not mask.chunk_any.all():
        nf = data.shape[0]
        rows: Any = np.empty(mask.chunk_any.shape, dtype=object)
        for idx in np.ndindex(mask.chunk_any.shape):
            if mask.chunk_any[idx]:
                rows[idx] = masked.blocks[(0, *idx)]
            else:
                shape = (nf, *(spatial[a][i] for a, i in enumerate(idx)))
                rows[idx] = da.full(shape, np.nan, dtype=np.float32, chunks=shape)
        masked = da.block(_nested(rows))
    out = features.copy(data=masked)
    return out


def _nested(rows: np.ndarray) -> Any:
    """Turn an object ndarray of Dask blocks into nested lists, for ``da.block``."""
    if rows.ndim == 1:
        return list(rows)
    return [_nested(r) for r in rows]
