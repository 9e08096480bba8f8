"""The write stage: every block of every output raster computed once and handed to its writer."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .._signals import quiesce
from ..io import LabelWriter
from ..io._write import store_part
from ._context import RunContext
from ._resume import Ledger, crc, region_key

__all__ = ["Progress", "Written", "make_writer", "stage_progress", "store_rasters",
           "segment_spill", "workers_share_files", "write_stage"]

log = logging.getLogger("pipeline.runner")


@contextlib.contextmanager
def stage_progress(enabled: bool) -> Iterator[None]:
    """Dask's text progress bar for a stage computed on the local scheduler."""
    if not (enabled and sys.stderr.isatty()):
        yield
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr, minimum=1.0):
        yield


class Progress:
    """A tqdm bar on a terminal, nothing otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="chunk", file=sys.stderr)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Targets:
    """``da.store`` target for one raster: forwards blocks to its writer."""

    def __init__(self, writer: LabelWriter, progress: Progress | None) -> None:
        self.writer = writer
        self.progress = progress

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        self.writer[region] = block
        if self.progress is not None:
            with self.lock:
                self.progress.update()

    lock = threading.Lock()


def _regions(arr: da.Array) -> list[tuple[slice, ...]]:
    """Every block's region, blocks in C order (as ``to_delayed().ravel()`` lists them)."""
    edges = [np.concatenate([[0], np.cumsum(c)]) for c in arr.chunks]
    return [tuple(slice(int(e[i]), int(e[i + 1])) for e, i in zip(edges, idx, strict=True))
            for idx in itertools.product(*(range(len(c)) for c in arr.chunks))]


#: blocks whose results come back to this process as one (see :func:`store_rasters`)
GROUP = 4


def _gathered(parts: list[list[Any]], grids: list[Any]) -> list[list[Any]]:
    """On a worker: the results of a group of blocks, as one.

    The COG tiles the group's blocks fill together (an overview's tiles that span
    them) are put together and encoded here, not in the writer's process: the group's
    first block carries the group's tiles.
    """
    from ..io._cog_tiles import join_tiles

    parts = [list(p) for p in parts]
    for k, grid in enumerate(grids):
        if grid is not None:
            joined = join_tiles([p[k].tiles for p in parts], grid)
            for p in parts:
                p[k] = p[k]._replace(tiles=None)
            parts[0][k] = parts[0][k]._replace(tiles=joined)
    return parts


def _groups(numblocks: tuple[int, ...], size: int) -> list[list[int]]:
    """Blocks (their C-order indices) in groups: 2 x 2 squares of a 2-D raster.

    Squares hold the overview tiles that span their blocks (4 x 4 blocks at a
    quarter, ...); the blocks of other rasters go ``size`` at a time in C order.
    """
    if size == 1 or len(numblocks) != 2:
        n = int(np.prod(numblocks))
        return [list(range(g, min(g + size, n))) for g in range(0, n, size)]
    ny, nx = numblocks
    return [[y * nx + x for y in range(gy, min(gy + 2, ny)) for x in range(gx, min(gx + 2, nx))]
            for gy in range(0, ny, 2) for gx in range(0, nx, 2)]


def _store_parts(blocks: list[np.ndarray], region: tuple[slice, ...],
                 remotes: list[dict[str, Any]]) -> list[Any]:
    """On a worker: each raster's share of writing its block (``store_part``)."""
    return [store_part(b, region, r) for b, r in zip(blocks, remotes, strict=True)]


def _named_graph(graph: dict[Any, Any], token: str) -> Any:
    """``graph`` for ``Client.get``, named by ``token`` instead of by its contents.

    ``Client.get`` wraps a dict in an expression whose name is a hash of every task
    (0.8 ms of this process's CPU a block: the tasks' arguments, the model's included,
    are hashed again for each batch); the batch's keys are unique already. Falls back
    to the dict where dask's expression class takes no token.
    """
    try:
        from dask._expr import LLGExpr

        return LLGExpr(graph, _determ_token=token)
    except (ImportError, TypeError):
        return graph


