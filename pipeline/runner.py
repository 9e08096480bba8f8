"""The orchestrator: with ``fit`` (for its sample), the only place that computes.

``run`` opens the input lazily, builds the feature cube, fits the model, labels every
chunk and streams the labels to the writers, then writes the model and the report.
Everything is written into a hidden staging directory beside ``output`` and renamed
into place only when complete, so a failed run leaves nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from rasterio.errors import RasterioError

from .cluster import KMeansModel, fit, predict
from .compute import dask_context, n_workers
from .config import RunConfig
from .errors import InputError, OutputExistsError
from .features import compute_features
from .io import LabelWriter, open_image
from .report import build_report, describe_image, write_report

__all__ = ["run", "plan", "RunResult", "staged_output"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run wrote."""

    output: Path
    outputs: list[Path]
    model: KMeansModel
    report: dict[str, Any] = field(repr=False)


@contextlib.contextmanager
def staged_output(output: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging directory that replaces ``output`` only if the block succeeds.

    Raises
    ------
    OutputExistsError
        If ``output`` exists and ``overwrite`` is false (it is left untouched).
    """
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: output exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
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
def _reading(source: str) -> Iterator[None]:
    """Turn GDAL read failures inside computations into a one-line InputError."""
    try:
        yield
    except RasterioError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{source}: cannot read the pixels ({first}); "
                         "expected a complete, readable raster") from None


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
            self.progress.update()


def _regions(arr: da.Array) -> list[tuple[slice, slice]]:
    ys = np.concatenate([[0], np.cumsum(arr.chunks[0])])
    xs = np.concatenate([[0], np.cumsum(arr.chunks[1])])
    return [(slice(int(ys[i]), int(ys[i + 1])), slice(int(xs[j]), int(xs[j + 1])))
            for i in range(len(ys) - 1) for j in range(len(xs) - 1)]


def store_rasters(rasters: dict[str, xr.DataArray], writers: dict[str, LabelWriter],
                  client: Any, progress: _Progress) -> None:
    """Compute every block of every raster once and hand it to its writer (computes).

    The rasters share one graph, so common stages (reading, features, labels) run once
    per chunk. With threads, ``da.store`` writes under one lock as blocks finish. With a
    ``distributed`` client, blocks are computed on the workers a bounded number at a
    time and written here, in the process that owns the file handles.
    """
    names = list(rasters)
    arrays = [rasters[n].data for n in names]
    if len({a.chunks for a in arrays}) != 1:
        raise ValueError("rasters to write must share one chunking")
    if client is None:
        targets = [_Targets(writers[n], progress if i == 0 else None)
                   for i, n in enumerate(names)]
        da.store(arrays, targets, lock=threading.Lock(), compute=True)
        return
    from distributed import as_completed

    regions = _regions(arrays[0])
    per_array = [a.to_delayed(optimize_graph=False).ravel().tolist() for a in arrays]
    blocks = [dask.delayed(tuple)(list(t)) for t in zip(*per_array, strict=True)]
    window = 4 * max(1, len(client.scheduler_info().get("workers", {})))
    pending = list(zip(regions, blocks, strict=True))[::-1]
    futures = as_completed()
    where: dict[str, tuple[slice, slice]] = {}

    def submit() -> None:
        region, block = pending.pop()
        fut = client.compute(block, optimize_graph=True)
        where[fut.key] = region
        futures.add(fut)

    while pending and len(where) < window:
        submit()
    for fut in futures:
        region = where.pop(fut.key)
        for name, block in zip(names, fut.result(), strict=True):
            writers[name][region] = block
        progress.update()
        fut.release()
        if pending:
            submit()


def plan(config: RunConfig) -> dict[str, Any]:
    """Describe what :func:`run` would do, without computing anything."""
    image = open_image(config.input, chunks=config.chunks, nodata=config.nodata)
    features = compute_features(image, config.features)
    out = Path(config.output)
    return {
        "input": describe_image(image),
        "features": [str(n) for n in features["feature"].values],
        "cluster": config.cluster.model_dump(),
        "scheduler": config.compute.scheduler,
        "workers": n_workers(config.compute),
        "output": str(out),
        "output_exists": out.exists(),
        "writes": [f"labels.{'tif' if f == 'cog' else 'zarr'}" for f in config.formats]
        + ["model.json", "report.json"],
    }


def run(
    config: RunConfig, *, overwrite: bool = False, progress: bool = False
) -> RunResult:
    """Run the whole pipeline on a config.

    Parameters
    ----------
    config : RunConfig
    overwrite : bool
        Replace an existing ``output`` (only once the new one is complete).
    progress : bool
        Show progress bars on a terminal.

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
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: output exists; pass --overwrite to replace it")
    image = open_image(config.input, chunks=config.chunks, nodata=config.nodata)
    features = compute_features(image, config.features)
    source = image.attrs["source"]
    timings["open"] = time.perf_counter() - t0
    log.info("config: %s", config.to_dict())
    c = config.cluster
    with dask_context(config.compute) as client, _reading(source):
        t = time.perf_counter()
        model = fit(features, c.k, seed=c.seed, sample_size=c.sample_size,
                    n_init=c.n_init, max_iter=c.max_iter, tol=c.tol, refine=c.refine)
        timings["sample_fit"] = time.perf_counter() - t
        labels = predict(features, model)
        rasters = {"labels": labels}
        # post-processing stages add or replace entries of `rasters` here, in order:
        # majority filter (replaces "labels", keeps "labels_raw"), then segments.
        with staged_output(output, overwrite) as staging:
            t = time.perf_counter()
            writers = {
                name: LabelWriter(staging, arr, nodata=int(arr.rio.nodata), stem=name,
                                  n_classes=model.k if name.startswith("labels") else None,
                                  formats=tuple(config.formats))
                for name, arr in rasters.items()
            }
            bar = _Progress(labels.data.npartitions, "label+write", progress)
            try:
                store_rasters(rasters, writers, client, bar)
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
            finally:
                bar.close()
            timings["label_write"] = time.perf_counter() - t
            t = time.perf_counter()
            written = [p for w in writers.values() for p in w.close()]
            timings["cog"] = time.perf_counter() - t
            model.save(staging / "model.json")
            timings["total"] = time.perf_counter() - t0
            names = [p.name for p in written] + ["model.json", "report.json"]
            report = build_report(image, model, writers["labels"].counts, config=config.to_dict(),
                                  timings=timings, outputs=names)
            write_report(report, staging / "report.json")
    outputs = [output / n for n in names]
    log.info("wrote %s", ", ".join(str(p) for p in outputs))
    return RunResult(output=output, outputs=outputs, model=model, report=report)


def _ari(pred_path: Path, truth_path: Path, k: int, n_true: int) -> float:
    """Adjusted Rand index of two label rasters over pixels valid in both (computes)."""
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
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: output exists; pass --overwrite to replace it")
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
