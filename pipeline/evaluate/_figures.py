"""Figures: label maps in their colour table, quicklooks, comparisons, confusion.

Plots need pixels: these functions take in-memory arrays (NumPy, or a DataArray that is
not backed by Dask). Compute a small raster (``labels.values``) or subsample a large one
first (``labels[::8, ::8].values`` reads every eighth row and column).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "colour_table",
    "comparison_figure",
    "label_rgba",
    "plot_confusion",
    "show_image",
    "show_labels",
]

Colours = Mapping[int, tuple[int, int, int, int]]


def _in_memory(x: Any, name: str) -> np.ndarray:
    if isinstance(x, xr.DataArray):
        if x.chunks is not None:
            raise TypeError(f"{name}: a Dask-backed DataArray; plots need the pixels: pass "
                            f"{name}.values (or a coarsened overview) instead")
        x = x.values
    return np.asarray(x)


def colour_table(source: int | str | os.PathLike[str]) -> dict[int, tuple[int, int, int, int]]:
    """Return the RGBA colour of each class.

    Parameters
    ----------
    source : int or path
        A number of classes (the colours ``labels.tif`` gets, from
        :func:`pipeline.io.palette`), or a label raster whose colour table to read.

    Returns
    -------
    dict of int to (r, g, b, a)
        0-255 components; a raster's nodata entry is transparent.
    """
    if isinstance(source, int | np.integer):
        from ..io import palette

        return palette(int(source))
    import rasterio

    with rasterio.open(source) as ds:
        try:
            return {int(k): (int(r), int(g), int(b), int(a))
                    for k, (r, g, b, a) in ds.colormap(1).items()}
        except ValueError:  # no colour table: the default palette
            from ..io import palette

            return palette(256 if ds.dtypes[0] == "uint8" else 0)


def label_rgba(labels: Any, colours: Colours | None = None, *, nodata: int | None = None
               ) -> np.ndarray:
    """Colour a label map: ``(y, x)`` labels to a ``(y, x, 4)`` uint8 RGBA image.

    Parameters
    ----------
    labels : array-like of int, shape (y, x)
        In memory.
    colours : mapping of int to (r, g, b, a), optional
        Default: :func:`colour_table` for ``max(labels) + 1`` classes.
    nodata : int, optional
        Label drawn transparent (default: ``rio.nodata`` of a DataArray).

    Returns
    -------
    ndarray of uint8, shape (y, x, 4)
        Labels without a colour are transparent.
    """
    if nodata is None and isinstance(labels, xr.DataArray):
        value = labels.rio.nodata
        nodata = None if value is None else int(value)
    lab = _in_memory(labels, "labels")
    if lab.ndim != 2:
        raise ValueError(f"labels: expected a 2-D label map, got shape {lab.shape}")
    values, inverse = np.unique(lab, return_inverse=True)
    if colours is None:
        top = values[values != nodata].max() if (values != nodata).any() else 0
        colours = colour_table(int(top) + 1)
    lut = np.zeros((len(values), 4), dtype=np.uint8)
    for i, v in enumerate(values.tolist()):
        if v != nodata and v in colours:
            lut[i] = colours[v]
    return lut[inverse.reshape(lab.shape)]


def show_labels(labels: Any, *, colours: Colours | None = None, nodata: int | None = None,
                ax: Any = None, title: str | None = None, legend: bool = True,
                max_legend: int = 16) -> Any:
    """Draw a label map in its class colours (nodata transparent), with a legend.

    Parameters
    ----------
    labels : array-like of int, shape (y, x)
        In memory (see the module notes).
    colours, nodata :
        As for :func:`label_rgba`.
    ax : matplotlib Axes, optional
        Default: a new figure.
    title : str, optional
    legend : bool
        A patch per class present, when there are at most ``max_legend``.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if nodata is None and isinstance(labels, xr.DataArray) and labels.rio.nodata is not None:
        nodata = int(labels.rio.nodata)
    lab = _in_memory(labels, "labels")
    if colours is None:
        valid = lab[lab != nodata] if nodata is not None else lab
        colours = colour_table(int(valid.max()) + 1 if valid.size else 1)
    if ax is None:
        _, ax = plt.subplots()
    ax.imshow(label_rgba(lab, colours, nodata=nodata), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    present = [int(v) for v in np.unique(lab) if v != nodata and int(v) in colours]
    if legend and 0 < len(present) <= max_legend:
        # ignore: matplotlib's ColorType omits the RGBA arrays it accepts
        handles = [Patch(color=np.asarray(colours[v]) / 255, label=str(v))  # type: ignore[arg-type]
                   for v in present]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  fontsize="small", frameon=False, title="class")
    return ax


