"""Scaled pixel (voxel) coordinates as features, for compact (SLIC-like) regions."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ._common import per_pixel, spacing, spatial_dims, wrap
from ._registry import FeatureParams, register

__all__ = ["XYParams", "xy"]


class XYParams(FeatureParams):
    """Parameters of the ``xy`` family (also registered as ``xyz``).

    The features are the global column and row index (and slice index on a volume)
    times ``weight / step``. They are not standardised (``scale`` must stay false): the
    other features are standardised to unit variance, so moving ``step / weight``
    pixels costs as much in the K-means distance as one standard deviation of any
    standardised feature. Larger ``weight`` gives more compact regions.

    Attributes
    ----------
    weight : float
        Compactness (``{xy: 0.5}`` is short for ``{xy: {weight: 0.5}}``).
    step : float
        Length in pixels (in the geometry's units with ``physical``) that ``weight``
        refers to.
    physical : bool
        Multiply each index by the voxel spacing along its axis
        (``attrs["geometry"].spacing``; 1 without a geometry), so anisotropic voxels
        count by their physical size: the coordinates are then ``index * spacing *
        weight / step``, with ``step`` in the geometry's units.
    scale : bool
        Must be false.

    Notes
    -----
    ``physical`` is left out of the parameters' JSON form while false, so specs
    written before it existed (model files, config tokens) stay the same.
    """

    weight: float = Field(default=1.0, gt=0)
    step: float = Field(default=100.0, gt=0)
    physical: bool = False
    scale: bool = False

    @model_validator(mode="after")
    def _unscaled(self) -> XYParams:
        if self.scale:
            raise ValueError("scale must be false: weight and step set the coordinates' scale "
                             "(standardising them would undo the weight)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if not self.physical:
            out.pop("physical", None)
        return out


def _xy_block(block: np.ndarray, factors: float | tuple[float, ...],
              block_info: dict[Any, Any] | None = None) -> np.ndarray:
    """(ndim, *spatial) float32: x, y[, z] of one block, from its global offset.

    ``factors`` multiplies the index along each spatial axis (dims order), or all.
    """
    assert block_info is not None  # dask passes it: the function names the argument
    starts = [lo for lo, _ in block_info[0]["array-location"][1:]]
    shape = block.shape[1:]
    n = len(shape)
    if not isinstance(factors, tuple):
        factors = (factors,) * n
    out = np.empty((n, *shape), dtype=np.float32)
    for axis, (start, size, factor) in enumerate(zip(starts, shape, factors, strict=True)):
        # global indices (exact integers) times one factor: the same bits in any block
        along = [1] * n
        along[axis] = size
        coord = np.arange(start, start + size, dtype=np.float64).reshape(along) * factor
        out[n - 1 - axis] = coord  # features run x, y, z: fastest axis first
    out[:, ~np.isfinite(block).all(axis=0)] = np.nan
    return out


@register("xyz", XYParams)
@register("xy", XYParams)
def xy(image: xr.DataArray, params: XYParams) -> xr.DataArray:
    """Global pixel (voxel) coordinates scaled by ``weight / step``.

    Parameters
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x), float32
        The masked image (nodata already NaN).
    params : XYParams
        Weight, step, and whether the coordinates are physical.

    Returns
    -------
    DataArray, shape (feature, y, x) or (feature, z, y, x)
        Lazy, features ``xy_x`` (column) and ``xy_y`` (row), and ``xy_z`` (slice) on a
        volume, computed from each block's global offset so they do not depend on the
        chunking; NaN where the pixel is invalid. The family is registered as ``xy``
        and as ``xyz``: the same function and features.
    """
    dims = spatial_dims(image)
    factor = params.weight / params.step
    if params.physical:
        factors: float | tuple[float, ...] = tuple(s * factor for s in spacing(image))
    else:
        factors = factor
    data = per_pixel(image, _xy_block, len(dims), factors)
    return wrap(image, data, ["xy_x", "xy_y", "xy_z"][:len(dims)])
