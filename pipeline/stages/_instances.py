"""The instances stage: touching objects of one class split into instances, and written.

Runs after the segment raster is written: it reads that raster back (its COG stream,
COG or Zarr store; where the run writes neither, the lazy segment raster), splits the
objects of the chosen class (:mod:`pipeline.postprocess._instances`) in two passes over
it, and writes ``instances.*`` in the run's formats and ``instances.parquet``.
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from ..config import RunConfig
from ..errors import ConfigError
from ._context import RunContext

__all__ = ["Instances", "instance_class", "instances_stage"]

log = logging.getLogger("pipeline.runner")


@dataclass
class Instances:
    """What the instances stage wrote besides its raster: the table, and the summary."""

    files: list[Path]
    summary: dict[str, Any]
    table: Any = field(default=None, repr=False)


def instance_class(config: RunConfig, model: Any) -> int | None:
    """Return the class ``postprocess.instances.class`` names (``None``: auto).

    Called once the model is known (before anything is written): an ID outside
    ``0..k-1`` or a name that is not a class of the model is a :class:`ConfigError`.
    """
    inst = config.postprocess.instances
    if inst is None or inst.klass == "auto":
        return None
    names = [str(n) for n in model.class_names]
    want = inst.klass
    if isinstance(want, int) and not isinstance(want, bool) and 0 <= want < model.k:
        return int(want)
    if isinstance(want, str) and want in names:
        return names.index(want)
    close = difflib.get_close_matches(str(want), names, n=1) if isinstance(want, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"postprocess.instances.class: {want!r} is not a class of this model"
                      f"{hint}; expected an ID 0..{model.k - 1}, a class name "
                      f"({', '.join(names)}) or auto")


def _options(ctx: RunContext, model: Any, stats: Any, klass: int) -> dict[str, Any]:
    """Return the split's options, for both passes (the same, so the same instances)."""
    inst = ctx.config.postprocess.instances
    assert inst is not None
    geometry = ctx.opened.geometry
    opts: dict[str, Any] = {
        "method": inst.method, "min_distance": inst.min_distance,
        "smoothing": inst.smoothing,
        "spacing": tuple(geometry.spacing) if geometry.is_volume else None,
        "features": ctx.opened.features,
    }
    if inst.method == "intensity":
        # the landscape: the features (standardised as the model was fitted) projected
        # on the direction from the mean pixel to the class's mean pixel
        means = stats.means()
        w = stats.count.astype(np.float64)[:, None]
        in_class = stats.klass == klass
        direction = ((means[in_class] * w[in_class]).sum(0) / max(w[in_class].sum(), 1.0)
                     - (means * w).sum(0) / max(w.sum(), 1.0))
        norm = float(np.linalg.norm(direction)) or 1.0
        opts["offset"] = np.asarray(model.mean, np.float64)
        opts["weights"] = direction / norm / np.asarray(model.scale, np.float64)
    return opts


def instances_stage(ctx: RunContext, model: Any, segments: Any, raster: xr.DataArray,
                    writers: dict[str, Any], staging: Path) -> Instances:
    """Split the objects of one class into instances and write them (computes).

    ``segments``: the :class:`~._segments.Segments` of the run; ``raster``: the lazy
    segment raster, read from ``writers["segments"]`` where that can be read back.
    Adds ``writers["instances"]`` (closed with the run's other writers) and writes
    ``instances.parquet``. Reads and computes on local threads: the segment raster
    is in the local staging directory.
    """
    from ..postprocess import (
        auto_class,
        instance_table,
        instance_tasks,
        relabel_instances,
        resolve_instances,
        select_objects,
    )
    from ._write import Progress, make_writer, store_rasters

    inst = ctx.config.postprocess.instances
    assert inst is not None
    t = time.perf_counter()
    stats = segments.index.stats
    given = instance_class(ctx.config, model)
    klass = auto_class(stats, model.k) if given is None else given
    seg_writer = writers["segments"]
    if seg_writer.readable:
        seg_writer.finish_streams()  # every block is written: its stream may be read
        raster = raster.copy(data=seg_writer.read_back())
    # the segments' means in the features' units (as segments.parquet reports them)
    means = np.asarray(model.mean) + np.asarray(model.scale) * stats.means()
    objects = select_objects(stats, klass, max_extent=inst.max_extent, means=means)
    opts = _options(ctx, model, stats, klass)
    with dask.config.set(scheduler="threads"):
        tasks = instance_tasks(raster, objects, **opts)  # pass 1: count the instances
        index = resolve_instances(tasks, dask.compute(*tasks.tasks))
        arr = relabel_instances(raster, index, **opts)
        writers["instances"] = make_writer(ctx, model, staging, "instances", arr)
        bar = Progress(arr.data.npartitions, "instances", ctx.progress)
        try:
            store_rasters({"instances": arr}, {"instances": writers["instances"]}, None, bar)
        except BaseException:
            for w in writers.values():  # the caller removes the staging directory
                w.abort()
            raise
        finally:
            bar.close()
    geometry = ctx.opened.geometry
    table = instance_table(index, transform=None if geometry.is_volume else raster.rio.transform(),
                           geometry=geometry if geometry.is_volume else None,
                           feature_names=list(model.feature_names))
    path = staging / "instances.parquet"
    table.to_parquet(path, index=False)
    names = [str(n) for n in model.class_names]
    summary = {"class": klass, "class_name": names[klass],
               "chosen_by": "auto: the class with the fewest pixels" if given is None
               else "config", "method": inst.method, "objects": len(objects),
               "split": index.n_split, "too_large": int((~objects.split).sum()),
               "instances": index.n_instances}
    log.info("instances: class %s, %d objects, %d split, %d instances", names[klass],
             len(objects), index.n_split, index.n_instances)
    ctx.timings["instances"] = time.perf_counter() - t
    return Instances(files=[path], summary=summary, table=table)
