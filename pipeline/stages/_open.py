"""The open stage: the input, its geometry, its mask, its features and the output formats.

Nothing here reads pixels, except a mask file's per-chunk summary (one pass over the
mask alone, so that chunks it leaves out are never read) and Otsu's small overview.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import dask
import xarray as xr

from ..compute import chunk_budget, cluster_chunk
from ..config import RunConfig
from ..errors import ConfigError
from ..features import compute_features
from ..io import fit_chunk
from ..io._geometry import Geometry
from ..io._read import open_with_geometry
from ..io._sinks import SINKS
from ..io._user_mask import UserMask, apply_mask, open_mask, otsu_overview

__all__ = ["Opened", "open_input", "output_formats", "DEFAULT_FORMATS"]

log = logging.getLogger("pipeline.runner")

#: Output formats by input kind (:attr:`pipeline.io.Geometry.kind`) when the config
#: names none; plain Zarr volumes get ``[zarr, ome-zarr]``.
DEFAULT_FORMATS: dict[str, tuple[str, ...]] = {
    "gdal": ("cog", "zarr"),
    "nifti": ("nifti", "ome-zarr"),
    "dicom": ("nifti", "ome-zarr"),
    "tiff": ("ome-zarr",),
    "ome-zarr": ("ome-zarr",),
    "zarr": ("cog", "zarr"),
}


@dataclass
class Opened:
    """What the open stage gives every later stage (all lazy).

    Attributes
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x)
        The input as read (raw values).
    features : DataArray, shape (feature, ...), float32
        Its feature cube, masked by ``mask`` when there is one.
    geometry : Geometry
    mask : UserMask or None
    formats : tuple of str
        The output formats, checked against the image's dims.
    """

    image: xr.DataArray
    features: xr.DataArray
    geometry: Geometry
    mask: UserMask | None
    formats: tuple[str, ...]

    @property
    def raw(self) -> xr.DataArray | None:
        """The image for kernels that read raw bands; None where a mask must apply."""
        return self.image if self.mask is None else None


def output_formats(config: RunConfig, geometry: Geometry) -> tuple[str, ...]:
    """Return the run's output formats: the config's, else the input kind's defaults.

    Raises
    ------
    ConfigError
        A format that cannot hold the image (``cog`` for a volume), or polygons of a
        volume.
    """
    formats: tuple[str, ...]
    if config.formats is not None:
        formats = tuple(config.formats)
    else:
        formats = DEFAULT_FORMATS.get(geometry.kind, ("cog", "zarr"))
        if geometry.is_volume and "cog" in formats:
            formats = ("zarr", "ome-zarr")
    for f in formats:
        spec = SINKS[f]
        if geometry.is_volume and not spec.volumes:
            raise ConfigError(f"formats: {f} cannot hold a volume (z, y, x); expected "
                              + ", ".join(n for n, s in SINKS.items() if s.volumes))
        if not geometry.is_volume and not spec.images:
            raise ConfigError(f"formats: {f} cannot hold a 2-D image; expected "
                              + ", ".join(n for n, s in SINKS.items() if s.images))
    if geometry.is_volume and config.postprocess.polygons:
        raise ConfigError("postprocess.polygons: polygons are 2-D; a volume (z, y, x) has "
                          "none (remove polygons, or read the segment table)")
    return formats


def _check_postprocess(config: RunConfig, geometry: Geometry) -> None:
    pp = config.postprocess
    radius = pp.majority.radius
    if isinstance(radius, list) and len(radius) != geometry.ndim:
        raise ConfigError(f"postprocess.majority.radius: {len(radius)} radii for the "
                          f"dims {geometry.dims}; expected {geometry.ndim}")
    if pp.segments is not None:
        pp.segments.for_ndim(geometry.ndim)  # raises ConfigError naming the key
    size = pp.min_size
    if size is not None and not isinstance(size, int):
        want = "volume" if geometry.is_volume else "area"
        if not hasattr(size, want):
            got = "area" if hasattr(size, "area") else "volume"
            raise ConfigError(f"postprocess.min_size: {{{got}: ...}} on "
                              f"{'a volume' if geometry.is_volume else 'a 2-D image'}; "
                              f"expected a voxel count or {{{want}: ...}}")


def _bytes_per_pixel(image: xr.DataArray, features: xr.DataArray) -> int:
    """Return one pixel's working set in the label pass, in bytes.

    Its bands as read and as float32, its features with their standardised copy,
    its labels and scratch.
    """
    return (image.sizes["band"] * (image.dtype.itemsize + 4)
            + features.sizes["feature"] * 8 + 16)


def _read(config: RunConfig, chunks: int | None) -> tuple[xr.DataArray, Geometry]:
    return open_with_geometry(config.input, chunks=chunks, nodata=config.nodata,
                              level=config.input_level, input_errors=config.input_errors)


def open_input(config: RunConfig, *, summarise: bool = True) -> Opened:
    """Open the input lazily, with its mask and features, and choose the formats.

    Without ``chunks`` in the config, the chunks follow the file's tiles (about 1024
    pixels) unless a chunk's working set would not fit the workers' memory: many
    bands or features halve them (:func:`~pipeline.io.fit_chunk`).

    Parameters
    ----------
    summarise : bool
        Compute a mask file's per-chunk summary now (one pass over the mask), so that
        chunks it leaves out are never read. ``False`` (a dry run) computes nothing.

    Raises
    ------
    PipelineError
        Unreadable input or mask, a mask on another grid, a format or a
        post-processing option the image's dims do not allow.
    """
    image, geometry = _read(config, config.chunks)
    features = compute_features(image, config.features)
    if config.chunks is None and not geometry.is_volume:
        assert image.chunks is not None  # read with Dask chunks
        side = max(image.chunks[1][0], image.chunks[2][0])
        wanted = min(cluster_chunk(side, config.compute), max(image.shape[1:]))
        fitted = fit_chunk(wanted, _bytes_per_pixel(image, features),
                           chunk_budget(config.compute))
        if fitted < wanted:
            log.info("chunks of %d pixels instead of %d: %d features a pixel", fitted,
                     wanted, features.sizes["feature"])
        elif wanted > side:
            log.info("chunks of %d pixels on a cluster (%d locally): fewer blocks for this "
                     "process to coordinate; `chunks:` sets the side", wanted, side)
        if fitted != side:
            image, geometry = _read(config, fitted)
            features = compute_features(image, config.features)
    # the NGFF version ome-zarr outputs are written in (read by the sink from `extra`)
    ngff = config.ngff_version or geometry.extra.get("ngff_version") or "0.4"
    geometry = replace(geometry, extra={**geometry.extra, "ngff_version": ngff})
    formats = output_formats(config, geometry)
    _check_postprocess(config, geometry)
    mask = None
    if config.mask is not None:
        overview = None
        if config.mask == "otsu":  # a small overview: the coarsest pyramid level
            (overview,) = dask.compute(otsu_overview(config.input, config.input_level))
        mask = open_mask(config.mask, image, overview=overview)
        if mask.chunk_any is None and summarise:
            (counts,) = dask.compute(mask.summaries())
            mask.summarised(counts)
        features = apply_mask(features, mask)
        if mask.chunk_any is not None:
            log.info("mask (%s): %d of %d chunks hold no valid pixel and are not read",
                     mask.kind, int((~mask.chunk_any).sum()), mask.chunk_any.size)
    return Opened(image, features, geometry, mask, formats)


def describe_formats(formats: tuple[str, ...], stems: list[str]) -> list[str]:
    """Return the raster outputs' file names: each stem in each format."""
    from ..io._sinks import output_name

    return [output_name(f, stem) for stem in stems for f in formats]


def masked_run(opened: Opened) -> dict[str, Any] | None:
    """``report.json``'s ``mask`` entry, or None without a mask."""
    return None if opened.mask is None else opened.mask.report()
