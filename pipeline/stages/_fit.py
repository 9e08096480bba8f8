"""The fit stage: the seeded sample, k when ``auto``, the model; and the fit's figures."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import warnings
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from rasterio.errors import RasterioError

from ..cluster import (
    ELBOW_SAMPLE_SIZE,
    METHODS,
    SAMPLE_CELL,
    ClusterModel,
    ElbowResult,
    Sample,
    draw_sample,
    elbow_on,
    fit_on,
)
from ..config import RunConfig
from ..errors import ModelError
from ..features import compute_features
from ..features._common import spacing
from ..features._texture import TextureParams
from ..io import masked_float, open_image
from ..io._user_mask import UserMask, apply_mask
from ..report import plot_comparison, plot_comparison_planes, plot_elbow

__all__ = ["Fitted", "draw", "fit_stage", "given_model", "save_model", "write_elbow",
           "write_comparison", "write_figures"]

log = logging.getLogger("pipeline.runner")


@dataclass
class Fitted:
    """The model of a run, and the sample and elbow it came from (when fitted here)."""

    model: ClusterModel
    sample: Sample | None = None
    elbow: ElbowResult | None = None


def draw(config: RunConfig, features: xr.DataArray, size: int,
         mask: UserMask | None = None) -> Sample:
    """Draw the run's sample (computes).

    With per-pixel features only, the sample is drawn from the same features on the
    fixed sample-cell grid, so the pass reads only the tiles of the seeded cells (the
    features are seam-free, so the values, and the sample, are those of ``features``);
    a mask applies to the cells too (cells it leaves out are never read), and its
    valid fraction (the same for any chunking) sizes the cells read. Neighbourhood
    features would make each cell read its 8 neighbours: those runs sample from every
    pixel of ``features``, as do volumes.
    """
    c = config.cluster
    valid = 1.0 if mask is None or mask.valid_fraction is None else mask.valid_fraction
    if any(spec.halo for spec in config.features) or features.ndim != 3:
        return draw_sample(features, size, c.seed, cells=False, valid=valid)
    image = open_image(config.input, chunks=SAMPLE_CELL, nodata=config.nodata,
                       level=config.input_level, input_errors=config.input_errors)
    cells = compute_features(image, config.features)
    if mask is not None:
        cells = apply_mask(cells, mask)  # rechunked to the cells' chunks
    return draw_sample(cells, size, c.seed, valid=valid)


def fit_stage(config: RunConfig, features: xr.DataArray,
              mask: UserMask | None = None) -> Fitted:
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
    sample = draw(config, features, c.sample_size, mask)
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
    return Fitted(model, sample, result)


def given_model(config: RunConfig, model: ClusterModel) -> Fitted:
    """Check that a loaded model fits the config's features and outputs."""
    wanted = [f.describe() for f in config.features]
    if model.features and list(model.features) != wanted:
        raise ModelError(f"model: fitted with features {model.features}, but the config "
                         f"asks for {wanted}; expected the model's features in the config")
    if config.cluster.confidence and not hasattr(model, "confidence_block"):
        raise ModelError(f"model: cluster.confidence needs a gmm model, not {model.method}")
    return Fitted(model)


def save_model(model: ClusterModel, directory: Path) -> list[str]:
    npz = directory / "model.npz"
    npz.unlink(missing_ok=True)  # never leave another model's arrays beside model.json
    model.save(directory / "model.json")
    return ["model.json"] + (["model.npz"] if npz.exists() else [])


def write_elbow(result: ElbowResult, directory: Path) -> list[str]:
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


def _comparison_models(config: RunConfig, fitted: Fitted, labels: str = "labels.tif"
                       ) -> list[tuple[str, ClusterModel]]:
    """Return the models of comparison.png: the run's, then one per comparison k.

    Each is a cut of the model's hierarchy, else the method refitted on the first
    ``ELBOW_SAMPLE_SIZE`` sampled pixels (K-means for methods that find their own k);
    loaded models are only cut. ``labels`` names the run's labels in its title.
    """
    model, c = fitted.model, config.cluster
    panels = [(f"{model.method}, k={model.k} ({labels})", model)]
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


#: The planes of a volume's comparison.png: name, and the dim (of z, y, x) it cuts.
_PLANES = (("axial", "z"), ("coronal", "y"), ("sagittal", "x"))


@dataclass
class Plane:
    """One mid-plane of a volume, decimated, with the features of its voxels."""

    name: str
    dim: str                     # the dim it cuts: "z", "y" or "x"
    index: int                   # where: depth // 2, height // 2 or width // 2
    step: int                    # decimation along both in-plane dims
    image: np.ndarray            # (band, a, b) float32, NaN where invalid
    features: np.ndarray         # (feature, a, b) float32, as the run computes them
    spacing: tuple[float, float]  # physical height and width of one shown pixel

    @property
    def title(self) -> str:
        return f"{self.name} ({self.dim} = {self.index})"


def _reach(config: RunConfig, image: xr.DataArray, axis: int) -> int:
    """Return the features' halo along spatial ``axis`` of ``(z, y, x)``, in voxels."""
    voxel = spacing(image)
    reach = 0
    for spec in config.features:
        if isinstance(spec.params, TextureParams):  # per axis: sigma_units, [z, y, x]
            reach = max(reach, int(spec.params.kernel(voxel)[0][axis]))
        else:
            reach = max(reach, spec.halo)
    return reach


