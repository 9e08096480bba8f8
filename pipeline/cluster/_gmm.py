"""Gaussian mixture fitted by EM on the sample.

Every pixel takes its most probable component, optionally with that component's
posterior probability (the confidence band).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from threadpoolctl import threadpool_limits

from ._model import FittedModel, register_model
from ._predict import gaussian_posterior
from ._training import Sample

__all__ = ["GaussianMixtureModel", "fit_gmm", "COVARIANCES"]

log = logging.getLogger(__name__)

COVARIANCES = ("full", "tied", "diag", "spherical")


def _full_cholesky(prec_chol: np.ndarray, kind: str, k: int, nf: int) -> np.ndarray:
    """scikit-learn's ``precisions_cholesky_`` of any covariance type as (k, f, f)."""
    if kind == "full":
        return np.asarray(prec_chol, dtype=np.float64)
    if kind == "tied":
        return np.broadcast_to(prec_chol, (k, nf, nf)).copy()
    if kind == "diag":
        return np.stack([np.diag(row) for row in prec_chol])
    return np.stack([np.eye(nf) * v for v in prec_chol])


@register_model("gmm")
@dataclass(eq=False, kw_only=True)
class GaussianMixtureModel(FittedModel):
    """A Gaussian mixture in standardised units.

    Attributes
    ----------
    weights : ndarray, shape (k,)
        Mixing weights.
    means : ndarray, shape (k, feature)
        Component means, ordered lexicographically in original units.
    precisions_cholesky : ndarray, shape (k, feature, feature)
        Cholesky factors ``L`` of the precision matrices (``P = L L^T``), whatever the
        covariance type.
    covariance_type : {"full", "tied", "diag", "spherical"}
    """

    method: ClassVar[str] = "gmm"
    weights: np.ndarray
    means: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str = "full"

    @property
    def k(self) -> int:
        """Number of components."""
        return int(self.means.shape[0])

    def class_centres(self) -> np.ndarray:
        """Component means in original units."""
        return self.to_raw(self.means)

    def _raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Means, precision factors and log normalisers in raw feature units."""
        chol = self.precisions_cholesky / self.scale[None, :, None]
        logdet = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        nf = self.means.shape[1]
        log_norm = np.log(self.weights) + logdet - 0.5 * nf * np.log(2 * np.pi)
        return self.class_centres(), chol, log_norm

    def posterior_block(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the labels and the confidence of one block of raw features.

        The confidence is the posterior of the label in percent (uint8; 255 for
        invalid pixels).
        """
        means, chol, log_norm = self._raw()
        return gaussian_posterior(block, means, chol, log_norm, self.nodata,
                                  self.label_dtype)

    def predict_block(self, block: np.ndarray) -> np.ndarray:
        """Most probable component of each pixel; NaN is nodata."""
        return self.posterior_block(block)[0]

    def confidence_block(self, block: np.ndarray) -> np.ndarray:
        """Posterior probability of the most probable component, percent (uint8)."""
        return self.posterior_block(block)[1]

    def _state(self) -> dict[str, Any]:
        return {"covariance_type": self.covariance_type, "weights": self.weights.tolist(),
                "means": self.means.tolist(),
                "precisions_cholesky": self.precisions_cholesky.tolist()}

    @classmethod
    def _from_state(cls, fields: dict[str, Any], method: str, state: dict[str, Any],
                    arrays: dict[str, np.ndarray]) -> GaussianMixtureModel:
        return cls(weights=np.asarray(state["weights"], dtype=np.float64),
                   means=np.asarray(state["means"], dtype=np.float64),
                   precisions_cholesky=np.asarray(state["precisions_cholesky"],
                                                  dtype=np.float64),
                   covariance_type=str(state["covariance_type"]), **fields)


def fit_gmm(
    sample: Sample,
    k: int,
    *,
    covariance: str = "full",
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> GaussianMixtureModel:
    """Fit a Gaussian mixture by EM (scikit-learn, K-means initialisation) on a sample.

    Parameters
    ----------
    sample : Sample
    k : int
        Number of components (>= 2).
    covariance : {"full", "tied", "diag", "spherical"}
    n_init, max_iter, tol :
        EM restarts, iterations and tolerance on the lower bound.

    Returns
    -------
    GaussianMixtureModel
        ``fit_info`` records convergence, iterations, the lower bound and the BIC on
        the sample.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    if k < 2:
        raise ValueError(f"cluster.k: expected at least 2 clusters, got {k}")
    if covariance not in COVARIANCES:
        raise ValueError(f"cluster.covariance: expected one of {', '.join(COVARIANCES)}, "
                         f"got {covariance!r}")
    sample.require(k, f"k={k} components")
    mean, scale, xs = sample.standardised()
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(n_components=k, covariance_type=covariance, n_init=n_init,
                             max_iter=max_iter, tol=tol, random_state=sample.seed).fit(xs)
        bic = float(gm.bic(xs))
    if not gm.converged_:
        log.warning("gmm: EM did not converge in %d iterations (raise cluster.max_iter)",
                    max_iter)
    nf = xs.shape[1]
    chol = _full_cholesky(gm.precisions_cholesky_, covariance, k, nf)
    order = np.lexsort((mean + scale * gm.means_).T[::-1])
    model = GaussianMixtureModel(
        weights=np.asarray(gm.weights_)[order], means=np.asarray(gm.means_)[order],
        precisions_cholesky=chol[order], covariance_type=covariance,
        fit_info={"converged": bool(gm.converged_), "n_iter": int(gm.n_iter_),
                  "lower_bound": float(gm.lower_bound_), "bic": bic},
        **sample.model_fields(mean, scale),
    )
    log.info("gmm: k=%d (%s) on %d pixels, BIC %.6g", k, covariance, len(xs), bic)
    return model
