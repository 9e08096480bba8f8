"""The orchestrator: with ``fit`` (for its sample), the only place that computes.

``run`` calls the stages of :mod:`pipeline.stages` in order: it opens the input lazily
(with its geometry, mask and features), fits the model, labels every chunk and streams
the labels (and segments) to the writers of the run's formats, then writes the model
and the report. Everything is written into a hidden staging directory beside
``output`` and renamed into place only when complete, so a failed run leaves nothing
that looks finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from ._lock import output_lock
from ._warmup import warm_up
from .cluster import (
    ELBOW_SAMPLE_SIZE,
    ClusterModel,
    ElbowResult,
    elbow_on,
    fit_on,
    load_model,
    predict,
    predict_confidence,
)
from .compute import JOBQUEUE, dask_context, job_script, local_while_workers_warm, n_workers
from .config import RunConfig
from .errors import ConfigError, OutputExistsError, reading
from .io import open_image
from .io._remote import RemoteOutput, is_url
from .io._write import regular_chunks
from .postprocess import majority_filter
from .report import build_report, describe_image, write_report
from .stages import (
    Fitted,
    Manifest,
    RunContext,
    Timings,
    check_space,
    describe_formats,
    draw,
    fit_stage,
    given_model,
    hold_output,
    load_resumed,
    open_input,
    output_bytes,
    refuse_existing,
    save_model,
    segment_spill,
    segments_stage,
    stage_progress,
    staged_output,
    start_manifest,
    write_comparison,
    write_elbow,
    write_figures,
    write_stage,
)
from .stages._instances import instance_class
from .stages._staging import _version

__all__ = ["run", "plan", "RunResult", "staged_output", "fit_model", "predict_model",
           "elbow_model"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run wrote."""

    output: Path | str  # a URL (str) for an output on object storage
    outputs: list[Path] | list[str]
    model: ClusterModel
    report: dict[str, Any] = field(repr=False)


def plan(config: RunConfig) -> dict[str, Any]:
    """Describe what :func:`run` would do, without computing anything."""
    opened = open_input(config, summarise=False)
    pp = config.postprocess
    out = Path(config.output)
    stems = (["labels"] + (["labels_raw"] if pp.keep_raw else [])
             + (["segments"] if pp.segments else []))
    return {
        "input": describe_image(opened.image),
        "features": [str(n) for n in opened.features["feature"].values],
        "cluster": config.cluster.model_dump(),
        "scheduler": config.compute.scheduler,
        **({"job_script": job_script(config.compute)}  # slurm, pbs: what is submitted
           if config.compute.scheduler in JOBQUEUE else {}),
        "workers": n_workers(config.compute),
        "output": str(config.output),
        "output_exists": (RemoteOutput(config.output).exists() if is_url(config.output)
                          else out.exists()),
        "formats": list(opened.formats),
        "writes": describe_formats(opened.formats, stems)
        + (["segments.parquet"] if pp.segments else [])
        + (["hierarchy.parquet", "leaves.zarr"] if pp.merge else [])
        + (describe_formats(opened.formats, ["instances"]) + ["instances.parquet"]
           if pp.instances else [])
        + (["polygons.gpkg", "polygons.parquet"] if pp.polygons else [])
        + (describe_formats(opened.formats, ["confidence"])
           if config.cluster.confidence else [])
        + (["elbow.json", "elbow.png"] if config.cluster.k == "auto" else [])
        + (["comparison.png"] if config.report.comparison else [])
        + ["model.json", "report.json"],
    }


def _rasters(ctx: RunContext, model: ClusterModel) -> dict[str, xr.DataArray]:
    """Return the lazy rasters to write: labels, then what post-processing adds or replaces.

    In order: the majority filter replaces ``labels`` (``labels_raw`` keeps the
    unfiltered map when asked); segments are added by the segments stage.
    """
    opened, config = ctx.opened, ctx.config
    labels = predict(opened.features, model, image=opened.raw)
    rasters = {"labels": labels}
    if config.cluster.confidence:
        rasters["confidence"] = predict_confidence(opened.features, model)
    pp = config.postprocess
    if pp.keep_raw:
        rasters["labels_raw"] = labels
    if pp.majority.active():
        rasters["labels"] = majority_filter(labels, pp.majority.radius)
    return rasters


