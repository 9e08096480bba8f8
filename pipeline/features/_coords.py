"""Scaled pixel coordinates as features, for compact (SLIC-like) regions."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ._common import per_pixel, wrap
from ._registry import FeatureParams, register

__all__ = ["XYParams", "xy"]


class XYParams(FeatureParams):
    """Parameters of the ``xy`` family.

    The features are the global column and row index times ``weight / step``. They are
    not standardised (``scale`` must stay false): the other features are standardised
    to unit variance, so moving ``step / weight`` pixels costs as much in the K-means
    distance as one standard deviation of any standardised feature. Larger ``weight``
    gives more compact regions.

    Attributes
    ----------
    weight : float
        Compactness (``{xy: 0.5}`` is short for ``{xy: {weight: 0.5}}``).
    step : float
        Length in pixels that ``weight`` refers to.
    scale : bool
        Must be false.
    """

    weight: float = Field(default=1.0, gt=0)
    step: float = Field(default=100.0, gt=0)
    scale: bool = False

    @model_validator(mode="after")
    def _unscaled(self) -> XYParams:
        if self.scale:
            raise ValueError("scale must be false: weight and step set the coordinates' scale "
                             "(standardising them would undo the weight)")
        return self


def _xy_block(block: np.ndarray, factor: float, block_info: dict[Any, Any] | None = None
              ) -> np.ndarray:
    (y0, _), (x0, _) = block_info[0]["array-location"][1:]
    h, w = block.shape[1:]
    # global indices (exact integers) times one factor: the same bits in any block
    ys = np.arange(y0, y0 + h, dtype=np.float64)[:, None] * factor
    xs = np.arange(x0, x0 + w, dtype=np.float64)[None, :] * factor
    out = np.empty((2, h, w), dtype=np.float32)
    out[0] = xs
    out[1] = ys
    out[:, ~np.isfinite(block).all(axis=0)] = np.nan
    return out


@register("xy", XYParams)
def xy(image: xr.DataArray, params: XYParams) -> xr.DataArray:
    """Global pixel coordinates scaled by ``weight / step``.

    Parameters
    ----------
    image : DataArray, shape (band, y, x), float32
        The masked image (nodata already NaN).
    params : XYParams
        Weight and step.

    Returns
    -------
    DataArray, shape (feature, y, x)
        Lazy, features ``xy_x`` (column) and ``xy_y`` (row), computed from each block's
        global offset so they do not depend on the chunking; NaN where the pixel is
        invalid.
    """
    data = per_pixel(image, _xy_block, 2, params.weight / params.step)
    return wrap(image, data, ["xy_x", "xy_y"])
