"""Neighbourhood (texture) features with exact halos: local mean, std, Gaussian, gradient.

Every statistic is a *normalised convolution* over the valid pixels of a
``window x window`` neighbourhood: nodata pixels, and pixels beyond the image edge,
are left out of the window (weight 0) instead of being filled or spreading NaN. A valid
pixel therefore always gets a value (its own pixel is in its window), an invalid pixel
stays NaN, and the result near nodata or the image edge is the statistic of the valid
pixels that are there. The whole-image reference is the same sums computed by
``scipy.ndimage`` with ``mode="constant", cval=0`` on the zero-filled image and on the
validity mask; a chunk gets a halo of ``window // 2`` pixels from its neighbours
(``map_overlap`` with ``boundary="none"``: at the image edge scipy's own constant mode
pads, as in the reference).

Chunk independence to the last bit: the window sums use ``scipy.ndimage.correlate1d``
and ``gaussian_filter1d``, which compute each output pixel as a direct sum over its
window in float64, in the same order wherever the pixel sits in its block.
(``uniform_filter`` is avoided on purpose: its running sum starts at the block edge, so
its rounding depends on where the chunk starts.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ._common import band_indices, overlap, wrap
from ._registry import FeatureParams, register

__all__ = ["TextureParams", "texture", "texture_block"]


class TextureParams(FeatureParams):
    """Parameters of the ``texture`` family.

    Attributes
    ----------
    stat : {"mean", "std", "gaussian", "gradient"}
        ``mean`` and ``std``: mean and (population) standard deviation over the window;
        ``gaussian``: Gaussian-weighted mean; ``gradient``: magnitude of the gradient of
        the Gaussian-smoothed image (derivative-of-Gaussian kernels).
    window : int
        Odd window side in pixels (>= 3); the halo is ``window // 2``.
    band : int or None
        1-based band to use; ``None``: the mean of all bands.
    sigma : float or None
        ``gaussian`` and ``gradient`` only: the Gaussian's standard deviation in pixels;
        ``None``: ``(window - 1) / 6``, so the window spans +-3 sigma. The kernel is
        cut at ``window // 2`` whatever ``sigma``.
    """

    stat: Literal["mean", "std", "gaussian", "gradient"] = "std"
    window: int = Field(default=7, ge=3, le=255)
    band: int | None = Field(default=None, ge=1)
    sigma: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TextureParams:
        if self.window % 2 == 0:
            raise ValueError(f"window must be odd (a centre pixel), got {self.window}")
        if self.sigma is not None and self.stat not in ("gaussian", "gradient"):
            raise ValueError(f"sigma applies to stat gaussian or gradient, not {self.stat}")
        return self

    @property
    def radius(self) -> int:
        """Half the window: the halo in pixels."""
        return self.window // 2

    @property
    def gaussian_sigma(self) -> float:
        """The Gaussian's sigma, explicit or derived from the window."""
        return self.sigma if self.sigma is not None else (self.window - 1) / 6.0


def _source_block(block: np.ndarray, band: int | None) -> np.ndarray:
    """(y, x) float64: one band, or the mean of all bands (summed in band order)."""
    if band is not None:
        return block[band].astype(np.float64)
    out = block[0].astype(np.float64)
    for b in range(1, block.shape[0]):
        out += block[b]
    out /= block.shape[0]
    return out


def _box(a: np.ndarray, r: int) -> np.ndarray:
    ones = np.ones(2 * r + 1)
    from scipy import ndimage  # imported here: scipy.ndimage costs start-up time

    tmp = ndimage.correlate1d(a, ones, axis=0, mode="constant", cval=0.0)
    return ndimage.correlate1d(tmp, ones, axis=1, mode="constant", cval=0.0)


def _g1d(a: np.ndarray, sigma: float, r: int, axis: int, order: int = 0) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter1d(a, sigma, axis=axis, order=order, mode="constant",
                                     cval=0.0, radius=r)


def _gauss(a: np.ndarray, sigma: float, r: int) -> np.ndarray:
    return _g1d(_g1d(a, sigma, r, 0), sigma, r, 1)