def workers_share_files(client: Any, writers: list[Any]) -> bool:
    """Whether every worker of ``client`` sees the writers' directory, as this process does.

    See :func:`workers_share_dir`; False when no writer has a directory (unless this
    process started the cluster).
    """
    if getattr(client, "cluster", None) is not None:
        return True
    directory = next((getattr(w, "directory", None) for w in writers), None)
    shared = directory is not None and workers_share_dir(client, Path(directory))
    log.info("workers %s the staging directory: %s", "share" if shared else "do not see",
             "they write the Zarr chunks" if shared else "blocks come back to be written")
    return shared


def workers_share_dir(client: Any, directory: Path) -> bool:
    """Whether every worker of ``client`` sees ``directory``, as this process does.

    A cluster this process started shares its files. Otherwise a probe file with a
    random token is written into ``directory`` and every worker is asked to read it
    back at the same absolute path (a cluster on a shared file system).
    """
    if getattr(client, "cluster", None) is not None:
        return True
    token = uuid.uuid4().hex
    probe = Path(directory).resolve() / f".probe-{token}"
    try:
        probe.write_text(token)
        seen = client.run(_sees, str(probe), token)
    except Exception:  # noqa: BLE001 - any failure means: do not rely on it
        return False
    finally:
        probe.unlink(missing_ok=True)
    return bool(seen) and all(seen.values())


def segment_spill(ctx: RunContext, staging: Path) -> Path | None:
    """Where the segments spill their chunks, or None where the workers cannot see it.

    Without a spill directory every worker shares, segments are resolved in memory.
    """
    if ctx.client is None or workers_share_dir(ctx.client, staging):
        return staging / SPILL
    log.info("workers do not see the staging directory: segments are resolved in memory")
    return None


