"""Per-pixel colour-space features: HSV, CIE L*a*b* and H&E-DAB stains (scikit-image).

Every family works on images ``(band, y, x)`` and volumes ``(band, z, y, x)`` alike.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import Field

from ._common import band_indices, per_pixel, value_range, wrap
from ._registry import FeatureParams, register

__all__ = ["ColourParams", "hed", "hsv", "lab"]


class ColourParams(FeatureParams):
    """Parameters of the ``hsv``, ``lab`` and ``hed`` families.

    Attributes
    ----------
    rgb : list of int
        1-based band numbers used as red, green and blue (``{lab: [3, 2, 1]}`` is
        short for ``{lab: {rgb: [3, 2, 1]}}``).
    max : float or None
        The value that means full intensity. ``None``: the range of the input's data
        type (uint8 255, uint16 65535; float inputs are taken as 0..1). Scaled values
        are clipped to [0, 1] before the conversion.
    """

    rgb: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=3, max_length=3)
    max: float | None = Field(default=None, gt=0)


def _rgb_unit(block: np.ndarray, idx: list[int], vmax: float) -> tuple[np.ndarray, np.ndarray]:
    """(*spatial, 3) float64 RGB in [0, 1] with invalid pixels set to 0, and the invalid mask."""
    rgb = np.stack([block[i] for i in idx], axis=-1).astype(np.float64)
    bad = np.logical_not(np.isfinite(rgb).all(axis=-1, keepdims=False))
    rgb[bad] = 0.0
    rgb /= vmax
    np.clip(rgb, 0.0, 1.0, out=rgb)
    return rgb, bad


def _channels_first(out: np.ndarray, bad: np.ndarray) -> np.ndarray:
    res = np.moveaxis(out, -1, 0).astype(np.float32)
    res[:, bad] = np.nan
    return res


def _rgb2lab(rgb: np.ndarray) -> np.ndarray:
    """``skimage.color.rgb2lab`` with the RGB->XYZ matrix product written out.

    scikit-image multiplies by the 3x3 matrix with ``@`` (BLAS), whose rounding depends
    on the array's shape, so a pixel would get last-bit different Lab values in blocks
    of different sizes. The same gamma step and matrix, applied channel by channel with
    element-wise operations, give each pixel the same bits in any block; ``xyz2lab``
    is element-wise already.
    """
    from skimage import color  # imported here: scikit-image costs ~1 s at start-up
    from skimage.color.colorconv import xyz_from_rgb

    lin = rgb.copy()
    mask = lin > 0.04045
    lin[mask] = np.power((lin[mask] + 0.055) / 1.055, 2.4)
    lin[~mask] /= 12.92
    r, g, b = lin[..., 0], lin[..., 1], lin[..., 2]
    m = xyz_from_rgb
    xyz = np.stack([m[i, 0] * r + m[i, 1] * g + m[i, 2] * b for i in range(3)], axis=-1)
    return color.xyz2lab(xyz)


def _rgb2hed(rgb: np.ndarray) -> np.ndarray:
    """``skimage.color.rgb2hed`` with the optical-density matrix product written out.

    scikit-image computes ``log(max(rgb, 1e-6)) / log(1e-6) @ hed_from_rgb`` with BLAS,
    whose rounding depends on the array's shape (see :func:`_rgb2lab`); the same steps
    channel by channel give each pixel the same bits in any block.
    """
    from skimage.color.colorconv import hed_from_rgb

    od = np.log(np.maximum(rgb, 1e-6)) / np.log(1e-6)
    o0, o1, o2 = od[..., 0], od[..., 1], od[..., 2]
    m = hed_from_rgb
    stains = np.stack([o0 * m[0, j] + o1 * m[1, j] + o2 * m[2, j] for j in range(3)], axis=-1)
    return np.maximum(stains, 0.0)


def _hed_block(block: np.ndarray, idx: list[int], vmax: float) -> np.ndarray:
    rgb, bad = _rgb_unit(block, idx, vmax)
    return _channels_first(_rgb2hed(rgb), bad)


def _lab_block(block: np.ndarray, idx: list[int], vmax: float) -> np.ndarray:
    rgb, bad = _rgb_unit(block, idx, vmax)
    return _channels_first(_rgb2lab(rgb), bad)


def _hsv_block(block: np.ndarray, idx: list[int], vmax: float) -> np.ndarray:
    from skimage import color

    rgb, bad = _rgb_unit(block, idx, vmax)
    return _channels_first(color.rgb2hsv(rgb), bad)


def _colour(image: xr.DataArray, params: ColourParams, family: str, block_func,
            names: list[str]) -> xr.DataArray:
    idx = band_indices(image, params.rgb, family)
    vmax = value_range(image, params.max, family)
    data = per_pixel(image, block_func, 3, idx, vmax)
    return wrap(image, data, names)


@register("hsv", ColourParams)
def hsv(image: xr.DataArray, params: ColourParams) -> xr.DataArray:
    """Hue, saturation and value of three bands (``skimage.color.rgb2hsv``).

    Parameters
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x), float32
        The masked image (nodata already NaN).
    params : ColourParams
        Which bands are R, G, B and what value means full intensity.

    Returns
    -------
    DataArray, shape (feature, y, x) or (feature, z, y, x)
        Lazy, features ``hsv_h``, ``hsv_s``, ``hsv_v``, each in [0, 1]; NaN where the
        pixel is invalid. Hue is circular (0 and 1 are both red) and 0 for greys.

    Raises
    ------
    ConfigError
        If a band does not exist, or ``max`` is needed and the input's type is unknown.
    """
    return _colour(image, params, "hsv", _hsv_block, ["hsv_h", "hsv_s", "hsv_v"])


@register("lab", ColourParams)
def lab(image: xr.DataArray, params: ColourParams) -> xr.DataArray:
    """CIE L*a*b* (D65, 2 degrees) of three bands taken as sRGB (``skimage.color.rgb2lab``).

    Parameters
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x), float32
        The masked image (nodata already NaN).
    params : ColourParams
        Which bands are R, G, B and what value means full intensity.

    Returns
    -------
    DataArray, shape (feature, y, x) or (feature, z, y, x)
        Lazy, features ``lab_L`` (0..100), ``lab_a``, ``lab_b``; NaN where the pixel is
        invalid. Identical bits for a pixel whatever the chunking.

    Raises
    ------
    ConfigError
        If a band does not exist, or ``max`` is needed and the input's type is unknown.
    """
    return _colour(image, params, "lab", _lab_block, ["lab_L", "lab_a", "lab_b"])


@register("hed", ColourParams)
def hed(image: xr.DataArray, params: ColourParams) -> xr.DataArray:
    """Haematoxylin, eosin and DAB by colour deconvolution (``skimage.color.rgb2hed``).

    For brightfield histology (H&E, IHC): Ruifrok and Johnston's stain vectors turn
    each pixel's optical density ``-log(rgb)`` (RGB scaled to [0, 1], floored at
    1e-6 as scikit-image does) into the amount of each stain.

    Parameters
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x), float32
        The masked image (nodata already NaN).
    params : ColourParams
        Which bands are R, G, B (``{hed: [1, 2, 3]}`` is short for
        ``{hed: {rgb: [1, 2, 3]}}``) and what value means full intensity (``max``).

    Returns
    -------
    DataArray, shape (feature, y, x) or (feature, z, y, x)
        Lazy, features ``hed_h`` (haematoxylin), ``hed_e`` (eosin), ``hed_d`` (DAB),
        each >= 0 (0 for white); NaN where the pixel is invalid. Identical bits for a
        pixel whatever the chunking.

    Raises
    ------
    ConfigError
        If a band does not exist, or ``max`` is needed and the input's type is unknown.
    """
    return _colour(image, params, "hed", _hed_block, ["hed_h", "hed_e", "hed_d"])
