"""Fit any method on the seeded sample, and label every pixel lazily with any model."""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ._bisecting import fit_bisecting
from ._density import fit_dbscan, fit_hdbscan
from ._elbow import ELBOW_SAMPLE_SIZE, elbow_on
from ._gmm import GaussianMixtureModel, fit_gmm
from ._hierarchical import fit_hierarchical
from ._kmeans import fit_kmeans
from ._meanshift import fit_meanshift
from ._methods import method_info
from ._model import ClusterModel
from ._predict import RAW_DTYPES, nearest_centroid_raw
from ._training import Sample, draw_sample

__all__ = ["fit", "fit_on", "predict", "predict_confidence", "raw_bands", "DEFAULT_K"]

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


def _confidence_block(block: np.ndarray, model: GaussianMixtureModel) -> np.ndarray:
    return model.confidence_block(block)


def _first(func: Any, args: tuple[Any, ...], blocks: list[np.ndarray]) -> np.ndarray:
    block = blocks[0]
    if block.ndim == 3:
        return func(block, *args)
    # a volume's block (band, z, y, x): the kernels are per pixel, so its z-slices
    # are handed over as the rows of one (band, z * y, x) block (a view when contiguous)
    nb, *spatial = block.shape
    flat = func(np.ascontiguousarray(block).reshape(nb, -1, spatial[-1]), *args)
    return flat.reshape(spatial)


#: blockwise indices of the spatial dims, by number of spatial dims
_SPATIAL_INDEX = {2: "yx", 3: "zyx"}


def per_block(data: da.Array, func: Any, *args: Any, dtype: np.dtype) -> da.Array:
    """Map ``func(block, *args)`` from (band, y, x) blocks to (y, x) blocks, lazily.

    Volumes' blocks (band, z, y, x) give (z, y, x) blocks: ``func`` sees their
    z-slices stacked as rows, so per-pixel kernels serve both.
    ``map_blocks(..., drop_axis=0)`` would first concatenate the blocks along the
    dropped axis: a copy of every input block, even of a single one (7 % of a worker's
    time in the label pass). Here the band axis is one chunk, handed over as is.
    """
    data = data.rechunk({0: -1})
    out = _SPATIAL_INDEX[data.ndim - 1]
    name = f"{func.__name__}-{tokenize(data, func, *args)}"
    return da.blockwise(partial(_first, func, args), out, data, "b" + out,
                        concatenate=False, dtype=dtype,
                        meta=np.empty((0,) * len(out), dtype), name=name)


def _per_pixel(features: xr.DataArray, model: ClusterModel, func: Any, dtype: np.dtype,
               name: str, nodata: int) -> xr.DataArray:
    model.check_features([str(n) for n in features["feature"].values],
                         features.attrs.get("n_bands"))
    data = per_block(features.data, func, model, dtype=dtype)
    coords = {n: c for n, c in features.coords.items() if "feature" not in c.dims}
    out = xr.DataArray(data, dims=features.dims[1:], coords=coords, name=name)
    return out.rio.write_nodata(nodata, encoded=False)


def _nearest_centroid_params(model: ClusterModel) -> tuple[np.ndarray, np.ndarray] | None:
    """Centroids and weights of a model that labels by plain nearest centroid, or None.

    Exactly the arrays its ``predict_block`` hands to :func:`nearest_centroid`, so the
    fused kernel gives the same labels. Exact types only: a subclass may label otherwise.
    """
    from ._meanshift import MeanShiftModel
    from ._model import KMeansModel

    if type(model) is KMeansModel:
        return model.centroids_original, 1.0 / model.scale**2
    if type(model) is MeanShiftModel:
        return model.class_centres(), model.distance_weights
    return None


def _raw_band_indices(features: xr.DataArray, image: xr.DataArray) -> list[int] | None:
    """0-based image band of each feature, or None unless the features are bands as is.

    As is: one ``bands`` entry (any selection of bands) and nothing else.
    """
    from ..features._registry import FeatureSpec
    from ..features._spectral import BandsParams, bands

    specs = features.attrs.get("features")
    if not isinstance(specs, list | tuple) or len(specs) != 1:
        return None
    (spec,) = specs
    # the built-in family with only parameters that select bands (`scale` acts on the
    # model's standardisation, not the values); any parameter added later that changes
    # the values, or a replaced family, takes the general path
    if not (isinstance(spec, FeatureSpec) and spec.name == "bands"
            and type(spec.params) is BandsParams and spec.family.func is bands
            and set(BandsParams.model_fields) <= {"bands", "scale"}):
        return None
    count = int(image.sizes["band"])
    numbers = spec.params.bands or list(range(1, count + 1))
    if not all(1 <= n <= count for n in numbers) or len(numbers) != features.sizes["feature"]:
        return None
    return [int(n) - 1 for n in numbers]


