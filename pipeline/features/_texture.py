"""Neighbourhood (texture) features with exact halos: local mean, std, Gaussian, gradient.

Images are ``(band, y, x)`` or ``(band, z, y, x)``; one code path serves both. Every
statistic is a *normalised convolution* over the valid pixels (voxels) of a window:
nodata pixels, and pixels beyond the image edge, are left out of the window (weight 0)
instead of being filled or spreading NaN. A valid pixel therefore always gets a value
(its own pixel is in its window), an invalid pixel stays NaN, and the result near
nodata or the image edge is the statistic of the valid pixels that are there. The
whole-image reference is the same sums computed by ``scipy.ndimage`` with
``mode="constant", cval=0`` on the zero-filled image and on the validity mask; a chunk
gets a halo of the kernel's radius along each axis from its neighbours (``map_overlap``
with a per-axis depth and ``boundary="none"``: at the image edge scipy's own constant
mode pads, as in the reference).

The window is given in pixels (one odd side for every axis, or one per axis), or, for
the Gaussian statistics of anisotropic volumes, as a sigma in physical units
(``sigma_units``) that the image's ``attrs["geometry"].spacing`` turns into a sigma and
a radius per axis.

Chunk independence to the last bit: the window sums use ``scipy.ndimage.correlate1d``
and ``gaussian_filter1d``, one axis after the other in axis order, which compute each
output pixel as a direct sum over its window in float64, in the same order wherever the
pixel sits in its block. (``uniform_filter`` is avoided on purpose: its running sum
starts at the block edge, so its rounding depends on where the chunk starts.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce
from typing import Annotated, Any, Literal

import numpy as np
import xarray as xr
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ..errors import ConfigError
from ._common import band_indices, overlap, spacing, spatial_dims, wrap
from ._registry import FeatureParams, register

__all__ = ["TextureParams", "texture", "texture_block"]

#: Largest kernel radius (voxels) along an axis: the radius of the largest window, 255.
_MAX_RADIUS = 127
_DEFAULT_WINDOW = 7
_DEFAULT_TRUNCATE = 3.0


class TextureParams(FeatureParams):
    """Parameters of the ``texture`` family.

    Attributes
    ----------
    stat : {"mean", "std", "gaussian", "gradient"}
        ``mean`` and ``std``: mean and (population) standard deviation over the window;
        ``gaussian``: Gaussian-weighted mean; ``gradient``: magnitude of the gradient of
        the Gaussian-smoothed image (derivative-of-Gaussian kernels; on a volume over
        the three axes).
    window : int or list of int
        Odd window side in pixels (>= 3) along every spatial axis, or one odd side per
        spatial axis in dims order (``[z, y, x]`` or ``[y, x]``; >= 1, a side of 1
        leaves that axis out, e.g. ``[1, 7, 7]`` for slice-wise texture). The halo
        along an axis is ``side // 2``.
    band : int or None
        1-based band to use; ``None``: the mean of all bands.
    sigma : float or None
        ``gaussian`` and ``gradient`` only: the Gaussian's standard deviation in pixels,
        the same along every axis; ``None``: ``(side - 1) / 6`` per axis, so the window
        spans +-3 sigma. The kernel is cut at ``side // 2`` whatever ``sigma``.
    sigma_units : float or None
        ``gaussian`` and ``gradient`` only, instead of ``window`` and ``sigma``: the
        Gaussian's standard deviation in the physical units of the image's geometry
        (``attrs["geometry"]``; spacing 1 without one). Along axis ``i`` the sigma is
        ``sigma_units / spacing[i]`` voxels and the radius (the halo)
        ``ceil(truncate * sigma)``, so anisotropic voxels get anisotropic kernels. The
        ``gradient`` is then per unit length (each axis' derivative divided by its
        spacing), not per voxel.
    truncate : float
        With ``sigma_units`` only: the kernel radius in sigmas (3: the +-3 sigma of the
        default window).

    Notes
    -----
    ``sigma_units`` and ``truncate`` are left out of the parameters' JSON form while
    they keep their defaults, so specs written before they existed (model files,
    config tokens) stay the same.
    """

    stat: Literal["mean", "std", "gaussian", "gradient"] = "std"
    window: (Annotated[int, Field(ge=3, le=255)]
             | list[Annotated[int, Field(ge=1, le=255)]]) = _DEFAULT_WINDOW
    band: int | None = Field(default=None, ge=1)
    sigma: float | None = Field(default=None, gt=0)
    sigma_units: float | None = Field(default=None, gt=0)
    truncate: float = Field(default=_DEFAULT_TRUNCATE, gt=0, le=10)

    @model_validator(mode="after")
    def _check(self) -> TextureParams:
        sides = self.window if isinstance(self.window, list) else [self.window]
        if any(w % 2 == 0 for w in sides):
            raise ValueError(f"window must be odd (a centre pixel), got {self.window}")
        if isinstance(self.window, list):
            if len(self.window) not in (2, 3):
                raise ValueError(f"window: one side per spatial axis ([y, x] or [z, y, x]), "
                                 f"got {self.window}")
            if max(self.window) < 3:
                raise ValueError(f"window: at least one side must be >= 3, got {self.window}")
        gauss = self.stat in ("gaussian", "gradient")
        if self.sigma is not None and not gauss:
            raise ValueError(f"sigma applies to stat gaussian or gradient, not {self.stat}")
        if self.sigma_units is not None:
            if not gauss:
                raise ValueError(f"sigma_units applies to stat gaussian or gradient, "
                                 f"not {self.stat}")
            # window is compared with its default, not looked for in the fields set:
            # a described spec (every field spelt out) must parse back
            if self.sigma is not None or self.window != _DEFAULT_WINDOW:
                raise ValueError("sigma_units sets the kernel (radius ceil(truncate * sigma) "
                                 "per axis): give it without window and sigma")
        elif self.truncate != _DEFAULT_TRUNCATE:
            raise ValueError("truncate applies with sigma_units only (window sets the "
                             "kernel's radius otherwise)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if self.sigma_units is None:  # then truncate is the default too
            out.pop("sigma_units", None)
            out.pop("truncate", None)
        return out

    @property
    def radius(self) -> int:
        """The largest halo in pixels: half the widest window side.

        With ``sigma_units`` the halo depends on the image's spacing; this is then the
        radius at spacing 1 (a nominal value, > 0).
        """
        if self.sigma_units is not None:
            return _radius(self.truncate, self.sigma_units)
        sides = self.window if isinstance(self.window, list) else [self.window]
        return max(sides) // 2

    @property
    def gaussian_sigma(self) -> float:
        """The Gaussian's sigma in pixels, explicit or derived from the (widest) window."""
        if self.sigma is not None:
            return self.sigma
        sides = self.window if isinstance(self.window, list) else [self.window]
        return (max(sides) - 1) / 6.0

    def kernel(self, voxel: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Radius (the halo) and Gaussian sigma per spatial axis, in voxels.

        Parameters
        ----------
        voxel : sequence of float
            The voxel spacing per spatial axis in dims order (only ``sigma_units``
            uses its values; its length is the number of spatial axes).

        Raises
        ------
        ConfigError
            If a per-axis ``window`` does not have one side per spatial axis, or
            ``sigma_units`` needs a radius beyond 127 voxels along an axis.
        """
        n = len(voxel)
        if self.sigma_units is not None:
            sig = tuple(self.sigma_units / float(s) for s in voxel)
            rad = tuple(_radius(self.truncate, s) for s in sig)
            if max(rad) > _MAX_RADIUS:
                raise ConfigError(
                    f"features: texture: sigma_units {self.sigma_units:g} is {max(sig):g} "
                    f"voxels along an axis of spacing {min(voxel):g}, a kernel radius of "
                    f"{max(rad)} (at most {_MAX_RADIUS}); expected a smaller sigma_units "
                    "or truncate")
            return rad, sig
        sides = self.window if isinstance(self.window, list) else [self.window] * n
        if len(sides) != n:
            raise ConfigError(
                f"features: texture: window {self.window} has {len(sides)} sides but the "
                f"image has {n} spatial axes; expected one side per axis or one int")
        rad = tuple(w // 2 for w in sides)
        sig = tuple(self.sigma if self.sigma is not None else (w - 1) / 6.0 for w in sides)
        return rad, sig


def _radius(truncate: float, sigma: float) -> int:
    # ceil, with a little slack so that 3 * (0.3 / 0.1) is 9, not 10
    return max(1, math.ceil(truncate * sigma - 1e-9))


def _source_block(block: np.ndarray, band: int | None) -> np.ndarray:
    """(*spatial) float64: one band, or the mean of all bands (summed in band order)."""
    if band is not None:
        return block[band].astype(np.float64)
    out = block[0].astype(np.float64)
    for b in range(1, block.shape[0]):
        out += block[b]
    out /= block.shape[0]
    return out


def _per_axis(value: float | Sequence[float], ndim: int) -> tuple:
    return tuple(value) if isinstance(value, Sequence) else (value,) * ndim


def _box(a: np.ndarray, r: tuple[int, ...]) -> np.ndarray:
    """Window sums, axis after axis (an axis of radius 0 is left as it is)."""
    from scipy import ndimage  # imported here: scipy.ndimage costs start-up time

    for axis, ra in enumerate(r):
        if ra:
            a = ndimage.correlate1d(a, np.ones(2 * ra + 1), axis=axis, mode="constant",
                                    cval=0.0)
    return a


def _g1d(a: np.ndarray, sigma: float, r: int, axis: int, order: int = 0) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter1d(a, sigma, axis=axis, order=order, mode="constant",
                                     cval=0.0, radius=r)


def _gauss(a: np.ndarray, sigma: tuple[float, ...], r: tuple[int, ...]) -> np.ndarray:
    for axis, ra in enumerate(r):
        if ra:
            a = _g1d(a, sigma[axis], ra, axis)
    return a


def _gauss_and_gradient(
    a: np.ndarray, sigma: tuple[float, ...], r: tuple[int, ...]
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Gaussian smoothing and its derivative along each axis of radius > 0.

    Passes run in axis order; the derivative along axis ``k`` starts from the image
    smoothed along the axes before ``k`` (shared with the smoothing itself): 5 passes
    in 2-D, 9 in 3-D.
    """
    axes = [axis for axis, ra in enumerate(r) if ra]
    grads = []
    prefix = a
    for m, axis in enumerate(axes):
        d = _g1d(prefix, sigma[axis], r[axis], axis, 1)
        for later in axes[m + 1:]:
            d = _g1d(d, sigma[later], r[later], later)
        grads.append((axis, d))
        prefix = _g1d(prefix, sigma[axis], r[axis], axis)
    return prefix, grads


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def texture_block(
    src: np.ndarray,
    stat: str,
    radius: int | Sequence[int],
    sigma: float | Sequence[float],
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Texture of one (halo-extended) block; also the whole-image reference.

    Parameters
    ----------
    src : ndarray, shape (y, x) or (z, y, x)
        Intensities; NaN marks invalid pixels.
    stat : {"mean", "std", "gaussian", "gradient"}
    radius : int or sequence of int
        Half window, one for every axis or one per axis (0: the axis is neither
        summed, smoothed nor differentiated along).
    sigma : float or sequence of float
        Gaussian sigma in pixels (``gaussian`` and ``gradient``), likewise.
    spacing : sequence of float, optional
        ``gradient`` only: divide each axis' derivative by its spacing, so the
        magnitude is per unit length; ``None``: per pixel.

    Returns
    -------
    ndarray, same shape, float32
        NaN exactly where ``src`` is NaN. Pixels within ``radius`` of the block edge
        see only the part of their window inside the block (the image edge rule).
    """
    r = tuple(int(v) for v in _per_axis(radius, src.ndim))
    sig = tuple(float(v) for v in _per_axis(sigma, src.ndim))
    valid = np.isfinite(src)
    x = np.where(valid, src, 0.0)
    w = valid.astype(np.float64)
    if stat in ("mean", "std"):
        n = _box(w, r)
        mean = _div(_box(x, r), n)
        if stat == "mean":
            res = mean
        else:
            # E[x^2] - E[x]^2 in float64: the cancellation error is ~1e-16 E[x^2]
            # (1e-6 DN^2 for 16-bit data, 1e-3 DN in the std); clipped at 0 when flat
            var = _div(_box(x * x, r), n) - mean * mean
            res = np.sqrt(np.maximum(var, 0.0))
    elif stat == "gaussian":
        res = _div(_gauss(x, sig, r), _gauss(w, sig, r))
    else:
        # gradient of the normalised convolution a / b: (a' b - a b') / b^2 per axis
        a, da = _gauss_and_gradient(x, sig, r)
        b, db = _gauss_and_gradient(w, sig, r)
        bb = b * b
        parts = []
        for (axis, ad), (_, bd) in zip(da, db, strict=True):
            g = _div(ad * b - a * bd, bb)
            parts.append(g if spacing is None else g / float(spacing[axis]))
        res = reduce(np.hypot, parts)
    out = res.astype(np.float32)
    out[~valid] = np.nan
    return out


def _halo(params: TextureParams) -> int:
    return params.radius


def _name(params: TextureParams) -> str:
    src = "mean" if params.band is None else f"b{params.band}"
    if params.sigma_units is not None:
        trunc = "" if params.truncate == _DEFAULT_TRUNCATE else f"_t{params.truncate:g}"
        return f"texture_{params.stat}_su{params.sigma_units:g}{trunc}_{src}"
    window = (params.window if isinstance(params.window, int)
              else "x".join(str(w) for w in params.window))
    sig = f"_s{params.sigma:g}" if params.sigma is not None else ""
    return f"texture_{params.stat}_w{window}{sig}_{src}"


@register("texture", TextureParams, halo=_halo)
def texture(image: xr.DataArray, params: TextureParams) -> xr.DataArray:
    """Compute a local statistic over a window of pixels or voxels, seam-free.

    Parameters
    ----------
    image : DataArray, shape (band, y, x) or (band, z, y, x), float32
        The masked image (nodata already NaN); ``attrs["geometry"]`` gives the voxel
        spacing that ``sigma_units`` needs (spacing 1 without one).
    params : TextureParams
        The statistic, window (or physical sigma), band and Gaussian sigma.

    Returns
    -------
    DataArray, shape (feature, y, x) or (feature, z, y, x)
        Lazy, chunked like the image, one feature named e.g. ``texture_std_w7_mean``
        (``texture_gradient_su2.5_mean`` with ``sigma_units``); NaN exactly where the
        pixel is invalid. Nodata neighbours and pixels beyond the image edge are left
        out of each window (see the module notes). Each chunk reads a halo of the
        kernel's radius along each axis, no more.

    Raises
    ------
    ConfigError
        If ``band`` does not exist, a per-axis ``window`` does not match the image's
        spatial axes, or ``sigma_units`` needs a kernel radius beyond 127 voxels.
    """
    voxel = spacing(image)
    radii, sigmas = params.kernel(voxel)
    band = None if params.band is None else band_indices(image, [params.band], "texture")[0]
    data = image.data.rechunk({0: -1})
    ndim = len(spatial_dims(image))
    src = data.map_blocks(_source_block, band, drop_axis=0, dtype=np.float64,
                          meta=np.empty((0,) * ndim, np.float64))
    # halo = the kernel radius per axis with boundary "none": scipy's mode="constant"
    # (weight 0 beyond the edge) handles the image edge inside texture_block, as in
    # the reference
    out = overlap(
        src,
        texture_block,
        radii,
        dtype=np.float32,
        meta=np.empty((0,) * ndim, np.float32),
        stat=params.stat,
        radius=radii,
        sigma=sigmas,
        spacing=voxel if params.sigma_units is not None else None,
    )
    return wrap(image, out[None], [_name(params)])
