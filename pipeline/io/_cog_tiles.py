"""A COG assembled from compressed tiles: the workers encode, this process only writes.

On a ``dask.distributed`` cluster the blocks of a label raster are computed on the
workers, and so is its COG: each worker cuts its block (and the block's share of
every overview, :func:`~._cog.decimate`) into the COG's tiles and DEFLATE-encodes
each tile it holds whole (:func:`block_tiles`). Only the compressed tiles travel
back. The pieces of tiles that straddle blocks (seams of a chunking that is not a
multiple of the tile, and the small overviews, whose tiles span many blocks) come
back as pixels; a worker joins those its group of 2 x 2 blocks fills
(:func:`join_tiles`), and the rest are encoded here once complete
(:class:`TileAssembler`): with 2048-pixel chunks, the overviews from factor 16 on,
1/192 of the pixels.

The COG is then written in GDAL's layout, byte for byte the structure its COG driver
writes: the structural metadata ("ghost area"), every IFD before any tile, the
smallest overview's tiles first, each tile with its size before it and its last four
bytes repeated after it. GDAL (and so rasterio) reports it as ``LAYOUT=COG``. tifffile
writes tiled TIFFs from encoded tiles but not in this layout, and GDAL cannot be
given encoded tiles: the layout is written here by hand (:func:`write_cog`); the
georeferencing and colour-table tags are GDAL's own, copied from a template it
writes (:func:`_gdal_tags`).

Tiles are encoded with libdeflate (imagecodecs) at level 1, as GDAL's COG driver
encodes them in :class:`~._cog.CogStream`: the same pixels give the same tile bytes
whichever process encodes them and however the raster was chunked.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import writing
from ._cog import _blocksize, decimate, overview_factors

__all__ = ["BlockTiles", "TileAssembler", "TileGrid", "block_tiles", "encode_tile",
           "join_tiles"]

#: the tiles of a COG, as its COG driver's BLOCKSIZE (at least 128)
_MIN_TILE = 128

_GHOST = (b"LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
          b"BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n ")

# TIFF field types: (code, struct format of one value)
_SHORT, _LONG, _LONG8 = 3, 4, 16
_FORMATS = {1: "B", 2: "s", 3: "H", 4: "I", 5: "II", 6: "b", 7: "B", 8: "h", 9: "i",
            10: "ii", 11: "f", 12: "d", 16: "Q", 17: "q"}
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}
#: tags copied from GDAL's template: photometric, colour table, georeferencing,
#: GDAL's metadata and nodata
_COPIED = (262, 320, 33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)
#: of those, the ones every overview's IFD carries too (as GDAL writes them)
_PER_LEVEL = (262, 320, 42113)


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a COG: its size, tile side, overview factors and pixel type.

    Level 0 is the full resolution; level ``i`` the overview at ``factors[i - 1]``.
    """

    height: int
    width: int
    dtype: str
    nodata: int
    predictor: bool
    side: int
    factors: tuple[int, ...]

    @classmethod
    def of(cls, height: int, width: int, dtype: Any, nodata: int, predictor: bool = False
           ) -> TileGrid:
        """Return the grid :class:`~._cog.CogStream` gives a raster of this size."""
        return cls(height, width, np.dtype(dtype).name, int(nodata), bool(predictor),
                   max(_blocksize(height, width), _MIN_TILE),
                   tuple(overview_factors(height, width)))

    def shape(self, level: int) -> tuple[int, int]:
        """Pixels of ``level`` (overviews round up, as GDAL's do)."""
        f = 1 if level == 0 else self.factors[level - 1]
        return -(-self.height // f), -(-self.width // f)

    def tiles(self, level: int) -> tuple[int, int]:
        """Tile rows and columns of ``level``."""
        h, w = self.shape(level)
        return -(-h // self.side), -(-w // self.side)

    @property
    def n_levels(self) -> int:
        """Full resolution and overviews."""
        return 1 + len(self.factors)


def encode_tile(pixels: np.ndarray, grid: TileGrid) -> bytes:
    """One tile as the COG stores it: padded with zeros to the full side, DEFLATE.

    ``pixels`` may be smaller than the tile (the image's last row and column of
    tiles); predictor 2 (horizontal differencing) first where ``grid.predictor``.
    """
    import imagecodecs

    t = grid.side
    # zeros, as GDAL pads the image's last tiles: the same pixels, the same bytes
    tile = np.zeros((t, t), dtype=np.dtype(grid.dtype).newbyteorder("<"))
    tile[:pixels.shape[0], :pixels.shape[1]] = pixels
    if grid.predictor:  # on the words as unsigned integers, as libtiff differences them
        tile = imagecodecs.delta_encode(tile.view(f"<u{tile.itemsize}"), axis=-1)
    if imagecodecs.DEFLATE.available:
        return bytes(imagecodecs.deflate_encode(tile.tobytes(), level=1))
    # an imagecodecs built without libdeflate: zlib, the same format (other bytes)
    return zlib.compress(tile.tobytes(), 1)


@dataclass
class BlockTiles:
    """What one block gives its COG: tiles it holds whole, encoded; pieces of others.

    ``complete``: ``(level, row, col, bytes)``; ``parts``: ``(level, row, col, rows,
    cols, pixels)``, the window given in the tile's own pixels.
    """

    complete: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    parts: list[tuple[int, int, int, slice, slice, np.ndarray]] = field(default_factory=list)


def block_tiles(block: np.ndarray, region: tuple[slice, ...], grid: TileGrid) -> BlockTiles:
    """Cut a block and its overview shares into COG tiles (on a worker).

    Tiles whose pixels all lie in the block are encoded (:func:`encode_tile`); the
    pieces of the others are returned as pixels, for :class:`TileAssembler`.
    """
    out = BlockTiles()
    shares: list[tuple[int, tuple[slice, ...], np.ndarray]] = [(0, region, block)]
    for level, factor in enumerate(grid.factors, start=1):
        part = decimate(block, region, factor)
        if part is not None:
            shares.append((level, part[0], part[1]))
    t = grid.side
    for level, (ys, xs), pixels in shares:
        h, w = grid.shape(level)
        for ty in range(ys.start // t, (ys.stop - 1) // t + 1):
            y0, y1 = ty * t, min(ty * t + t, h)
            a0, a1 = max(y0, ys.start), min(y1, ys.stop)
            for tx in range(xs.start // t, (xs.stop - 1) // t + 1):
                x0, x1 = tx * t, min(tx * t + t, w)
                b0, b1 = max(x0, xs.start), min(x1, xs.stop)
                piece = pixels[a0 - ys.start:a1 - ys.start, b0 - xs.start:b1 - xs.start]
                if (a0, a1, b0, b1) == (y0, y1, x0, x1):
                    out.complete.append((level, ty, tx, encode_tile(piece, grid)))
                else:
                    out.parts.append((level, ty, tx, slice(a0 - y0, a1 - y0),
                                      slice(b0 - x0, b1 - x0), np.ascontiguousarray(piece)))
    return out


def join_tiles(shares: list[BlockTiles | None], grid: TileGrid) -> BlockTiles:
    """Join what neighbouring blocks give a COG (on a worker): tiles their pieces fill.

    The tiles every block holds whole are kept as they are; the pieces of tiles that
    straddle blocks are put together, and each tile they fill (pieces of different
    blocks never overlap) is encoded here. Pieces of tiles that other blocks share too
    are left as pieces (for :class:`TileAssembler`).
    """
    out = BlockTiles()
    pieces: dict[tuple[int, int, int], list[tuple[slice, slice, np.ndarray]]] = {}
    for share in shares:
        if share is None:
            continue
        out.complete.extend(share.complete)
        for level, ty, tx, rows, cols, pixels in share.parts:
            pieces.setdefault((level, ty, tx), []).append((rows, cols, pixels))
    t = grid.side
    for (level, ty, tx), parts in pieces.items():
        h, w = grid.shape(level)
        shape = (min(t, h - ty * t), min(t, w - tx * t))
        if sum(p.size for _, _, p in parts) < shape[0] * shape[1]:
            out.parts.extend((level, ty, tx, rows, cols, p) for rows, cols, p in parts)
            continue
        tile = np.empty(shape, dtype=grid.dtype)
        for rows, cols, p in parts:
            tile[rows, cols] = p
        out.complete.append((level, ty, tx, encode_tile(tile, grid)))
    return out


class TileAssembler:
    """Collects a raster's encoded tiles in a spool file and writes its COG at the end.

    Parameters
    ----------
    path : Path
        The COG to write.
    grid : TileGrid
    template : DataArray
        Its ``rio`` CRS and transform georeference the COG.
    colormap : dict, optional
        A colour table (class maps).
    bigtiff : bool, optional
        Force BigTIFF (True) or classic TIFF (False); by default BigTIFF only where
        the file needs it.

    Notes
    -----
    Not thread-safe: :class:`~._write.LabelWriter` calls it under its lock.
    """

    def __init__(self, path: Path, grid: TileGrid, template: Any,
                 colormap: dict[int, tuple[int, int, int, int]] | None,
                 bigtiff: bool | None = None) -> None:
        self.path = Path(path)
        self.bigtiff = bigtiff
        self.grid = grid
        self.spool_path = self.path.parent / f".{self.path.stem}.tiles"
        self.tags = _gdal_tags(grid, template.rio.crs, template.rio.transform(), colormap)
        self._where: dict[tuple[int, int, int], tuple[int, int]] = {}
        self._partial: dict[tuple[int, int, int], list[Any]] = {}
        self._size = 0
        self.encoded_here = 0  # tiles encoded in this process (assembled from pieces)
        with writing(self.path):
            self._spool: BinaryIO | None = open(self.spool_path, "wb")  # noqa: SIM115

    @property
    def open(self) -> bool:
        """Whether tiles may still be added (until :meth:`finish`)."""
        return self._spool is not None

    def add_block(self, block: np.ndarray, region: tuple[slice, ...]) -> None:
        """Cut and encode a block here (a block that came back whole, or a resume's)."""
        self.add(block_tiles(block, region, self.grid))

    def add(self, tiles: BlockTiles) -> None:
        """Spool a block's encoded tiles; assemble its pieces, encoding completed tiles."""
        self._put([((level, ty, tx), data) for level, ty, tx, data in tiles.complete])
        t = self.grid.side
        for level, ty, tx, rows, cols, pixels in tiles.parts:
            key = (level, ty, tx)
            slot = self._partial.get(key)
            if slot is None:
                h, w = self.grid.shape(level)
                tile = np.full((min(t, h - ty * t), min(t, w - tx * t)), self.grid.nodata,
                               dtype=self.grid.dtype)
                slot = self._partial[key] = [tile, tile.size]
            slot[0][rows, cols] = pixels
            slot[1] -= pixels.size
            if slot[1] == 0:
                del self._partial[key]
                self._put([(key, encode_tile(slot[0], self.grid))])
                self.encoded_here += 1

    def _put(self, tiles: list[tuple[tuple[int, int, int], bytes]]) -> None:
        """Spool encoded tiles (one write for a block's tiles)."""
        if not tiles:
            return
        for key, data in tiles:
            if key in self._where:
                raise ValueError(f"{self.path.name}: tile {key} written twice")
            self._where[key] = (self._size, len(data))
            self._size += len(data)
        assert self._spool is not None
        with writing(self.path):
            self._spool.write(b"".join(data for _, data in tiles))

    def finish(self) -> None:
        """Write the COG from the spooled tiles and delete the spool."""
        if self._spool is None:
            return
        spool, self._spool = self._spool, None
        with writing(self.path):
            spool.close()
            missing = sum(r * c for r, c in map(self.grid.tiles, range(self.grid.n_levels)))
            missing -= len(self._where)
            if missing or self._partial:
                raise ValueError(f"{self.path.name}: {missing} tiles were never written")
            tmp = self.path.parent / f".{self.path.name}.part"
            with open(self.spool_path, "rb") as src, open(tmp, "wb") as dst:
                write_cog(dst, src, self.grid, self._where, self.tags, self.bigtiff)
            os.replace(tmp, self.path)
        self.spool_path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Close and delete the spool (the caller removes the directory)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self.spool_path.unlink(missing_ok=True)


def _gdal_tags(grid: TileGrid, crs: Any, transform: Any,
               colormap: dict[int, tuple[int, int, int, int]] | None
               ) -> dict[int, tuple[int, int, bytes]]:
    """GDAL's own tags for this georeferencing, nodata and colour table.

    A one-pixel GeoTIFF is written by GDAL in memory and its tags are read back raw
    (tag -> ``(type, count, little-endian value bytes)``): the GeoTIFF keys of any CRS
    are GDAL's to encode.
    """
    import rasterio
    import rasterio.errors
    import tifffile
    from rasterio.io import MemoryFile

    if crs is None and (transform is None or transform.is_identity):
        transform = None  # a picture without map coordinates: no geotransform, as the VRT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=1, height=1, count=1, dtype=grid.dtype,
                          nodata=grid.nodata, crs=crs, transform=transform) as ds:
                if colormap is not None:
                    ds.write_colormap(1, colormap)
            raw = mem.read()
    tags: dict[int, tuple[int, int, bytes]] = {}
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        for tag in tif.pages.first.tags.values():
            if tag.code in _COPIED:
                value = raw[tag.valueoffset:tag.valueoffset + tag.valuebytecount]
                tags[tag.code] = (int(tag.dtype), int(tag.count), value)
    return tags


def _entry(code: int, kind: int, values: Any) -> tuple[int, int, int, bytes]:
    fmt = _FORMATS[kind]
    values = list(values)
    return code, kind, len(values), struct.pack(f"<{len(values)}{fmt}", *values)


def _ifd_entries(grid: TileGrid, level: int, offsets: list[int], counts: list[int],
                 tags: dict[int, tuple[int, int, bytes]], big: bool
                 ) -> list[tuple[int, int, int, bytes]]:
    """Return a level's IFD entries, ``(tag, type, count, value bytes)``, in tag order."""
    h, w = grid.shape(level)
    dtype = np.dtype(grid.dtype)
    size = _SHORT if max(h, w) < 2**16 else _LONG
    entries = [
        _entry(256, size, [w]), _entry(257, size, [h]),
        _entry(258, _SHORT, [dtype.itemsize * 8]), _entry(259, _SHORT, [8]),
        _entry(277, _SHORT, [1]), _entry(284, _SHORT, [1]),
        _entry(317, _SHORT, [2 if grid.predictor else 1]),
        _entry(322, _SHORT, [grid.side]), _entry(323, _SHORT, [grid.side]),
        _entry(324, _LONG8 if big else _LONG, offsets),
        _entry(325, _LONG8 if big else _LONG, counts),
        _entry(339, _SHORT, [_SAMPLE_FORMAT[dtype.kind]]),
    ]
    if level > 0:
        entries.append(_entry(254, _LONG, [1]))  # a reduced-resolution image
    if 262 not in tags:
        entries.append(_entry(262, _SHORT, [1]))  # min-is-black
    entries += [(code, kind, count, value) for code, (kind, count, value) in tags.items()
                if level == 0 or code in _PER_LEVEL]
    return sorted(entries)


#: the tile offsets and sizes: written after every IFD, as libtiff does for GDAL
_DEFERRED = (324, 325)
_VALUE_ORDER = {42112: 1, 42113: 1}


def _pack_ifds(levels: list[list[tuple[int, int, int, bytes]]], first: int, big: bool
               ) -> bytes:
    """Every level's IFD from offset ``first``, as libtiff lays them out for GDAL.

    Each IFD is followed by its out-of-line values (word-aligned); the tile offset and
    size arrays of every level come after the last IFD, level by level.
    """
    inline = 8 if big else 4

    def head(n: int) -> int:
        return (8 + 20 * n + 8) if big else (2 + 12 * n + 4)

    def padded(value: bytes) -> bytes:
        return value + b"\0" * (len(value) % 2)

    def outside(code: int, value: bytes) -> bool:
        return len(value) > inline and code not in _DEFERRED

    ifd_at, at = [], first
    for entries in levels:
        ifd_at.append(at)
        at += head(len(entries)) + sum(len(padded(v)) for c, _, _, v in entries
                                       if outside(c, v))
    deferred: dict[tuple[int, int], int] = {}
    arrays = []
    for i, entries in enumerate(levels):
        for c, _, _, v in entries:
            if c in _DEFERRED and len(v) > inline:
                deferred[i, c] = at
                arrays.append(padded(v))
                at += len(arrays[-1])
    word = "<Q" if big else "<I"
    out = []
    for i, entries in enumerate(levels):
        where = ifd_at[i] + head(len(entries))
        out.append(struct.pack("<Q" if big else "<H", len(entries)))
        # out-of-line values in the order libtiff writes GDAL's: the baseline tags',
        # then GDAL's nodata and metadata, then the GeoTIFF keys (set at closing)
        extra, value_at = [], {}
        for c, _, _, value in sorted(entries, key=lambda e: (_VALUE_ORDER.get(e[0], 2)
                                                             if e[0] >= 33550 else 0, e[0])):
            if outside(c, value):
                value_at[c] = where
                extra.append(padded(value))
                where += len(extra[-1])
        for c, kind, count, value in entries:
            if len(value) <= inline:
                field_ = value.ljust(inline, b"\0")
            else:
                field_ = struct.pack(word, deferred[i, c] if c in _DEFERRED else value_at[c])
            out.append(struct.pack("<HHQ" if big else "<HHI", c, kind, count) + field_)
        out.append(struct.pack(word, ifd_at[i + 1] if i + 1 < len(levels) else 0))
        out += extra
    return b"".join(out + arrays)


def write_cog(dst: BinaryIO, spool: BinaryIO, grid: TileGrid,
              where: dict[tuple[int, int, int], tuple[int, int]],
              tags: dict[int, tuple[int, int, bytes]], bigtiff: bool | None = None) -> None:
    """Write a COG in GDAL's layout from tiles spooled at ``where[(level, row, col)]``.

    Header and structural metadata, every IFD (full resolution first) and the tile
    offset arrays, then the tile data: the smallest overview first, each level's
    tiles in row-major order, each with a 4-byte size before it and its last 4 bytes
    after it. BigTIFF only when a classic TIFF's 32-bit offsets cannot hold the file
    (GDAL's ``BIGTIFF=IF_SAFER``), unless ``bigtiff`` says. The same tiles give the
    file GDAL's COG driver writes, byte for byte.
    """
    levels = range(grid.n_levels)
    keys = {lv: [(lv, r, c) for r in range(grid.tiles(lv)[0]) for c in range(grid.tiles(lv)[1])]
            for lv in levels}
    counts = {lv: [where[k][1] for k in keys[lv]] for lv in levels}
    data_bytes = sum(n + 8 for _, n in where.values())
    ghost = f"GDAL_STRUCTURAL_METADATA_SIZE={len(_GHOST):06d} bytes\n".encode() + _GHOST
    for big in (False, True) if bigtiff is None else (bigtiff,):
        header = 16 if big else 8
        first_ifd = header + len(ghost) + (header + len(ghost)) % 2
        zeros = [_ifd_entries(grid, lv, [0] * len(keys[lv]), counts[lv], tags, big)
                 for lv in levels]
        data_start = first_ifd + len(_pack_ifds(zeros, first_ifd, big))
        if big or bigtiff is not None or data_start + data_bytes < 2**32:
            break
    # where each tile lands: the smallest overview's first, each after its size
    offsets: dict[tuple[int, int, int], int] = {}
    at = data_start
    for lv in reversed(levels):
        for key in keys[lv]:
            offsets[key] = at + 4
            at += where[key][1] + 8
    dst.write(struct.pack("<2sHHHQ", b"II", 43, 8, 0, first_ifd) if big
              else struct.pack("<2sHI", b"II", 42, first_ifd))
    dst.write(ghost.ljust(first_ifd - header, b"\0"))
    dst.write(_pack_ifds([_ifd_entries(grid, lv, [offsets[k] for k in keys[lv]], counts[lv],
                                       tags, big) for lv in levels], first_ifd, big))
    assert dst.tell() == data_start
    for lv in reversed(levels):
        for key in keys[lv]:
            start, n = where[key]
            spool.seek(start)
            data = spool.read(n)
            dst.write(struct.pack("<I", n) + data + data[-4:])
