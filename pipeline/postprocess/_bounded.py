"""Segments with memory bounded by chunks: the same segments, merge and table, paged.

The in-memory resolver (:mod:`._resolve`, :mod:`._merge`) holds every piece of every
chunk, and every segment's statistics and contacts, in one process: 37.6 million raw
segments of 8192^2 noise took 13 GB. Here the same results come out of:

1. **A local pass, on the workers** (:func:`_local_pass`, one task per chunk, in the
   pass that labels it). A piece that touches no face shared with another chunk is a
   whole segment. The chunk's pieces and contacts go to a spill file; only its
   *border pieces* (those on a shared face) and a count of the other pieces' first
   pixels per line come back (a line: one row of an image, one row of one slice of
   a volume).
2. **Joining the borders, here** (:func:`resolve_paged`): union-find over the face
   pairs joins the border pieces into segments (proportional to the borders).
3. **Numbering**: every segment is numbered by its first pixel in raster (C) order.
   The number of first pixels per line and chunk column gives each chunk the number
   of segments before each of its lines; a chunk numbers its own segments from there.
4. **The merge, paged**: the segments' statistics, their contacts (as adjacency rows)
   and the merge's working arrays are file-backed arrays (:class:`Paged`) filled one
   chunk at a time, and the merge (:func:`._merge.run_merge`, the same kernels and the
   same order as in memory) runs a slice of IDs at a time. IDs follow the raster
   order, so a slice touches the pages of a few rows of the image; after each slice
   this process drops the pages it touched (they stay in the operating system's
   file cache, or go to disk under memory pressure).
5. **The table and the lookup tables**, written a slice of IDs (one chunk) at a time.

Images ``(y, x)`` and volumes ``(z, y, x)`` alike: a volume's chunks have six faces
(:class:`._segments3d.ChunkFaces`), its segments three more statistics
(:data:`._resolve.VOLUME_FIELDS`), carried along as the others are.

The process that coordinates holds the border pieces, one chunk's arrays and one slice
of pages at a time; the merge itself is sequential (it is defined as a sequence: each
merge changes the means the next decisions read), in ID order.
"""

from __future__ import annotations

import dataclasses
import functools
import mmap
import os
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import dask
import numba
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..compute import release_freed_memory
from ._chunk_tasks import (
    KEY_SHIFT,
    ChunkStrips,
    Joins,
    SegmentTasks,
    _combine_pairs,
    _sum_by_pair,
)
from ._contacts import _combine_kernel
from ._kernels import _min_into, _reduce_add
from ._kernels3d import _reduce_extra_add
from ._merge import _count_rows, _fill_rows, merge_arrays, run_merge
from ._resolve import (
    _LOW,
    STAT_FIELDS,
    VOLUME_FIELDS,
    ChunkedIds,
    SegmentIndex,
    SegmentStats,
    segment_dtype,
)

__all__ = ["BoundedIndex", "LocalResult", "Paged", "bounded_tasks", "contrast_windows",
           "drop_pages", "resolve_paged"]

#: IDs a paged kernel is given at a time (the pages of a few rows of a large image)
STEP = 1 << 20
#: IDs of a chunk's range written at a time (:func:`_id_windows`)
WINDOW = 1 << 18
#: face contacts given at a time (each may touch rows of its own)
_FACE_STEP = 1 << 14
_BIG = np.iinfo(np.int64).max
_EDGE_FIELDS = ("edge_a", "edge_b", "edge_len")


class LocalResult(NamedTuple):
    """What a chunk's local pass returns (the rest is in its spill file).

    ``border``: its border pieces (local labels - 1, ascending) and ``first`` their
    first pixels (their other statistics stay in the spill file: held here until the
    resolve ends, they took 110 bytes a border piece, 0.5 GB at 512^3 noise);
    ``head_rows``: the number of its other pieces (whole segments) whose first pixel
    is in each of its lines (C order); ``n_edges``: its contacts.
    """

    index: int  # type: ignore[assignment]  # a field shadowing tuple.index (the chunk)
    n_pieces: int
    n_edges: int
    border: np.ndarray
    first: np.ndarray
    head_rows: np.ndarray


def _spill_file(spill: Path | str, index: int, kind: str) -> Path:
    return Path(spill) / f"{index}.{kind}.npy" if kind != "pieces" else \
        Path(spill) / f"{index}.pieces.npz"


def _stat_fields(pieces: Any) -> tuple[str, ...]:
    """Return the statistics a chunk's pieces carry (a volume's add :data:`VOLUME_FIELDS`)."""
    return STAT_FIELDS + (VOLUME_FIELDS if hasattr(pieces, "zmin") else ())


def _face_labels(faces: Any) -> list[np.ndarray]:
    """Return a chunk's outer layers' local labels: first and last along each axis.

    ``faces``: a :class:`ChunkStrips` (an image's chunk) or a
    :class:`._segments3d.ChunkFaces` (a volume's).
    """
    if isinstance(faces, ChunkStrips):
        return [faces.top, faces.bottom, faces.left, faces.right]
    return [layer for axis in faces.labels for layer in axis]


def _border_pieces(n: int, faces: Any, shared: Sequence[bool]) -> np.ndarray:
    """Mask of the pieces on the chunk's faces shared with another chunk."""
    border = np.zeros(n, dtype=np.bool_)
    for labels, on in zip(_face_labels(faces), shared, strict=True):
        if on:
            labels = np.asarray(labels)
            border[labels[labels > 0].astype(np.int64) - 1] = True
    return border


