"""The orchestrator: with ``fit`` (for its sample), the only place that computes.

``run`` opens the input lazily, builds the feature cube, fits the model, labels every
chunk and streams the labels to the writers, then writes the model and the report.
Everything is written into a hidden staging directory beside ``output`` and renamed
into place only when complete, so a failed run leaves nothing that looks finished.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from rasterio.errors import RasterioError

from .cluster import (
    ELBOW_SAMPLE_SIZE,
    METHODS,
    SAMPLE_CELL,
    ClusterModel,
    ElbowResult,
    Sample,
    draw_sample,
    elbow_on,
    fit_on,
    load_model,
    predict,
    predict_confidence,
    raw_bands,
)
from .compute import chunk_budget, dask_context, local_while_workers_warm, n_workers
from .config import RunConfig
from .errors import ModelError, OutputExistsError, reading
from .features import compute_features
from .io import LabelWriter, fit_chunk, masked_float, open_image
from .io._write import regular_chunks, store_part
from .postprocess import majority_filter
from .report import build_report, describe_image, plot_comparison, plot_elbow, write_report

__all__ = ["run", "plan", "RunResult", "staged_output", "fit_model", "predict_model",
           "elbow_model"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run wrote."""

    output: Path
    outputs: list[Path]
    model: ClusterModel
    report: dict[str, Any] = field(repr=False)


