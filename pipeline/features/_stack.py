"""Stack feature families into one lazy feature cube."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..io import masked_float
from ._registry import FeatureSpec

__all__ = ["compute_features", "parse_features", "SomeFeatures"]

SomeFeatures = Sequence[str | Mapping[str, Any] | FeatureSpec]


def parse_features(features: SomeFeatures) -> list[FeatureSpec]:
    """Normalise a ``features:`` list into :class:`FeatureSpec` objects."""
    if isinstance(features, str | Mapping):
        features = [features]
    return [FeatureSpec.parse(f) for f in features]


def compute_features(
    image: xr.DataArray, features: SomeFeatures = ("bands",)
) -> xr.DataArray:
    """Compute the feature cube of an image, lazily.

    Parameters
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x)
        As returned by :func:`pipeline.open_image`; its nodata value (``rio.nodata``)
        and NaN mark invalid pixels; ``attrs["geometry"]`` (optional) gives the voxel
        spacing that physical-unit parameters use.
    features : sequence
        Feature entries as in the config: ``"bands"``, ``{"bands": [3, 4]}``, ...

    Returns
    -------
    DataArray, shape (feature, y, x) or (feature, z, y, x), float32
        Lazy and chunked like the image (one chunk along ``feature``). Invalid pixels
        are NaN in every feature. The coordinate ``scale`` (bool, along ``feature``)
        says which features are standardised before clustering; ``attrs["features"]``
        holds the parsed specs.

    Examples
    --------
    >>> feats = compute_features(open_image("scene.tif"), ["bands"])  # doctest: +SKIP
    """
    specs = parse_features(features)
    if not specs:
        raise ValueError("features: expected at least one feature")
    base = masked_float(image)
    parts = []
    scale: list[bool] = []
    for spec in specs:
        part = spec.family.func(base, spec.params)
        parts.append(part)
        scale.extend([spec.params.scale] * part.sizes["feature"])
    cube = xr.concat(parts, dim="feature") if len(parts) > 1 else parts[0]
    names = [str(n) for n in cube["feature"].values]
    if len(set(names)) != len(names):
        # the same family twice with other parameters: keep names unique and stable
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    cube = cube.assign_coords(feature=names, scale=("feature", np.array(scale)))
    cube = cube.chunk({"feature": -1}).astype(np.float32, copy=False)
    cube.attrs = {
        "features": specs,
        "source": image.attrs.get("source", "input"),
        "n_bands": int(image.sizes["band"]),
    }
    cube.name = "features"
    return cube