def _sees(path: str, token: str) -> bool:
    """On a worker: whether ``path`` holds ``token``."""
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def store_rasters(rasters: dict[str, xr.DataArray], writers: dict[str, Any],
                  client: Any, progress: Progress, *, compute: bool = True,
                  skip: frozenset[Any] | set[Any] = frozenset()) -> Any:
    """Compute every block of every raster once and hand it to its writer (computes).

    The rasters share one graph, so common stages (reading, features, labels) run once
    per chunk. With threads, ``da.store`` writes under one lock as blocks finish. With a
    ``distributed`` client, blocks are computed on the workers a bounded number at a
    time; each worker writes its blocks' Zarr chunks and class counts itself, and only
    the blocks of the GeoTIFF come back here, to the process that owns its handle.

    A writer is a :class:`LabelWriter` or any array accepting ``w[region] = block``.
    With threads, ``compute=False`` returns the store as a Delayed instead, to be
    computed with other results of the same blocks (one pass).
    ``skip``: regions (:func:`._resume.region_key`) a resume reused: not computed.
    """
    names = list(rasters)
    arrays = [rasters[n].data for n in names]
    if len({a.chunks for a in arrays}) != 1:
        raise ValueError("rasters to write must share one chunking")
    if client is None:
        targets = [_Targets(writers[n], progress if i == 0 else None)
                   for i, n in enumerate(names)]
        if skip:  # a resume: only the blocks not reused, each stored to its region
            todo = [r for r in _regions(arrays[0]) if region_key(r) not in skip]
            if not todo:
                return None
            return da.store([a[r] for r in todo for a in arrays],
                            [t for _ in todo for t in targets],  # type: ignore[misc]
                            lock=False, regions=[r for r in todo for _ in arrays],
                            compute=compute)
        # the writers lock what they share: Zarr chunks are encoded in parallel.
        # ignore: dask annotates targets as ArrayLike, but documents (and only uses)
        # `target[region] = block`, which _Targets supports
        return da.store(arrays, targets, lock=False,  # type: ignore[arg-type]
                        compute=compute)
    if not compute:
        raise ValueError("compute=False needs the threaded scheduler")
    from dask._task_spec import List, Task, TaskRef
    from dask.core import flatten
    from dask.optimization import cull
    from dask.utils import ensure_dict
    from distributed import as_completed

    # workers that see this run's staging directory (a cluster we started, or one on
    # a shared file system) write the Zarr chunks themselves; others send blocks here
    shared = workers_share_files(client, [writers[n] for n in names])
    remotes = [writers[n].remote(shared) for n in names]
    # the whole graph as one dict, optimised once: each batch is culled from it by
    # walking back from its own keys (client.compute culls the whole graph for every
    # batch: 0.09 s of this process's CPU a batch at 16384^2, 0.42 s at 49152^2).
    # The tasks that store a block are written here as task specs: dask.delayed
    # tokenises every call's arguments (1.2 ms of this process's CPU a block).
    optimised = dask.optimize(*arrays)
    graph: dict[Any, Any] = {}
    for a in optimised:
        graph.update(ensure_dict(a.__dask_graph__()))
    per_array = [list(flatten(a.__dask_keys__())) for a in optimised]  # C order
    name = f"store-parts-{uuid.uuid4().hex}"
    regions = _regions(arrays[0])
    keys = list(zip(*per_array, strict=True))
    # This process pays ~2-3 ms of CPU for each future it holds (its messages, the
    # fetch of its result), so the results of GROUP neighbouring blocks come back as
    # one (a task on a worker gathers them and encodes the overview tiles they fill),
    # unless the blocks themselves come back (a streamed GeoTIFF, other formats'
    # sinks): those would travel twice.
    group = 1 if any(r["block"] for r in remotes) else GROUP
    grids = [r["cog"] for r in remotes]
    pending: list[tuple[list[tuple[slice, ...]], Any]] = []
    for members in _groups(arrays[0].numblocks, group):
        members = [i for i in members if region_key(regions[i]) not in skip]
        if not members:
            continue
        for i in members:
            graph[(name, i)] = Task((name, i), _store_parts, List(*map(TaskRef, keys[i])),
                                    regions[i], remotes)
        key = (name, members[0])
        if len(members) > 1:
            key = (f"{name}-group", members[0])
            graph[key] = Task(key, _gathered, List(*(TaskRef((name, i)) for i in members)),
                              grids)
        pending.append(([regions[i] for i in members], key))
    if not pending:
        return None
    # Blocks go to the scheduler in batches, each optimised once (one submission per
    # block re-culls the whole graph every time: quadratic), and the next batch is
    # sent while half of the previous one is still running, so workers never idle and
    # at most about two batches of label blocks wait in worker memory.
    batch = 8 * max(1, len(client.scheduler_info().get("workers", {})))
    pending.reverse()
    futures = as_completed()
    where: dict[Any, list[tuple[slice, ...]]] = {}
    running = 0  # blocks submitted and not yet written

    def submit_batch() -> None:
        nonlocal running
        take: list[tuple[list[tuple[slice, ...]], Any]] = []
        while pending and sum(len(r) for r, _ in take) < batch:
            take.append(pending.pop())
        keys = [k for _, k in take]
        culled = _named_graph(cull(graph, keys)[0], f"{name}-{len(pending)}")
        for (group_regions, _), fut in zip(take, client.get(culled, keys, sync=False),
                                           strict=True):
            where[fut.key] = group_regions
            running += len(group_regions)
            futures.add(fut)

    submit_batch()
    # the results of every task finished meanwhile are fetched in one call: one
    # request per worker instead of one per task
    for done in futures.batches():
        for fut, results in zip(done, client.gather(done), strict=True):
            done_regions = where.pop(fut.key)  # the group's
            for region, result in zip(done_regions,
                                      results if len(done_regions) > 1 else [results],
                                      strict=True):
                for raster, remote, part in zip(names, remotes, result, strict=True):
                    writers[raster].add(region, part.block, part.hist, tiles=part.tiles,
                                        zarr_written=remote["zarr"] is not None,
                                        checksum=part.checksum)
                progress.update()
            running -= len(done_regions)
            fut.release()
        if pending and running <= batch // 2:
            submit_batch()


def make_writer(ctx: RunContext, model: Any, staging: Path, name: str,
                arr: xr.DataArray, *, readable: bool = False,
                ledger: Ledger | None = None, assembled: bool = False) -> LabelWriter:
    """Return the writer of raster ``name``: the run's formats, the input's geometry.

    ``readable``: the raster is read back after its pass (the class map of a one-pass
    segments run), from a hidden Zarr store when no format of the run can be read.
    ``assembled``: its blocks are computed on a cluster, whose workers encode the
    COG's tiles (:class:`~pipeline.io.LabelWriter`).
    ``ledger``: records the Zarr chunks written; one with a killed run's lines reopens
    that run's store (``--resume``).
    """
    writer = LabelWriter(staging, arr, nodata=int(arr.rio.nodata), stem=name,
                         n_classes=model.k if name.startswith("labels") else None,
                         # the leaves of a merge hierarchy: for `tileseg cut` only
                         formats=("zarr",) if name == "leaves" else ctx.opened.formats,
                         geometry=ctx.opened.geometry,
                         class_names=list(model.class_names), readable=readable,
                         predictor=name == "confidence",  # a measured value
                         reopen=ledger is not None and bool(ledger.previous),
                         assembled=assembled)
    writer.ledger = ledger
    return writer


