"""The run report: what went in, what came out, how long each stage took."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["describe_image", "build_report", "write_report"]


def _crs_text(crs: Any) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def describe_image(image: xr.DataArray) -> dict[str, Any]:
    """A JSON-able description of a lazy image (no computation)."""
    crs = image.rio.crs
    transform = image.rio.transform()
    nodata = image.rio.nodata
    return {
        "source": image.attrs.get("source"),
        "width": int(image.sizes["x"]),
        "height": int(image.sizes["y"]),
        "bands": int(image.sizes["band"]),
        "dtype": str(image.dtype),
        "nodata": None if nodata is None or np.isnan(nodata) else float(nodata),
        "crs": _crs_text(crs),
        "transform": list(transform)[:6],
        "chunks": [int(image.chunks[1][0]), int(image.chunks[2][0])],
        "n_chunks": int(len(image.chunks[1]) * len(image.chunks[2])),
    }


def _pixel_area(image: xr.DataArray) -> tuple[float, str]:
    crs = image.rio.crs
    t = image.rio.transform()
    if crs is None:
        return 1.0, "pixel"
    if crs.is_geographic:
        return abs(t.a * t.e - t.b * t.d), "deg^2"
    unit = (crs.linear_units or "unit").lower()
    unit = {"metre": "m", "meter": "m", "foot": "ft", "us survey foot": "ft"}.get(unit, unit)
    return abs(t.a * t.e - t.b * t.d), f"{unit}^2"


def build_report(
    image: xr.DataArray,
    model: Any,
    counts: np.ndarray,
    *,
    config: dict[str, Any],
    timings: dict[str, float],
    outputs: list[str],
) -> dict[str, Any]:
    """Assemble ``report.json``.

    Parameters
    ----------
    image : DataArray
        The input image (for its description and pixel area).
    model : KMeansModel
    counts : ndarray, shape (k + 1,)
        Pixels per class, nodata last (from the label writer).
    """
    area, unit = _pixel_area(image)
    valid = int(counts[:-1].sum())
    classes = [
        {
            "class": i,
            "pixels": int(n),
            "area": float(n) * area,
            "fraction": float(n) / valid if valid else 0.0,
            "centroid": [float(v) for v in model.centroids_original[i]],
        }
        for i, n in enumerate(counts[:-1])
    ]
    return {
        "tileseg_version": version("tileseg"),
        "input": describe_image(image),
        "config": config,
        "method": model.method,
        "k": model.k,
        "feature_names": model.feature_names,
        "valid_pixels": valid,
        "nodata_pixels": int(counts[-1]),
        "nodata_label": model.nodata,
        "area_unit": unit,
        "pixel_area": area,
        "classes": classes,
        "sample": {"size": model.sample_size, "inertia": model.inertia,
                   "n_iter": model.n_iter, "seed": model.seed},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "outputs": outputs,
    }


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the report as indented JSON."""
    path = Path(path)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
