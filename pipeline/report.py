"""The run report: what went in, what came out, how long each stage took."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["describe_image", "build_report", "write_report", "plot_elbow", "plot_comparison",
           "plot_comparison_planes"]


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
    assert image.chunks is not None  # a lazy (Dask-backed) image
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
    from ._secrets import redact

    path.write_text(redact(json.dumps(report, indent=2)) + "\n")  # no credential
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


def _shown_bands(image: np.ndarray) -> np.ndarray:
    return image[:3] if image.shape[0] >= 3 else image[:1].repeat(3, axis=0)


def _stretch(images: list[np.ndarray]) -> list[tuple[float, float]]:
    """Return the 2-98 % limits of each shown band over the valid pixels of ``images``."""
    limits = []
    for i in range(3):
        vals = np.concatenate([
            _shown_bands(im)[i][np.isfinite(im).all(axis=0)] for im in images])
        limits.append(tuple(np.percentile(vals, [2, 98])) if vals.size else (0.0, 1.0))
    return limits


def _display(image: np.ndarray, limits: list[tuple[float, float]] | None = None
             ) -> np.ndarray:
    """RGB(A) for display: bands 1-3 (or band 1 as grey), 2-98 % stretch, nodata clear.

    ``limits``: the stretch of each shown band (default: this image's 2-98 %).
    """
    bands = _shown_bands(image)
    valid = np.isfinite(image).all(axis=0)
    rgba = np.zeros(image.shape[1:] + (4,))
    for i, band in enumerate(bands):
        if limits is None:
            vals = band[valid]
            lo, hi = np.percentile(vals, [2, 98]) if vals.size else (0.0, 1.0)
        else:
            lo, hi = limits[i]
        rgba[..., i] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgba[..., 3] = valid
    rgba[~valid, :3] = 0
    return rgba


def _lut(top: int, names: list[str], nodata: int) -> np.ndarray:
    """Return RGBA (0-1) per label value up to ``max(top, nodata)``.

    Classes get the colour table's colours (:func:`pipeline.io.palette`), nodata is
    transparent.
    """
    from .io import palette

    lut = np.zeros((max(top, nodata) + 1, 4))
    for c, rgba in palette(len(names)).items():
        lut[c] = np.asarray(rgba) / 255.0
    lut[nodata] = 0.0
    return lut


def _legend_handles(lut: np.ndarray, names: list[str], maps: list[np.ndarray],
                    max_legend: int) -> list[Any]:
    """Return legend patches of the classes present in any of ``maps``.

    Past ``max_legend`` classes the rest are summarised in one entry.
    """
    from matplotlib.patches import Patch

    present = [c for c in range(len(names)) if any((m == c).any() for m in maps)]
    handles = [Patch(facecolor=lut[c], edgecolor="0.3", label=names[c])
               for c in present[:max_legend]]
    if len(present) > max_legend:
        handles.append(Patch(facecolor="white", edgecolor="white",
                             label=f"+{len(present) - max_legend} more"))
    return handles


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
    n = len(panels) + 1
    h, w = image.shape[1:]
    side = 4.0
    fig, axes = _figure(1, n, (side * n * max(w / h, 0.5), side + 1.6))
    axes = axes.ravel()
    axes[0].imshow(_display(image), interpolation="nearest")
    axes[0].set_title("original", fontsize=10)
    for ax, (title, labels, names, nodata) in zip(axes[1:], panels, strict=True):
        lut = _lut(int(labels.max()), names, nodata)
        ax.imshow(lut[labels], interpolation="nearest")
        ax.set_title(title, fontsize=10)
        handles = _legend_handles(lut, names, [labels], max_legend)
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


#: Layout of comparison.png for volumes, in inches: the height of a row of planes, the
#: margins (row names on the left, legends on the right, titles on top), the gap between
#: cells, and the narrowest column.
_PLANE_SIDE, _PLANE_LEFT, _PLANE_RIGHT, _PLANE_TOP, _PLANE_BOTTOM = 3.0, 0.4, 2.0, 0.7, 0.1
_PLANE_GAP, _PLANE_MIN_WIDTH = 0.15, 0.6


def planes_figure_size(shapes: list[tuple[int, int]], spacings: list[tuple[float, float]],
                       n_rows: int) -> tuple[int, int]:
    """Pixel size (width, height) of :func:`plot_comparison_planes`'s figure (100 dpi).

    Every row is ``_PLANE_SIDE`` inches high, the physical height of the tallest plane;
    each column is as wide as its plane at that scale (0.6 to 9 inches), plus the
    margins and gaps::

        width  = 100 * (0.4 + sum(column widths) + 2 * 0.15 + 2.0)
        height = 100 * (0.7 + n_rows * 3.0 + (n_rows - 1) * 0.15 + 0.1)

    each rounded to the nearest pixel.
    """
    widths = _plane_widths(shapes, spacings)
    w = _PLANE_LEFT + sum(widths) + _PLANE_GAP * (len(widths) - 1) + _PLANE_RIGHT
    h = _PLANE_TOP + n_rows * _PLANE_SIDE + _PLANE_GAP * (n_rows - 1) + _PLANE_BOTTOM
    return round(100 * w), round(100 * h)


def _plane_widths(shapes: list[tuple[int, int]], spacings: list[tuple[float, float]]
                  ) -> list[float]:
    """Column widths in inches: the planes' physical widths, the tallest plane one row high."""
    heights = [s[0] * sp[0] for s, sp in zip(shapes, spacings, strict=True)]
    widths = [s[1] * sp[1] for s, sp in zip(shapes, spacings, strict=True)]
    top = max(heights) or 1.0
    return [min(max(_PLANE_SIDE * w / top, _PLANE_MIN_WIDTH), 3 * _PLANE_SIDE)
            for w in widths]


def planes_figure(
    planes: list[np.ndarray],
    panels: list[tuple[str, list[np.ndarray], list[str], int]],
    spacings: list[tuple[float, float]],
    *,
    plane_titles: list[str] | None = None,
    source: str = "",
    max_legend: int = 24,
) -> Any:
    """Return the Figure of :func:`plot_comparison_planes` (not saved)."""
    shapes = [p.shape[1:] for p in planes]
    n_rows, n_cols = len(panels) + 1, len(planes)
    px_w, px_h = planes_figure_size(shapes, spacings, n_rows)
    widths = _plane_widths(shapes, spacings)
    # + 0.5 px: Agg truncates the canvas size to whole pixels
    size = ((px_w + 0.5) / 100, (px_h + 0.5) / 100)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False,
                        gridspec_kw={"width_ratios": widths})
    fig.subplots_adjust(left=_PLANE_LEFT / size[0], right=1 - _PLANE_RIGHT / size[0],
                        bottom=_PLANE_BOTTOM / size[1], top=1 - _PLANE_TOP / size[1],
                        wspace=_PLANE_GAP / (sum(widths) / n_cols),
                        hspace=_PLANE_GAP / _PLANE_SIDE)
    # physical aspect: a displayed pixel is spacing[0] high and spacing[1] wide; the
    # first index grows upwards (z up in coronal and sagittal planes)
    show = {"interpolation": "nearest", "origin": "lower"}
    limits = _stretch(planes)
    for j, plane in enumerate(planes):
        aspect = spacings[j][0] / spacings[j][1]
        axes[0, j].imshow(_display(plane, limits), aspect=aspect, **show)
        if plane_titles:
            axes[0, j].set_title(plane_titles[j], fontsize=10)
    axes[0, 0].set_ylabel("original", fontsize=10)
    for row, (title, maps, names, nodata) in enumerate(panels, start=1):
        lut = _lut(max(int(m.max()) for m in maps), names, nodata)
        for j, labels in enumerate(maps):
            axes[row, j].imshow(lut[labels], aspect=spacings[j][0] / spacings[j][1], **show)
        axes[row, 0].set_ylabel(title, fontsize=9)
        handles = _legend_handles(lut, names, maps, max_legend)
        axes[row, -1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.04, 0.5),
                             ncol=1 if len(handles) <= 12 else 2, fontsize=7,
                             frameon=False, handlelength=1.0)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_anchor("N")  # planes shorter than their row hang from its top
    if source:
        fig.suptitle(source, fontsize=9)
    return fig


