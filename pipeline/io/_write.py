"""Label writers, streaming computed blocks to a COG and a Zarr store.

One object receives computed label blocks and streams them to a tiled GeoTIFF (made a
Cloud-Optimized GeoTIFF when complete: :mod:`._cog`), a Zarr v3 store and the other
formats' sinks (:mod:`._sinks`).

The writer never computes anything: the orchestrator computes blocks (threads or a
``dask.distributed`` cluster) and hands each finished block to ``writer[region] = block``.
On a cluster, workers do their share of a block where they can (:func:`store_part`):
they write its Zarr chunk when they see the store, and encode its COG tiles
(:mod:`._cog_tiles`); what they send back (tiles, counts, blocks the other formats
need) goes to :meth:`LabelWriter.add`, in the process that owns the COG and sinks.
"""

from __future__ import annotations

import colorsys
import contextlib
import os
import shutil
import threading
import uuid
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numba
import numpy as np
import xarray as xr

from ..errors import writing
from ._cog import CogStream
from ._cog_tiles import TileAssembler, TileGrid, block_tiles

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

__all__ = ["LabelWriter", "palette", "label_dtype", "store_part", "can_read_back",
           "LABEL_FORMATS"]

LABEL_FORMATS = ("cog", "zarr")
#: zarr-python checks every written chunk against the fill value to skip empty ones,
#: which costs more than compressing it (8.3 ms against 3.5 ms a 1024^2 uint8 chunk);
#: an all-nodata chunk compresses to a few bytes, so write them all.
ZARR_WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


def label_dtype(n_classes: int) -> tuple[np.dtype, int]:
    """Return the label dtype and its nodata value for ``n_classes`` classes.

    uint8 (nodata 255) up to 255 classes, else uint16 (nodata 65535).
    """
    if n_classes <= 255:
        return np.dtype(np.uint8), 255
    if n_classes <= 65535:
        return np.dtype(np.uint16), 65535
    raise ValueError(f"at most 65535 classes are supported, got {n_classes}")


