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
from ..io import masked_float, open_image
from ..report import plot_comparison, plot_elbow

__all__ = ["Fitted", "draw", "fit_stage", "given_model", "save_model", "write_elbow",
           "write_comparison", "write_figures"]

log = logging.getLogger("pipeline.runner")


@dataclass
class Fitted:
    """The model of a run, and the sample and elbow it came from (when fitted here)."""

    model: ClusterModel
    sample: Sample | None = None
    elbow: ElbowResult | None = None


def draw(config: RunConfig, features: xr.DataArray, size: int) -> Sample:
    """Draw the run's sample (computes).

    With per-pixel features only, the sample is drawn from the same features on the
    fixed sample-cell grid, so the pass reads only the tiles of the seeded cells (the
    features are seam-free, so the values, and the sample, are those of ``features``).
    Neighbourhood features would make each cell read its 8 neighbours: those runs
    sample from every pixel of ``features``, as do volumes, masked runs and runs on
    a pyramid level.
    """
    c = config.cluster
    if (any(spec.halo for spec in config.features) or config.mask is not None
            or features.ndim != 3 or config.input_level):
        # volumes sample every voxel; a mask is applied to `features` (and chunks it
        # leaves out are never read)
        return draw_sample(features, size, c.seed, cells=False)
    image = open_image(config.input, chunks=SAMPLE_CELL, nodata=config.nodata)
    return draw_sample(compute_features(image, config.features), size, c.seed)


def fit_stage(config: RunConfig, features: xr.DataArray) -> Fitted:
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
    sample = draw(config, features, c.sample_size)
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


def _comparison_models(config: RunConfig, fitted: Fitted) -> list[tuple[str, ClusterModel]]:
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


def write_comparison(config: RunConfig, image: xr.DataArray,
                      panels: list[tuple[str, ClusterModel]], path: Path) -> Path:
    """``comparison.png``: the decimated original next to each model's labels."""
    small = _overview(config, image, config.report.comparison_size)
    feats = compute_features(small, config.features).values
    shown = [(title, m.predict_block(feats), m.class_names, m.nodata) for title, m in panels]
    plot_comparison(masked_float(small).values, shown, path,
                    source=str(image.attrs.get("source", "")))
    return path


def write_figures(config: RunConfig, image: xr.DataArray, fitted: Fitted,
                   directory: Path) -> list[str]:
    """elbow.json/png when k was chosen here, comparison.png when asked (computes)."""
    names = write_elbow(fitted.elbow, directory) if fitted.elbow is not None else []
    if config.report.comparison:
        write_comparison(config, image, _comparison_models(config, fitted),
                          directory / "comparison.png")
        names.append("comparison.png")
    return names
