"""Convenience functions of the public API that chain stages."""

from __future__ import annotations

from typing import Any

import xarray as xr

from .cluster import ClusterModel, fit, predict
from .features import compute_features
from .features._stack import SomeFeatures

__all__ = ["segment"]


def segment(
    image: xr.DataArray,
    features: SomeFeatures = ("bands",),
    k: int = 8,
    *,
    seed: int = 0,
    sample_size: int | None = None,
    **fit_options: Any,
) -> tuple[xr.DataArray, ClusterModel]:
    """Features, global fit and lazy labels in one call.

    Parameters
    ----------
    image : DataArray, shape (band, y, x)
        From :func:`pipeline.open_image`.
    features : sequence
        Feature entries as in the config.
    k, seed, sample_size, **fit_options :
        Passed to :func:`pipeline.fit` (which computes its sample); ``sample_size``
        ``None`` takes the method's own default, ``method=`` picks the method.

    Returns
    -------
    labels : DataArray, shape (y, x)
        Lazy class map with the image's georeferencing.
    model : ClusterModel

    Examples
    --------
    >>> labels, model = segment(open_image("scene.tif"), k=6)  # doctest: +SKIP
    >>> labels.rio.to_raster("labels.tif")                     # doctest: +SKIP
    """
    feats = compute_features(image, features)
    model = fit(feats, k, seed=seed, sample_size=sample_size, **fit_options)
    return predict(feats, model, image=image), model
