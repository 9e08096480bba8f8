"""Per-pixel spectral indices: named presets and any normalised difference."""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..errors import ConfigError
from ._common import band_indices, per_pixel, value_range, wrap
from ._registry import FeatureParams, register

__all__ = ["INDICES", "IndexParams", "NormalizedDifferenceParams", "index",
           "normalized_difference"]

#: Normalised differences ``(a - b) / (a + b)`` by name, as (band a, band b) roles.
_ND: dict[str, tuple[str, str]] = {
    "ndvi": ("nir", "red"),      # vegetation (Rouse et al. 1974)
    "gndvi": ("nir", "green"),   # green NDVI (Gitelson et al. 1996)
    "ndwi": ("green", "nir"),    # open water (McFeeters 1996)
    "mndwi": ("green", "swir1"),  # modified NDWI (Xu 2006)
    "ndbi": ("swir1", "nir"),    # built-up (Zha et al. 2003)
    "ndmi": ("nir", "swir1"),    # moisture (Gao 1996's NDWI)
    "nbr": ("nir", "swir2"),     # burn ratio (Key and Benson 2006)
}

#: Every preset and the band roles it needs. SAVI and EVI need reflectance (0..1).
INDICES: dict[str, tuple[str, ...]] = {
    **{name: roles for name, roles in _ND.items()},
    "savi": ("nir", "red"),          # soil-adjusted (Huete 1988)
    "evi": ("nir", "red", "blue"),   # enhanced vegetation (Huete et al. 2002)
}


class IndexParams(FeatureParams):
    """Parameters of the ``index`` family.

    Attributes
    ----------
    name : str
        One of ``ndvi``, ``gndvi``, ``ndwi``, ``mndwi``, ``ndbi``, ``ndmi``, ``nbr``,
        ``savi``, ``evi``.
    bands : dict of str to int
        1-based band number of each role the index needs (``red``, ``nir``, ``green``,
        ``blue``, ``swir1``, ``swir2``), e.g. ``{red: 3, nir: 4}``.
    soil : float
        SAVI's soil brightness factor L.
    max : float or None
        SAVI and EVI only: the value meaning reflectance 1 (e.g. 10000 for Sentinel-2
        L2A); ``None``: the range of the input's data type. Ratios of differences
        (the other indices) do not depend on it.
    """

    name: Literal["ndvi", "gndvi", "ndwi", "mndwi", "ndbi", "ndmi", "nbr", "savi", "evi"]
    bands: dict[str, int]
    soil: float = Field(default=0.5, ge=0)
    max: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _roles(self) -> IndexParams:
        need = INDICES[self.name]
        missing = [r for r in need if r not in self.bands]
        extra = [r for r in self.bands if r not in need]
        if missing or extra:
            raise ValueError(
                f"index {self.name} needs bands {{{', '.join(f'{r}: N' for r in need)}}}; "
                + (f"missing {', '.join(missing)}" if missing else
                   f"unexpected {', '.join(extra)}")
            )
        return self


class NormalizedDifferenceParams(FeatureParams):
    """Parameters of the ``normalized_difference`` family.

    Attributes
    ----------
    bands : list of int
        Two 1-based band numbers ``[a, b]``; the feature is ``(a - b) / (a + b)``.
    """

    bands: list[int] = Field(min_length=2, max_length=2)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0 (a valid pixel stays valid), NaN stays NaN."""
    zero = den == 0
    out = num / np.where(zero, 1.0, den)
    out[zero] = 0.0
    return out


def _nd_block(block: np.ndarray, a: int, b: int) -> np.ndarray:
    x = block[a].astype(np.float64)
    y = block[b].astype(np.float64)
    return _ratio(x - y, x + y).astype(np.float32)[None]


def _savi_block(block: np.ndarray, nir: int, red: int, vmax: float, soil: float) -> np.ndarray:
    n = block[nir].astype(np.float64) / vmax
    r = block[red].astype(np.float64) / vmax
    return ((1.0 + soil) * _ratio(n - r, n + r + soil)).astype(np.float32)[None]


def _evi_block(block: np.ndarray, nir: int, red: int, blue: int, vmax: float) -> np.ndarray:
    n = block[nir].astype(np.float64) / vmax
    r = block[red].astype(np.float64) / vmax
    b = block[blue].astype(np.float64) / vmax
    return (2.5 * _ratio(n - r, n + 6.0 * r - 7.5 * b + 1.0)).astype(np.float32)[None]


@register("index", IndexParams)
def index(image: xr.DataArray, params: IndexParams) -> xr.DataArray:
    """Compute a named index, e.g. ``{index: {name: ndvi, bands: {red: 3, nir: 4}}}``.

    Parameters
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x), float32
        The masked image (nodata already NaN).
    params : IndexParams
        The index and the band of each role.

    Returns
    -------
    DataArray, shape (feature, y, x) or (feature, z, y, x)
        Lazy, one feature named after the index (``ndvi``); NaN where the pixel is
        invalid, 0 where the denominator is 0.

    Raises
    ------
    ConfigError
        If a band does not exist (or SAVI/EVI cannot tell the reflectance scale).
    """
    roles = INDICES[params.name]
    where = f"index {params.name}"
    idx = dict(zip(roles, band_indices(image, [params.bands[r] for r in roles], where),
                   strict=True))
    if params.name in _ND:
        a, b = _ND[params.name]
        data = per_pixel(image, _nd_block, 1, idx[a], idx[b])
    elif params.name == "savi":
        vmax = value_range(image, params.max, "index")
        data = per_pixel(image, _savi_block, 1, idx["nir"], idx["red"], vmax, params.soil)
    elif params.name == "evi":
        vmax = value_range(image, params.max, "index")
        data = per_pixel(image, _evi_block, 1, idx["nir"], idx["red"], idx["blue"], vmax)
    else:  # pragma: no cover - the Literal type rules it out
        raise ConfigError(f"features: index: unknown index {params.name!r}")
    return wrap(image, data, [params.name])


@register("normalized_difference", NormalizedDifferenceParams)
def normalized_difference(
    image: xr.DataArray, params: NormalizedDifferenceParams
) -> xr.DataArray:
    """Compute ``(a - b) / (a + b)`` of two bands: ``{normalized_difference: [a, b]}``.

    Parameters
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x), float32
        The masked image (nodata already NaN).
    params : NormalizedDifferenceParams
        The two bands.

    Returns
    -------
    DataArray, shape (feature, y, x) or (feature, z, y, x)
        Lazy, one feature named ``nd_b<a>_b<b>``; NaN where the pixel is invalid, 0
        where ``a + b`` is 0.

    Raises
    ------
    ConfigError
        If a band does not exist.
    """
    a, b = band_indices(image, params.bands, "normalized_difference")
    data = per_pixel(image, _nd_block, 1, a, b)
    na, nb = params.bands
    return wrap(image, data, [f"nd_b{na}_b{nb}"])
