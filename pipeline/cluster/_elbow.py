"""Choosing k on the seeded sample.

Within-cluster sum of squares over k with knee detection, and the silhouette,
Calinski-Harabasz and Davies-Bouldin scores.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

from ._kmeans import _order, fit_sample
from ._lloyd import assign
from ._model import KMeansModel
from ._training import Sample, draw_sample

__all__ = ["ElbowResult", "elbow", "elbow_on", "knee_point", "ELBOW_SAMPLE_SIZE",
           "SILHOUETTE_SIZE"]

log = logging.getLogger(__name__)

#: Default sample of the elbow: 15 K-means fits of 4 bands take about 25 s on one core.
ELBOW_SAMPLE_SIZE = 100_000
#: The silhouette costs O(n^2): it is computed on this prefix of the sample.
SILHOUETTE_SIZE = 5_000


def knee_point(x: Iterable[float], y: Iterable[float], *, decreasing: bool = True
               ) -> int | None:
    """Index of the knee of a convex curve (Kneedle, Satopaa et al. 2011).

    Both axes are scaled to [0, 1]; the knee is the point farthest below the chord
    joining the first and last points.

    Parameters
    ----------
    x, y : sequence of float
        The curve, ``x`` increasing.
    decreasing : bool
        ``True`` for a decreasing curve (WCSS over k), ``False`` for an increasing one
        (sorted k-distances).

    Returns
    -------
    int or None
        None when no point lies below the chord (a straight or concave curve), or the
        curve has fewer than 3 points.
    """
    x = np.asarray(list(x), dtype=np.float64)
    y = np.asarray(list(y), dtype=np.float64)
    if len(x) < 3 or x[-1] == x[0] or np.ptp(y) == 0:
        return None
    xn = (x - x[0]) / (x[-1] - x[0])
    yn = (y - y.min()) / np.ptp(y)
    gap = (1.0 - xn - yn) if decreasing else (xn - yn)
    i = int(np.argmax(gap))
    return i if gap[i] > 1e-12 else None


@dataclass
class ElbowResult:
    """Scores of K-means over a range of k on one sample.

    Attributes
    ----------
    ks : list of int
    wcss : list of float
        Within-cluster sum of squares (inertia) on the sample, standardised units.
    silhouette, calinski_harabasz, davies_bouldin : list of float or None
        Higher, higher and lower are better; ``None`` where undefined.
    knee : int or None
        The k at the knee of ``log(wcss)``.
    k : int
        The chosen k: the knee, else the best silhouette.
    chosen_by : str
        ``"knee"`` or ``"silhouette"``.
    sample_size, silhouette_size, seed : int
    models : dict of int to KMeansModel
        The fitted model of every k (not written to JSON).
    """

    ks: list[int]
    wcss: list[float]
    silhouette: list[float | None]
    calinski_harabasz: list[float | None]
    davies_bouldin: list[float | None]
    knee: int | None
    k: int
    chosen_by: str
    sample_size: int
    silhouette_size: int
    seed: int
    models: dict[int, KMeansModel] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """``elbow.json``: a score per k and the chosen k."""
        return {
            "k": self.k,
            "chosen_by": self.chosen_by,
            "knee": self.knee,
            "sample_size": self.sample_size,
            "silhouette_size": self.silhouette_size,
            "seed": self.seed,
            "scores": [
                {"k": k, "wcss": w, "silhouette": s, "calinski_harabasz": c,
                 "davies_bouldin": d}
                for k, w, s, c, d in zip(self.ks, self.wcss, self.silhouette,
                                         self.calinski_harabasz, self.davies_bouldin,
                                         strict=True)
            ],
            "knee_method": "Kneedle on log(wcss): the k farthest below the chord",
        }


def _score(fn: Any, x: np.ndarray, labels: np.ndarray) -> float | None:
    if not 2 <= len(np.unique(labels)) < len(x):
        return None
    return float(fn(x, labels))


def elbow_on(
    sample: Sample,
    ks: Iterable[int],
    *,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-4,
    silhouette_size: int = SILHOUETTE_SIZE,
) -> ElbowResult:
    """Fit K-means for every k on a sample and score each.

    Parameters
    ----------
    sample : Sample
        Its seed seeds every fit.
    ks : iterable of int
        The k to try (each >= 2).
    n_init, max_iter, tol :
        Of each K-means fit (:func:`pipeline.cluster.fit_sample`).
    silhouette_size : int
        The silhouette is computed on this prefix of the sample.

    Returns
    -------
    ElbowResult
    """
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 2:
        raise ValueError(f"elbow: expected values of k >= 2, got {ks}")
    sample.require(ks[-1], f"k up to {ks[-1]}")
    mean, scale, xs = sample.standardised()
    sil_x = xs[:silhouette_size]
    wcss, sil, ch, db = [], [], [], []
    models: dict[int, KMeansModel] = {}
    for k in ks:
        centroids, inertia, n_iter = fit_sample(xs, k, seed=sample.seed, n_init=n_init,
                                                max_iter=max_iter, tol=tol)
        centroids = centroids[_order(mean + scale * centroids)]
        labels = assign(xs, centroids)[0]
        with threadpool_limits(limits=1):
            sil.append(_score(silhouette_score, sil_x, labels[:silhouette_size]))
            ch.append(_score(calinski_harabasz_score, xs, labels))
            db.append(_score(davies_bouldin_score, xs, labels))
        wcss.append(float(inertia))
        models[k] = KMeansModel(centroids=np.ascontiguousarray(centroids), inertia=inertia,
                                n_iter=n_iter, **sample.model_fields(mean, scale))
        log.info("elbow: k=%d wcss %.6g silhouette %s", k, inertia, sil[-1])
    floor = max(wcss[0], 1e-300) * 1e-12
    i = knee_point(ks, np.log(np.maximum(wcss, floor)))
    knee = ks[i] if i is not None else None
    if knee is not None:
        k, by = knee, "knee"
    else:
        scored = [(s, -kk) for s, kk in zip(sil, ks, strict=True) if s is not None]
        k, by = (-max(scored)[1], "silhouette") if scored else (ks[0], "smallest k")
    return ElbowResult(ks=ks, wcss=wcss, silhouette=sil, calinski_harabasz=ch,
                       davies_bouldin=db, knee=knee, k=k, chosen_by=by,
                       sample_size=len(sample), silhouette_size=len(sil_x),
                       seed=sample.seed, models=models)


def elbow(
    features: xr.DataArray,
    ks: Iterable[int] = range(2, 17),
    *,
    seed: int = 0,
    sample_size: int = ELBOW_SAMPLE_SIZE,
    **options: Any,
) -> ElbowResult:
    """Run the elbow method on a feature cube (computes its sample).

    Parameters
    ----------
    features : DataArray, shape (feature, y, x)
    ks : iterable of int
        The k to try.
    seed : int
        Seed of the sample and the fits.
    sample_size : int
        Pixels in the sample (K-means is fitted once per k on it).
    **options :
        ``n_init``, ``max_iter``, ``tol``, ``silhouette_size`` (see :func:`elbow_on`).

    Returns
    -------
    ElbowResult
    """
    return elbow_on(draw_sample(features, sample_size, seed), ks, **options)