def _thin_chunks(n: int, at: int, reach: int) -> tuple[int, ...]:
    """Chunks along an axis of ``n`` voxels: one holding ``at``, its neighbours, the rest.

    Every chunk is at least ``reach`` long (where ``n`` allows it), so the halo of
    ``map_overlap`` with depth ``reach`` around the chunk holding ``at`` comes from its
    two neighbours of ``reach`` voxels only: its features read about ``3 * reach + 1``
    voxels along the axis, never the rest.
    """
    width = max(reach, 1)
    hi = min(n, at + width)
    lo = max(0, min(at, hi - width))
    below, above = max(0, lo - reach), min(n, hi + reach)
    if below < reach:  # what would be left is thinner than the halo: join the neighbour
        below = 0
    if n - above < reach:
        above = n
    if lo - below < reach:  # a neighbour at the edge thinner than the halo: join the plane
        lo = below
    if above - hi < reach:
        hi = above
    edges = sorted({0, below, lo, hi, above, n})
    return tuple(b - a for a, b in zip(edges, edges[1:], strict=False))


def _mid_planes(config: RunConfig, image: xr.DataArray, size: int,
                mask: UserMask | None = None) -> list[Plane]:
    """Read the three orthogonal mid-planes of a volume and their features (computes).

    Each plane is decimated (every ``step``-th voxel along both its dims) to ``size``
    voxels on its long side. Its features are those the run computes at its voxels,
    to the last bit: the lazy volume is rechunked along the plane's normal into a chunk
    holding the plane between two neighbours as thick as the features' halo
    (:func:`_thin_chunks`), the features are built on it as the run builds them (so
    texture gets its full 3-D neighbourhood, ``sigma_units`` its physical kernel and
    ``xy`` its global coordinates), and only the plane is taken, strided. Dask reads
    only the input chunks within the halo of the three planes, never the volume.
    With the run's ``mask``, voxels outside it are NaN in the features (so they get
    no class, as in the run); the image is shown whole.
    """
    shape = [image.sizes[d] for d in ("z", "y", "x")]
    voxel = spacing(image)
    shown = masked_float(image).data
    lazy = []
    for axis, (name, dim) in enumerate(_PLANES):
        at = shape[axis] // 2
        inplane = [a for a in range(3) if a != axis]
        step = max(1, -(-max(shape[a] for a in inplane) // size))
        index: list[Any] = [slice(None, None, step)] * 3
        index[axis] = at
        chunks = _thin_chunks(shape[axis], at, _reach(config, image, axis))
        feats = compute_features(image.chunk({dim: chunks}), config.features).data
        valid = True if mask is None else mask.data[tuple(index)]
        lazy.append((name, dim, at, step, (shown[(slice(None), *index)],
                                           feats[(slice(None), *index)], valid),
                     (voxel[inplane[0]] * step, voxel[inplane[1]] * step)))
    # one pass: the input chunks the images and the features share are read once
    values = dask.compute(*[p[4] for p in lazy])
    planes = []
    for (name, dim, at, step, _, sp), (img, feats, valid) in zip(lazy, values, strict=True):
        feats = np.array(feats, dtype=np.float32)
        feats[:, ~np.asarray(valid, dtype=bool)] = np.nan
        planes.append(Plane(name, dim, at, step, np.asarray(img), feats, sp))
    return planes


def write_comparison(config: RunConfig, image: xr.DataArray,
                      panels: list[tuple[str, ClusterModel]], path: Path,
                      mask: UserMask | None = None) -> Path:
    """``comparison.png``: the decimated original next to each model's labels.

    A volume ``(band, z, y, x)`` shows its three orthogonal mid-planes (axial,
    coronal, sagittal: the columns) for the original and each model (the rows), at
    their physical aspect ratio; only those planes are read (:func:`_mid_planes`),
    and the run's ``mask`` (when given) leaves voxels outside it unlabelled (2-D
    images do not use it).
    """
    if "z" in image.dims:
        planes = _mid_planes(config, image, config.report.comparison_size, mask)
        maps = [(title, [m.predict_block(p.features) for p in planes], m.class_names,
                 m.nodata) for title, m in panels]
        plot_comparison_planes([p.image for p in planes], maps, path,
                               [p.spacing for p in planes],
                               plane_titles=[p.title for p in planes],
                               source=str(image.attrs.get("source", "")))
        return path
    small = _overview(config, image, config.report.comparison_size)
    feats = compute_features(small, config.features).values
    shown = [(title, m.predict_block(feats), m.class_names, m.nodata) for title, m in panels]
    plot_comparison(masked_float(small).values, shown, path,
                    source=str(image.attrs.get("source", "")))
    return path


def write_figures(config: RunConfig, image: xr.DataArray, fitted: Fitted,
                   directory: Path, mask: UserMask | None = None) -> list[str]:
    """elbow.json/png when k was chosen here, comparison.png when asked (computes).

    ``mask``: the run's (``Opened.mask``), for the planes of a volume.
    """
    names = write_elbow(fitted.elbow, directory) if fitted.elbow is not None else []
    if config.report.comparison:
        labels = "labels" if "z" in image.dims else "labels.tif"
        write_comparison(config, image, _comparison_models(config, fitted, labels),
                          directory / "comparison.png", mask)
        names.append("comparison.png")
    return names
