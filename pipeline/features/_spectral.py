"""Per-pixel spectral features."""

from __future__ import annotations

import xarray as xr
from pydantic import Field

from ..errors import ConfigError
from ._registry import FeatureParams, register

__all__ = ["BandsParams", "bands"]


class BandsParams(FeatureParams):
    """Parameters of the ``bands`` family.

    Attributes
    ----------
    bands : list of int or None
        1-based band numbers to keep, in order; ``None`` keeps every band.
    """

    bands: list[int] | None = Field(default=None, min_length=1)


@register("bands", BandsParams)
def bands(image: xr.DataArray, params: BandsParams) -> xr.DataArray:
    """Return the image bands as features (float32, nodata as NaN).

    Parameters
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x), float32
        The masked image (nodata already NaN).
    params : BandsParams
        Which bands to keep.

    Returns
    -------
    DataArray, shape (feature, y, x) or (feature, z, y, x)
        Lazy, one feature per selected band, named ``band<N>``.
    """
    count = image.sizes["band"]
    numbers = params.bands or list(range(1, count + 1))
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise ConfigError(
            f"features: bands: band {bad[0]} does not exist; expected 1-based numbers "
            f"from 1 to {count}"
        )
    # selecting every band in order would copy each block for nothing
    every = numbers == list(range(1, count + 1))
    out = image if every else image.isel(band=[n - 1 for n in numbers])
    out = out.rename(band="feature")
    return out.assign_coords(feature=[f"band{n}" for n in numbers])
