"""Fit any method on the seeded sample, and label every pixel lazily with any model."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from ._bisecting import fit_bisecting
from ._density import fit_dbscan, fit_hdbscan
from ._elbow import ELBOW_SAMPLE_SIZE, elbow_on
from ._gmm import fit_gmm
from ._hierarchical import fit_hierarchical
from ._kmeans import fit_kmeans
from ._meanshift import fit_meanshift
from ._methods import method_info
from ._model import ClusterModel
from ._training import Sample, draw_sample

__all__ = ["fit", "fit_on", "predict", "predict_confidence", "DEFAULT_K"]

#: ``k`` of methods that need one when none is given.
DEFAULT_K = 8

_FITTERS: dict[str, Any] = {
    "kmeans": fit_kmeans,
    "bisecting_kmeans": fit_bisecting,
    "meanshift": fit_meanshift,
    "dbscan": fit_dbscan,
    "hdbscan": fit_hdbscan,
    "hierarchical": fit_hierarchical,
    "gmm": fit_gmm,
}
_NEEDS_FEATURES = ("kmeans", "hierarchical")  # their `refine` passes read every pixel


def _check_k(k: int | str | None) -> None:
    if k is None or k == "auto":
        return
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        raise ValueError(f"cluster.k: expected an integer >= 2 or 'auto', got {k!r}")


def fit_on(
    sample: Sample,
    k: int | str | None = None,
    *,
    method: str = "kmeans",
    features: xr.DataArray | None = None,
    **options: Any,
) -> ClusterModel:
    """Fit ``method`` on a drawn sample.

    Parameters
    ----------
    sample : Sample
        From :func:`pipeline.cluster.draw_sample`; its seed seeds the fit.
    k : int, "auto" or None
        Number of classes; ``"auto"`` chooses it with the elbow method on the first
        :data:`~pipeline.cluster.ELBOW_SAMPLE_SIZE` pixels of the sample; ``None``
        means 8. Methods that find their own number of clusters (``meanshift``,
        ``dbscan``, ``hdbscan``) ignore a given ``k`` with a warning.
    method : str
        One of :data:`pipeline.cluster.METHODS`.
    features : DataArray, optional
        The feature cube, for ``refine`` passes over every pixel (computes).
    **options :
        The method's options (``METHODS[method].options``).

    Returns
    -------
    ClusterModel

    Raises
    ------
    TypeError
        If an option does not belong to the method.
    InputError
        If the sample cannot support the fit (see each method).
    """
    info = method_info(method)
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise TypeError(f"method {method!r} takes the options {', '.join(info.options)}; "
                        f"got {', '.join(unknown)}")
    _check_k(k)
    fitter = _FITTERS[method]
    if method in _NEEDS_FEATURES:
        options["features"] = features
    if info.finds_k:
        if k is not None:
            warnings.warn(f"cluster.k={k!r} is ignored: method {method!r} finds its own "
                          "number of clusters", UserWarning, stacklevel=3)
        return fitter(sample, **options)
    if k is None:
        k = DEFAULT_K
    if k == "auto":
        k = elbow_on(sample.head(ELBOW_SAMPLE_SIZE), range(2, 17)).k
    return fitter(sample, int(k), **options)


def fit(
    features: xr.DataArray,
    k: int | str | None = None,
    *,
    method: str = "kmeans",
    seed: int = 0,
    sample_size: int | None = None,
    **options: Any,
) -> ClusterModel:
    """Fit a global clustering model to a feature cube.

    This function computes: it draws the seeded sample (one pass over the image) and,
    for ``refine > 0``, makes that many passes over every pixel. The model depends
    only on the sample and the seed, never on the chunking or the workers.

    Parameters
    ----------
    features : DataArray, shape (feature, y, x)
        From :func:`pipeline.compute_features`.
    k : int, "auto" or None
        Number of classes (see :func:`fit_on`); ``None`` means 8 for the methods that
        need one.
    method : str
        ``kmeans`` (default), ``bisecting_kmeans``, ``meanshift``, ``dbscan``,
        ``hdbscan``, ``hierarchical`` or ``gmm``.
    seed : int
        Seed of the sample and of the fit.
    sample_size : int, optional
        Pixels the fit sees; by default the method's (``METHODS[method].sample_size``).
    **options :
        The method's options: ``n_init``, ``max_iter``, ``tol``, ``refine`` (kmeans,
        hierarchical), ``bandwidth``, ``quantile`` (meanshift), ``eps``,
        ``min_samples``, ``min_cluster_size`` (dbscan, hdbscan), ``linkage``,
        ``n_micro`` (hierarchical), ``covariance`` (gmm).

    Returns
    -------
    ClusterModel

    Raises
    ------
    InputError
        If the image has no valid pixel or too few for the fit.

    Examples
    --------
    >>> model = fit(feats, 6, seed=0)                            # doctest: +SKIP
    >>> model = fit(feats, method="hdbscan", min_cluster_size=500)  # doctest: +SKIP
    """
    info = method_info(method)
    _check_k(k)
    sample = draw_sample(features, sample_size or info.sample_size, seed)
    return fit_on(sample, k, method=method, features=features, **options)


def _label_block(block: np.ndarray, model: ClusterModel) -> np.ndarray:
    return model.predict_block(block)


def _confidence_block(block: np.ndarray, model: ClusterModel) -> np.ndarray:
    return model.confidence_block(block)


def _per_pixel(features: xr.DataArray, model: ClusterModel, func: Any, dtype: np.dtype,
               name: str, nodata: int) -> xr.DataArray:
    model.check_features([str(n) for n in features["feature"].values],
                         features.attrs.get("n_bands"))
    data = features.data.rechunk({0: -1}).map_blocks(
        func, model, drop_axis=0, dtype=dtype, meta=np.empty((0, 0), dtype))
    coords = {n: c for n, c in features.coords.items() if "feature" not in c.dims}
    out = xr.DataArray(data, dims=("y", "x"), coords=coords, name=name)
    return out.rio.write_nodata(nodata, encoded=False)


def predict(features: xr.DataArray, model: ClusterModel) -> xr.DataArray:
    """Label every pixel with a fitted model, lazily (``map_blocks``).

    Each pixel's label depends only on its own features, so the labels are the same
    for any chunking.

    Parameters
    ----------
    features : DataArray, shape (feature, y, x)
        Computed with the model's feature specs.
    model : ClusterModel

    Returns
    -------
    DataArray, shape (y, x), uint8 (uint16 above 255 classes)
        Lazy, chunked like ``features``; invalid pixels get ``model.nodata`` (also
        in ``rio.nodata``); georeferencing kept.

    Raises
    ------
    pipeline.errors.ModelError
        If the features (or the band count) do not match the model's.
    """
    return _per_pixel(features, model, _label_block, model.label_dtype, "labels",
                      model.nodata)


def predict_confidence(features: xr.DataArray, model: ClusterModel) -> xr.DataArray:
    """Posterior probability of each pixel's label in percent, lazily (``gmm`` only).

    Returns
    -------
    DataArray, shape (y, x), uint8
        0..100; 255 for invalid pixels (``rio.nodata``).

    Raises
    ------
    ValueError
        If the model is not a Gaussian mixture.
    """
    if not hasattr(model, "confidence_block"):
        raise ValueError(f"a per-pixel confidence needs a gmm model, not {model.method}")
    return _per_pixel(features, model, _confidence_block, np.dtype(np.uint8), "confidence",
                      255)