def reuse_chunks(rasters: dict[str, xr.DataArray], writers: dict[str, LabelWriter],
                 ledger: Ledger) -> set[Any]:
    """Hand the writers the blocks a killed run finished; return their regions.

    A block is reused when every raster's chunk of it is in the ledger and reads back
    from its Zarr store with the CRC recorded; it goes to the GeoTIFF stream, the
    other formats and the counts, not to the Zarr store again. Others are computed.
    """
    names = list(rasters)
    regions = _regions(rasters[names[0]].data)
    ledger.total = len(regions)
    previous = ledger.previous
    candidates = [r for r in regions
                  if all((n, region_key(r)) in previous for n in names)]

    def check(region: tuple[slice, ...]) -> Any:
        key = region_key(region)
        blocks = []
        for n in names:
            block = writers[n].read_chunk(region)
            if block is None or block.shape != tuple(s.stop - s.start for s in region) \
                    or crc(block) != previous[(n, key)]:
                return None
            blocks.append(block)
        for n, block in zip(names, blocks, strict=True):
            writers[n].add(region, block, writers[n].histogram(block), record=False)
        return key

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        reused = {k for k in pool.map(check, candidates) if k is not None}
    ledger.reused = len(reused)
    return reused


@dataclass
class Written:
    """What the write stage wrote: the finished files, the writers, the segments."""

    files: list[Path]
    writers: dict[str, LabelWriter]
    segments: Any  # stages.Segments or None
    instances: Any = None  # stages.Instances or None (postprocess.instances)


#: the segments' spill files, inside the staging directory (removed once written)
SPILL = ".segments-spill"


def _segment_pass(ctx: RunContext, model: Any, staging: Path,
                  rasters: dict[str, xr.DataArray], writers: dict[str, LabelWriter],
                  bar: Progress) -> Progress:
    """Write the resolved ``rasters["segments"]`` in a pass of its own; its bar."""
    names = ["segments"] + (["leaves"] if "leaves" in rasters else [])
    for name in names:
        writers[name] = make_writer(ctx, model, staging, name, rasters[name])
    bar.close()
    bar = Progress(rasters["labels"].data.npartitions, "segments", ctx.progress)
    with ctx.timings.stage("segments_raster"):
        store_rasters({n: rasters[n] for n in names}, {n: writers[n] for n in names},
                      None, bar)
    return bar


