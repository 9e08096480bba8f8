"""The training sample every method fits on, with what a model records about it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ._sample import sample_pixels

__all__ = ["Sample", "draw_sample"]


@dataclass(frozen=True, eq=False)
class Sample:
    """A seeded sample of valid pixels and the description of its features.

    The rows are in sampling-key order, which is random and chunking-independent, so
    any prefix (:meth:`head`) is itself a uniform seeded sample.

    Attributes
    ----------
    x : ndarray, shape (n, feature), float64
        Raw feature values of the sampled pixels.
    n_valid : int
        Valid pixels in the part of the image the sample pass read: the whole image,
        unless it read a subset of sample cells.
    feature_names : list of str
    scaled : ndarray, shape (feature,), bool
        Which features are standardised.
    features : list of dict
        Feature specs (``FeatureSpec.describe()``) to recompute the features.
    n_bands : int
        Band count of the image (0 when unknown).
    seed : int
        Seed of the sample (and of the fits made on it).
    source : str
        Name of the image, for messages.
    """

    x: np.ndarray
    n_valid: int
    feature_names: list[str]
    scaled: np.ndarray
    features: list[dict[str, Any]] = field(default_factory=list)
    n_bands: int = 0
    seed: int = 0
    source: str = "input"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def from_array(
        cls,
        x: np.ndarray,
        *,
        feature_names: Sequence[str] | None = None,
        scaled: Sequence[bool] | None = None,
        seed: int = 0,
        n_valid: int | None = None,
        n_bands: int = 0,
    ) -> Sample:
        """Wrap an in-memory array of pixels (rows in random order) as a sample.

        For tests and benchmarks; a real fit draws its sample with :func:`draw_sample`.
        """
        x = np.asarray(x, dtype=np.float64)
        nf = x.shape[1]
        names = list(feature_names) if feature_names is not None else [
            f"f{i}" for i in range(nf)]
        flags = np.ones(nf, bool) if scaled is None else np.asarray(scaled, bool)
        return cls(x=x, n_valid=len(x) if n_valid is None else int(n_valid),
                   feature_names=names, scaled=flags, n_bands=n_bands, seed=seed)

    def head(self, n: int) -> Sample:
        """Return the first ``n`` rows: a smaller sample with the same seed."""
        return replace(self, x=self.x[:n])

    def standardisation(self) -> tuple[np.ndarray, np.ndarray]:
        """Global ``(mean, scale)``: 0 and 1 for unscaled or constant features."""
        mean = np.where(self.scaled, self.x.mean(axis=0), 0.0)
        std = self.x.std(axis=0)
        scale = np.where(self.scaled & (std > 0), std, 1.0)
        return mean, scale

    def standardised(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(mean, scale, (x - mean) / scale)``."""
        mean, scale = self.standardisation()
        return mean, scale, (self.x - mean) / scale

    def model_fields(self, mean: np.ndarray, scale: np.ndarray) -> dict[str, Any]:
        """Return the fields every model records about its sample and features."""
        return {
            "mean": mean,
            "scale": scale,
            "features": list(self.features),
            "feature_names": list(self.feature_names),
            "n_bands": int(self.n_bands),
            "seed": int(self.seed),
            "sample_size": len(self),
            "n_valid": int(self.n_valid),
        }

    def require(self, n: int, what: str) -> None:
        """Raise :class:`InputError` unless the sample has at least ``n`` pixels."""
        if self.n_valid == 0:
            raise InputError(f"{self.source}: every pixel is nodata; expected some valid "
                             "pixels")
        if len(self) < n:
            raise InputError(
                f"{self.source}: only {len(self)} valid pixels were found for {what}; "
                "expected at least that many (lower cluster.k)"
            )


def draw_sample(features: xr.DataArray, size: int, seed: int, *, cells: bool = True,
                valid: float = 1.0) -> Sample:
    """Draw the seeded sample of a feature cube (computes: at most one pass).

    Parameters
    ----------
    features : DataArray, shape (feature, y, x)
        From :func:`pipeline.compute_features`.
    size : int
        Maximum number of valid pixels.
    seed : int
        Seed of the sampling keys.
    cells : bool
        On large images, read only a seeded subset of sample cells (see
        :mod:`pipeline.cluster._sample`). If the pass yields fewer than ``size``
        pixels while more valid pixels exist (a sparse image, or sparse cells), the
        sample is drawn again from every pixel with a key threshold set from the
        valid-pixel count just measured: at most two passes.
    valid : float
        The expected fraction of valid pixels when known beforehand (a mask's, the
        same for any chunking): a masked slide reads enough cells, and its sample
        takes one pass.

    Returns
    -------
    Sample
        The same for any chunking and any number of workers.
    """
    x, n_valid, fraction = sample_pixels(features, size, seed, cells=cells,
                                         valid=valid).compute()
    if len(x) < size and (fraction < 1.0 or n_valid > len(x)):
        hint = n_valid / fraction if n_valid else None
        x, n_valid, fraction = sample_pixels(features, size, seed, cells=False,
                                             valid_hint=hint).compute()
    specs = features.attrs.get("features", [])
    scaled = (np.asarray(features["scale"].values, dtype=bool) if "scale" in features.coords
              else np.ones(features.shape[0], bool))
    return Sample(
        x=x,
        n_valid=int(n_valid),
        feature_names=[str(n) for n in features["feature"].values],
        scaled=scaled,
        features=[s.describe() if hasattr(s, "describe") else dict(s) for s in specs],
        n_bands=int(features.attrs.get("n_bands", 0)),
        seed=int(seed),
        source=str(features.attrs.get("source", "input")),
    )
