"""K-means by hand: greedy k-means++ seeding and Lloyd iterations (numba, one thread).

Why hand-written: this replicates what scikit-learn's ``KMeans(algorithm="lloyd")``
does (the same greedy k-means++, the same empty-cluster relocation, the same stopping
rules), but importing ``sklearn.cluster`` costs about 1 s of CPU per process, half of
the 2 s budget for the whole fixed cost of ``tileseg run``, and scikit-learn has no
way to import ``KMeans`` alone. K-means is the default method, so its path must not
import scikit-learn at all.

Everything is float64 and runs sequentially in a fixed order (no ``parallel=True``:
the fit may be called from several threads at once, and a fixed summation order is
what makes the result bit-identical on every run). The random draws are numpy
``Generator`` draws made in Python, so they are explicit and reproducible; numba only
computes distances and sums.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["assign", "kmeans_plusplus", "lloyd", "tolerance"]


@numba.njit(cache=True, nogil=True)
def _best_candidate(x, candidates, closest):  # pragma: no cover - compiled
    """Candidate whose addition minimises the potential, and the closest distances then.

    The potential is summed sequentially, in the order ``np.cumsum`` adds, so the
    caller's ``cumsum(closest)[-1]`` equals it bit for bit. Ties go to the first
    candidate (``np.argmin``).
    """
    n, nf = x.shape
    best_j = -1
    best_pot = np.inf
    best = np.empty(n, dtype=np.float64)
    trial = np.empty(n, dtype=np.float64)
    for j in range(candidates.shape[0]):
        row = candidates[j]
        pot = 0.0
        for i in range(n):
            d = 0.0
            for f in range(nf):
                t = x[i, f] - x[row, f]
                d += t * t
            if closest[i] < d:
                d = closest[i]
            trial[i] = d
            pot += d
        if pot < best_pot:
            best_j, best_pot = j, pot
            best, trial = trial, best
    return best_j, best


def kmeans_plusplus(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    n_local_trials: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-means++ seeding, as scikit-learn's ``_kmeans_plusplus``.

    The first centre is a row drawn uniformly; each further centre is the best (lowest
    total potential, first on ties) of ``n_local_trials`` rows drawn with probability
    proportional to their squared distance to the nearest centre so far.

    Parameters
    ----------
    x : ndarray, shape (n, feature), float64, C-contiguous
        The data.
    k : int
        Number of centres, ``1 <= k <= n``.
    rng : numpy.random.Generator
        Source of every draw (one ``integers`` then ``k - 1`` ``random`` calls), so a
        shared generator seeds successive restarts differently but reproducibly.
    n_local_trials : int, optional
        Candidates per centre; scikit-learn's ``2 + int(log(k))`` by default.

    Returns
    -------
    centres : ndarray, shape (k, feature)
        Copies of the chosen rows.
    indices : ndarray, shape (k,), int64
        The chosen rows: distinct unless ``x`` has fewer than ``k`` distinct rows.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means++: expected 1 <= k <= {n} centres, got {k}")
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(k))
    indices = np.empty(k, dtype=np.int64)
    indices[0] = rng.integers(n)
    # squared distance of every row to its nearest centre so far (one "candidate")
    _, closest = _best_candidate(x, indices[:1], np.full(n, np.inf))
    for c in range(1, k):
        cumulative = np.cumsum(closest)
        # The potential is cumsum's own last element (not a separately rounded sum),
        # so a draw in (0, potential] always lands on a row at positive distance: a
        # chosen row (distance 0) is never drawn again. Clip as scikit-learn does.
        draws = rng.random(n_local_trials) * cumulative[-1]
        candidates = np.searchsorted(cumulative, draws)
        np.minimum(candidates, n - 1, out=candidates)
        j, closest = _best_candidate(x, candidates.astype(np.int64), closest)
        indices[c] = candidates[j]
    return x[indices].copy(), indices


#: Rows per block of :func:`_assign`: the block, transposed, stays in L1 cache.
_BLOCK = 512


@numba.njit(cache=True, nogil=True)
def _assign(x, centres, labels, dist):  # pragma: no cover - compiled
    """Nearest centre of every row (squared Euclidean, ties to the lower index).

    Rows go in blocks transposed to (feature, row), so the innermost loops run over
    contiguous rows and vectorise (~2.5x faster than row by row); each distance is
    still summed feature by feature in order, so the result is the same bit for bit.
    Returns whether any label changed.
    """
    n, nf = x.shape
    k = centres.shape[0]
    xt = np.empty((nf, _BLOCK), dtype=np.float64)
    best = np.empty(_BLOCK, dtype=np.float64)
    nearest = np.empty(_BLOCK, dtype=np.int64)
    d = np.empty(_BLOCK, dtype=np.float64)
    changed = False
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        for i in range(m):
            for f in range(nf):
                xt[f, i] = x[start + i, f]
            best[i] = np.inf
            nearest[i] = 0
        for c in range(k):
            d[:m] = 0.0
            for f in range(nf):
                cf = centres[c, f]
                for i in range(m):
                    t = xt[f, i] - cf
                    d[i] += t * t
            for i in range(m):
                if d[i] < best[i]:
                    best[i] = d[i]
                    nearest[i] = c
        for i in range(m):
            if labels[start + i] != nearest[i]:
                changed = True
                labels[start + i] = nearest[i]
            dist[start + i] = best[i]
    return changed


def assign(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of every row and its squared distance (ties to the lower index).

    Each distance is summed feature by feature, in order, as ``((x - c) ** 2).sum(-1)``
    does for a few features, without its ``(n, k, feature)`` temporary.

    Returns
    -------
    labels : ndarray, shape (n,), int64
    sqdist : ndarray, shape (n,), float64
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    labels = np.full(x.shape[0], -1, dtype=np.int64)
    sqdist = np.empty(x.shape[0], dtype=np.float64)
    _assign(x, np.ascontiguousarray(centres, dtype=np.float64), labels, sqdist)
    return labels, sqdist


@numba.njit(cache=True, nogil=True)
def _lloyd(x, init, max_iter, tol):  # pragma: no cover - compiled
    n, nf = x.shape
    k = init.shape[0]
    centres = init.copy()
    new = np.empty_like(centres)
    labels = np.full(n, -1, dtype=np.int64)  # -1: the first pass always "changes"
    dist = np.empty(n, dtype=np.float64)
    counts = np.empty(k, dtype=np.int64)
    strict = False
    n_iter = 0
    for it in range(max_iter):
        n_iter = it + 1
        changed = _assign(x, centres, labels, dist)
        new[:] = 0.0
        counts[:] = 0
        for i in range(n):
            c = labels[i]
            counts[c] += 1
            for f in range(nf):
                new[c, f] += x[i, f]
        # Empty clusters take the rows farthest from their (old) centre, farthest
        # first, as scikit-learn relocates them; a row whose cluster it would empty is
        # skipped (scikit-learn would leave that centre at the origin). Such a row
        # always exists while a cluster is empty, since k <= n.
        relocated = False
        for e in range(k):
            if counts[e] > 0:
                continue
            far = -1
            far_d = -1.0
            for i in range(n):  # ties: the lower row
                if dist[i] > far_d and counts[labels[i]] > 1:
                    far, far_d = i, dist[i]
            old = labels[far]
            for f in range(nf):
                new[old, f] -= x[far, f]
                new[e, f] = x[far, f]
            counts[old] -= 1
            counts[e] = 1
            dist[far] = -2.0  # never picked twice
            relocated = True
        shift = 0.0
        for c in range(k):
            for f in range(nf):
                new[c, f] /= counts[c]
                t = new[c, f] - centres[c, f]
                shift += t * t
        centres, new = new, centres
        if not changed and not relocated:
            # Same labels as the previous pass: the means are the centres they were
            # assigned to, bit for bit, so ``dist`` already holds the final distances.
            strict = True
            break
        if shift <= tol:
            break
    if not strict:  # labels and inertia of the final centres
        _assign(x, centres, labels, dist)
    inertia = 0.0
    for i in range(n):
        inertia += dist[i]
    return centres, inertia, n_iter


def tolerance(x: np.ndarray, tol: float) -> float:
    """Absolute centre-shift tolerance: ``tol`` times the mean per-feature variance.

    As scikit-learn's ``_tolerance``: Lloyd stops once the summed squared centre shift
    of a pass is at most this.
    """
    if tol == 0:
        return 0.0
    return float(_mean_variance(np.ascontiguousarray(x, dtype=np.float64)) * tol)


@numba.njit(cache=True, nogil=True)
def _mean_variance(x):  # pragma: no cover - compiled
    """Return ``np.mean(np.var(x, axis=0))``, in two passes in row order.

    numpy's strided column reductions take several times longer on a (10^6, 4) sample.
    """
    n, nf = x.shape
    mean = np.zeros(nf, dtype=np.float64)
    for i in range(n):
        for f in range(nf):
            mean[f] += x[i, f]
    mean /= n
    ss = np.zeros(nf, dtype=np.float64)
    for i in range(n):
        for f in range(nf):
            t = x[i, f] - mean[f]
            ss[f] += t * t
    return np.mean(ss / n)


def lloyd(
    x: np.ndarray,
    init: np.ndarray,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> tuple[np.ndarray, float, int]:
    """Lloyd's K-means iterations from given centres, as scikit-learn's ``lloyd``.

    Each pass assigns every row to its nearest centre (ties to the lower index) and
    moves each centre to the mean of its rows; an empty cluster takes the row farthest
    from its centre. Stops when no label changed, when the summed squared centre shift
    is at most :func:`tolerance` ``(x, tol)``, or after ``max_iter`` passes; unless no
    label changed, a last assignment makes the inertia that of the returned centres.

    Parameters
    ----------
    x : ndarray, shape (n, feature)
        The data (converted to C-contiguous float64).
    init : ndarray, shape (k, feature)
        Starting centres, ``k <= n``.
    max_iter : int
        Maximum number of passes (>= 1).
    tol : float
        Relative tolerance (see :func:`tolerance`).

    Returns
    -------
    centres : ndarray, shape (k, feature), float64
    inertia : float
        Sum of squared distances of the rows to their nearest returned centre.
    n_iter : int
        Passes run.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    init = np.ascontiguousarray(init, dtype=np.float64)
    if not 1 <= init.shape[0] <= x.shape[0] or init.shape[1] != x.shape[1]:
        raise ValueError(f"lloyd: expected at most {x.shape[0]} centres of "
                         f"{x.shape[1]} features, got shape {init.shape}")
    if max_iter < 1:
        raise ValueError(f"lloyd: expected max_iter >= 1, got {max_iter}")
    centres, inertia, n_iter = _lloyd(x, init, int(max_iter), tolerance(x, tol))
    return centres, float(inertia), int(n_iter)
