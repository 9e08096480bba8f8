"""The COG of a label raster: streamed tile by tile, then encoded once.

Blocks arrive in any order and are written into a tiled GeoTIFF with a cheap codec,
and each block's share of every overview is decimated from it on the way
(:func:`decimate`): no pass reads the raster back to build them. When the last block
is in, a VRT joins the stream and its overviews, and GDAL encodes it once as a
Cloud-Optimized GeoTIFF (:meth:`CogStream.encode`).
"""

from __future__ import annotations

import functools
import uuid
import warnings
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
import xarray as xr
from rasterio.transform import Affine

from ..errors import writing
from ._gdal import GDAL_TYPES

__all__ = ["CogStream", "decimate", "overview_factors"]

_TILE = 512


def _temp_compression(dtype: np.dtype) -> dict[str, Any]:
    """Creation options of the streamed GeoTIFFs the COG is encoded from.

    ZSTD level 1, compressed by GDAL's own threads, for IDs wider than a byte: against
    an uncompressed file, a 16384^2 run's uint32 segment raster wrote 1 GB less to
    disk (~30x smaller), its pass went from 7.5 to 3.7 s and the run's system time
    from 11 to 4 s. One-byte class maps stay uncompressed: compressing them made the
    label pass 0.5 s slower with threads and 4 s with worker processes (the process
    that writes them also schedules). Uncompressed where this GDAL lacks ZSTD.
    """
    if np.dtype(dtype).itemsize == 1 or not _has_zstd():
        return {"compress": "none"}
    return {"compress": "zstd", "ZSTD_LEVEL": 1, "NUM_THREADS": "ALL_CPUS"}


@functools.cache
def _has_zstd() -> bool:
    try:  # a GDAL built without libzstd refuses to create the file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(f"/vsimem/{uuid.uuid4().hex}.tif", "w", driver="GTiff",
                               width=1, height=1, count=1, dtype="uint8",
                               compress="zstd") as ds:
                ds.write(np.zeros((1, 1, 1), np.uint8))
    except rasterio.errors.RasterioError:
        return False
    return True


def _blocksize(height: int, width: int) -> int:
    side = _TILE
    while side > 16 and side // 2 >= max(height, width):
        side //= 2
    return side



def _window(region: tuple[slice, ...]) -> tuple[tuple[int, int], tuple[int, int]]:
    ys, xs = region
    return (ys.start, ys.stop), (xs.start, xs.stop)


def overview_factors(height: int, width: int) -> list[int]:
    """Decimation factors of the COG's overviews: 2, 4, ... down to about 256 pixels."""
    if max(height, width) < 2:
        return []
    factors = [2]
    while max(height, width) / (factors[-1] * 2) >= 256:
        factors.append(factors[-1] * 2)
    return factors