def _stretch(image: np.ndarray, low: float, high: float) -> np.ndarray:
    out = np.empty(image.shape, dtype=np.float32)
    for b in range(image.shape[0]):
        band = image[b].astype(np.float64)
        finite = band[np.isfinite(band)]
        lo, hi = np.percentile(finite, [low, high]) if finite.size else (0.0, 1.0)
        out[b] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return out


def show_image(image: Any, *, bands: tuple[int, ...] | None = None, ax: Any = None,
               title: str | None = None, stretch: tuple[float, float] = (2.0, 98.0),
               nodata: float | None = None) -> Any:
    """Draw an image quicklook: three bands as RGB (or one as grey), percentile-stretched.

    Parameters
    ----------
    image : array-like, shape (band, y, x)
        In memory, e.g. ``pipeline.open_image(path).values`` for a small image.
    bands : tuple of int, optional
        1-based bands shown as R, G, B (or one grey band); default the first three
        (or the first when there are fewer than three).
    ax : matplotlib Axes, optional
    title : str, optional
    stretch : (float, float)
        Percentiles mapped to black and white, per band.
    nodata : float, optional
        Pixels shown transparent (default: ``rio.nodata`` of a DataArray).

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    if nodata is None and isinstance(image, xr.DataArray) and image.rio.nodata is not None:
        nodata = float(image.rio.nodata)
    img = _in_memory(image, "image")
    if img.ndim == 2:
        img = img[None]
    if bands is None:
        bands = (1, 2, 3) if img.shape[0] >= 3 else (1,)
    sel = img[[b - 1 for b in bands]].astype(np.float64)
    invalid = np.zeros(sel.shape[1:], dtype=bool)
    if nodata is not None:
        invalid |= (sel == nodata).any(axis=0)
    sel[:, invalid] = np.nan
    rgb = _stretch(sel, *stretch)
    alpha = (~invalid & np.isfinite(sel).all(axis=0)).astype(np.float32)
    if len(bands) == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    rgba = np.concatenate([np.nan_to_num(rgb), alpha[None]]).transpose(1, 2, 0)
    if ax is None:
        _, ax = plt.subplots()
    ax.imshow(rgba, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def comparison_figure(image: Any, maps: Mapping[str, Any], *,
                      colours: Colours | None = None, nodata: int | None = None,
                      bands: tuple[int, ...] | None = None, size: float = 3.5) -> Any:
    """Draw the original image next to one or several label maps, in one row.

    Parameters
    ----------
    image : array-like, shape (band, y, x)
        In memory (see :func:`show_image`).
    maps : mapping of str to label map
        Title -> in-memory ``(y, x)`` labels, e.g. ``{"k = 4": labels4.values}``.
    colours, nodata :
        As for :func:`show_labels` (default colours: each map's own classes).
    bands : tuple of int, optional
        As for :func:`show_image`.
    size : float
        Height of each panel in inches.

    Returns
    -------
    matplotlib Figure
    """
    import matplotlib.pyplot as plt

    n = 1 + len(maps)
    fig, axes = plt.subplots(1, n, figsize=(size * n * 1.25, size), squeeze=False)
    show_image(image, bands=bands, ax=axes[0, 0], title="original")
    for ax, (name, labels) in zip(axes[0, 1:], maps.items(), strict=True):
        show_labels(labels, colours=colours, nodata=nodata, ax=ax, title=name,
                    legend=False)
    fig.tight_layout()
    return fig


def plot_confusion(result: Mapping[str, Any], *, ax: Any = None, normalize: bool = True
                   ) -> Any:
    """Draw the confusion matrix of an evaluation (after the Hungarian matching).

    Parameters
    ----------
    result : dict
        From :func:`pipeline.evaluate.evaluate_rasters` or
        :func:`pipeline.evaluate.measures` (``result["class"]["confusion"]``).
    ax : matplotlib Axes, optional
    normalize : bool
        Show each row as fractions of its true class (recall per class).

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    conf = result["class"]["confusion"]
    if conf is None:
        raise ValueError("result has no confusion matrix (too many labels for a class map)")
    m = np.asarray(conf["matrix"], dtype=np.float64)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(1 + 0.5 * m.shape[1], 1 + 0.5 * m.shape[0]))
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(m.shape[1]), [str(v) for v in conf["pred_labels"]])
    ax.set_yticks(range(m.shape[0]), [str(v) for v in conf["truth_labels"]])
    ax.set_xlabel("predicted label (matched first)")
    ax.set_ylabel("true class")
    if m.size <= 400:
        top = m.max() if m.size else 0
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center",
                    va="center", fontsize="x-small",
                    color="white" if v > 0.6 * top else "black")
    return ax
