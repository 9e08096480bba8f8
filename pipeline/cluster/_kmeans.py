"""Global K-means.

Fitted on a seeded sample, optionally refined over every pixel, then applied lazily
block by block.
"""

from __future__ import annotations

import logging

import dask
import numba
import numpy as np
import xarray as xr

from ._lloyd import assign, kmeans_plusplus, lloyd
from ._model import ClusterModel, KMeansModel
from ._predict import _nearest
from ._training import Sample, draw_sample

__all__ = ["fit", "fit_kmeans", "fit_sample", "predict", "refine_centroids",
           "FIXED_POINT_BITS"]

log = logging.getLogger(__name__)

_COARSE = 50_000

#: Full-data refinement sums features as int64 fixed point with this many fractional
#: bits: integer addition is associative, so the sums (and the centroids) are exactly
#: the same for any chunking and any number of workers.
FIXED_POINT_BITS = 20


def fit_sample(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> tuple[np.ndarray, float, int]:
    """Fit K-means on an in-memory sample to the quality of full K-means.

    Coarse to fine: ``n_init`` k-means++ restarts, each followed by Lloyd iterations,
    on a random subset of the sample (its first ``max(50000, 100 k)`` rows: the sample
    is in random key order) find a good start quickly; Lloyd iterations over the whole
    sample from the best restart (lowest inertia, the first on ties) then converge it
    to the quality of full K-means (MiniBatch K-means alone stops several percent above
    the optimum on real multispectral data, and is slower here). The fit is our own
    numba code (:mod:`pipeline.cluster._lloyd`, the algorithm of scikit-learn's
    ``KMeans``, without its ~1 s import) and runs on one thread, so the result depends
    only on the sample and the seed, bit for bit.

    Parameters
    ----------
    x : ndarray, shape (n, feature), float64
        Standardised sample.
    k : int
        Number of clusters, ``2 <= k <= n``.
    seed : int
        Seed of the initialisation: one ``numpy.random.default_rng(seed)`` draws every
        restart's k-means++ seeding, in turn.
    n_init, max_iter, tol :
        As in scikit-learn's ``KMeans`` (``tol`` relative to the data's mean
        per-feature variance).

    Returns
    -------
    centroids : ndarray, shape (k, feature)
        Not yet ordered.
    inertia : float
        Sum of squared distances of the sample to its nearest centroid.
    n_iter : int
        Lloyd iterations run over the whole sample.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    coarse = x[: max(_COARSE, 100 * k)]
    rng = np.random.default_rng(seed)
    best: np.ndarray | None = None
    best_inertia = np.inf
    for _ in range(max(1, n_init)):
        init, _ = kmeans_plusplus(coarse, k, rng)
        centres, inertia, _ = lloyd(coarse, init, max_iter=max_iter, tol=tol)
        if best is None or inertia < best_inertia:
            best, best_inertia = centres, inertia
    assert best is not None  # max(1, n_init) >= 1 tries ran
    return lloyd(x, best, max_iter=max_iter, tol=tol)


def _order(centroids_original: np.ndarray) -> np.ndarray:
    """Permutation sorting centroids lexicographically (first feature first)."""
    return np.lexsort(centroids_original.T[::-1])


@numba.njit(cache=True, nogil=True)
def _lloyd_block(block, centroids_raw, weights, mean, inv_scale, unit):  # pragma: no cover
    nf, h, w = block.shape
    k = centroids_raw.shape[0]
    sums = np.zeros((k, nf), dtype=np.int64)
    counts = np.zeros(k, dtype=np.int64)
    labels = np.empty((h, w), dtype=np.int32)
    _nearest(block, centroids_raw, weights, -1, labels)
    for i in range(h):
        for j in range(w):
            c = labels[i, j]
            if c < 0:
                continue
            counts[c] += 1
            for f in range(nf):
                v = (np.float64(block[f, i, j]) - mean[f]) * inv_scale[f]
                sums[c, f] += np.int64(np.rint(v * unit))
    return sums, counts


def _refine(features: xr.DataArray, model: KMeansModel, passes: int, tol: float) -> int:
    """Lloyd passes over every pixel with exact integer partial sums. Computes."""
    return refine_centroids(features, model, passes, tol)[0]


def refine_centroids(features: xr.DataArray, model: KMeansModel, passes: int,
                     tol: float) -> tuple[int, np.ndarray]:
    """Lloyd passes over every pixel with exact integer partial sums (computes).

    Updates ``model.centroids`` in place (not reordered) and returns the passes run
    and the pixel count of each centroid in the last pass: both the same for any
    chunking and any number of workers.
    """
    unit = float(2**FIXED_POINT_BITS)
    counts = [0] * model.k
    data = features.data.rechunk({0: -1})
    done = 0
    for _ in range(passes):
        craw = model.centroids_original.astype(np.float32)
        weights = (1.0 / model.scale**2).astype(np.float32)
        blocks = data.to_delayed().ravel()
        task = dask.delayed(_lloyd_block, pure=True, nout=2)
        parts = [task(b, craw, weights, model.mean, 1.0 / model.scale, unit) for b in blocks]
        (results,) = dask.compute(parts)
        sums = [[0] * craw.shape[1] for _ in range(model.k)]
        counts = [0] * model.k
        for s, c in results:  # Python ints: exact whatever the order
            for ci in range(model.k):
                counts[ci] += int(c[ci])
                for f in range(craw.shape[1]):
                    sums[ci][f] += int(s[ci, f])
        new = model.centroids.copy()
        for ci in range(model.k):
            if counts[ci]:
                new[ci] = [s / counts[ci] / unit for s in sums[ci]]
        shift = float(np.sum((new - model.centroids) ** 2))
        model.centroids = new
        done += 1
        if shift <= tol * 1e-4:
            break
    return done, np.asarray(counts, dtype=np.int64)


def fit_kmeans(
    sample: Sample,
    k: int,
    *,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-4,
    refine: int = 0,
    features: xr.DataArray | None = None,
) -> KMeansModel:
    """Fit K-means on a drawn sample (and refine it over every pixel when asked).

    Parameters
    ----------
    sample : Sample
        From :func:`draw_sample`; its seed seeds the initialisation.
    k : int
        Number of clusters (>= 2).
    n_init, max_iter, tol :
        See :func:`fit_sample`.
    refine : int
        Lloyd passes over every pixel of ``features`` after the sample fit; computes.
    features : DataArray, optional
        The feature cube, needed only when ``refine > 0``.

    Returns
    -------
    KMeansModel
        Centroids ordered lexicographically (original units).

    Raises
    ------
    InputError
        If the image has no valid pixel, or fewer valid pixels than ``k``.
    """
    if k < 2:
        raise ValueError(f"cluster.k: expected at least 2 clusters, got {k}")
    sample.require(k, f"k={k} clusters")
    mean, scale, xs = sample.standardised()
    centroids, inertia, n_iter = fit_sample(
        xs, k, seed=sample.seed, n_init=n_init, max_iter=max_iter, tol=tol
    )
    model = KMeansModel(centroids=centroids, inertia=inertia, n_iter=n_iter,
                        **sample.model_fields(mean, scale))
    if refine:
        if features is None:
            raise ValueError("refine > 0 needs the feature cube (features=...)")
        model.n_iter += _refine(features, model, refine, tol)
        model.inertia = float(assign(xs, model.centroids)[1].sum())
    perm = _order(model.centroids_original)
    model.centroids = np.ascontiguousarray(model.centroids[perm])
    log.info("fitted k=%d on %d pixels: inertia %.6g in %d iterations",
             k, len(sample), model.inertia, model.n_iter)
    return model


def fit(
    features: xr.DataArray,
    k: int = 8,
    *,
    seed: int = 0,
    sample_size: int = 1_000_000,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-4,
    refine: int = 0,
) -> KMeansModel:
    """Fit a global K-means model to a feature cube.

    This function computes: it draws the seeded sample (one pass over the image) and,
    when ``refine > 0``, that many Lloyd passes over every pixel. It uses whatever
    Dask scheduler is active (threads by default, or a ``distributed.Client``).
    :func:`pipeline.fit` does the same for every method.

    Parameters
    ----------
    features : DataArray, shape (feature, y, x)
        From :func:`pipeline.compute_features`.
    k : int
        Number of clusters (>= 2).
    seed : int
        Seed of the sample and of the initialisation: the same seed gives the same
        model for any chunking and worker count.
    sample_size : int
        Maximum number of valid pixels the fit sees.
    n_init, max_iter, tol :
        See :func:`fit_sample`.
    refine : int
        Lloyd passes over every pixel after the sample fit (distributed K-means);
        exact for any chunking thanks to integer partial sums.

    Returns
    -------
    KMeansModel

    Raises
    ------
    InputError
        If the image has no valid pixel, or fewer valid pixels than ``k``.
    """
    if k < 2:
        raise ValueError(f"cluster.k: expected at least 2 clusters, got {k}")
    sample = draw_sample(features, sample_size, seed)
    return fit_kmeans(sample, k, n_init=n_init, max_iter=max_iter, tol=tol, refine=refine,
                      features=features)


def predict(features: xr.DataArray, model: ClusterModel) -> xr.DataArray:
    """Label every pixel with the model, lazily (see :func:`pipeline.predict`)."""
    from ._fit import predict as _predict

    return _predict(features, model)