def _gauss_and_gradient(
    a: np.ndarray, sigma: float, r: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian smoothing and its y and x derivatives (5 passes: one is shared)."""
    smooth_y = _g1d(a, sigma, r, 0)
    return (_g1d(smooth_y, sigma, r, 1), _g1d(_g1d(a, sigma, r, 0, 1), sigma, r, 1),
            _g1d(smooth_y, sigma, r, 1, 1))


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def texture_block(src: np.ndarray, stat: str, radius: int, sigma: float) -> np.ndarray:
    """Texture of one (halo-extended) block; also the whole-image reference.

    Parameters
    ----------
    src : ndarray, shape (y, x)
        Intensities; NaN marks invalid pixels.
    stat : {"mean", "std", "gaussian", "gradient"}
    radius : int
        Half window.
    sigma : float
        Gaussian sigma (``gaussian`` and ``gradient``).

    Returns
    -------
    ndarray, shape (y, x), float32
        NaN exactly where ``src`` is NaN. Pixels within ``radius`` of the block edge
        see only the part of their window inside the block (the image edge rule).
    """
    valid = np.isfinite(src)
    x = np.where(valid, src, 0.0)
    w = valid.astype(np.float64)
    if stat in ("mean", "std"):
        n = _box(w, radius)
        mean = _div(_box(x, radius), n)
        if stat == "mean":
            res = mean
        else:
            # E[x^2] - E[x]^2 in float64: the cancellation error is ~1e-16 E[x^2]
            # (1e-6 DN^2 for 16-bit data, 1e-3 DN in the std); clipped at 0 when flat
            var = _div(_box(x * x, radius), n) - mean * mean
            res = np.sqrt(np.maximum(var, 0.0))
    elif stat == "gaussian":
        res = _div(_gauss(x, sigma, radius), _gauss(w, sigma, radius))
    else:
        # gradient of the normalised convolution a / b: (a' b - a b') / b^2 per axis
        a, ay, ax = _gauss_and_gradient(x, sigma, radius)
        b, by, bx = _gauss_and_gradient(w, sigma, radius)
        bb = b * b
        res = np.hypot(_div(ay * b - a * by, bb), _div(ax * b - a * bx, bb))
    out = res.astype(np.float32)
    out[~valid] = np.nan
    return out


def _halo(params: TextureParams) -> int:
    return params.radius


def _name(params: TextureParams) -> str:
    src = "mean" if params.band is None else f"b{params.band}"
    sig = f"_s{params.sigma:g}" if params.sigma is not None else ""
    return f"texture_{params.stat}_w{params.window}{sig}_{src}"


@register("texture", TextureParams, halo=_halo)
def texture(image: xr.DataArray, params: TextureParams) -> xr.DataArray:
    """Compute a local statistic over a ``window x window`` neighbourhood, seam-free.

    Parameters
    ----------
    image : DataArray, shape (band, y, x), float32
        The masked image (nodata already NaN).
    params : TextureParams
        The statistic, window, band and Gaussian sigma.

    Returns
    -------
    DataArray, shape (feature, y, x)
        Lazy, chunked like the image, one feature named e.g. ``texture_std_w7_mean``;
        NaN exactly where the pixel is invalid. Nodata neighbours and pixels beyond the
        image edge are left out of each window (see the module notes).

    Raises
    ------
    ConfigError
        If ``band`` does not exist.
    """
    band = None if params.band is None else band_indices(image, [params.band], "texture")[0]
    data = image.data.rechunk({0: -1})
    src = data.map_blocks(_source_block, band, drop_axis=0, dtype=np.float64,
                          meta=np.empty((0, 0), np.float64))
    # halo = window // 2 with boundary "none": scipy's mode="constant" (weight 0 beyond
    # the edge) handles the image edge inside texture_block, as in the reference
    out = overlap(
        src,
        texture_block,
        params.radius,
        dtype=np.float32,
        meta=np.empty((0, 0), np.float32),
        stat=params.stat,
        radius=params.radius,
        sigma=params.gaussian_sigma,
    )
    return wrap(image, out[None], [_name(params)])
