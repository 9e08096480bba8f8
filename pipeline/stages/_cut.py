"""``tileseg cut``: cut a run's merge hierarchy elsewhere, without computing anything else.

The run wrote ``hierarchy.parquet`` (every merge) and ``leaves.zarr`` (the leaf
raster and the leaves' exact statistics). A cut picks how many merges to keep,
numbers the regions by first pixel, relabels the leaf raster chunk by chunk and
rewrites ``segments.*`` (the run's formats, its geometry) and ``segments.parquet``
exactly as a run with that ``regions``/``threshold`` writes them. The input is opened
lazily for its geometry only; nothing is read from it. The output is locked while
cutting and every file is replaced by a rename once the new one is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import xarray as xr

from ..errors import OutputError, PipelineError

__all__ = ["cut", "cut_output"]

log = logging.getLogger("pipeline.runner")


class CutError(PipelineError):
    """The output has no hierarchy to cut, or the cut is not possible (exit 2)."""


def _read_report(output: Path) -> dict[str, Any]:
    path = output / "report.json"
    if not (output / "hierarchy.parquet").is_file() or not (output / "leaves.zarr").is_dir():
        raise CutError(f"{output}: no hierarchy.parquet and leaves.zarr to cut; run with "
                       "postprocess.merge first")
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise CutError(f"{path}: cannot read the run's report ({exc})") from None


def cut_output(output: str | os.PathLike[str], *, regions: int | None = None,
               threshold: float | None = None) -> dict[str, Any]:
    """Rewrite ``segments.*`` and ``segments.parquet`` of ``output`` at a new cut.

    Returns the new ``segments`` summary (also written to report.json).
    """
    from .._lock import output_lock
    from ..config import parse_config
    from ..io import LabelWriter
    from ..postprocess._hierarchy import (
        Hierarchy,
        cut_hierarchy,
        region_stats,
        regions_of_leaves,
    )
    from ._open import open_input
    from ._segments import table_of
    from ._write import Progress, store_rasters

    if regions is None and threshold is None:
        raise CutError("give --regions N or --threshold T")
    if regions is not None and regions < 1:
        raise CutError(f"--regions: expected a count >= 1, got {regions}")
    if threshold is not None and not threshold >= 0:
        raise CutError(f"--threshold: expected a value >= 0, got {threshold}")
    out = Path(output)
    report = _read_report(out)
    t = time.perf_counter()
    with output_lock(out, "tileseg cut"):
        import pandas as pd

        from ._merge_regions import load_leaves

        config = parse_config(report["config"], f"{out / 'report.json'}: config")
        frame = pd.read_parquet(out / "hierarchy.parquet")
        stats, attrs, leaves = load_leaves(out / "leaves.zarr")
        hierarchy = Hierarchy.from_frame(frame, int(attrs["n_leaves"]))
        k = hierarchy.n_merges(regions, threshold)
        region, n_regions = cut_hierarchy(hierarchy, k)
        try:
            opened = open_input(config, summarise=False)
        except PipelineError as exc:
            raise CutError(f"cut needs the run's input for its geometry: {exc}") from None
        template = opened.features.isel(feature=0, drop=True)
        if template.shape != leaves.shape:
            raise CutError(f"{config.input}: shape {template.shape} differs from the "
                           f"hierarchy's leaves {leaves.shape}; the input changed")
        coords = {n: c for n, c in template.coords.items()}
        leaf_raster = xr.DataArray(leaves, dims=template.dims, coords=coords,
                                   name="segments").rio.write_nodata(0, encoded=False)
        raster = regions_of_leaves(leaf_raster, region, n_regions)
        # the names and units the leaves' means were summed in
        units = SimpleNamespace(feature_names=list(attrs["feature_names"]),
                                mean=np.asarray(attrs["offset"]),
                                scale=np.asarray(attrs["scale"]))
        geometry = opened.geometry
        transform = None if geometry.is_volume else template.rio.transform()
        frame_out = table_of(region_stats(stats, region, n_regions), units, geometry,
                             transform)
        staging = out / f".cut.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            writer = LabelWriter(staging, raster, nodata=0, stem="segments",
                                 formats=opened.formats, geometry=geometry)
            store_rasters({"segments": raster}, {"segments": writer}, None,
                          Progress(raster.data.npartitions, "cut", False))
            files = writer.close()
            frame_out.to_parquet(staging / "segments.parquet", index=False)
            files.append(staging / "segments.parquet")
            summary = dict(report.get("segments", {}))
            merge = dict(summary.get("merge", {}))
            merge.update(merges=int(k), regions=int(n_regions),
                         last_cost=float(hierarchy.cost[k - 1]) if k else None,
                         cut={"regions": regions, "threshold": threshold})
            summary.update(segments=int(n_regions), merge=merge)
            report["segments"] = summary
            new_report = staging / "report.json"
            new_report.write_text(json.dumps(report, indent=2, default=str))
            for f in files:
                _replace(f, out / f.name)
            os.replace(new_report, out / "report.json")  # last: the commit marker
        except OSError as exc:
            raise OutputError(out, str(exc.strerror or exc)) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("cut: %d merges, %d regions in %.1f s", k, n_regions, time.perf_counter() - t)
    return summary


cut = cut_output  # pipeline.cut


def _replace(new: Path, old: Path) -> None:
    """Put ``new`` in place of ``old`` (a file or a Zarr directory)."""
    if old.is_dir() and not old.is_symlink():
        aside = old.with_name(f".{old.name}.old-{os.getpid()}")
        os.replace(old, aside)
        os.replace(new, old)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(new, old)