def _local_lines(first: np.ndarray, origin: Sequence[int], size: Sequence[int],
                 shape: Sequence[int]) -> np.ndarray:
    """Index of each first pixel's line within its chunk (C order over all axes but x).

    ``first``: flat indices into ``shape``; ``origin``, ``size``: the chunk's.
    """
    lead = np.unravel_index(np.asarray(first, np.int64) // shape[-1], tuple(shape[:-1]))
    return np.ravel_multi_index(tuple(c - o for c, o in zip(lead, origin[:-1], strict=True)),
                                tuple(size[:-1])).astype(np.int64)


def _local_pass(pieces: Any, faces: Any, shared: tuple[bool, ...], origin: tuple[int, ...],
                size: tuple[int, ...], shape: tuple[int, ...], spill: str) -> LocalResult:
    """On a worker: spill the chunk's pieces; return its border pieces and head counts.

    ``shared``: whether each face (first and last along each axis) is shared with
    another chunk; ``origin``, ``size``: the chunk's; ``shape``: the class map's.
    """
    n = int(pieces.count.size)
    border = _border_pieces(n, faces, shared)
    fields = _stat_fields(pieces)
    # a volume's extra statistics as int64, the type the paged arrays hold
    arrays: dict[str, Any] = {f: np.asarray(getattr(pieces, f), np.int64)
                              if f in VOLUME_FIELDS else np.asarray(getattr(pieces, f))
                              for f in fields + _EDGE_FIELDS}
    np.savez(_spill_file(spill, int(faces.index), "pieces"), border=border, **arrays)
    first = np.asarray(pieces.first, np.int64)
    head_rows = np.bincount(_local_lines(first[~border], origin, size, shape),
                            minlength=int(np.prod(size[:-1]))).astype(np.int64)
    return LocalResult(int(faces.index), n, int(pieces.edge_a.size), np.flatnonzero(border),
                       first[border], head_rows)


def _starts(chunks: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Each axis's chunk boundaries (``0``, then the cumulative sizes)."""
    return [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]


@dataclass(frozen=True)
class BoundedTasks:
    """The lazy local passes (one :class:`LocalResult` per chunk) and the joins."""

    local: list[Any] = field(repr=False)
    tasks: SegmentTasks = field(repr=False)
    spill: Path
    #: the class map's shape, ``(y, x)`` or ``(z, y, x)``
    shape: tuple[int, ...]

    @property
    def joins(self) -> list[Any]:
        """The join tasks (one per chunk)."""
        return self.tasks.joins

    @property
    def volume(self) -> bool:
        """Whether the segments are a volume's (they carry :data:`VOLUME_FIELDS`)."""
        return len(self.shape) == 3

    def cells(self, c: int) -> tuple[slice | int, ...]:
        """Chunk ``c``'s cells in an array over (lines..., chunk columns)."""
        origin, size = self.origin_size(c)
        column = int(np.unravel_index(c, tuple(len(x) for x in self.tasks.chunks))[-1])
        return (*(slice(o, o + n) for o, n in zip(origin[:-1], size[:-1], strict=True)),
                column)

    def origin_size(self, c: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Chunk ``c``'s origin and size, one per axis."""
        idx = np.unravel_index(c, tuple(len(x) for x in self.tasks.chunks))
        starts = _starts(self.tasks.chunks)
        return (tuple(int(starts[a][i]) for a, i in enumerate(idx)),
                tuple(int(self.tasks.chunks[a][i]) for a, i in enumerate(idx)))


def bounded_tasks(tasks: SegmentTasks, spill: Path, shape: Sequence[int]) -> BoundedTasks:
    """Return the local pass of every chunk of :func:`segment_tasks`' ``tasks`` (lazy).

    ``spill``: a directory (made here) every worker can write and this process read;
    ``shape``: the class map's, ``(y, x)`` or ``(z, y, x)``.
    """
    # absolute: workers may run in another directory (a cluster on a shared disk)
    spill = Path(spill).resolve()
    spill.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(x) for x in shape)
    if len(shape) != len(tasks.chunks) or len(tasks.strips) != len(tasks.pieces):
        raise ValueError(f"bounded segments need the chunks' faces and the class map's shape "
                         f"(got shape {shape} for {len(tasks.chunks)}-D chunks)")
    nb = tuple(len(x) for x in tasks.chunks)
    bt = BoundedTasks([], tasks, spill, shape)
    task = dask.delayed(_local_pass, pure=True)
    for c, (idx, p, f) in enumerate(zip(np.ndindex(*nb), tasks.pieces, tasks.strips,
                                        strict=True)):
        shared = tuple(x for a, i in enumerate(idx) for x in (i > 0, i < nb[a] - 1))
        origin, size = bt.origin_size(c)
        bt.local.append(task(p, f, shared, origin, size, shape, str(spill)))
    return bt


#: mappings whose pages the merge loop drops itself (beyond: only between its steps)
_MAX_REGIONS = 1024


def _shared_bytes() -> int | None:
    """Return the file-backed memory this process holds (``/proc/self/statm``), or None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * mmap.PAGESIZE
    except (OSError, IndexError, ValueError):  # pragma: no cover - not Linux
        return None


def _mapping(a: np.ndarray) -> mmap.mmap | None:
    """Return the mapping of a :class:`Paged` array (None for an array in memory)."""
    base: Any = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer's base: the mapping exports it
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


class KeepUnder:
    """Drops the pages a :class:`Paged` store's arrays hold once they are many (a call).

    ``keep``: the same for the merge loop's compiled code, ``(state, buffer, regions)``
    (see ``_rag._keep``): it reads ``/proc/self/statm`` through an open descriptor.
    """

    def __init__(self, store: Paged, budget: int, also: Sequence[np.ndarray]) -> None:
        self.store = store
        self.budget = budget
        self.also = also
        base = _shared_bytes()
        self.measured = base is not None
        fd = -1
        if sys.platform.startswith("linux") and base is not None:
            fd = os.open("/proc/self/statm", os.O_RDONLY)
            weakref.finalize(self, os.close, fd)
        buf = np.zeros(128, np.uint8)
        # [descriptor, budget, floor, KEEP_EVERY - 1 (the merge loop sets it), drops,
        # page size, the buffer's address]: the floor is one for both (``_rag._keep_now``)
        state = np.array([fd, budget, base or 0, 0, 0, mmap.PAGESIZE, buf.ctypes.data],
                         np.int64)
        self.keep = (state, buf, store.regions)

    @property
    def drops(self) -> int:
        """How many times the merge loop dropped the pages inside a step."""
        return int(self.keep[0][4])

    def __call__(self) -> None:
        now = _shared_bytes() if self.measured else None
        state = self.keep[0]
        if now is not None:
            state[2] = min(int(state[2]), now)
        if now is None or now - int(state[2]) > self.budget:
            self.store.release()
            drop_pages(*self.also)


class Paged:
    """File-backed arrays in a directory, whose pages this process drops on request.

    Written by hand: numpy's ``memmap`` does not expose its mapping, and the pages a
    kernel touched stay counted in the process's memory until they are unmapped or
    advised away (``madvise(MADV_DONTNEED)``: for a shared file mapping the data stays
    in the file and the operating system's cache).
    """

    def __init__(self, directory: Path, random: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.random = random
        self._maps: dict[str, mmap.mmap] = {}
        self._row_bytes: dict[str, int] = {}
        self._also: list[mmap.mmap] = []
        # (address, length) of every mapping, row 0 their count: for the merge loop,
        # which drops their pages itself inside a merge (``_rag._keep``); kept current
        # as arrays come and go, so that it never advises a range no longer ours
        self.regions = np.zeros((_MAX_REGIONS + 1, 2), np.int64)

    def empty(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """Return a new array of zeros, backed by ``<directory>/<name>.bin``."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = max(count * dtype.itemsize, 1)
        with open(self.directory / f"{name}.bin", "w+b") as f:
            f.truncate(nbytes)  # a sparse file: zeros, no disk until written
            mm = mmap.mmap(f.fileno(), nbytes)
        if self.random and hasattr(mmap, "MADV_RANDOM"):
            # before any page exists: the file's cache is then made of single pages,
            # and a fault maps 64 kB around it, not a large folio (up to 2 MiB): a
            # loop touching its arrays at random then holds 30 times less per fault
            mm.madvise(mmap.MADV_RANDOM)
        self._maps[name] = mm
        self._row_bytes[name] = nbytes // max(shape[0], 1) if shape else nbytes
        self._sync()
        return np.frombuffer(mm, dtype=dtype, count=count).reshape(shape)

    def _sync(self) -> None:
        """Write the mappings' ``(address, length)`` into :attr:`regions`."""
        maps = (list(self._maps.values()) + self._also)[:_MAX_REGIONS]
        for r, mm in enumerate(maps, start=1):
            view = np.frombuffer(mm, np.uint8)  # the mapping's first byte
            self.regions[r] = view.ctypes.data, len(mm)
            del view
        self.regions[0, 0] = len(maps)

    def full(self, name: str, shape: tuple[int, ...], dtype: Any, value: Any) -> np.ndarray:
        """Return a new array filled with ``value`` (a slice at a time)."""
        out = self.empty(name, shape, dtype)
        if np.all(np.asarray(value) == 0):  # a new file reads as zeros
            return out
        for s, e in self.slices(shape[0]):
            out[s:e] = value
        return out

    def release(self, rows: tuple[int, int] | None = None) -> None:
        """Drop the pages this process has touched (the data stays in the files).

        ``rows``: only those of rows ``start:stop`` of each array (a window of IDs:
        dropping every page walks every mapping, milliseconds each time).
        """
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is None:  # pragma: no cover - not on Linux or macOS
            return
        for name, mm in self._maps.items():
            if rows is None:
                mm.madvise(advice)
                continue
            row = self._row_bytes[name]
            start = min(rows[0] * row, len(mm)) // mmap.PAGESIZE * mmap.PAGESIZE
            stop = min(rows[1] * row, len(mm))
            if stop > start:
                mm.madvise(advice, start, stop - start)

    def keep_under(self, budget: int, *also: np.ndarray) -> KeepUnder:
        """Return a call that drops the pages this process touched, once they are many.

        Many: this process's file-backed memory is ``budget`` bytes above the least
        it has been since (``/proc/self/statm``; pages dropped elsewhere lower that
        floor); where that cannot be read, every call drops them. ``also``: other
        file-backed arrays whose pages go at the same time.
        For a loop that touches its arrays at random (region merging): dropping them
        at every step would fault every page in again, keeping them all would hold
        the arrays in memory. The call's ``keep`` lets the merge loop do the same
        inside a merge (``_rag._keep``).
        """
        for a in also:
            mm = _mapping(a)
            if mm is not None and all(mm is not m for m in self._also):
                self._also.append(mm)
        self._sync()
        return KeepUnder(self, budget, also)

    def hold(self, stats: SegmentStats, prefix: str) -> SegmentStats:
        """Return ``stats`` with its per-segment fields in files (``<prefix>.<field>``).

        Their pages are dropped: slices of statistics kept until all are there (the
        leaves' ``write_table``) are then not held in memory (0.65 GB at 16384^2 noise).
        """
        fields = {}
        for f in STAT_FIELDS:
            value = getattr(stats, f)
            fields[f] = self.empty(f"{prefix}.{f}", value.shape, value.dtype)
            fields[f][...] = value
        self.release()
        return dataclasses.replace(stats, **fields)

    def drop_prefix(self, prefix: str) -> None:
        """:meth:`drop` every array whose name starts with ``prefix``."""
        for name in [n for n in self._maps if n.startswith(prefix)]:
            self.drop(name)

    def drop(self, name: str) -> None:
        """Forget an array (its views must be gone) and delete its file."""
        self._maps.pop(name, None)
        self._row_bytes.pop(name, None)
        self._sync()
        (self.directory / f"{name}.bin").unlink(missing_ok=True)

    def slices(self, total: int, step: int | None = None) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` over ``0..total``, releasing the pages after each.

        ``step``: IDs a slice; :data:`STEP` (read at the call: tests set it low).
        """
        step = STEP if step is None else step
        for s in range(0, total, step):
            yield s, min(s + step, total)
            self.release()


@dataclass
class BoundedIndex(ChunkedIds):
    """The segments of :func:`resolve_paged`, for :func:`relabel_segments` (lazy).

    ``luts``: one Delayed per chunk (row-major) that loads its lookup table.
    """

    luts: list[Any] = field(repr=False)
    chunks: tuple[tuple[int, ...], ...]
    connectivity: int
    n_segments: int
    n_found: int
    #: the segments' statistics, where a later stage needs them in memory (instances)
    stats: SegmentStats | None = field(default=None, repr=False)


def _load_lut(spill: str, index: int) -> np.ndarray:
    """On a worker: a chunk's lookup table (local label -> segment ID)."""
    return np.load(_spill_file(spill, index, "final"))


def _join_border(local: Sequence[LocalResult], joins: Sequence[Joins]
                 ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], Callable[..., Any]]:
    """Join the border pieces into segments across the faces (union-find).

    Returns the border segments' first pixels, the border segment of every border
    piece (all chunks' in turn) and of each chunk's, and ``key -> border piece``
    (its index in that order).
    """
    sizes = np.array([r.border.size for r in local], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(sizes)])
    keys = np.concatenate([(np.int64(r.index) << KEY_SHIFT) | (r.border + 1) for r in local])

    def piece(key: np.ndarray) -> np.ndarray:
        at = np.searchsorted(keys, key)
        if at.size and not np.array_equal(keys[np.minimum(at, keys.size - 1)], key):
            raise RuntimeError("a face pair names a piece that is on no shared face")
        return at

    empty = np.empty(0, dtype=np.int64)
    ja = np.concatenate([piece(j.join_a) for j in joins]) if joins else empty
    jb = np.concatenate([piece(j.join_b) for j in joins]) if joins else empty
    total = int(start[-1])
    graph = coo_matrix((np.ones(ja.size, dtype=np.int8), (ja, jb)), shape=(total, total))
    n_seg, comp = connected_components(graph.tocsr(), directed=False)
    first = np.full(n_seg, _BIG, dtype=np.int64)
    _min_into(comp, np.concatenate([r.first for r in local]).astype(np.int64), first)
    return first, comp, [comp[start[c]:start[c + 1]] for c in range(len(local))], piece


def _head_starts(bt: BoundedTasks, local: Sequence[LocalResult], border_first: np.ndarray
                 ) -> np.ndarray:
    """Segments whose first pixel comes before each (line, chunk column).

    ``start[*line, j]`` (lines over all axes but x): in raster order, the number of
    segments that start before that line's part in chunk column ``j``.
    """
    xs = _starts(bt.tasks.chunks)[-1]
    heads = np.zeros((*bt.shape[:-1], len(bt.tasks.chunks[-1])), dtype=np.int64)
    for r in local:
        cells = bt.cells(r.index)
        heads[cells] += r.head_rows.reshape(heads[cells].shape)
    coords = np.unravel_index(border_first, bt.shape)
    np.add.at(heads, (*coords[:-1], np.searchsorted(xs, coords[-1], side="right") - 1), 1)
    flat = heads.ravel()
    return (np.cumsum(flat) - flat).reshape(heads.shape)


def _number(firsts: np.ndarray, start: np.ndarray, bt: BoundedTasks, c: int) -> np.ndarray:
    """IDs of the segments whose first pixels (distinct) are ``firsts``, all of chunk ``c``.

    ``start``: :func:`_head_starts` for the chunk's lines (C order) and column. A
    segment's ID is one more than the number of segments before its line's part, plus
    its rank within it.
    """
    order = np.argsort(firsts, kind="stable")
    lines = _local_lines(firsts[order], *bt.origin_size(c), bt.shape)
    within = np.arange(order.size) - np.searchsorted(lines, lines, side="left")
    ids = np.empty(order.size, dtype=np.int64)
    ids[order] = start[lines] + within + 1
    return ids


def resolve_paged(bt: BoundedTasks, local: Sequence[LocalResult], joins: Sequence[Joins],
                  paged: Paged, *, min_pixels: int | None, n_similar: int,
                  write_table: Callable[[SegmentStats, int, int, int], None]) -> BoundedIndex:
    """Resolve, merge and number the segments of the local passes (pure; pages).

    ``local``, ``joins``: ``dask.compute(bt.local, bt.joins)``; ``paged``: the
    file-backed arrays' directory; ``min_pixels``: merge smaller segments (the
    adjacency was collected for at least that size). ``write_table(stats, first_id,
    n_segments, n_rows)`` is called with consecutive slices of the final segments'
    statistics, in ID order.

    Returns the index whose lookup tables (one file per chunk) relabel the class map.
    """
    spill = bt.spill
    n_chunks = len(local)
    border_first, comp, border_seg, piece = _join_border(local, joins)
    start = _head_starts(bt, local, border_first)
    n_raw = int(sum(int(r.head_rows.sum()) for r in local) + border_first.size)
    # --- numbering: each chunk's own segments, then the border segments' IDs
    coords = np.unravel_index(border_first, bt.shape)
    chunk_of = np.ravel_multi_index(
        tuple(np.searchsorted(b, x, side="right") - 1
              for b, x in zip(_starts(bt.tasks.chunks), coords, strict=True)),
        tuple(len(x) for x in bt.tasks.chunks)) if border_first.size else border_first
    del coords
    order = np.argsort(chunk_of, kind="stable")
    bounds = np.searchsorted(chunk_of[order], np.arange(n_chunks + 1))
    border_id = np.zeros(border_first.size, dtype=np.int64)
    raw_type = segment_dtype(n_raw)
    for c in range(n_chunks):
        with np.load(_spill_file(spill, c, "pieces")) as f:
            border, first = f["border"], f["first"]
        mine = order[bounds[c]:bounds[c + 1]]
        ids = _number(np.concatenate([first[~border], border_first[mine]]),
                      start[bt.cells(c)].reshape(-1), bt, c)
        inner = int((~border).sum())
        border_id[mine] = ids[inner:]
        lut = np.zeros(border.size + 1, dtype=raw_type)
        lut[1:][~border] = ids[:inner]
        np.save(_spill_file(spill, c, "raw"), lut)
    del start
    # --- the raw segments' statistics. A chunk's other pieces are whole segments,
    # written (not added to initialised rows), a window of IDs at a time
    # (:func:`_id_windows`); the border segments add up their pieces into file-backed
    # sums (one row a border segment: a volume's chunks have six faces, and 2.5
    # million border segments at 512^3 noise held 0.3 GB here), whose pages go after
    # each chunk, and are written last, in ID order. A volume's segments carry three
    # more statistics (``extra``), kept alike.
    nf = int(np.asarray(bt.tasks.sum_offset).size)
    raw = _paged_stats(paged, "raw", n_raw, nf, filled=False)
    raw_x = _paged_extra(paged, "raw", n_raw, bt.volume, filled=False)
    border_stats = _paged_stats(paged, "border", border_first.size, nf)
    border_x = _paged_extra(paged, "border", border_first.size, bt.volume)
    for c in range(n_chunks):
        lut = np.load(_spill_file(spill, c, "raw"))
        with np.load(_spill_file(spill, c, "pieces")) as f:
            border = f["border"]
            lut[1:][border] = border_id[border_seg[c]]
            np.save(_spill_file(spill, c, "raw"), lut)
            inner = ~border
            ids = lut[1:][inner].astype(np.int64) - 1
            rows = [np.ascontiguousarray(f[k][inner]) for k in STAT_FIELDS]
            extra = [f[k][inner] for k in VOLUME_FIELDS] if raw_x else []
            # the border pieces' statistics, added up into their segments' below
            brows = [np.ascontiguousarray(f[k][border]) for k in STAT_FIELDS]
            bextra = [np.ascontiguousarray(f[k][border]) for k in VOLUME_FIELDS] \
                if raw_x else []
        for at, window in _id_windows(ids):
            _put_rows(ids[at], *(r[at] for r in rows), *raw)
            for x, out in zip(extra, raw_x, strict=True):
                out[ids[at]] = x[at]
            paged.release(window)
        _reduce_add(border_seg[c], *brows, *border_stats)
        if border_x:
            _reduce_extra_add(border_seg[c], *bextra, *border_x)
        del rows, extra, brows, bextra
        paged.release()
    by_id = np.argsort(border_id)
    sorted_ids = border_id[by_id]
    for s, e in paged.slices(n_raw):  # a slice of IDs (not of border segments) at a time
        at = by_id[np.searchsorted(sorted_ids, s + 1):np.searchsorted(sorted_ids, e + 1)]
        _put_rows(border_id[at] - 1, *(a[at] for a in border_stats), *raw)
        for x, out in zip(border_x, raw_x, strict=True):
            out[border_id[at] - 1] = x[at]
    del border_stats, border_x, by_id, sorted_ids
    paged.drop_prefix("border.")
    n_found = n_raw
    if min_pixels is None:
        final_of = None
        final, final_x, n_final = raw, raw_x, n_raw
    else:
        final_of, n_final, parent = _merge_paged(bt, local, joins, paged, raw, piece, comp,
                                                 border_id, min_pixels, n_similar)
        final = _paged_stats(paged, "final", n_final, nf)
        final_x = _paged_extra(paged, "final", n_final, bt.volume)
        for s, e in paged.slices(n_raw):
            _reduce_add(final_of[s:e] - 1, *(a[s:e] for a in raw), *final)
            if final_x:
                _reduce_extra_add(final_of[s:e] - 1, *(a[s:e] for a in raw_x), *final_x)
        # a merged segment keeps the class of the segment merged into (its root)
        for s, e in paged.slices(n_raw):
            roots = np.flatnonzero(parent[s:e] == np.arange(s, e)) + s
            final[0][final_of[roots] - 1] = raw[0][roots]
    # --- the table, a slice of IDs at a time
    for s, e in paged.slices(n_final):
        klass, first, count, rmin, rmax, cmin, cmax, hi, lo = (np.array(a[s:e]) for a in final)
        stats = SegmentStats(klass, first, count, rmin, rmax, cmin, cmax, hi, lo,
                             bt.tasks.sum_offset, bt.tasks.sum_scale)
        if final_x:
            stats.zmin, stats.zmax, stats.coord_sum = (np.array(a[s:e]) for a in final_x)
        write_table(stats, s + 1, n_final, e - s)
    # --- each chunk's lookup table: local label -> final ID
    dtype = segment_dtype(n_final)
    for c in range(n_chunks):
        lut = np.load(_spill_file(spill, c, "raw")).astype(np.int64)
        if final_of is not None:
            raw_ids = lut[1:] - 1
            for at, window in _id_windows(raw_ids):
                lut[1:][at] = final_of[raw_ids[at]]
                paged.release(window)
        np.save(_spill_file(spill, c, "final"), lut.astype(dtype))
        _spill_file(spill, c, "raw").unlink()
        paged.release()
    load = dask.delayed(_load_lut, pure=True)
    luts = [load(str(spill), c) for c in range(n_chunks)]
    return BoundedIndex(luts, bt.tasks.chunks, bt.tasks.connectivity, n_final, n_found)


def _id_windows(ids: np.ndarray, span: int = WINDOW
                ) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    """Positions of ``ids`` in ascending order, ``span`` IDs of the range at a time.

    Yields the positions and the IDs they cover (``start, stop``: for
    :meth:`Paged.release`).

    A chunk's segments have the IDs of its rows, spread over the IDs of those rows
    across the whole image: touched at once, the pages of that whole range were mapped
    (0.3 GB a chunk at 8192^2, more the wider the image). A window at a time, with the
    pages dropped after each, maps at most ``span`` IDs' pages.
    """
    order = np.argsort(ids, kind="stable")
    if not order.size:
        return
    ranked = ids[order]
    start = ranked[0] - ranked[0] % span
    cuts = np.append(np.searchsorted(ranked, np.arange(start, ranked[-1] + 1, span)),
                     ranked.size)
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        if b > a:
            yield order[a:b], (int(ranked[a]), int(ranked[b - 1]) + 1)


def _paged_stats(paged: Paged, name: str, n: int, nf: int, filled: bool = True
                 ) -> list[np.ndarray]:
    """Empty statistics of ``n`` segments (as ``_reduce_empty``), file-backed.

    ``filled=False``: not initialised (every row will be written by :func:`_put_rows`).
    """
    if not filled:
        return [*(paged.empty(f"{name}.{f}", (n,), np.int64) for f in STAT_FIELDS[:-2]),
                paged.empty(f"{name}.hi", (n, nf), np.int64),
                paged.empty(f"{name}.lo", (n, nf), np.int64)]
    return [paged.empty(f"{name}.klass", (n,), np.int64),
            paged.full(f"{name}.first", (n,), np.int64, _BIG),
            paged.empty(f"{name}.count", (n,), np.int64),
            paged.full(f"{name}.rmin", (n,), np.int64, _BIG),
            paged.full(f"{name}.rmax", (n,), np.int64, -1),
            paged.full(f"{name}.cmin", (n,), np.int64, _BIG),
            paged.full(f"{name}.cmax", (n,), np.int64, -1),
            paged.empty(f"{name}.hi", (n, nf), np.int64),
            paged.empty(f"{name}.lo", (n, nf), np.int64)]


def _paged_extra(paged: Paged, name: str, n: int, volume: bool, filled: bool = True
                 ) -> list[np.ndarray]:
    """Return a volume's extra statistics of ``n`` segments, paged (none for an image's).

    As ``_reduce_extra_empty``; ``filled=False``: not initialised.
    """
    if not volume:
        return []
    if not filled:
        return [paged.empty(f"{name}.zmin", (n,), np.int64),
                paged.empty(f"{name}.zmax", (n,), np.int64),
                paged.empty(f"{name}.coord_sum", (n, 3), np.int64)]
    return [paged.full(f"{name}.zmin", (n,), np.int64, _BIG),
            paged.full(f"{name}.zmax", (n,), np.int64, -1),
            paged.empty(f"{name}.coord_sum", (n, 3), np.int64)]


def _merge_paged(bt: BoundedTasks, local: Sequence[LocalResult], joins: Sequence[Joins],
                 paged: Paged, raw: list[np.ndarray], piece: Callable[..., Any],
                 comp: np.ndarray, border_id: np.ndarray, min_pixels: int, n_similar: int
                 ) -> tuple[np.ndarray, int, np.ndarray]:
    """Merge the raw segments to the minimum size, paged.

    Returns each raw segment's final ID (1-based), the number of final segments and
    each raw segment's root (the segment its group merged into).

    The contacts of small segments (every chunk's, and the faces') become adjacency
    rows by a counting sort in two passes; the merge runs a slice at a time; the
    merged groups are numbered by their lowest member (first pixel), as in memory.
    """
    spill = bt.spill
    n = raw[2].size
    count = raw[2]
    id_type = np.int32 if n < 2**30 else np.int64
    small = paged.empty("small", (n,), np.bool_)
    n_small = 0
    for s, e in paged.slices(n):
        small[s:e] = count[s:e] < min_pixels
        n_small += int(small[s:e].sum())
    # the contacts of small segments as (a, b, length), 1-based raw IDs; a pair seen
    # twice (a border segment touches one segment in two chunks) adds its lengths,
    # as the merge would after combining them
    m = sum(r.n_edges for r in local) + sum(j.edge_a.size for j in joins)
    ea = paged.empty("edge_a", (m,), id_type)
    eb = paged.empty("edge_b", (m,), id_type)
    el = paged.empty("edge_len", (m,), np.int32)
    k = 0
    for c in range(len(local)):
        lut = np.load(_spill_file(spill, c, "raw")).astype(np.int64)
        with np.load(_spill_file(spill, c, "pieces")) as f:
            k = _small_contacts(lut, f["edge_a"], f["edge_b"], f["edge_len"], small, ea, eb,
                                el, k)
        paged.release()
    # face contacts: between border pieces, whose segments' IDs are known here; in
    # ID order, so that a slice of them touches the rows of a few image rows (in the
    # order of the faces, each would touch a page of its own)
    k_chunks = k
    if joins:
        seg_of = border_id[comp]  # border piece -> its segment's ID
        pa = np.concatenate([piece(j.edge_a) for j in joins])
        pb = np.concatenate([piece(j.edge_b) for j in joins])
        order = np.argsort(np.minimum(seg_of[pa], seg_of[pb]), kind="stable")
        k = _small_contacts(seg_of, pa[order], pb[order],
                            np.concatenate([j.edge_len for j in joins])[order], small, ea,
                            eb, el, k)
        del pa, pb, order
    paged.release()

    def edge_slices() -> Iterator[tuple[int, int]]:
        yield from paged.slices(k_chunks)
        for s, e in paged.slices(k - k_chunks, _FACE_STEP):
            yield k_chunks + s, k_chunks + e
    # adjacency rows of the small segments: counts, offsets, then the entries
    ptr = paged.empty("ptr", (n + 1,), np.int64)
    for s, e in edge_slices():
        _count_rows(ea[s:e], eb[s:e], small, ptr)
    total = 0
    for s, e in paged.slices(n + 1):
        part = np.cumsum(ptr[s:e]) + total
        total = int(part[-1])
        ptr[s:e] = part
    fill = paged.empty("fill", (n,), np.int64)
    for s, e in paged.slices(n):
        fill[s:e] = ptr[s:e]
    dst = paged.empty("dst", (total,), id_type)
    blen = paged.empty("blen", (total,), np.int32)
    for s, e in edge_slices():
        _fill_rows(ea[s:e], eb[s:e], el[s:e], small, fill, dst, blen)
    for name in ("edge_a", "edge_b", "edge_len", "fill"):
        paged.drop(name)  # their pages were released; the files go once unmapped
    # the merge, a slice of IDs at a time
    w = merge_arrays(n, raw[7].shape[1], n_small, id_type, empty=paged.empty)
    for s, e in paged.slices(n):
        w.count[s:e] = count[s:e]
        w.hi[s:e] = raw[7][s:e]
        w.lo[s:e] = raw[8][s:e]
    parent = run_merge(w, (ptr, dst, blen), bt.tasks.sum_offset, bt.tasks.sum_scale, min_pixels,
                       n_similar, step=STEP, release=paged.release)
    # a group is numbered by its first pixel: its lowest member
    group_min = paged.full("group_min", (n,), np.int64, _BIG)
    for s, e in paged.slices(n):
        _min_into(parent[s:e].astype(np.int64), np.arange(s, e, dtype=np.int64), group_min)
    rank = paged.empty("rank", (n,), np.int64)
    n_final = 0
    for s, e in paged.slices(n):
        rank[s:e] = np.cumsum(group_min[parent[s:e]] == np.arange(s, e)) + n_final
        n_final = int(rank[e - 1])
    final_of = paged.empty("final_of", (n,), np.int64)
    for s, e in paged.slices(n):
        final_of[s:e] = rank[group_min[parent[s:e]]]
    return final_of, n_final, parent


@numba.njit(cache=True, nogil=True)
def _put_rows(group, klass, first, count, rmin, rmax, cmin, cmax, hi, lo,  # pragma: no cover
              o_klass, o_first, o_count, o_rmin, o_rmax, o_cmin, o_cmax, o_hi, o_lo):
    """Write rows as the statistics of their groups (each group one row): no read.

    The same statistics :func:`._kernels._reduce_add` gives a group of one row.
    """
    nf = hi.shape[1]
    for i in range(group.size):
        g = group[i]
        o_klass[g] = klass[i]
        o_first[g] = first[i]
        o_count[g] = count[i]
        o_rmin[g] = rmin[i]
        o_rmax[g] = rmax[i]
        o_cmin[g] = cmin[i]
        o_cmax[g] = cmax[i]
        for f in range(nf):
            o_hi[g, f] = hi[i, f] + (lo[i, f] >> 32)
            o_lo[g, f] = lo[i, f] & 0xFFFFFFFF


@numba.njit(cache=True, nogil=True)
def _small_contacts(seg, a, b, length, small, out_a, out_b, out_l, k):  # pragma: no cover
    """Append the contacts ``(seg[a], seg[b])`` with a small segment at ``k``; new end.

    ``seg`` maps the pieces ``a``, ``b`` to 1-based segment IDs.
    """
    for e in range(a.size):
        x = seg[a[e]]
        y = seg[b[e]]
        if small[x - 1] or small[y - 1]:
            out_a[k] = x
            out_b[k] = y
            out_l[k] = length[e]
            k += 1
    return k


def empty_stats(bt: BoundedTasks) -> SegmentStats:
    """Statistics of no segment, in the units of ``bt``'s sums (an empty table)."""
    nf = np.asarray(bt.tasks.sum_offset).size
    none = np.empty(0, dtype=np.int64)
    stats = SegmentStats(none, none, none, none, none, none, none,
                         np.empty((0, nf), np.int64), np.empty((0, nf), np.int64),
                         bt.tasks.sum_offset, bt.tasks.sum_scale)
    if bt.volume:
        stats.zmin, stats.zmax, stats.coord_sum = none, none, np.empty((0, 3), np.int64)
    return stats


def concat_stats(bt: BoundedTasks, parts: Sequence[SegmentStats],
                 paged: Paged | None = None) -> SegmentStats:
    """Return the statistics of consecutive slices (``write_table``'s) as one.

    In memory; with ``paged``, in its file-backed arrays (``stats.<field>``), whose
    pages are dropped once written (:func:`drop_pages` drops them again after reads),
    and each slice's field is let go once copied.
    """
    stats = empty_stats(bt)
    for f in (STAT_FIELDS + (VOLUME_FIELDS if bt.volume else ())) if parts else ():
        if paged is None:
            setattr(stats, f, np.concatenate([getattr(p, f) for p in parts]))
            continue
        head = getattr(parts[0], f)
        n = sum(getattr(p, f).shape[0] for p in parts)
        out = paged.empty(f"stats.{f}", (n,) + head.shape[1:], head.dtype)
        at = 0
        for p in parts:
            part = getattr(p, f)
            out[at:at + part.shape[0]] = part
            at += part.shape[0]
            setattr(p, f, part[:0])
        paged.release()
        setattr(stats, f, out)
    return stats


def drop_pages(*arrays: np.ndarray) -> None:
    """Drop the pages of file-backed arrays (:class:`Paged`'s) that this process touched.

    The data stays in the files; an array in memory is left alone.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    for a in arrays:
        mm = _mapping(a)
        if mm is not None and advice is not None:
            mm.madvise(advice)


class _ContactWindows:
    """Pairs of leaves with values to add, joined a window of IDs at a time, into files.

    Each chunk's (and face's) pairs, sorted by their lower ID, are split by the window
    of that ID and saved; :meth:`join` then joins one window at a time (duplicates
    across chunks merged, their values added) and appends it to file-backed arrays.
    Windows are ranges of IDs, so the result is sorted by ``(lo, hi)`` as a join of
    all at once is, and holds the same pairs. IDs follow the raster order: a chunk's
    pairs fall into the windows of its rows of chunks. The contacts (``values``: their
    lengths) and the border contrasts (their sums and faces) are joined so.
    """

    #: leaf IDs per window (about 4.5 contacts a leaf on noise: 20 MB of pairs)
    SPAN = 1 << 19

    def __init__(self, store: Paged, ids_type: Any, prefix: str = "contact",
                 values: Sequence[str] = ("len",)) -> None:
        self.store = store
        self.ids_type = ids_type
        self.prefix = prefix
        self.values = tuple(values)
        self.parts: dict[int, list[Path]] = {}
        self.total = 0

    def add(self, lo: np.ndarray, hi: np.ndarray, *values: np.ndarray) -> None:
        window = lo // self.SPAN  # pairs come sorted by lo: each window is a slice
        bounds = np.flatnonzero(np.diff(window)) + 1
        for s, e in zip(np.r_[0, bounds], np.r_[bounds, lo.size], strict=True):
            w = int(window[s])
            path = self.store.directory / \
                f"{self.prefix}s-{w}-{len(self.parts.get(w, []))}.npz"
            arrays: dict[str, Any] = {"lo": lo[s:e], "hi": hi[s:e]}
            arrays.update((k, v[s:e]) for k, v in zip(self.values, values, strict=True))
            np.savez(path, **arrays)
            self.parts.setdefault(w, []).append(path)
        self.total += lo.size

    def join(self) -> tuple[np.ndarray, ...]:
        """Return ``(lo, hi, *values)``, file-backed; the windows' files are removed."""
        p = self.prefix
        out = (self.store.empty(f"{p}_a", (self.total,), self.ids_type),
               self.store.empty(f"{p}_b", (self.total,), self.ids_type),
               *(self.store.empty(f"{p}_{k}", (self.total,), np.int64) for k in self.values))
        names = ("lo", "hi", *self.values)
        at = 0
        for w in sorted(self.parts):
            got: list[list[np.ndarray]] = [[] for _ in names]
            for path in self.parts[w]:
                with np.load(path) as f:
                    for k, name in enumerate(names):
                        got[k].append(f[name])
                path.unlink()
            lo, hi, values = _sum_by_pair(*(np.concatenate(g) for g in got))
            del got
            for x, y in zip(out, (lo, hi, *values), strict=True):
                x[at:at + lo.size] = y
            at += lo.size
            self.store.release()
        self.parts.clear()
        release_freed_memory()
        return tuple(x[:at] for x in out)


def contrast_windows(paths: Sequence[str], store: Paged) -> tuple[np.ndarray, ...]:
    """Join the border contrasts that tasks saved (``a``, ``b``, ``sum``, ``faces``).

    Returns :func:`._hierarchy.reduce_contrast`'s arrays, the same values, file-backed
    in ``store``: each file is read in turn and split into windows of leaf IDs
    (:class:`_ContactWindows`), then deleted.
    """
    windows = _ContactWindows(store, np.int64, "contrast", ("sum", "faces"))
    for path in paths:
        with np.load(path) as f:
            a, b, c, n = (f[k] for k in ("a", "b", "sum", "faces"))
        if a.size:  # sorted by (a, b) already (_sum_by_pair)
            windows.add(a, b, c, n)
        Path(path).unlink()
    return windows.join()


def _face_ids(keys: np.ndarray, lut: Callable[[int], np.ndarray]) -> np.ndarray:
    """Return the final IDs of the pieces named by face keys (chunk << 32 | label).

    ``lut(c)``: chunk ``c``'s lookup table.
    """
    out = np.empty(keys.size, dtype=np.int64)
    chunk = keys >> KEY_SHIFT
    for c in np.unique(chunk):
        at = chunk == c
        out[at] = lut(int(c))[keys[at] & _LOW]
    return out


def leaf_index(bt: BoundedTasks, joins: Sequence[Joins], index: BoundedIndex,
               parts: list[SegmentStats], paged: Paged | None = None,
               contacts: Paged | None = None) -> SegmentIndex:
    """Return the :class:`SegmentIndex` of :func:`resolve_paged`'s segments.

    ``parts``: the statistics ``write_table`` was given, in order (emptied once they
    are joined), in ``paged``'s file-backed arrays where given (region merging reads
    them before and after its loop, not during it). Every contact of the chunks and
    faces (the tasks must have collected every one), as pairs of final IDs with their
    lengths added, is in memory: the index :func:`._merge.merge_small_segments`
    returns with ``keep_edges``; the chunks' pieces files are removed once read. The
    lookup tables stay in the spill files
    (``index.luts``: one Delayed per chunk that loads its table), which must outlive
    the rasters' writes: they map every raw segment (37.7 million entries at 8192^2
    noise, 150 million at 16384^2), where the rest is proportional to the leaves.

    With ``contacts`` (region merging with its graph in files), the contacts are
    joined a window of leaf IDs at a time instead (:class:`_ContactWindows`), into
    that store's files: memory bounded by a window, not by the leaves.
    """
    stats = concat_stats(bt, parts, paged)
    parts.clear()  # the slices are copied into one: keep one copy
    n = index.n_segments
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    ids_type = segment_dtype(n)
    windows = None if contacts is None else _ContactWindows(contacts, ids_type)

    def add(a: np.ndarray, b: np.ndarray, length: np.ndarray) -> None:
        apart = a != b
        if apart.any():
            lo, hi, ln = _combine_pairs(a[apart], b[apart], length[apart].astype(np.int64), n)
            if windows is not None:
                windows.add(lo.astype(ids_type), hi.astype(ids_type), ln)
            else:
                pairs.append((lo.astype(ids_type), hi.astype(ids_type), ln))

    @functools.lru_cache(maxsize=8)  # a face's chunks, and the next face's
    def lut(c: int) -> np.ndarray:
        return _load_lut(str(bt.spill), c)

    for c in range(len(index.luts)):
        ids = lut(c).astype(np.int64)
        with np.load(_spill_file(bt.spill, c, "pieces")) as f:
            add(ids[f["edge_a"]], ids[f["edge_b"]], f["edge_len"])
        _spill_file(bt.spill, c, "pieces").unlink()  # the last reader, as resolve_paged is "raw"'s
        del ids
        # a chunk's contacts, freed, stay in glibc's heap otherwise: 0.8 GB over the
        # 64 chunks of 8192^2 noise
        release_freed_memory()
    for j in joins:
        if j.edge_a.size:
            add(_face_ids(j.edge_a, lut), _face_ids(j.edge_b, lut), j.edge_len)
    lut.cache_clear()
    empty = np.empty(0, dtype=np.int64)
    edges: tuple[np.ndarray, np.ndarray, np.ndarray] = (empty, empty, empty)
    if windows is not None:
        ea, eb, ln = windows.join()
        edges = (ea, eb, ln)
    elif pairs:
        # 32-bit IDs where they fit, each part freed once joined, and no second ordering:
        # every part's pairs are (min, max) already (at 8192^2 noise the copies of the
        # 10 million contacts made a 2 GB peak here)
        a, b, length = (np.concatenate([p[k] for p in pairs]) for k in range(3))
        pairs.clear()
        release_freed_memory()  # the chunks' pairs, before the join's buffers
        joined = _combine_kernel(a, b, length, n)
        del a, b, length
        # the kernel's outputs are views of buffers sized by every chunk's pairs
        edges = tuple(x.copy() for x in joined)
        del joined
        release_freed_memory()
    return SegmentIndex(stats=stats, luts=list(index.luts), edges=edges,
                        chunks=bt.tasks.chunks, connectivity=bt.tasks.connectivity,
                        min_pixels=bt.tasks.min_pixels)