def palette(n: int) -> dict[int, tuple[int, int, int, int]]:
    """Return ``n`` distinct, deterministic RGBA colours (golden-angle hues)."""
    colours = {}
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.25 * ((i // 3) % 2)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        colours[i] = (round(r * 255), round(g * 255), round(b * 255), 255)
    return colours


def can_read_back(formats: tuple[str, ...] | list[str]) -> bool:
    """Whether a writer of ``formats`` can read its finished raster back (COG or Zarr)."""
    return "cog" in formats or "zarr" in formats


def regular_chunks(chunks: tuple[tuple[int, ...], ...]) -> bool:
    """Whether Dask chunks map one to one onto a Zarr chunk grid (all equal, last smaller)."""
    return all(len(set(c[:-1])) <= 1 and c[-1] <= c[0] for c in chunks)



class LabelWriter:
    """Stream label blocks into ``labels.tif`` (COG) and/or ``labels.zarr``.

    Parameters
    ----------
    directory : path
        Where the outputs go (the orchestrator's staging directory).
    template : DataArray, shape (y, x)
        The lazy label array: its dtype, chunks, coordinates and ``rio`` georeferencing
        are copied; its data are not computed.
    nodata : int
        The label written for invalid pixels.
    n_classes : int, optional
        Number of classes of a class map: adds a colour table and the histogram
        :attr:`counts`. ``None`` for ID rasters (segments).
    formats : sequence of {"cog", "zarr"}
        Outputs to write.
    stem : str
        File stem: ``labels`` gives ``labels.tif`` and ``labels.zarr``.
    predictor : bool
        Horizontal differencing (TIFF predictor 2) before DEFLATE in the COG: for
        rasters of measured values (confidence). Off for class and segment IDs, which
        differencing does not shrink: the COG of 16384^2 uint8 classes came out 12 %
        larger with it, and encoding uint32 segment IDs took 3.98 s with it against
        1.32 s without (files 31 and 28 MiB).
    assembled : bool
        Write the COG from encoded tiles (:mod:`._cog_tiles`) instead of streaming
        blocks and encoding them at the end: for blocks computed on a cluster, whose
        workers encode their tiles (:meth:`remote`), so that no block comes back to
        this process for the COG. The file is the same, byte for byte.

    Notes
    -----
    Use as ``writer[ys, xs] = block`` for every block, then :meth:`close`. Blocks may
    arrive in any order; :attr:`counts` accumulates the histogram of written labels
    (nodata last), so per-class pixel counts cost no extra pass.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        template: xr.DataArray,
        *,
        nodata: int,
        n_classes: int | None = None,
        formats: tuple[str, ...] = LABEL_FORMATS,
        stem: str = "labels",
        predictor: bool = False,
        geometry: Any = None,
        class_names: list[str] | None = None,
        readable: bool = False,
        reopen: bool = False,
        assembled: bool = False,
    ) -> None:
        self.directory = Path(directory)
        #: a resume's :class:`~pipeline.stages._resume.Ledger`: each Zarr chunk written
        #: is recorded in it once its write has returned
        self.ledger: Any = None
        self.stem = stem
        self.predictor = predictor
        self.nodata = nodata
        self.n_classes = n_classes
        self.formats = tuple(formats)
        self.dtype = np.dtype(template.dtype)
        self.counts = None if n_classes is None else np.zeros(n_classes + 1, dtype=np.int64)
        self.blocks_written = 0
        self._token = uuid.uuid4().hex  # names this store in the workers' handle cache
        self._lock = threading.Lock()
        self._cog: CogStream | None = None
        self._tiles: TileAssembler | None = None
        self._zarr: Any = None
        self._chunks = template.chunks or tuple((n,) for n in template.shape)
        self._chunk_side = max(self._chunks[-2][0], self._chunks[-1][0])
        if "cog" in self.formats and template.ndim != 2:
            raise ValueError(f"{stem}: a COG holds a 2-D raster, not dims {template.dims}")
        # the other formats' sinks (NIfTI, OME-Zarr, ...: pipeline.io._sinks)
        with writing(self.directory):
            self._sinks = self._open_sinks(template, geometry, class_names)
        self._streams_kept = False  # the finished stream and overviews are still on disk
        self._finished = False  # every block written: read_back may read the raster
        self._encoded = False  # the COG is written
        if "cog" in self.formats and assembled:
            height, width = template.shape
            self._tiles = TileAssembler(
                self.directory / f"{stem}.tif",
                TileGrid.of(height, width, self.dtype, nodata, predictor), template,
                None if n_classes is None else self.colormap())
        elif "cog" in self.formats:
            self._cog = CogStream(
                self.directory, stem, template, dtype=self.dtype, nodata=nodata,
                chunk_side=self._chunk_side, predictor=predictor,
                colormap=None if n_classes is None else self.colormap())
        # where the Zarr chunks go: the output store, or a hidden one kept only for
        # read_back (removed by close) when `readable` is asked of other formats
        self._zarr_path = self.directory / f"{self.stem}.zarr"
        self._zarr_hidden = False
        if "zarr" in self.formats:
            with writing(self._zarr_path):
                self._zarr = (reopen and self._reopen_zarr(template)) \
                    or self._create_zarr(template)
        elif readable and self._cog is None and self._tiles is None:
            self._zarr_path = self.directory / f".{self.stem}.readback.zarr"
            self._zarr_hidden = True
            with writing(self._zarr_path):
                self._zarr = (reopen and self._reopen_zarr(template)) \
                    or self._create_hidden_zarr(template)

    def _reopen_zarr(self, template: xr.DataArray) -> Any:
        """Open the store a killed run left (``--resume``), if it fits; else delete it."""
        if not self._zarr_path.exists():
            return None
        import zarr

        try:
            array = zarr.open_array(store=str(self._zarr_path), path=self.stem, mode="r+")
            fits = (tuple(array.shape) == tuple(template.shape) and array.dtype == self.dtype
                    and tuple(array.chunks) == tuple(c[0] for c in self._chunks))
        except Exception:  # noqa: BLE001 - a torn store is written again
            fits = False
        if not fits:
            shutil.rmtree(self._zarr_path, ignore_errors=True)
            return None
        if hasattr(array, "with_config"):  # zarr >= 3.1 (open_array drops `config`)
            array = array.with_config(ZARR_WRITE_CONFIG)
        return array

    def read_chunk(self, region: tuple[slice, ...]) -> np.ndarray | None:
        """Read one chunk of this writer's Zarr store (None if it has none or it fails)."""
        if self._zarr is None:
            return None
        try:
            return np.asarray(self._zarr[region])
        except Exception:  # noqa: BLE001 - a corrupt chunk is computed again
            return None

    def _create_hidden_zarr(self, template: xr.DataArray) -> Any:
        """Create a bare Zarr array of the raster's chunks, for :meth:`read_back` only."""
        import zarr

        if not regular_chunks(self._chunks):
            raise ValueError(f"{self.stem} has irregular chunks {self._chunks}")
        group = zarr.open_group(str(self._zarr_path), mode="w-")
        return group.create_array(self.stem, shape=template.shape,
                                  chunks=tuple(c[0] for c in self._chunks),
                                  dtype=self.dtype, fill_value=self.nodata,
                                  config=ZARR_WRITE_CONFIG)

    def _open_sinks(self, template: xr.DataArray, geometry: Any,
                    class_names: list[str] | None) -> list[Any]:
        from ._sinks import SINKS

        wanted = [factory for f in self.formats if (factory := SINKS[f].factory) is not None]
        if not wanted:
            return []
        if geometry is None:
            from ._geometry import Geometry

            geometry = template.attrs.get("geometry") or Geometry(
                dims=tuple(str(d) for d in template.dims), shape=tuple(template.shape))
        role = ("classes" if self.n_classes is not None
                else "ids" if self.nodata == 0 else "values")
        return [factory(self.directory, self.stem, geometry,
                        shape=tuple(template.shape), chunks=self._chunks,
                        dtype=self.dtype, nodata=self.nodata, role=role,
                        n_classes=self.n_classes, class_names=class_names)
                for factory in wanted]

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """Return the colour table written into the GeoTIFF (nodata transparent)."""
        cmap = palette(self.n_classes or 0)
        cmap[self.nodata] = (0, 0, 0, 0)
        return cmap

    def _create_zarr(self, template: xr.DataArray) -> Any:
        path = self.directory / f"{self.stem}.zarr"
        assert template.chunks is not None  # the labels are Dask-backed
        chunks = tuple(c[0] for c in template.chunks)
        if not regular_chunks(template.chunks):  # store chunks must match Dask's exactly
            raise ValueError(f"labels have irregular chunks {template.chunks}")
        # xarray writes the coordinates and the CRS variable; the label array itself
        # is created with zarr, empty, as xarray would describe it (xarray's
        # to_zarr(compute=False) builds a Dask store graph, and through its write lock
        # imports `distributed`: 0.3 s of every run's fixed cost)
        ds = template.rename(self.stem).to_dataset()
        ds.drop_vars(self.stem).to_zarr(path, mode="w-", zarr_format=3, consolidated=False)
        attrs = {k: v for k, v in template.attrs.items() if k != "_FillValue"}
        extra = [str(c) for c in ds[self.stem].coords if c not in ds[self.stem].dims]
        if extra:
            attrs["coordinates"] = " ".join(sorted(extra))
        # the nodata label as an attribute, not `_FillValue`: xarray would decode the
        # integer labels to float32 with NaN; users expect integer labels (Zarr v3
        # stores its own fill value, which xarray does not use as a mask)
        attrs["nodata"] = self.nodata
        import zarr  # only runs that write Zarr pay its import (0.1 s)

        return zarr.open_group(str(path), mode="r+").create_array(
            self.stem, shape=template.shape, chunks=chunks, dtype=self.dtype,
            fill_value=self.nodata, dimension_names=tuple(str(d) for d in template.dims),
            attributes=attrs,
            config=ZARR_WRITE_CONFIG)

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        """Write one block; safe to call from several threads at once.

        Only the GeoTIFF handle and the running totals are shared, and they are
        updated under a lock; Zarr chunks are separate objects (the block is one
        chunk), so they are encoded and written in parallel.
        """
        block = np.asarray(block)
        if self._zarr is not None:
            with writing(self._zarr_path):
                self._zarr[region] = block
        for sink in self._sinks:
            with writing(_sink_path(sink)):
                sink[region] = block
        self.add(region, block, self.histogram(block), sinks_written=True)

    def histogram(self, block: np.ndarray) -> np.ndarray | None:
        """Pixels per class of a block, nodata last (``None`` for ID rasters)."""
        if self.counts is None:
            return None
        return _class_counts(block, self.n_classes or 0, self.nodata)

    def remote(self, shared: bool = True) -> dict[str, Any]:
        """Return what a worker needs to do its share of a block (:func:`store_part`).

        Workers write the block's Zarr chunk themselves (chunks are separate files,
        so no lock is needed), count its classes and, for an ``assembled`` COG,
        encode its tiles; only what this process must write travels back: encoded
        tiles, or the blocks of a streamed GeoTIFF and of the other formats' sinks.
        Workers that do not share this machine's files (``shared=False``: a remote
        cluster) send every block back, and this process writes the Zarr chunks too.
        """
        remote_zarr = shared and self._zarr is not None
        # absolute: a worker of a cluster on a shared file system runs elsewhere
        return {"zarr": (str(self._zarr_path.resolve()), self.stem, self._token)
                if remote_zarr else None,
                # the block itself comes back for a streamed GeoTIFF, the other
                # formats' sinks, or Zarr chunks the workers cannot write
                "block": (self._streaming() or bool(self._sinks)
                          or (self._zarr is not None and not remote_zarr)),
                # a resume's ledger records each chunk a worker writes by its CRC
                "checksum": remote_zarr and self.ledger is not None,
                "cog": None if self._tiles is None else self._tiles.grid,
                "n_classes": self.n_classes,  # None: no counts (an ID raster)
                "nodata": self.nodata}

    def add(self, region: tuple[slice, ...], block: np.ndarray | None,
            hist: np.ndarray | None, *, zarr_written: bool = True,
            sinks_written: bool = False, record: bool = True, tiles: Any = None,
            checksum: int | None = None) -> None:
        """Record a block: its GeoTIFF tiles, its Zarr chunk unless written, its counts.

        Blocks that come back from workers (``sinks_written`` false) also go to the
        other formats' sinks here. With a :attr:`ledger`, the block's Zarr chunk is
        recorded once written (``record``: false for a chunk a resume reuses).
        ``tiles``: the block's COG tiles, encoded by a worker (:func:`store_part`);
        an ``assembled`` COG's tiles are cut from ``block`` here where not given.
        ``checksum``: the CRC-32 of a block a worker wrote and kept (for the ledger).
        """
        if not zarr_written and self._zarr is not None:
            with writing(self._zarr_path):
                self._zarr[region] = block
        if record and self.ledger is not None and self._zarr is not None \
                and (block is not None or checksum is not None):
            self.ledger.record(self.stem, region, block if checksum is None else checksum)
        if not sinks_written and block is not None:
            for sink in self._sinks:
                with writing(_sink_path(sink)):
                    sink[region] = block
        if self._tiles is not None and tiles is None and block is not None:
            tiles = block_tiles(block, region, self._tiles.grid)  # encoded outside the lock
        with self._lock:
            if self._cog is not None and self._cog.streaming:
                assert block is not None  # remote() asks the GeoTIFF's blocks back
                self._cog.write(region, block)
            if tiles is not None:
                assert self._tiles is not None
                self._tiles.add(tiles)
            if hist is not None:
                self.counts += hist
            self.blocks_written += 1

    def finish_streams(self) -> None:
        """Close the streamed GeoTIFF after the last block; :meth:`read_back` may read it.

        Then :meth:`encode_cog` and a :meth:`read_back` pass may run at the same time:
        the segments' second pass reads the uncompressed stream while the COG is
        encoded from it, and :meth:`remove_streams` deletes it afterwards.
        """
        if self._cog is not None and self._cog.streaming:
            self._cog.close_files()
            self._streams_kept = True
        if self._tiles is not None and self._tiles.open:
            self._tiles.finish()  # the COG itself: its tiles are encoded already
            self._encoded = True
        self._finished = True

    def encode_cog(self, *, keep_streams: bool = False, threads: int | None = None) -> None:
        """Encode the COG from the finished stream (once; :meth:`close` does it if not).

        The streamed GeoTIFF (tiled; ZSTD level 1 above one byte a pixel) and its
        overviews, decimated as the blocks arrived, are joined by a VRT and encoded once
        as a COG (DEFLATE level 1; predictor 2 if asked) in this one process, as GDAL
        requires; the temporary files are removed unless ``keep_streams`` (for a
        :meth:`read_back` still reading them: call :meth:`remove_streams` after it).
        ``threads`` caps GDAL's encoding threads (default: every core), for a COG
        encoded in a thread beside other work; that thread touches no Python state
        but this writer's (no warning filters: they are not thread-safe).

        Overviews use nearest resampling, GDAL's default for paletted COGs: every
        overview pixel is a real class. GDAL's ``mode`` costs about 8x as much (2.2 s
        against 0.3 s on 144 MPix) and DEFLATE level 6 about 3.5x level 1 for label
        files only 18 % smaller (measured in bench/RESULTS.md).
        """
        self.finish_streams()
        if self._cog is not None and self._streams_kept and not self._encoded:
            self._cog.encode(threads)
            self._encoded = True
        if not keep_streams:
            self.remove_streams()

    def close(self) -> list[Path]:
        """Finish every output (:meth:`encode_cog`, Zarr metadata) and return their paths."""
        self.encode_cog()
        outputs = [self.directory / f"{self.stem}.tif"] if self._encoded else []
        for sink in self._sinks:
            with writing(_sink_path(sink)):
                outputs += sink.close()
        self._sinks = []
        if self._zarr is not None and self._zarr_hidden:
            self._zarr = None
            shutil.rmtree(self._zarr_path, ignore_errors=True)
        elif self._zarr is not None:
            self._zarr = None
            path = self._zarr_path
            with warnings.catch_warnings():
                # consolidated metadata is a zarr-python extension of Zarr v3; with it,
                # xarray.open_zarr(path) opens the store quietly and in one read
                import zarr
                from zarr.errors import ZarrUserWarning

                warnings.simplefilter("ignore", ZarrUserWarning)
                with writing(path):
                    zarr.consolidate_metadata(str(path))
            outputs.append(path)
        return outputs

    def remove_streams(self) -> None:
        """Delete the streamed GeoTIFF and overviews (``encode_cog(keep_streams=True)``)."""
        if self._cog is not None and self._streams_kept:
            self._cog.remove()
            self._streams_kept = False

    @property
    def readable(self) -> bool:
        """Whether :meth:`read_back` can read the raster (a COG or a Zarr store, maybe hidden)."""
        return (self._cog is not None or self._tiles is not None
                or self._zarr_path.exists())

    def read_back(self) -> Any:
        """Return the finished raster, read back lazily: a Dask array chunked as given.

        After :meth:`finish_streams` or :meth:`close`: the streamed GeoTIFF while it is
        kept (uncompressed for bytes: cheaper to read than the COG), else the COG if
        written, else the Zarr store (whose chunks are complete once the blocks are
        written). A second pass over a class map (segments) reads it at a fraction of
        the cost of computing it again.
        """
        import dask.array as da

        if not self._finished:
            raise RuntimeError(f"{self.stem}: close the writer before reading it back")
        if self._cog is not None or self._tiles is not None:
            from ._read import open_image

            path = (self._cog.stream_path if self._cog is not None and self._streams_kept
                    else self.directory / f"{self.stem}.tif")
            image = open_image(path, chunks=self._chunk_side)
            return image.data[0].rechunk(self._chunks)
        return da.from_zarr(str(self._zarr_path), component=self.stem, chunks=self._chunks)

    def abort(self) -> None:
        """Close open handles without finishing (the caller removes the directory)."""
        if self._streaming():
            assert self._cog is not None
            with contextlib.suppress(Exception):  # a full disk fails the flush again
                self._cog.close_files()
        if self._tiles is not None:
            self._tiles.abort()
        self._zarr = None
        for sink in self._sinks:
            sink.abort()
        self._sinks = []

    def _streaming(self) -> bool:
        return self._cog is not None and self._cog.streaming


def _sink_path(sink: Any) -> Path:
    """Return the file or store a sink writes (named in its write errors)."""
    return Path(getattr(sink, "path", "") or ".")


@numba.njit(cache=True, nogil=True)
def _count_labels(labels, n_classes, nodata):  # pragma: no cover - compiled
    # np.bincount widens every label to int64 first (8 MB per 1024^2 uint8 block);
    # four interleaved histograms keep consecutive equal labels from waiting on
    # each other's increment
    size = max(n_classes, nodata + 1)
    hist = np.zeros((4, size), dtype=np.int64)
    n = labels.size
    m = n - n % 4
    for i in range(0, m, 4):
        hist[0, labels[i]] += 1
        hist[1, labels[i + 1]] += 1
        hist[2, labels[i + 2]] += 1
        hist[3, labels[i + 3]] += 1
    for i in range(m, n):
        hist[0, labels[i]] += 1
    counts = np.zeros(n_classes + 1, dtype=np.int64)
    for r in range(4):
        for c in range(n_classes):
            counts[c] += hist[r, c]
        counts[n_classes] += hist[r, nodata]
    return counts


def _class_counts(block: np.ndarray, n_classes: int, nodata: int) -> np.ndarray:
    """Pixels of each class ``0 .. n_classes - 1`` of a label block, nodata last."""
    if block.dtype.kind == "u" and nodata == np.iinfo(block.dtype).max:
        return _count_labels(np.ravel(block), n_classes, nodata)  # every value in range
    counts = np.bincount(block.ravel(), minlength=max(n_classes, nodata + 1))
    return np.append(counts[:n_classes], counts[nodata])


#: Zarr arrays opened by this (worker) process, by (path, name, writer token).
_open_stores: dict[tuple[str, str, str], Any] = {}


def crc(block: np.ndarray) -> int:
    """CRC-32 of a block's bytes (a resume's ledger checks its Zarr chunks with it)."""
    return zlib.crc32(np.ascontiguousarray(block).data) & 0xFFFFFFFF


class BlockShare(NamedTuple):
    """What :func:`store_part` sends back to the writer's process for one block."""

    block: np.ndarray | None  # the block, where that process writes it
    hist: np.ndarray | None  # pixels per class (class maps)
    tiles: Any  # the encoded COG tiles (:class:`~._cog_tiles.BlockTiles`), or None
    checksum: int | None  # CRC-32 of a Zarr chunk written here (a resume's ledger)


def store_part(block: np.ndarray, region: tuple[slice, ...], remote: dict[str, Any]
               ) -> BlockShare:
    """Do a worker's share of writing one block (see :meth:`LabelWriter.remote`).

    Writes the Zarr chunk, counts the classes, encodes the COG tiles, and returns
    what the writer's process still needs (:class:`BlockShare`).
    """
    block = np.asarray(block)
    if remote["zarr"] is not None:
        array = _open_stores.get(remote["zarr"])
        if array is None:  # one handle per store and worker process
            if len(_open_stores) >= 16:  # a long-lived worker: forget finished runs
                _open_stores.clear()
            path, name, _ = remote["zarr"]
            import zarr

            array = zarr.open_array(store=path, path=name, mode="r+")
            if hasattr(array, "with_config"):  # zarr >= 3.1 (open_array drops `config`)
                array = array.with_config(ZARR_WRITE_CONFIG)
            _open_stores[remote["zarr"]] = array
        with writing(remote["zarr"][0]):
            array[region] = block
    checksum = crc(block) if remote["checksum"] else None
    hist = None
    if remote["n_classes"] is not None:
        hist = _class_counts(block, remote["n_classes"], remote["nodata"])
    tiles = None if remote["cog"] is None else block_tiles(block, region, remote["cog"])
    return BlockShare(block if remote["block"] else None, hist, tiles, checksum)