def _refuse_existing(output: Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` if ``output`` exists and may not be replaced."""
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: output exists; pass --overwrite to replace it")


@contextlib.contextmanager
def staged_output(output: Path, overwrite: bool, keep: tuple[Path, ...] = ()
                  ) -> Iterator[Path]:
    """Yield a staging directory that replaces ``output`` only if the block succeeds.

    Files in ``keep`` (of the old ``output``) are copied into the staging directory
    first, so they survive unless the block rewrites them.

    Raises
    ------
    OutputExistsError
        If ``output`` exists and ``overwrite`` is false (it is left untouched).
    """
    _refuse_existing(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for path in keep:
        shutil.copy2(path, staging / path.name)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    if output.exists():
        output.rename(old)
    staging.rename(output)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


@contextlib.contextmanager
def _stage_progress(enabled: bool) -> Iterator[None]:
    """Dask's text progress bar for a stage computed on the local scheduler."""
    if not (enabled and sys.stderr.isatty()):
        yield
        return
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr, minimum=1.0):
        yield


class _Progress:
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

    def __init__(self, writer: LabelWriter, progress: _Progress | None) -> None:
        self.writer = writer
        self.progress = progress

    def __setitem__(self, region: tuple[slice, slice], block: np.ndarray) -> None:
        self.writer[region] = block
        if self.progress is not None:
            with self.lock:
                self.progress.update()

    lock = threading.Lock()


def _regions(arr: da.Array) -> list[tuple[slice, slice]]:
    ys = np.concatenate([[0], np.cumsum(arr.chunks[0])])
    xs = np.concatenate([[0], np.cumsum(arr.chunks[1])])
    return [(slice(int(ys[i]), int(ys[i + 1])), slice(int(xs[j]), int(xs[j + 1])))
            for i in range(len(ys) - 1) for j in range(len(xs) - 1)]


def _store_parts(blocks: list[np.ndarray], region: tuple[slice, slice],
                 remotes: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """On a worker: each raster's share of writing its block (``store_part``)."""
    return [store_part(b, region, r) for b, r in zip(blocks, remotes, strict=True)]


def store_rasters(rasters: dict[str, xr.DataArray], writers: dict[str, Any],
                  client: Any, progress: _Progress, *, compute: bool = True) -> Any:
    """Compute every block of every raster once and hand it to its writer (computes).

    The rasters share one graph, so common stages (reading, features, labels) run once
    per chunk. With threads, ``da.store`` writes under one lock as blocks finish. With a
    ``distributed`` client, blocks are computed on the workers a bounded number at a
    time; each worker writes its blocks' Zarr chunks and class counts itself, and only
    the blocks of the GeoTIFF come back here, to the process that owns its handle.

    A writer is a :class:`LabelWriter` or any array accepting ``w[region] = block``.
    With threads, ``compute=False`` returns the store as a Delayed instead, to be
    computed with other results of the same blocks (one pass).
    """
    names = list(rasters)
    arrays = [rasters[n].data for n in names]
    if len({a.chunks for a in arrays}) != 1:
        raise ValueError("rasters to write must share one chunking")
    if client is None:
        targets = [_Targets(writers[n], progress if i == 0 else None)
                   for i, n in enumerate(names)]
        # the writers lock what they share: Zarr chunks are encoded in parallel
        return da.store(arrays, targets, lock=False, compute=compute)
    if not compute:
        raise ValueError("compute=False needs the threaded scheduler")
    from distributed import as_completed

    regions = _regions(arrays[0])
    per_array = [a.to_delayed(optimize_graph=True).ravel().tolist() for a in arrays]
    # workers of a cluster we started share this machine's files: they write the Zarr
    # chunks; a cluster reached by its address may not, so blocks come back here
    shared = getattr(client, "cluster", None) is not None
    remotes = [writers[n].remote(shared) for n in names]
    share = dask.delayed(_store_parts, pure=True)
    blocks = [share(list(t), region, remotes)
              for t, region in zip(zip(*per_array, strict=True), regions, strict=True)]
    # Blocks go to the scheduler in batches, each optimised once (one submission per
    # block re-culls the whole graph every time: quadratic), and the next batch is
    # sent while half of the previous one is still running, so workers never idle and
    # at most about two batches of label blocks wait in worker memory.
    batch = 8 * max(1, len(client.scheduler_info().get("workers", {})))
    pending = list(zip(regions, blocks, strict=True))[::-1]
    futures = as_completed()
    where: dict[str, tuple[slice, slice]] = {}

    def submit_batch() -> None:
        take = [pending.pop() for _ in range(min(batch, len(pending)))]
        for (region, _), fut in zip(take, client.compute([b for _, b in take]),
                                    strict=True):
            where[fut.key] = region
            futures.add(fut)

    submit_batch()
    for fut in futures:
        region = where.pop(fut.key)
        for name, remote, (block, hist) in zip(names, remotes, fut.result(), strict=True):
            writers[name].add(region, block, hist, zarr_written=remote["zarr"] is not None)
        progress.update()
        fut.release()
        if pending and len(where) <= batch // 2:
            submit_batch()


@dataclass
class _Segments:
    """What the segments stage resolved: the index (for the lazy raster) and its table."""

    index: Any = field(repr=False)  # postprocess.SegmentIndex
    table: Any = field(repr=False)
    summary: dict[str, Any]


def _segments_stage(config: RunConfig, image: xr.DataArray, features: xr.DataArray,
                    model: Any, rasters: dict[str, xr.DataArray], timings: dict[str, float],
                    along: Any = None, after_pass: Callable[[], None] | None = None,
                    read_back: Callable[[], xr.DataArray] | None = None
                    ) -> _Segments | None:
    """Global segments of ``rasters["labels"]``, merged to ``min_size`` (computes).

    Computes the per-chunk summaries, resolves and merges them in memory, and adds
    the lazy ``rasters["segments"]``. Without ``along``, the summaries take one more
    pass of read, features, labels and local labelling, and the write pass computes
    the segments with the other rasters. With ``along`` (the write of the class
    rasters, uncomputed), both are computed in one pass over the input,
    ``after_pass()`` is called, and the segments are relabelled from the class map
    that pass wrote (``read_back()``).
    Feature means and the merge's similarity use the model's standardisation
    (``model.mean``, ``model.scale``), the units the classes were fitted in. With
    ``features: [bands]`` they are summed from the raw ``image`` blocks, as the labels
    are (:func:`pipeline.cluster.raw_bands`): no float32 copy of the image.
    """
    pp = config.postprocess
    if pp.segments is None:
        return None
    # imported here: segments bring pandas, pyarrow and shapely (start-up cost)
    from .postprocess import (
        load_kernels,
        merge_small_segments,
        pixels_for_area,
        relabel_segments,
        resolve_segments,
        segment_table,
        segment_tasks,
    )

    t = time.perf_counter()
    labels = rasters["labels"]
    transform = labels.rio.transform()
    min_px = (None if pp.min_size is None else pp.min_size if isinstance(pp.min_size, int)
              else pixels_for_area(pp.min_size.area, transform))
    bands = raw_bands(features, image)
    tasks = segment_tasks(labels, features if bands is None else image, bands=bands,
                          connectivity=pp.segments.connectivity, min_pixels=min_px,
                          offset=model.mean, scale=model.scale)
    # the resolve and merge kernels load from numba's cache (~0.8 s of one core) in a
    # thread while the pass runs, not after it, when resolving is the only work left
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load_kernels)
        if along is None:
            pieces, joins = dask.compute(tasks.pieces, tasks.joins)
        else:
            # unoptimised: fusing the stores' chains renames their tasks, and the
            # summaries (built on the unfused keys) would compute the majority filter
            # a second time
            _, pieces, joins = dask.compute(along, tasks.pieces, tasks.joins,
                                            optimize_graph=False)
            if after_pass is not None:
                after_pass()
        loading.result()
    t_resolve = time.perf_counter()
    index = resolve_segments(tasks, pieces, joins)
    del pieces, joins  # the per-piece summaries: as large as the table, not needed now
    n_found = index.n_segments
    if min_px is not None:
        index = merge_small_segments(index, min_px)
    rasters["segments"] = relabel_segments(labels if read_back is None else read_back(), index)
    table = segment_table(index.stats, transform=transform, feature_names=model.feature_names,
                          offset=model.mean, scale=model.scale)
    summary = {"connectivity": index.connectivity, "found": n_found,
               "min_pixels": min_px, "segments": index.n_segments}
    log.info("segments: %d found, %d after merging below %s pixels", n_found,
             index.n_segments, min_px)
    # with `along`, the pass itself counts as writing: only resolving is "segments"
    timings["segments"] = time.perf_counter() - (t if along is None else t_resolve)
    return _Segments(index=index, table=table, summary=summary)


def _write_segments(seg: _Segments, raster: xr.DataArray, staging: Path, config: RunConfig,
                    timings: dict[str, float]) -> list[Path]:
    """Write segments.parquet and, if asked, the polygons (computes, on local threads).

    The polygons are vectorised from the segment raster just written (Zarr, else the
    COG), read back chunk by chunk: no further pass over the input.
    """
    from .postprocess import chunk_polygons, dissolve_polygons, polygons_frame

    t = time.perf_counter()
    out = [staging / "segments.parquet"]
    seg.table.to_parquet(out[0], index=False)
    if config.postprocess.polygons:
        if "zarr" in config.formats:
            data = da.from_zarr(str(staging / "segments.zarr"), component="segments")
        else:
            data = open_image(staging / "segments.tif",
                              chunks=max(16, int(raster.chunks[0][0]))).data[0]
        written = xr.DataArray(data, dims=("y", "x"))
        # the staging directory is local: read it here, not on remote workers
        (parts,) = dask.compute(chunk_polygons(written), scheduler="threads")
        ids, geoms = dissolve_polygons(parts)
        frame = polygons_frame(ids, geoms, seg.table, transform=raster.rio.transform(),
                               crs=raster.rio.crs)
        out += [staging / "polygons.gpkg", staging / "polygons.parquet"]
        frame.to_file(out[1], driver="GPKG", layer="polygons", engine="pyogrio")
        frame.to_parquet(out[2], index=False)
    timings["segments_write"] = time.perf_counter() - t
    return out


#: Files of ``tileseg fit`` and ``tileseg elbow``: an output holding only these is not a
#: finished run, so ``run`` and ``predict`` write into it (keeping the figures).
PREPARED = ("model.json", "model.npz", "elbow.json", "elbow.png", "comparison.png")


def _prepared(output: Path) -> tuple[Path, ...] | None:
    """Return the figures to keep if ``output`` holds only fit/elbow files, else None."""
    if not output.is_dir():
        return None
    entries = list(output.iterdir())
    if not entries or any(p.name not in PREPARED or not p.is_file() for p in entries):
        return None
    return tuple(p for p in entries if p.name not in ("model.json", "model.npz"))


@dataclass
class _Fitted:
    """The model of a run, and the sample and elbow it came from (when fitted here)."""

    model: ClusterModel
    sample: Sample | None = None
    elbow: ElbowResult | None = None


def _draw(config: RunConfig, features: xr.DataArray, size: int) -> Sample:
    """Draw the run's sample (computes).

    With per-pixel features only, the sample is drawn from the same features on the
    fixed sample-cell grid, so the pass reads only the tiles of the seeded cells (the
    features are seam-free, so the values, and the sample, are those of ``features``).
    Neighbourhood features would make each cell read its 8 neighbours: those runs
    sample from every pixel of ``features``.
    """
    c = config.cluster
    if any(spec.halo for spec in config.features):
        return draw_sample(features, size, c.seed, cells=False)
    image = open_image(config.input, chunks=SAMPLE_CELL, nodata=config.nodata)
    return draw_sample(compute_features(image, config.features), size, c.seed)


def _fit_stage(config: RunConfig, features: xr.DataArray) -> _Fitted:
    """Draw the sample, choose k when ``auto``, fit the configured method (computes)."""
    c = config.cluster
    finds_k = METHODS[c.method].finds_k
    # scikit-learn takes ~1 s to import: when the fit needs it, import it while the
    # sample pass reads (GDAL and the numba kernels release the GIL), not after. K-means
    # and bisecting K-means are our own numba code; only k: auto scores with it then.
    needs = ("sklearn.cluster" if c.method not in ("kmeans", "bisecting_kmeans")
             else "sklearn.metrics" if c.k == "auto" else None)
    if needs:
        threading.Thread(target=import_module, args=(needs,), daemon=True).start()
    sample = _draw(config, features, c.sample_size)
    k: Any = c.k if c.k_given or not finds_k else None
    result = None
    if c.k == "auto" and not finds_k:
        ks = range(c.k_range[0], c.k_range[1] + 1)
        result = elbow_on(sample.head(ELBOW_SAMPLE_SIZE), ks, n_init=c.n_init,
                          max_iter=c.max_iter, tol=c.tol)
        k = result.k
        log.info("k = %d, chosen by %s over k = %d..%d", k, result.chosen_by, *c.k_range)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        model = fit_on(sample, k, method=c.method, features=features, **c.fit_options())
    for w in caught:  # one log line each (e.g. "cluster.k=5 is ignored: ...")
        log.warning("%s", w.message)
    return _Fitted(model, sample, result)


def _given_model(config: RunConfig, model: ClusterModel) -> _Fitted:
    """Check that a loaded model fits the config's features and outputs."""
    wanted = [f.describe() for f in config.features]
    if model.features and list(model.features) != wanted:
        raise ModelError(f"model: fitted with features {model.features}, but the config "
                         f"asks for {wanted}; expected the model's features in the config")
    if config.cluster.confidence and not hasattr(model, "confidence_block"):
        raise ModelError(f"model: cluster.confidence needs a gmm model, not {model.method}")
    return _Fitted(model)


def _save_model(model: ClusterModel, directory: Path) -> list[str]:
    npz = directory / "model.npz"
    npz.unlink(missing_ok=True)  # never leave another model's arrays beside model.json
    model.save(directory / "model.json")
    return ["model.json"] + (["model.npz"] if npz.exists() else [])


def _write_elbow(result: ElbowResult, directory: Path) -> list[str]:
    summary = result.to_dict()
    (directory / "elbow.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_elbow(summary, directory / "elbow.png")
    return ["elbow.json", "elbow.png"]


def _overview(config: RunConfig, image: xr.DataArray, size: int) -> xr.DataArray:
    """Read the input decimated to ``size`` pixels on its long side (computes).

    A single GDAL raster is read with ``out_shape``, so GDAL uses its overviews when
    it has them; other inputs (mosaics, Zarr) are read chunk by chunk and strided.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning

    height, width = image.sizes["y"], image.sizes["x"]
    step = max(1, -(-max(height, width) // size))
    shape = (image.sizes["band"], -(-height // step), -(-width // step))
    data = None
    src = config.input
    if isinstance(src, str) and not src.rstrip("/").endswith(".zarr") \
            and not any(ch in src for ch in "*?["):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(src) as ds:
                    data = ds.read(out_shape=shape, resampling=Resampling.nearest)
        except RasterioError:
            data = None
    if data is None:
        data = image.data[:, ::step, ::step].compute()
    small = xr.DataArray(data, dims=("band", "y", "x"), attrs=dict(image.attrs))
    if image.rio.nodata is not None:
        small = small.rio.write_nodata(image.rio.nodata, encoded=False)
    return small.chunk({"band": -1})


def _comparison_models(config: RunConfig, fitted: _Fitted) -> list[tuple[str, ClusterModel]]:
    """Return the models of comparison.png: the run's, then one per comparison k.

    Each is a cut of the model's hierarchy, else the method refitted on the first
    ``ELBOW_SAMPLE_SIZE`` sampled pixels (K-means for methods that find their own k);
    loaded models are only cut.
    """
    model, c = fitted.model, config.cluster
    panels = [(f"{model.method}, k={model.k} (labels.tif)", model)]
    for k in config.report.comparison:
        if k == model.k:
            continue
        if model.cuttable:
            with contextlib.suppress(ModelError):
                panels.append((f"{model.method}, k={k}", model.cut(k)))
                continue
        if fitted.sample is None:
            log.warning("comparison: k=%d is left out: a loaded %s model cannot be cut "
                        "there", k, model.method)
            continue
        method = "kmeans" if METHODS[model.method].finds_k else model.method
        opts = {} if method != c.method else {
            n: v for n, v in c.fit_options().items() if n != "refine"}
        other = fit_on(fitted.sample.head(ELBOW_SAMPLE_SIZE), k, method=method, **opts)
        panels.append((f"{method}, k={k}", other))
    return panels


def _write_comparison(config: RunConfig, image: xr.DataArray,
                      panels: list[tuple[str, ClusterModel]], path: Path) -> Path:
    """``comparison.png``: the decimated original next to each model's labels."""
    small = _overview(config, image, config.report.comparison_size)
    feats = compute_features(small, config.features).values
    shown = [(title, m.predict_block(feats), m.class_names, m.nodata) for title, m in panels]
    plot_comparison(masked_float(small).values, shown, path,
                    source=str(image.attrs.get("source", "")))
    return path


def _write_figures(config: RunConfig, image: xr.DataArray, fitted: _Fitted,
                   directory: Path) -> list[str]:
    """elbow.json/png when k was chosen here, comparison.png when asked (computes)."""
    names = _write_elbow(fitted.elbow, directory) if fitted.elbow is not None else []
    if config.report.comparison:
        _write_comparison(config, image, _comparison_models(config, fitted),
                          directory / "comparison.png")
        names.append("comparison.png")
    return names


def plan(config: RunConfig) -> dict[str, Any]:
    """Describe what :func:`run` would do, without computing anything."""
    image, features = _open(config)
    out = Path(config.output)
    return {
        "input": describe_image(image),
        "features": [str(n) for n in features["feature"].values],
        "cluster": config.cluster.model_dump(),
        "scheduler": config.compute.scheduler,
        "workers": n_workers(config.compute),
        "output": str(out),
        "output_exists": out.exists(),
        "writes": [f"{stem}.{'tif' if f == 'cog' else 'zarr'}"
                   for stem in ["labels"] + (["labels_raw"] if config.postprocess.keep_raw else [])
                   + (["segments"] if config.postprocess.segments else [])
                   for f in config.formats]
        + (["segments.parquet"] if config.postprocess.segments else [])
        + (["polygons.gpkg", "polygons.parquet"] if config.postprocess.polygons else [])
        + [f"confidence.{'tif' if f == 'cog' else 'zarr'}" for f in config.formats
           if config.cluster.confidence]
        + (["elbow.json", "elbow.png"] if config.cluster.k == "auto" else [])
        + (["comparison.png"] if config.report.comparison else [])
        + ["model.json", "report.json"],
    }


def run(
    config: RunConfig, *, overwrite: bool = False, progress: bool = False,
    model: ClusterModel | None = None,
) -> RunResult:
    """Run the whole pipeline on a config.

    Parameters
    ----------
    config : RunConfig
    overwrite : bool
        Replace an existing ``output`` (only once the new one is complete). An
        ``output`` holding only files of ``tileseg fit`` / ``tileseg elbow`` is
        written into without it (its figures are kept).
    progress : bool
        Show progress bars on a terminal.
    model : ClusterModel, optional
        Label with this model instead of fitting one (``tileseg predict``); it must
        have the config's features.

    Returns
    -------
    RunResult

    Raises
    ------
    PipelineError
        Any user error (input, config, existing output), before anything is written
        where the output goes.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    output = Path(config.output)
    keep = _prepared(output)
    _refuse_existing(output, overwrite or keep is not None)
    image, features = _open(config)
    source = image.attrs["source"]
    timings["open"] = time.perf_counter() - t0
    log.info("config: %s", config.to_dict())
    with dask_context(config.compute) as client, reading(source):
        t = time.perf_counter()
        with (_stage_progress(progress and client is None),
              local_while_workers_warm(client, config.compute)):
            fitted = (_fit_stage(config, features) if model is None
                      else _given_model(config, model))
        model = fitted.model
        timings["sample_fit"] = time.perf_counter() - t
        labels = predict(features, model, image=image)
        rasters = {"labels": labels}
        if config.cluster.confidence:
            rasters["confidence"] = predict_confidence(features, model)
        # post-processing stages add or replace entries of `rasters` here, in order:
        # majority filter (replaces "labels", keeps "labels_raw"), then segments.
        pp = config.postprocess
        if pp.keep_raw:
            rasters["labels_raw"] = labels
        if pp.majority.radius:
            rasters["labels"] = majority_filter(labels, pp.majority.radius)
        # segments with threads: one pass reads the input, writes the class rasters and
        # summarises the segments; a second reads the class map back to write them.
        # On a cluster the summaries take a pass of their own (the workers hold no
        # file handle of this process).
        one_pass = (pp.segments is not None and client is None
                    and regular_chunks(labels.chunks))  # read back from Zarr if no COG
        segments = (None if one_pass else
                    _segments_stage(config, image, features, model, rasters, timings))
        with staged_output(output, overwrite or keep is not None, keep or ()) as staging:
            t = time.perf_counter()

            def writer(name: str, arr: xr.DataArray) -> LabelWriter:
                return LabelWriter(staging, arr, nodata=int(arr.rio.nodata), stem=name,
                                   n_classes=model.k if name.startswith("labels") else None,
                                   formats=tuple(config.formats),
                                   predictor=name == "confidence")  # a measured value

            writers = {name: writer(name, arr) for name, arr in rasters.items()}
            written: list[Path] = []  # the finished outputs
            cog_wait = 0.0  # waiting for COGs encoded in the background, after the passes
            bar = _Progress(labels.data.npartitions, "label+write", progress)
            try:
                if one_pass:
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
                        encoding.append(encoder.submit(lambda: [
                            w.encode_cog(keep_streams=True, threads=1) for w in classes]))

                    def read_back() -> xr.DataArray:  # the class map, finished
                        return rasters["labels"].copy(data=writers["labels"].read_back())

                    try:
                        segments = _segments_stage(config, image, features, model, rasters,
                                                   timings, along=along, after_pass=encode,
                                                   read_back=read_back)
                        writers["segments"] = writer("segments", rasters["segments"])
                        bar.close()
                        bar = _Progress(labels.data.npartitions, "segments", progress)
                        t_raster = time.perf_counter()
                        store_rasters({"segments": rasters["segments"]},
                                      {"segments": writers["segments"]}, None, bar)
                        timings["segments_raster"] = time.perf_counter() - t_raster
                        if encoding:  # the class COGs, encoded meanwhile
                            t_wait = time.perf_counter()
                            encoding[0].result()
                            cog_wait = time.perf_counter() - t_wait
                    finally:
                        encoder.shutdown()
                    for w in classes:
                        w.remove_streams()
                else:
                    store_rasters(rasters, writers, client, bar)
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
            finally:
                bar.close()
            # label_write: the pass over the input (with segments, their second pass
            # over the class map is segments_raster, and resolving them is segments)
            timings["label_write"] = time.perf_counter() - t - cog_wait - (
                timings.get("segments", 0.0) + timings.get("segments_raster", 0.0)
                if one_pass else 0.0)
            t = time.perf_counter()
            seg_files: list[Path] | None = None
            if segments is not None and not config.postprocess.polygons:
                # the segment COG is encoded in a thread (GDAL only, no GIL) while this
                # one writes the table (polygons read the finished raster: not then)
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    encoding_seg = pool.submit(writers["segments"].encode_cog)
                    seg_files = _write_segments(segments, rasters["segments"], staging,
                                                config, timings)
                    encoding_seg.result()
            written += [p for w in writers.values() for p in w.close()]
            # with segments, "cog" includes "segments_write" when they overlap
            timings["cog"] = time.perf_counter() - t + cog_wait
            if segments is not None:
                written += seg_files if seg_files is not None else _write_segments(
                    segments, rasters["segments"], staging, config, timings)
            figures = _write_figures(config, image, fitted, staging)
            figures += [p.name for p in keep or () if p.name not in figures]
            timings["total"] = time.perf_counter() - t0
            names = ([p.name for p in written] + _save_model(model, staging) + figures
                     + ["report.json"])
            report = build_report(image, model, writers["labels"].counts, config=config.to_dict(),
                                  timings=timings, outputs=names)
            report["model_source"] = "fitted" if fitted.sample is not None else "loaded"
            if fitted.elbow is not None:
                report["elbow"] = fitted.elbow.to_dict()
            if segments is not None:
                report["segments"] = segments.summary
            write_report(report, staging / "report.json")
    outputs = [output / n for n in names]
    log.info("wrote %s", ", ".join(str(p) for p in outputs))
    return RunResult(output=output, outputs=outputs, model=model, report=report)


def _open(config: RunConfig) -> tuple[xr.DataArray, xr.DataArray]:
    """Open the input lazily and define its features (nothing is computed).

    Without ``chunks`` in the config, the chunks follow the file's tiles (about 1024
    pixels) unless a chunk's working set would not fit the workers' memory: many
    bands or features halve them (:func:`~pipeline.io.fit_chunk`).
    """
    image = open_image(config.input, chunks=config.chunks, nodata=config.nodata)
    features = compute_features(image, config.features)
    if config.chunks is None:
        side = max(image.chunks[1][0], image.chunks[2][0])
        fitted = fit_chunk(side, _bytes_per_pixel(image, features),
                           chunk_budget(config.compute))
        if fitted < side:
            log.info("chunks of %d pixels instead of %d: %d features a pixel", fitted,
                     side, features.sizes["feature"])
            image = open_image(config.input, chunks=fitted, nodata=config.nodata)
            features = compute_features(image, config.features)
    return image, features


def _bytes_per_pixel(image: xr.DataArray, features: xr.DataArray) -> int:
    """Return one pixel's working set in the label pass, in bytes.

    Its bands as read and as float32, its features with their standardised copy,
    its labels and scratch.
    """
    return (image.sizes["band"] * (image.dtype.itemsize + 4)
            + features.sizes["feature"] * 8 + 16)


def fit_model(config: RunConfig, *, overwrite: bool = False
              ) -> tuple[ClusterModel, list[Path]]:
    """``tileseg fit``: fit the configured model and write it into ``output``.

    Writes ``model.json`` (and ``model.npz`` for density models), plus ``elbow.*``
    when ``cluster.k`` is ``auto`` and ``comparison.png`` when asked; other files in
    ``output`` are left alone.

    Raises
    ------
    OutputExistsError
        If ``output/model.json`` exists and ``overwrite`` is false.
    """
    output = Path(config.output)
    if (output / "model.json").exists() and not overwrite:
        raise OutputExistsError(f"{output / 'model.json'}: a model exists; pass "
                                "--overwrite to replace it")
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output}: exists and is not a directory")
    image, features = _open(config)
    with dask_context(config.compute), reading(image.attrs["source"]):
        fitted = _fit_stage(config, features)
        output.mkdir(parents=True, exist_ok=True)
        names = _save_model(fitted.model, output) + _write_figures(config, image, fitted,
                                                                   output)
    log.info("wrote %s", ", ".join(names))
    return fitted.model, [output / n for n in names]


def predict_model(config: RunConfig, model_path: str | os.PathLike[str], *,
                  k: int | None = None, overwrite: bool = False, progress: bool = False
                  ) -> RunResult:
    """``tileseg predict``: label the config's input with a saved model.

    Writes what :func:`run` writes; with the same input the labels equal those of the
    run that fitted the model, whatever the chunking.

    Parameters
    ----------
    k : int, optional
        Cut a hierarchical or bisecting_kmeans model at this k (no refit).

    Raises
    ------
    ModelError
        Unreadable model, features or bands other than the model's, or a ``k`` the
        model cannot be cut at.
    """
    model = load_model(model_path)
    if k is not None and k != model.k:
        model = model.cut(k)
    return run(config, overwrite=overwrite, progress=progress, model=model)


def elbow_model(config: RunConfig, ks: Any, *, sample_size: int | None = None,
                comparison: Any = None, overwrite: bool = False
                ) -> tuple[ElbowResult, list[Path]]:
    """``tileseg elbow``: K-means scores over ``ks`` on the config's sample.

    Writes ``elbow.json`` and ``elbow.png`` into ``output`` and, for the k in
    ``comparison`` (default ``report.comparison``), ``comparison.png``.

    Raises
    ------
    OutputExistsError
        If ``output/elbow.json`` exists and ``overwrite`` is false.
    """
    output = Path(config.output)
    if (output / "elbow.json").exists() and not overwrite:
        raise OutputExistsError(f"{output / 'elbow.json'}: exists; pass --overwrite to "
                                "replace it")
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output}: exists and is not a directory")
    image, features = _open(config)
    c = config.cluster
    wanted = list(config.report.comparison if comparison is None else comparison)
    with dask_context(config.compute), reading(image.attrs["source"]):
        sample = _draw(config, features, sample_size or ELBOW_SAMPLE_SIZE)
        result = elbow_on(sample, ks, n_init=c.n_init, max_iter=c.max_iter, tol=c.tol)
        panels = [(f"kmeans, k={k}", result.models.get(k) or fit_on(sample, k))
                  for k in wanted]
        output.mkdir(parents=True, exist_ok=True)
        names = _write_elbow(result, output)
        if panels:
            _write_comparison(config, image, panels, output / "comparison.png")
            names.append("comparison.png")
    log.info("k = %d (%s); wrote %s", result.k, result.chosen_by, ", ".join(names))
    return result, [output / n for n in names]


def _ari(pred_path: Path, truth_path: Path, k: int, n_true: int) -> float:
    """Return the ARI of two label rasters over pixels valid in both (computes)."""
    from .evaluate import adjusted_rand_index, contingency_table

    pred = open_image(pred_path).isel(band=0)
    truth = open_image(truth_path, chunks=int(pred.chunks[0][0])).isel(band=0)
    pv = np.array(list(range(k)) + [int(pred.rio.nodata)])
    tv = np.array(list(range(n_true)) + [int(truth.rio.nodata)])
    table = contingency_table(pred, truth, pv, tv, ignore_pred=(int(pred.rio.nodata),),
                              ignore_truth=(int(truth.rio.nodata),))
    (table,) = dask.compute(table)
    return adjusted_rand_index(table[:-1, :-1])


def run_demo(
    output: str | os.PathLike[str],
    *,
    size: int = 4096,
    overwrite: bool = False,
    progress: bool = False,
    scheduler: str = "processes",
) -> tuple[RunResult, float, Path]:
    """Generate a synthetic scene with known classes, segment it, score it.

    Returns
    -------
    (RunResult, float, Path)
        The run, the adjusted Rand index against the truth, and the config written.
    """
    import yaml

    from .config import parse_config
    from .synthetic import make_scene

    out = Path(output)
    _refuse_existing(out, overwrite)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True)
    try:
        info = make_scene(out / "scene.tif", size=size, truth_path=out / "truth.tif",
                          cell=max(16, size // 16), border=max(2, size // 64))
        cfg = {
            "input": str(out / "scene.tif"),
            "output": str(out / "result"),
            "features": ["bands"],
            "cluster": {"method": "kmeans", "k": info.n_classes, "seed": 0},
            "compute": {"scheduler": scheduler},
            "formats": ["cog", "zarr"],
        }
        (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        result = run(parse_config(cfg, "demo"), progress=progress)
        ari = _ari(out / "result" / "labels.tif", out / "truth.tif", result.model.k,
                   info.n_classes)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return result, ari, out / "config.yaml"