def _report(ctx: RunContext, fitted: Fitted, written: Any, names: list[str]
            ) -> dict[str, Any]:
    model = fitted.model
    report = build_report(ctx.opened.image, model, written.writers["labels"].counts,
                          config=ctx.config.to_dict(), timings=ctx.timings, outputs=names)
    report["formats"] = list(ctx.opened.formats)
    report["model_source"] = "fitted" if fitted.sample is not None else "loaded"
    if fitted.elbow is not None:
        report["elbow"] = fitted.elbow.to_dict()
    if written.segments is not None:
        report["segments"] = written.segments.summary
    if getattr(written, "instances", None) is not None:  # postprocess.instances
        report["instances"] = written.instances.summary
    if ctx.opened.mask is not None:
        report["mask"] = ctx.opened.mask.report()
    faults = ctx.opened.image.attrs.get("input_faults")  # input_errors: nodata
    if faults is not None:
        report["input_errors"] = faults.report()
        for window in report["input_errors"]:
            log.warning("%s: rows %d-%d, cols %d-%d unreadable (%s); written as nodata",
                        ctx.opened.image.attrs["source"], *window["rows"],
                        *window["cols"], window["error"])
    return report


def _needs_sample(config: RunConfig) -> bool:
    """Whether the run's figures need the fit's sample (a resume then fits again)."""
    return config.cluster.k == "auto" or bool(config.report.comparison)


