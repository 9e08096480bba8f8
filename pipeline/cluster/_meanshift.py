"""Mean shift on the sample; every pixel takes its nearest mode."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import InputError
from ._model import FittedModel, register_model
from ._predict import nearest_centroid
from ._training import Sample

__all__ = ["MeanShiftModel", "fit_meanshift", "BANDWIDTH_SAMPLE"]

log = logging.getLogger(__name__)

#: Pixels (a prefix of the sample) on which the bandwidth is estimated: the estimate
#: costs ``O(n^2 * quantile)``.
BANDWIDTH_SAMPLE = 5_000


@register_model("meanshift")
@dataclass(eq=False, kw_only=True)
class MeanShiftModel(FittedModel):
    """The modes found by mean shift; pixels are labelled by their nearest mode.

    Attributes
    ----------
    centroids : ndarray, shape (k, feature), float64
        Modes in standardised units, ordered lexicographically in original units.
    """

    method: ClassVar[str] = "meanshift"
    centroids: np.ndarray

    @property
    def k(self) -> int:
        """Number of modes."""
        return int(self.centroids.shape[0])

    def class_centres(self) -> np.ndarray:
        """Modes in original units."""
        return self.to_raw(self.centroids)

    def predict_block(self, block: np.ndarray) -> np.ndarray:
        """Label one block of raw features by the nearest mode; NaN is nodata."""
        return nearest_centroid(block, self.class_centres(), self.distance_weights,
                                self.nodata, self.label_dtype)

    def _state(self) -> dict[str, Any]:
        return {"centroids": self.centroids.tolist()}

    @classmethod
    def _from_state(cls, fields: dict[str, Any], method: str, state: dict[str, Any],
                    arrays: dict[str, np.ndarray]) -> MeanShiftModel:
        return cls(centroids=np.asarray(state["centroids"], dtype=np.float64), **fields)


def fit_meanshift(
    sample: Sample,
    *,
    bandwidth: float | None = None,
    quantile: float = 0.1,
    max_iter: int = 300,
) -> MeanShiftModel:
    """Fit mean shift (flat kernel, bin seeding) on a sample.

    Parameters
    ----------
    sample : Sample
    bandwidth : float, optional
        Kernel radius in standardised units. By default estimated on the first
        :data:`BANDWIDTH_SAMPLE` pixels of the sample as the mean distance to the
        ``quantile * n``-th nearest neighbour (scikit-learn ``estimate_bandwidth``).
    quantile : float
        Of the bandwidth estimate: smaller finds more, tighter modes.
    max_iter : int
        Mean-shift iterations per seed.

    Returns
    -------
    MeanShiftModel

    Notes
    -----
    Seeds are the centres of a grid of bandwidth-sized bins holding at least
    ``max(1, n // 1000)`` sampled pixels, so modes of less than about 0.1 % of the
    pixels are not searched for.

    Raises
    ------
    InputError
        If the image has no valid pixel, or the bandwidth is too small to hold any
        sampled pixel.
    """
    from sklearn.cluster import MeanShift, estimate_bandwidth
    sample.require(1, "mean shift")
    mean, scale, xs = sample.standardised()
    n = len(xs)
    estimated = bandwidth is None
    min_bin_freq = max(1, n // 1000)
    with threadpool_limits(limits=1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if bandwidth is None:
            head = xs[:BANDWIDTH_SAMPLE]
            bandwidth = float(estimate_bandwidth(head, quantile=quantile, n_jobs=1))
            if not bandwidth > 0:
                raise InputError(f"{sample.source}: the sampled pixels are (nearly) all "
                                 "equal, so no mean-shift bandwidth can be estimated; set "
                                 "cluster.bandwidth")
        try:
            ms = MeanShift(bandwidth=bandwidth, bin_seeding=True, min_bin_freq=min_bin_freq,
                           cluster_all=True, max_iter=max_iter, n_jobs=1).fit(xs)
        except ValueError as exc:
            raise InputError(f"{sample.source}: mean shift failed ({exc}); expected a "
                             "larger cluster.bandwidth") from None
    for w in caught:
        log.warning("mean shift: %s", w.message)
    modes = np.asarray(ms.cluster_centers_, dtype=np.float64)
    modes = modes[np.lexsort((mean + scale * modes).T[::-1])]
    model = MeanShiftModel(
        centroids=np.ascontiguousarray(modes),
        fit_info={"bandwidth": float(bandwidth), "bandwidth_estimated": estimated,
                  "quantile": float(quantile), "min_bin_freq": min_bin_freq,
                  "n_iter": int(ms.n_iter_)},
        **sample.model_fields(mean, scale),
    )
    log.info("mean shift: %d modes on %d pixels (bandwidth %.4g)", model.k, n, bandwidth)
    return model