def raw_bands(features: xr.DataArray, image: xr.DataArray | None) -> list[int] | None:
    """Return the 0-based image band of each feature, where ``features`` are raw bands.

    That is ``features: [bands]`` (any band selection) computed from ``image``, chunked
    alike, with every band in one chunk: then a kernel may read the raw blocks and
    convert them itself, bit for bit as :func:`pipeline.io.masked_float` would.
    ``None`` wherever that is not exact.
    """
    data = getattr(image, "data", None)
    if (image is None or not isinstance(data, da.Array)
            or image.dims not in (("band", "y", "x"), ("band", "z", "y", "x"))
            or np.dtype(image.dtype) not in RAW_DTYPES or features.dims[1:] != image.dims[1:]
            or features.shape[1:] != image.shape[1:]
            # masked_float masks within each block: with the bands split over chunks a
            # pixel is invalid only by the bands of its own chunk; keep that path
            or len(data.chunks[0]) != 1
            or features.data.chunks[1:] != data.chunks[1:]
            or features.attrs.get("n_bands") != image.sizes["band"]):
        return None
    bands = _raw_band_indices(features, image)
    if bands is None:
        return None
    for dim in image.dims[1:]:  # the features of this image, not of another on the same grid
        if dim in features.coords and dim in image.coords and not np.array_equal(
                features[dim].values, image[dim].values):
            return None
    return bands


def _fused_labels(features: xr.DataArray, model: ClusterModel,
                  image: xr.DataArray) -> xr.DataArray | None:
    """Labels straight from the raw image (one kernel), or None where it cannot be exact.

    The general path masks the image into a float32 copy (:func:`pipeline.io.masked_float`),
    selects the bands and labels that; for ``features: [bands]`` and a nearest-centroid
    model one kernel does all three per image row, with the same arithmetic, without the
    float32 block (whose writes and page faults were about half the label pass). Every
    condition (here and in :func:`raw_bands`) keeps the result identical to
    :func:`_per_pixel`'s: same values, chunks and coordinates.
    """
    params = _nearest_centroid_params(model)
    if params is None:
        return None
    bands = raw_bands(features, image)
    if bands is None:
        return None
    data = image.data
    nodata = image.rio.nodata
    centroids, weights = params
    dtype = model.label_dtype
    labels = per_block(
        data, nearest_centroid_raw, None if nodata is None else float(nodata),
        np.asarray(bands, dtype=np.int64), np.asarray(centroids, dtype=np.float32),
        np.asarray(weights, dtype=np.float32), model.nodata, dtype, dtype=dtype)
    coords = {n: c for n, c in features.coords.items() if "feature" not in c.dims}
    out = xr.DataArray(labels, dims=features.dims[1:], coords=coords, name="labels")
    return out.rio.write_nodata(model.nodata, encoded=False)


def predict(features: xr.DataArray, model: ClusterModel, *,
            image: xr.DataArray | None = None) -> xr.DataArray:
    """Label every pixel with a fitted model, lazily (``map_blocks``).

    Each pixel's label depends only on its own features, so the labels are the same
    for any chunking.

    Parameters
    ----------
    features : DataArray, shape (feature, y, x)
        Computed with the model's feature specs.
    model : ClusterModel
    image : DataArray, shape (band, y, x), optional
        The raw image ``features`` were computed from (:func:`pipeline.open_image`),
        unchanged (same nodata value, same chunks). With ``features: [bands]`` (any band
        selection) and a K-means or mean-shift model, the labels are then computed
        straight from the image in one pass, which skips the float32 copy of every
        block; the result is the same, bit for bit.
        Other features or models ignore it.

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
    if image is not None:
        # the same check, so the same error, whichever path labels
        model.check_features([str(n) for n in features["feature"].values],
                             features.attrs.get("n_bands"))
        fused = _fused_labels(features, model, image)
        if fused is not None:
            return fused
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