def run(
    config: RunConfig, *, overwrite: bool = False, progress: bool = False,
    model: ClusterModel | None = None, resume: bool = False,
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
    resume : bool
        Continue a killed run from its staging directory (kept, not deleted); with
        none, say so and run from the start.

    Returns
    -------
    RunResult

    Raises
    ------
    PipelineError
        Any user error (input, config, existing output, another run on the output),
        before anything is written where the output goes; a failure to write the
        output (:class:`~pipeline.errors.OutputError`).
    """
    timings = Timings()
    output, remote = _output_of(config, overwrite)
    with hold_output(output, overwrite=overwrite, resume=resume) as job:
        job.remote = remote  # object storage: staged here, uploaded at the swap
        with timings.stage("open"):
            opened = open_input(config)
        log.info("config: %s", config.to_dict())
        with timings.stage("warm_up"):  # a cold kernel cache: compiled in a child process
            warm_up(config, opened)
        with (dask_context(config.compute, sources=config.input) as client,
              reading(opened.image.attrs["source"])):
            ctx = RunContext(config, opened, timings, client, progress)
            # --resume: a killed run's manifest must match (else exit 2, its staging
            # kept); its saved model is loaded unless the figures need the sample
            manifest = Manifest.of(config, _version(), model)
            resumed = (load_resumed(job.staging, manifest,
                                    refit=model is not None or _needs_sample(config))
                       if resume and job.staging.exists() else None)
            with (timings.stage("sample_fit"), stage_progress(progress and client is None),
                  local_while_workers_warm(client, config.compute)):
                if resumed is not None and resumed.model is not None:
                    fitted = Fitted(resumed.model)
                else:
                    fitted = (fit_stage(config, opened.features, opened.mask)
                              if model is None else given_model(config, model))
            model = fitted.model
            instance_class(config, model)  # postprocess.instances: a bad class fails here
            rasters = _rasters(ctx, model)
            check_space(output, output_bytes(rasters, opened.formats,
                                             config.postprocess.segments is not None))
            # segments with threads: one pass reads the input, writes the class rasters
            # and summarises the segments; a second reads the class map back (its COG or
            # Zarr, else a hidden Zarr store) to write them. On a cluster the summaries
            # take a pass of their own (the workers hold no file handle of this process).
            assert rasters["labels"].chunks is not None  # lazy: Dask-backed
            one_pass = (config.postprocess.segments is not None and client is None
                        and regular_chunks(rasters["labels"].chunks))
            # the rasters' Zarr stores, and those of the segments (resolved in the
            # staging directory, they are not among the rasters yet)
            kept = None if resumed is None or not resumed.ledger.previous else tuple(
                n for name in [*rasters, "segments", "leaves"]
                for n in (f"{name}.zarr", f".{name}.readback.zarr"))
            with job.staged(keep=kept) as staging:
                segments = None if one_pass else segments_stage(
                    ctx, model, rasters, spill=segment_spill(ctx, staging))
                ledger = (resumed.ledger if resumed is not None
                          else start_manifest(job.staging, manifest, model))
                written = write_stage(ctx, model, rasters, staging, segments, one_pass,
                                      ledger)
                figures = write_figures(config, opened.image, fitted, staging, opened.mask)
                figures += [p.name for p in job.keep or () if p.name not in figures]
                timings.total()
                names = ([p.name for p in written.files] + save_model(model, staging)
                         + figures + ["report.json"])
                report = _report(ctx, fitted, written, names)
                if resumed is not None:
                    report["model_source"] = resumed.manifest.model_source
                    report["resume"] = {"chunks_reused": ledger.reused,
                                        "chunks_total": ledger.total}
                    log.info("resumed: %d of %d chunks reused", ledger.reused,
                             ledger.total)
                write_report(report, staging / "report.json")
    if remote is not None:  # --- object storage
        with contextlib.suppress(OSError):
            output.parent.rmdir()  # the staging directory, when no other run uses it
        log.info("wrote %s", ", ".join(f"{remote.url}/{n}" for n in names))
        return RunResult(output=remote.url, outputs=[f"{remote.url}/{n}" for n in names],
                         model=model, report=report)
    outputs = [output / n for n in names]
    log.info("wrote %s", ", ".join(str(p) for p in outputs))
    return RunResult(output=output, outputs=outputs, model=model, report=report)


def _local_only(config: RunConfig, command: str) -> Path:
    """Return the output directory of a command that writes only local directories."""
    if is_url(config.output):
        raise ConfigError(f"output: {config.output}: {command} writes a local directory; "
                          "give a path (run and predict write to object storage)")
    return Path(config.output)


def _output_of(config: RunConfig, overwrite: bool) -> tuple[Path, RemoteOutput | None]:
    """Return the local output a run writes, and the output on object storage it stands for.

    An ``s3://`` (or other fsspec URL) output is refused at once if it exists (without
    ``overwrite``) or its prefix cannot be written; it is staged under
    ``compute.staging_dir`` and uploaded when complete (:mod:`pipeline.io._remote`).
    """
    if not is_url(config.output):
        return Path(config.output), None
    remote = RemoteOutput(config.output, config.compute.staging_dir)
    remote.refuse_existing(overwrite)
    remote.check_writable()
    return remote.local, remote


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
    output = _local_only(config, "tileseg fit")
    with output_lock(output):
        if (output / "model.json").exists() and not overwrite:
            raise OutputExistsError(f"{output / 'model.json'}: a model exists; pass "
                                    "--overwrite to replace it")
        if output.exists() and not output.is_dir():
            raise OutputExistsError(f"{output}: exists and is not a directory")
        opened = open_input(config, summarise=True)
        image, features = opened.image, opened.features
        with dask_context(config.compute), reading(image.attrs["source"]):
            fitted = fit_stage(config, features, opened.mask)
            output.mkdir(parents=True, exist_ok=True)
            names = save_model(fitted.model, output) + write_figures(
                config, image, fitted, output, opened.mask)
    log.info("wrote %s", ", ".join(names))
    return fitted.model, [output / n for n in names]


def predict_model(config: RunConfig, model_path: str | os.PathLike[str], *,
                  k: int | None = None, overwrite: bool = False, progress: bool = False,
                  resume: bool = False) -> RunResult:
    """``tileseg predict``: label the config's input with a saved model.

    Writes what :func:`run` writes; with the same input the labels equal those of the
    run that fitted the model, whatever the chunking.

    Parameters
    ----------
    k : int, optional
        Cut a hierarchical or bisecting_kmeans model at this k (no refit).
    resume : bool
        Continue a killed run (see :func:`run`).

    Raises
    ------
    ModelError
        Unreadable model, features or bands other than the model's, or a ``k`` the
        model cannot be cut at.
    """
    model = load_model(model_path)
    if k is not None and k != model.k:
        model = model.cut(k)
    return run(config, overwrite=overwrite, progress=progress, model=model, resume=resume)


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
    output = _local_only(config, "tileseg elbow")
    with output_lock(output):
        if (output / "elbow.json").exists() and not overwrite:
            raise OutputExistsError(f"{output / 'elbow.json'}: exists; pass --overwrite to "
                                    "replace it")
        if output.exists() and not output.is_dir():
            raise OutputExistsError(f"{output}: exists and is not a directory")
        opened = open_input(config, summarise=True)
        image, features = opened.image, opened.features
        c = config.cluster
        wanted = list(config.report.comparison if comparison is None else comparison)
        with dask_context(config.compute), reading(image.attrs["source"]):
            sample = draw(config, features, sample_size or ELBOW_SAMPLE_SIZE, opened.mask)
            result = elbow_on(sample, ks, n_init=c.n_init, max_iter=c.max_iter, tol=c.tol)
            panels = [(f"kmeans, k={k}", result.models.get(k) or fit_on(sample, k))
                      for k in wanted]
            output.mkdir(parents=True, exist_ok=True)
            names = write_elbow(result, output)
            if panels:
                write_comparison(config, image, panels, output / "comparison.png",
                                 opened.mask)
                names.append("comparison.png")
    log.info("k = %d (%s); wrote %s", result.k, result.chosen_by, ", ".join(names))
    return result, [output / n for n in names]


def _ari(pred_path: Path, truth_path: Path, k: int, n_true: int) -> float:
    """Return the ARI of two label rasters over pixels valid in both (computes)."""
    from .evaluate import adjusted_rand_index, contingency_table

    pred = open_image(pred_path).isel(band=0)
    assert pred.chunks is not None  # open_image returns Dask-backed arrays
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
    refuse_existing(out, overwrite)
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