def decimate(block: np.ndarray, region: tuple[slice, ...], factor: int
             ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Return the part of a nearest-neighbour overview that one block holds.

    Overview pixel ``(i, j)`` at ``factor`` f is image pixel ``(f i, f j)``, so each
    overview pixel comes from exactly one block, whatever the chunking: returns the
    overview window and its pixels, or ``None`` when the block holds none. This is
    GDAL's ``nearest`` when f divides the image size; otherwise GDAL steps by the
    exact size ratio (a little under f) and may pick a neighbour of our pixel, which
    lies inside the same overview pixel's footprint all the same.
    """
    ys, xs = region
    i0, i1 = -(-ys.start // factor), -(-ys.stop // factor)
    j0, j1 = -(-xs.start // factor), -(-xs.stop // factor)
    if i1 <= i0 or j1 <= j0:
        return None
    part = block[factor * i0 - ys.start::factor, factor * j0 - xs.start::factor]
    return (slice(i0, i1), slice(j0, j1)), np.ascontiguousarray(part)


def _overview_tiles(side: int, chunk: int, factor: int) -> dict[str, int]:
    """Tile size of a streamed overview, so that a chunk's decimated part fills tiles.

    Overview tiles as large as the image's are each assembled from several chunks'
    parts, and GDAL reads back and rewrites the ones it evicted half-written: with
    these, streaming a 16384^2 uint32 raster's overviews went from 1.7 to 0.5 s.
    """
    t = min(side, max(128, chunk // factor // 16 * 16))
    return {"blockxsize": t, "blockysize": t}


class CogStream:
    """A streamed tiled GeoTIFF and its overviews, encoded once as ``{stem}.tif``.

    Parameters
    ----------
    directory : Path
        Where the stream (hidden files) and the COG go.
    stem : str
        File stem of the COG.
    template : DataArray, shape (y, x)
        Its shape and ``rio`` georeferencing are copied.
    dtype : dtype
        The blocks' dtype.
    nodata : int
        The nodata label.
    chunk_side : int
        The blocks' chunk side (sizes the overviews' tiles).
    predictor : bool
        Horizontal differencing in the COG (see :class:`~._write.LabelWriter`).
    colormap : dict, optional
        A colour table for the COG (class maps).

    Notes
    -----
    :meth:`write` is not thread-safe: :class:`~._write.LabelWriter` calls it under its
    lock.
    """

    def __init__(self, directory: Path, stem: str, template: xr.DataArray, *,
                 dtype: np.dtype, nodata: int, chunk_side: int, predictor: bool,
                 colormap: dict[int, tuple[int, int, int, int]] | None) -> None:
        self.directory = directory
        self.stem = stem
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        self.predictor = predictor
        self.colormap = colormap
        self.path = directory / f"{stem}.tif"
        self.stream_path = directory / f".{stem}.tiled.tif"
        height, width = template.shape[-2:]
        side = self.side = _blocksize(height, width)
        self.factors = overview_factors(height, width)
        # streamed with a cheap codec: the COG is encoded once, at the end, with
        # every core (encoding DEFLATE twice cost a third of the write stage)
        profile = dict(driver="GTiff", count=1, dtype=self.dtype.name, nodata=nodata,
                       tiled=True, blockxsize=side, blockysize=side, BIGTIFF="IF_SAFER",
                       **_temp_compression(self.dtype))
        crs, transform = template.rio.crs, template.rio.transform()
        self._tif: Any = None
        self._overviews: list[tuple[int, Any]] = []
        with writing(self.path):  # a write error names the COG, not its stream
            self._tif = rasterio.open(self.stream_path, "w", width=width, height=height,
                                      crs=crs, transform=transform, **profile)
            # the overviews are decimated from the blocks as they stream past: GDAL's
            # build_overviews would read the whole file back (1.1 s at 16384^2)
            for f in self.factors:
                self._overviews.append((f, rasterio.open(
                    self.overview_path(f), "w", width=-(-width // f),
                    height=-(-height // f), crs=crs, transform=transform * Affine.scale(f),
                    **{**profile, **_overview_tiles(side, chunk_side, f)})))

    @property
    def streaming(self) -> bool:
        """Whether the stream is open for blocks (until :meth:`close_files`)."""
        return self._tif is not None

    def overview_path(self, factor: int) -> Path:
        """Return the path of the streamed overview at decimation ``factor``."""
        return self.directory / f".{self.stem}.ovr{factor}.tif"

    def write(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        """Write a block's tiles and its share of every overview."""
        with writing(self.path):
            self._tif.write(block, 1, window=_window(region))
            for factor, ds in self._overviews:
                part = decimate(block, region, factor)
                if part is not None:
                    ds.write(part[1], 1, window=_window(part[0]))

    def close_files(self) -> None:
        """Close the stream and its overviews (they stay on disk)."""
        tif, self._tif = self._tif, None
        overviews, self._overviews = self._overviews, []
        with writing(self.path):  # the last tiles are flushed now
            try:
                tif.close()
            finally:
                for _, ds in overviews:
                    ds.close()

    def encode(self, threads: int | None = None) -> None:
        """Encode the COG from the closed stream (see :meth:`LabelWriter.encode_cog`)."""
        vrt = self.directory / f".{self.stem}.vrt"
        with writing(self.path):
            vrt.write_text(self.vrt())
            self._to_cog(vrt, self.path, threads)
        vrt.unlink()

    def remove(self) -> None:
        """Delete the streamed GeoTIFF and overviews."""
        for p in [self.stream_path, *(self.overview_path(f) for f in self.factors)]:
            p.unlink(missing_ok=True)

    def vrt(self) -> str:
        """Return a VRT of the streamed GeoTIFF with the streamed overviews as its own."""
        with rasterio.open(self.stream_path) as ds:
            crs, transform, (height, width) = ds.crs, ds.transform, ds.shape
        side = self.side
        lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
        if crs is not None:
            lines.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
        if crs is not None or not transform.is_identity:
            lines.append(f"  <GeoTransform>{', '.join(repr(v) for v in transform.to_gdal())}"
                         "</GeoTransform>")
        lines += ['  <Metadata><MDI key="AREA_OR_POINT">Area</MDI></Metadata>',
                  f'  <VRTRasterBand dataType="{GDAL_TYPES[self.dtype.name]}" band="1" '
                  f'blockXSize="{side}" blockYSize="{side}">',
                  f"    <NoDataValue>{self.nodata}</NoDataValue>"]
        if self.colormap is not None:
            cmap = self.colormap
            lines.append("    <ColorInterp>Palette</ColorInterp>\n    <ColorTable>")
            lines += [f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>'
                      for r, g, b, a in (cmap.get(i, (0, 0, 0, 0)) for i in range(max(cmap) + 1))]
            lines.append("    </ColorTable>")

        def source(tag: str, path: Path) -> list[str]:
            return [f"    <{tag}>",
                    f'      <SourceFilename relativeToVRT="1">{escape(path.name)}</SourceFilename>',
                    "      <SourceBand>1</SourceBand>",
                    f"    </{tag}>"]

        lines += source("SimpleSource", self.stream_path)
        for f in self.factors:
            lines += source("Overview", self.overview_path(f))
        lines += ["  </VRTRasterBand>", "</VRTDataset>"]
        return "\n".join(lines)

    def _to_cog(self, src: Path, dst: Path, threads: int | None = None) -> None:
        rasterio.shutil.copy(
            src,
            dst,
            driver="COG",
            COMPRESS="DEFLATE",
            PREDICTOR="YES" if self.predictor else "NO",
            LEVEL=1,
            BLOCKSIZE=max(self.side, 128),  # the COG driver's minimum
            OVERVIEWS="FORCE_USE_EXISTING",
            BIGTIFF="IF_SAFER",
            NUM_THREADS="ALL_CPUS" if threads is None else str(threads),
        )