def plot_comparison_planes(
    planes: list[np.ndarray],
    panels: list[tuple[str, list[np.ndarray], list[str], int]],
    path: str | os.PathLike[str],
    spacings: list[tuple[float, float]],
    *,
    plane_titles: list[str] | None = None,
    source: str = "",
    max_legend: int = 24,
) -> Path:
    """Write ``comparison.png`` of a volume: three orthogonal planes of each map.

    Rows are the panels (the original, then each class map); columns are the planes
    (axial, coronal, sagittal). Each plane is drawn at its physical aspect ratio, so
    anisotropic voxels do not look squashed, with its first index growing upwards
    (z up in the coronal and sagittal planes) and the second to the right. The
    original uses one 2-98 % stretch for all three planes. The figure's size is
    :func:`planes_figure_size`.

    Parameters
    ----------
    planes : list of ndarray, shape (band, a, b), float
        The input's planes, NaN where invalid.
    panels : list of (title, maps, class names, nodata)
        ``maps``: one class map per plane, of the plane's shape; classes get the
        colours of the labels' colour table (:func:`pipeline.io.palette`), nodata is
        transparent. One legend per row, of the classes present in its planes.
    path : path
        The PNG to write.
    spacings : list of (float, float)
        Physical height and width of one displayed pixel of each plane.
    plane_titles : list of str, optional
        Column titles.
    source : str
        Shown in the title.
    max_legend : int
        Legend entries per row; more classes are summarised.
    """
    fig = planes_figure(planes, panels, spacings, plane_titles=plane_titles,
                        source=source, max_legend=max_legend)
    path = Path(path)
    fig.savefig(path)
    return path