def write_stage(ctx: RunContext, model: Any, rasters: dict[str, xr.DataArray],
                staging: Path, segments: Any, one_pass: bool,
                ledger: Ledger | None = None) -> Written:
    """Compute and write every raster, the segments and their table (computes).

    With ``one_pass`` (segments on the threaded scheduler, a readable class map), one
    pass reads the input, writes the class rasters and summarises the segments; a
    second reads the class map back to write them. Otherwise ``segments`` were
    resolved before, and one pass writes every raster.

    ``ledger``: records every Zarr chunk written; on a resume (it holds a killed run's
    lines) the chunks it verifies are reused (:func:`reuse_chunks`), the others
    computed. A one-pass resume then summarises the segments from the finished class
    map (one more read of the input for the segments' feature means, no labelling):
    the segment IDs depend only on the class map, so they are those of a run never
    killed.
    """
    from ._segments import segments_stage, write_segments

    config, timings = ctx.config, ctx.timings
    labels = rasters["labels"]
    t = time.perf_counter()
    resuming = ledger is not None and bool(ledger.previous)
    # on a cluster the workers encode the COGs' tiles: no block comes back for them
    writers = {name: make_writer(ctx, model, staging, name, arr,
                                 readable=one_pass and name == "labels", ledger=ledger,
                                 assembled=ctx.client is not None and not one_pass)
               for name, arr in rasters.items()}
    cog_wait = 0.0  # waiting for COGs encoded in the background, after the passes
    bar = Progress(labels.data.npartitions, "label+write", ctx.progress)
    try:
        reused = (reuse_chunks(rasters, writers, ledger)
                  if ledger is not None and ledger.previous else set())
        if ledger is not None and not resuming:
            ledger.total = labels.data.npartitions
        if one_pass and resuming:
            classes = list(writers.values())
            store_rasters(rasters, writers, None, bar, skip=reused)
            for w in classes:
                w.finish_streams()
            class_map = {"labels": rasters["labels"].copy(
                data=writers["labels"].read_back())}
            segments = segments_stage(ctx, model, class_map,
                                      read_back=lambda: class_map["labels"],
                                      spill=segment_spill(ctx, staging))
            rasters["segments"] = class_map["segments"]
            bar = _segment_pass(ctx, model, staging, rasters, writers, bar)
            for w in classes:
                w.encode_cog()
        elif one_pass:
            along = store_rasters(rasters, writers, None, bar, compute=False)
            # once the pass is over the class rasters are complete: their COGs
            # are encoded (GDAL, no GIL) while this thread resolves the segments
            # and the segment pass reads the class map from the stream they are
            # encoded from (uncompressed: no decoding, and no wait for the COG)
            classes = list(writers.values())
            encoder = concurrent.futures.ThreadPoolExecutor(1)
            encoding: list[concurrent.futures.Future] = []

            def encode() -> None:
                for w in classes:
                    w.finish_streams()
                # one encoding thread: the resolve has the other core to itself
                encoding.append(encoder.submit(encode_cogs))

            def encode_cogs() -> None:
                for w in classes:
                    w.encode_cog(keep_streams=True, threads=1)

            def read_back() -> xr.DataArray:  # the class map, finished
                return rasters["labels"].copy(data=writers["labels"].read_back())

            try:
                segments = segments_stage(ctx, model, rasters, along=along,
                                          after_pass=encode, read_back=read_back,
                                          spill=segment_spill(ctx, staging))
                bar = _segment_pass(ctx, model, staging, rasters, writers, bar)
                if encoding:  # the class COGs, encoded meanwhile
                    t_wait = time.perf_counter()
                    encoding[0].result()
                    cog_wait = time.perf_counter() - t_wait
            finally:
                encoder.shutdown()
            for w in classes:
                w.remove_streams()
        else:
            store_rasters(rasters, writers, ctx.client, bar, skip=reused)
    except BaseException:
        quiesce()  # chunks still computing on Dask's threads would write into aborted writers
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
        if ledger is not None:
            ledger.close()
    # label_write: the pass over the input (with segments, their second pass
    # over the class map is segments_raster, and resolving them is segments)
    timings["label_write"] = time.perf_counter() - t - cog_wait - (
        timings.get("segments", 0.0) + timings.get("segments_raster", 0.0)
        if one_pass else 0.0)
    # --- postprocess.instances: split from the finished segment raster (its own
    # writer joins the others, closed below; stages/_instances.py)
    instances = None
    if segments is not None and config.postprocess.instances is not None:
        from ._instances import instances_stage

        instances = instances_stage(ctx, model, segments, rasters["segments"], writers,
                                    staging)
    # --- end of postprocess.instances
    t = time.perf_counter()
    seg_files: list[Path] | None = None
    if segments is not None and not config.postprocess.polygons:
        # the segment COG is encoded in a thread (GDAL only, no GIL) while this
        # one writes the table (polygons read the finished raster: not then)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            encoding_seg = pool.submit(writers["segments"].encode_cog)
            seg_files = write_segments(segments, rasters["segments"], writers["segments"],
                                       staging, config, timings)
            encoding_seg.result()
    files = [p for w in writers.values() for p in w.close()]
    # with segments, "cog" includes "segments_write" when they overlap
    timings["cog"] = time.perf_counter() - t + cog_wait
    if segments is not None:
        files += seg_files if seg_files is not None else write_segments(
            segments, rasters["segments"], writers["segments"], staging, config, timings)
    if instances is not None:
        files += instances.files
    return Written(files, writers, segments, instances)
