"""DBSCAN and HDBSCAN fitted on the sample.

Every pixel takes the label of its nearest core sample within ``eps``, else the noise
class (a real class ID, the last one).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import InputError
from ._elbow import knee_point
from ._model import FittedModel, register_model
from ._training import Sample

__all__ = ["DensityModel", "fit_dbscan", "fit_hdbscan", "default_min_samples"]

log = logging.getLogger(__name__)


def default_min_samples(n_features: int) -> int:
    """``2 * features`` (Sander et al. 1998), at least 4."""
    return max(4, 2 * n_features)


@register_model("dbscan", "hdbscan")
@dataclass(eq=False, kw_only=True)
class DensityModel(FittedModel):
    """Core samples with their cluster, and the radius ``eps`` around them.

    Attributes
    ----------
    method : {"dbscan", "hdbscan"}
    core : ndarray, shape (m, feature), float64
        Core samples in standardised units (saved in the ``.npz``).
    core_labels : ndarray, shape (m,), int64
        Class ID of each core sample, ``0 .. n_clusters - 1``.
    eps : float
        A pixel takes the class of its nearest core sample if that lies within
        ``eps`` (standardised Euclidean distance), else the noise class.
    n_clusters : int
        Clusters found; classes are ordered lexicographically by the mean of their
        core samples in original units, and the noise class is ``n_clusters``.
    """

    method: str
    core: np.ndarray
    core_labels: np.ndarray
    eps: float
    n_clusters: int
    _tree: Any = field(default=None, init=False, repr=False)

    @property
    def k(self) -> int:
        """Clusters plus the noise class."""
        return int(self.n_clusters) + 1

    @property
    def noise_label(self) -> int:
        """The last class ID."""
        return int(self.n_clusters)

    def class_centres(self) -> np.ndarray:
        """Mean core sample of each cluster in original units; NaN for noise."""
        nf = self.core.shape[1]
        sums = np.zeros((self.k, nf))
        np.add.at(sums, self.core_labels, self.core)
        counts = np.bincount(self.core_labels, minlength=self.k).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            centres = self.to_raw(sums / counts[:, None])
        centres[self.noise_label] = np.nan
        return centres

    def _kdtree(self) -> Any:  # scipy.spatial.cKDTree
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.core)
        return self._tree

    def predict_block(self, block: np.ndarray) -> np.ndarray:
        """Label one block of raw features; NaN is nodata.

        A KD-tree over the core samples (built once per model) answers one nearest-
        neighbour query per valid pixel, bounded by ``eps``.
        """
        valid, x = self.standardise_block(block)
        out = np.full(block.shape[1:], self.nodata, dtype=self.label_dtype)
        if len(x):
            bound = np.nextafter(self.eps, np.inf)
            d, i = self._kdtree().query(x, k=1, distance_upper_bound=bound, workers=1)
            hit = d <= self.eps
            lab = np.full(len(x), self.noise_label, dtype=np.int64)
            lab[hit] = self.core_labels[i[hit]]
            out[valid] = lab
        return out

    def _state(self) -> dict[str, Any]:
        return {"eps": self.eps, "n_clusters": self.n_clusters, "n_core": len(self.core)}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"core": self.core, "core_labels": self.core_labels}

    @classmethod
    def _from_state(cls, fields: dict[str, Any], method: str, state: dict[str, Any],
                    arrays: dict[str, np.ndarray]) -> DensityModel:
        core = np.asarray(arrays["core"], dtype=np.float64)
        labels = np.asarray(arrays["core_labels"], dtype=np.int64)
        if core.ndim != 2 or core.shape[1] != len(fields["feature_names"]) \
                or labels.shape != (len(core),):
            raise ValueError("core samples do not match the model's features")
        return cls(method=method, core=core, core_labels=labels, eps=float(state["eps"]),
                   n_clusters=int(state["n_clusters"]), **fields)


def _ordered(sample: Sample, mean: np.ndarray, scale: np.ndarray, core: np.ndarray,
             labels: np.ndarray, method: str) -> tuple[np.ndarray, int]:
    """Renumber cluster labels by the lexicographic order of their mean core sample."""
    found = np.unique(labels)
    if len(found) == 0:
        raise InputError(f"{sample.source}: {method} found no cluster in the sample (all "
                         "noise); expected a larger cluster.eps or a smaller "
                         "cluster.min_samples")
    centres = np.array([core[labels == c].mean(axis=0) for c in found])
    order = found[np.lexsort((mean + scale * centres).T[::-1])]
    remap = np.empty(int(found.max()) + 1, dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[labels], len(found)


def _estimate_eps(kdist: np.ndarray) -> float:
    """Knee of the sorted k-distance curve, else its 90th percentile; never 0."""
    curve = np.sort(kdist)
    i = knee_point(np.arange(len(curve)), curve, decreasing=False)
    eps = float(curve[i]) if i is not None else float(np.quantile(curve, 0.9))
    if eps <= 0:
        positive = kdist[kdist > 0]
        if not len(positive):
            raise ValueError("all sampled pixels are equal")
        eps = float(positive.min())
    return eps


def fit_dbscan(
    sample: Sample,
    *,
    eps: float | None = None,
    min_samples: int | None = None,
) -> DensityModel:
    """Fit DBSCAN on a sample.

    Parameters
    ----------
    sample : Sample
    eps : float, optional
        Neighbourhood radius in standardised units. By default the knee of the sorted
        distances of the sampled pixels to their ``min_samples``-th neighbour.
    min_samples : int, optional
        Pixels (itself included) within ``eps`` that make a core sample; by default
        :func:`default_min_samples`.

    Returns
    -------
    DensityModel
        The sample's core samples and their clusters; noise is the last class.

    Raises
    ------
    InputError
        Too few pixels, or no cluster found.
    """
    from sklearn.cluster import DBSCAN
    mean, scale, xs = sample.standardised()
    ms = min_samples or default_min_samples(xs.shape[1])
    sample.require(ms, f"min_samples={ms}")
    estimated = eps is None
    with threadpool_limits(limits=1):
        if eps is None:
            from scipy.spatial import cKDTree

            kdist = cKDTree(xs).query(xs, k=ms, workers=1)[0][:, -1]
            try:
                eps = _estimate_eps(kdist)
            except ValueError:
                raise InputError(f"{sample.source}: every sampled pixel is equal; expected "
                                 "varied pixels (or set cluster.eps)") from None
        db = DBSCAN(eps=eps, min_samples=ms).fit(xs)
    idx = db.core_sample_indices_
    core, labels = xs[idx], db.labels_[idx]
    labels, n_clusters = _ordered(sample, mean, scale, core, labels, "dbscan")
    noise = float((db.labels_ < 0).mean())
    model = DensityModel(
        method="dbscan", core=np.ascontiguousarray(core), core_labels=labels,
        eps=float(eps), n_clusters=n_clusters,
        fit_info={"eps": float(eps), "eps_estimated": estimated, "min_samples": ms,
                  "n_core": int(len(idx)), "noise_fraction": noise},
        **sample.model_fields(mean, scale),
    )
    log.info("dbscan: %d clusters, %d core samples, %.1f %% noise on %d pixels (eps %.4g)",
             n_clusters, len(idx), 100 * noise, len(xs), eps)
    return model


def fit_hdbscan(
    sample: Sample,
    *,
    min_samples: int | None = None,
    min_cluster_size: int | None = None,
    eps: float | None = None,
) -> DensityModel:
    """Fit HDBSCAN on a sample.

    Parameters
    ----------
    sample : Sample
    min_samples : int, optional
        Neighbours (itself included) that define a pixel's core distance; by default
        :func:`default_min_samples`.
    min_cluster_size : int, optional
        Smallest cluster, in sampled pixels; by default 0.5 % of the sample (at
        least 5).
    eps : float, optional
        Labelling radius around the clustered samples. By default the largest core
        distance among them, so every pixel as dense as a clustered sample is labelled.

    Returns
    -------
    DensityModel
        Its core samples are the sample's clustered (non-noise) pixels.

    Raises
    ------
    InputError
        Too few pixels, or no cluster found.
    """
    from sklearn.cluster import HDBSCAN
    mean, scale, xs = sample.standardised()
    ms = min_samples or default_min_samples(xs.shape[1])
    mcs = min_cluster_size or max(5, len(xs) // 200)
    sample.require(max(ms, mcs, 2), f"min_samples={ms}, min_cluster_size={mcs}")
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sklearn's `copy` default change
        h = HDBSCAN(min_cluster_size=mcs, min_samples=ms, copy=True).fit(xs)
        clustered = h.labels_ >= 0
        from scipy.spatial import cKDTree

        core_dist = cKDTree(xs).query(xs, k=ms, workers=1)[0][:, -1]
    core, labels = xs[clustered], h.labels_[clustered]
    labels, n_clusters = _ordered(sample, mean, scale, core, labels, "hdbscan")
    estimated = eps is None
    if eps is None:
        eps = float(core_dist[clustered].max())
    noise = float((~clustered).mean())
    model = DensityModel(
        method="hdbscan", core=np.ascontiguousarray(core), core_labels=labels,
        eps=float(eps), n_clusters=n_clusters,
        fit_info={"eps": float(eps), "eps_estimated": estimated, "min_samples": ms,
                  "min_cluster_size": mcs, "n_core": int(clustered.sum()),
                  "noise_fraction": noise},
        **sample.model_fields(mean, scale),
    )
    log.info("hdbscan: %d clusters, %.1f %% noise on %d pixels (eps %.4g)",
             n_clusters, 100 * noise, len(xs), eps)
    return model
