"""The run report: what went in, what came out, how long each stage took."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["describe_image", "build_report", "write_report", "plot_elbow", "plot_comparison"]


def _crs_text(crs: Any) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def describe_image(image: xr.DataArray) -> dict[str, Any]:
    """Return a JSON-able description of a lazy image (no computation).

    Volumes ``(band, z, y, x)`` add ``depth``; an image that carries a geometry
    (``attrs["geometry"]``, :class:`pipeline.io.Geometry`) describes it under
    ``geometry`` (kind, dims, spacing, units, affine).
    """
    nodata = image.rio.nodata
    geometry = image.attrs.get("geometry")
    spatial = image.chunks[1:]
    out = {
        "source": image.attrs.get("source"),
        "width": int(image.sizes["x"]),
        "height": int(image.sizes["y"]),
        "bands": int(image.sizes["band"]),
        "dtype": str(image.dtype),
        "nodata": None if nodata is None or np.isnan(nodata) else float(nodata),
        "crs": None,
        "transform": None,
        "chunks": [int(c[0]) for c in spatial],
        "n_chunks": int(np.prod([len(c) for c in spatial])),
    }
    if "z" in image.dims:
        out["depth"] = int(image.sizes["z"])
    else:
        out["crs"] = _crs_text(image.rio.crs)
        out["transform"] = list(image.rio.transform())[:6]
    if geometry is not None and hasattr(geometry, "describe"):
        out["geometry"] = geometry.describe()
    return out


#: short names of the units of physical images, for area/volume units
_SHORT_UNITS = {"millimeter": "mm", "micrometer": "um", "nanometer": "nm",
                "centimeter": "cm", "meter": "m"}


def _pixel_area(image: xr.DataArray) -> tuple[float, str]:
    """Area (or volume) of one pixel (voxel) and its unit, e.g. ``(0.5, "mm^3")``."""
    geometry = image.attrs.get("geometry")
    if geometry is not None and getattr(geometry, "crs", None) is None \
            and getattr(geometry, "kind", "gdal") != "gdal":
        unit = _SHORT_UNITS.get(geometry.unit or "", geometry.unit)
        if unit is None:
            return 1.0, "voxel" if geometry.ndim == 3 else "pixel"
        return float(geometry.voxel_size), f"{unit}^{geometry.ndim}"
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
    model : ClusterModel
        Any fitted model (its class names, centres and fit record are listed).
    counts : ndarray, shape (k + 1,)
        Pixels per class, nodata last (from the label writer).
    """
    area, unit = _pixel_area(image)
    valid = int(counts[:-1].sum())
    centres = model.class_centres()
    names = model.class_names
    classes = [
        {
            "class": i,
            "name": names[i],
            "pixels": int(n),
            "area": float(n) * area,
            "fraction": float(n) / valid if valid else 0.0,
            "centroid": ([float(v) for v in centres[i]] if np.isfinite(centres[i]).all()
                         else None),
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
        "noise_label": model.noise_label,
        "area_unit": unit,
        "pixel_area": area,
        "classes": classes,
        "sample": model.fit_record(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "outputs": outputs,
    }


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the report as indented JSON."""
    path = Path(path)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def _figure(nrows: int, ncols: int, size: tuple[float, float]) -> Any:
    """Return a matplotlib Figure on the Agg canvas (no pyplot state, thread-safe)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_elbow(summary: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``elbow.png``: the scores over k, with the knee and the chosen k.

    Within-cluster sum of squares (log scale), silhouette, Calinski-Harabasz and
    Davies-Bouldin.

    Parameters
    ----------
    summary : dict
        ``ElbowResult.to_dict()``.
    path : path
        The PNG to write.
    """
    scores = summary["scores"]
    ks = [s["k"] for s in scores]
    fig, axes = _figure(2, 2, (10, 7))
    panels = [("wcss", "within-cluster sum of squares"),
              ("silhouette", "silhouette (higher is better)"),
              ("calinski_harabasz", "Calinski-Harabasz (higher is better)"),
              ("davies_bouldin", "Davies-Bouldin (lower is better)")]
    for ax, (key, title) in zip(axes.ravel(), panels, strict=True):
        vals = [np.nan if s[key] is None else s[key] for s in scores]
        ax.plot(ks, vals, "o-", color="#1f77b4")
        ax.axvline(summary["k"], color="#d62728", ls="--", lw=1,
                   label=f"chosen k = {summary['k']} ({summary['chosen_by']})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("k")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0, 0].set_yscale("log")
    if summary.get("knee") is not None:
        w = scores[ks.index(summary["knee"])]["wcss"]
        axes[0, 0].plot([summary["knee"]], [w], "o", ms=12, mfc="none", color="#d62728")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"elbow: K-means on {summary['sample_size']} sampled pixels")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _display(image: np.ndarray) -> np.ndarray:
    """RGB(A) for display: bands 1-3 (or band 1 as grey), 2-98 % stretch, nodata clear."""
    bands = image[:3] if image.shape[0] >= 3 else image[:1].repeat(3, axis=0)
    valid = np.isfinite(image).all(axis=0)
    rgba = np.zeros(image.shape[1:] + (4,))
    for i, band in enumerate(bands):
        vals = band[valid]
        lo, hi = np.percentile(vals, [2, 98]) if vals.size else (0.0, 1.0)
        rgba[..., i] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgba[..., 3] = valid
    rgba[~valid, :3] = 0
    return rgba


def plot_comparison(
    image: np.ndarray,
    panels: list[tuple[str, np.ndarray, list[str], int]],
    path: str | os.PathLike[str],
    *,
    source: str = "",
    max_legend: int = 24,
) -> Path:
    """Write ``comparison.png``: the original next to one or more class maps.

    Parameters
    ----------
    image : ndarray, shape (band, y, x), float
        The decimated input, NaN where invalid.
    panels : list of (title, labels, class names, nodata)
        Class maps of the same shape; classes get the colours of ``labels.tif``'s
        colour table (:func:`pipeline.io.palette`), nodata is transparent.
    path : path
        The PNG to write.
    source : str
        Shown in the title.
    max_legend : int
        Legend entries per panel; more classes are summarised.
    """
    from matplotlib.patches import Patch

    from .io import palette

    n = len(panels) + 1
    h, w = image.shape[1:]
    side = 4.0
    fig, axes = _figure(1, n, (side * n * max(w / h, 0.5), side + 1.6))
    axes = axes.ravel()
    axes[0].imshow(_display(image), interpolation="nearest")
    axes[0].set_title("original", fontsize=10)
    for ax, (title, labels, names, nodata) in zip(axes[1:], panels, strict=True):
        colours = palette(len(names))
        lut = np.zeros((max(int(labels.max()), nodata) + 1, 4))
        for c, rgba in colours.items():
            lut[c] = np.asarray(rgba) / 255.0
        lut[nodata] = 0.0
        ax.imshow(lut[labels], interpolation="nearest")
        ax.set_title(title, fontsize=10)
        present = [c for c in range(len(names)) if (labels == c).any()]
        handles = [Patch(facecolor=lut[c], edgecolor="0.3", label=names[c])
                   for c in present[:max_legend]]
        if len(present) > max_legend:
            handles.append(Patch(facecolor="white", edgecolor="white",
                                 label=f"+{len(present) - max_legend} more"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02),
                  ncol=min(8, max(1, len(handles))), fontsize=7, frameon=False,
                  handlelength=1.0, columnspacing=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if source:
        fig.suptitle(source, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
