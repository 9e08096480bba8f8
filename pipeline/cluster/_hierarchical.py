"""Hierarchical clustering at scale: agglomerate MiniBatch K-means micro-clusters.

Agglomerative clustering needs all pairwise distances, so it cannot take millions of
pixels. Instead a MiniBatch K-means with ``n_micro`` (256) centres summarises the
sample (or, with ``refine``, every pixel: exact Lloyd passes give their centroids and
pixel counts), and the weighted micro-centroids are agglomerated (Ward, average or
complete linkage). The model keeps the whole dendrogram, so it can be cut at any k
without refitting; a pixel takes the class of its nearest micro-centroid.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

from ..errors import InputError, ModelError
from ._kmeans import refine_centroids
from ._model import FittedModel, KMeansModel, register_model
from ._predict import nearest_centroid_sorted
from ._training import Sample

__all__ = ["HierarchicalModel", "agglomerate", "cut_tree", "fit_hierarchical", "LINKAGES"]

log = logging.getLogger(__name__)

LINKAGES = ("ward", "average", "complete")


def agglomerate(points: np.ndarray, weights: np.ndarray, linkage: str = "ward"
                ) -> np.ndarray:
    """Agglomerate weighted points greedily; return a SciPy-style linkage matrix.

    Parameters
    ----------
    points : ndarray, shape (m, feature)
    weights : ndarray, shape (m,)
        Positive weights (pixel counts): a point stands for that many pixels.
    linkage : {"ward", "average", "complete"}
        ``ward`` merges the pair that least increases the weighted within-cluster sum
        of squares (height ``sqrt(2 * increase)``, SciPy's for unit weights);
        ``average`` uses the weight-averaged distance between members (UPGMA);
        ``complete`` the largest.

    Returns
    -------
    ndarray, shape (m - 1, 4)
        Row ``s`` merges clusters ``Z[s, 0] < Z[s, 1]`` (``m + t`` is the cluster made
        at step ``t``) at height ``Z[s, 2]``; ``Z[s, 3]`` is the merged weight. Ties
        go to the first pair in row-major order, so the result is deterministic.
    """
    if linkage not in LINKAGES:
        raise ValueError(f"linkage: expected one of {', '.join(LINKAGES)}, got {linkage!r}")
    x = np.asarray(points, dtype=np.float64).copy()
    w = np.asarray(weights, dtype=np.float64).copy()
    m = len(x)
    ids = np.arange(m)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if linkage == "ward":
        d = w[:, None] * w[None, :] / (w[:, None] + w[None, :]) * sq
    else:
        d = np.sqrt(sq)
    np.fill_diagonal(d, np.inf)
    active = np.ones(m, dtype=bool)
    z = np.empty((max(m - 1, 0), 4))
    for step in range(m - 1):
        flat = int(np.argmin(d))
        a, b = divmod(flat, m)
        a, b = min(a, b), max(a, b)
        height = np.sqrt(2.0 * d[a, b]) if linkage == "ward" else d[a, b]
        wa, wb = w[a], w[b]
        z[step] = (min(ids[a], ids[b]), max(ids[a], ids[b]), height, wa + wb)
        others = active.copy()
        others[[a, b]] = False
        if linkage == "ward":
            x[a] = (wa * x[a] + wb * x[b]) / (wa + wb)
            row = ((x[others] - x[a]) ** 2).sum(-1)
            new = (wa + wb) * w[others] / (wa + wb + w[others]) * row
        elif linkage == "average":
            new = (wa * d[a, others] + wb * d[b, others]) / (wa + wb)
        else:
            new = np.maximum(d[a, others], d[b, others])
        w[a] = wa + wb
        d[a, others] = new
        d[others, a] = new
        d[b, :] = np.inf
        d[:, b] = np.inf
        active[b] = False
        ids[a] = m + step
    return z


def cut_tree(z: np.ndarray, m: int, k: int) -> np.ndarray:
    """Return the group of each of the ``m`` leaves of ``z`` cut at ``k`` clusters.

    The first ``m - k`` merges are replayed; groups are numbered by their first leaf.
    """
    parent = list(range(2 * m))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for step in range(m - k):
        a, b = int(z[step, 0]), int(z[step, 1])
        parent[root(a)] = m + step
        parent[root(b)] = m + step
    roots = [root(i) for i in range(m)]
    first: dict[int, int] = {}
    return np.array([first.setdefault(r, len(first)) for r in roots], dtype=np.int64)


@register_model("hierarchical")
@dataclass(eq=False, kw_only=True)
class HierarchicalModel(FittedModel):
    """Micro-clusters, their dendrogram, and a cut of it at :attr:`n_clusters`.

    Attributes
    ----------
    micro : ndarray, shape (m, feature), float64
        Micro-centroids in standardised units.
    micro_weights : ndarray, shape (m,), float64
        Pixels each stands for (in the sample, or in the image with ``refine``).
    linkage_matrix : ndarray, shape (m - 1, 4)
        The dendrogram (see :func:`agglomerate`).
    linkage : {"ward", "average", "complete"}
    n_clusters : int
        The cut. Classes are ordered lexicographically by their weighted centre in
        original units.
    """

    method: ClassVar[str] = "hierarchical"
    micro: np.ndarray
    micro_weights: np.ndarray
    linkage_matrix: np.ndarray
    linkage: str
    n_clusters: int
    _lut: np.ndarray = field(init=False, repr=False)
    _centres: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        m = len(self.micro)
        groups = cut_tree(self.linkage_matrix, m, self.n_clusters)
        w = self.micro_weights
        centres = np.array([(w[groups == g, None] * self.micro[groups == g]).sum(0)
                            / w[groups == g].sum() for g in range(self.n_clusters)])
        order = np.lexsort(self.to_raw(centres).T[::-1])
        rank = np.empty(self.n_clusters, dtype=np.int64)
        rank[order] = np.arange(self.n_clusters)
        self._centres = centres[order]
        # micro label -> class, and the micro nodata (65535) -> the model's nodata
        self._lut = np.full(65536, self.nodata, dtype=self.label_dtype)
        self._lut[:m] = rank[groups]

    @property
    def k(self) -> int:
        """Number of classes (the cut)."""
        return int(self.n_clusters)

    @property
    def cuttable(self) -> bool:
        """True: any ``2 <= k <= n_micro``."""
        return True

    @property
    def mapping(self) -> np.ndarray:
        """Class of each micro-cluster."""
        return self._lut[: len(self.micro)].copy()

    def class_centres(self) -> np.ndarray:
        """Weighted mean micro-centroid of each class, original units."""
        return self.to_raw(self._centres)

    def predict_block(self, block: np.ndarray) -> np.ndarray:
        """Nearest micro-centroid (exact, pruned search), then its class; NaN is nodata."""
        micro = nearest_centroid_sorted(block, self.to_raw(self.micro),
                                        self.distance_weights, 65535, np.dtype(np.uint16))
        return self._lut[micro]

    def cut(self, k: int) -> HierarchicalModel:
        """Return the same dendrogram cut at ``k`` classes (``2 <= k <= n_micro``)."""
        if not 2 <= k <= len(self.micro):
            raise ModelError(f"model: a hierarchical model with {len(self.micro)} "
                             f"micro-clusters can be cut at 2 <= k <= {len(self.micro)}, "
                             f"got k={k}")
        return replace(self, n_clusters=int(k))

    def _state(self) -> dict[str, Any]:
        return {"n_clusters": self.k, "linkage": self.linkage,
                "micro": self.micro.tolist(), "micro_weights": self.micro_weights.tolist(),
                "linkage_matrix": self.linkage_matrix.tolist(),
                "mapping": self.mapping.tolist()}

    @classmethod
    def _from_state(cls, fields: dict[str, Any], method: str, state: dict[str, Any],
                    arrays: dict[str, np.ndarray]) -> HierarchicalModel:
        micro = np.asarray(state["micro"], dtype=np.float64)
        z = np.asarray(state["linkage_matrix"], dtype=np.float64).reshape(-1, 4)
        if len(z) != len(micro) - 1:
            raise ValueError("the linkage matrix does not match the micro-clusters")
        return cls(micro=micro, micro_weights=np.asarray(state["micro_weights"], float),
                   linkage_matrix=z, linkage=str(state["linkage"]),
                   n_clusters=int(state["n_clusters"]), **fields)


def fit_hierarchical(
    sample: Sample,
    k: int,
    *,
    linkage: str = "ward",
    n_micro: int = 256,
    n_init: int = 3,
    refine: int = 0,
    features: xr.DataArray | None = None,
) -> HierarchicalModel:
    """Fit micro-clusters on the sample and agglomerate them.

    Parameters
    ----------
    sample : Sample
    k : int
        Number of classes of the cut (>= 2, at most the micro-clusters kept).
    linkage : {"ward", "average", "complete"}
    n_micro : int
        MiniBatch K-means centres (at most 1024: the agglomeration is O(m^3)).
    n_init : int
        MiniBatch K-means initialisations.
    refine : int
        Exact Lloyd passes of the micro-centroids over every pixel of ``features``
        (computes); their weights then count every pixel, not only the sample.
    features : DataArray, optional
        Needed when ``refine > 0``.

    Returns
    -------
    HierarchicalModel

    Raises
    ------
    InputError
        If the sample has fewer pixels than ``n_micro``, or fewer distinct
        micro-clusters than ``k``.
    """
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning
    if k < 2:
        raise ValueError(f"cluster.k: expected at least 2 clusters, got {k}")
    if not 2 <= n_micro <= 1024:
        raise ValueError(f"cluster.n_micro: expected 2 to 1024 micro-clusters, got {n_micro}")
    if linkage not in LINKAGES:
        raise ValueError(f"cluster.linkage: expected one of {', '.join(LINKAGES)}, "
                         f"got {linkage!r}")
    sample.require(max(k, n_micro), f"{n_micro} micro-clusters")
    mean, scale, xs = sample.standardised()
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mbk = MiniBatchKMeans(n_clusters=n_micro, n_init=n_init, random_state=sample.seed,
                              batch_size=min(len(xs), 8192), max_no_improvement=20,
                              reassignment_ratio=0.01).fit(xs)
    micro = np.asarray(mbk.cluster_centers_, dtype=np.float64)
    weights = np.bincount(mbk.labels_, minlength=n_micro).astype(np.float64)
    source = "sample"
    if refine:
        if features is None:
            raise ValueError("refine > 0 needs the feature cube (features=...)")
        km = KMeansModel(centroids=micro.copy(), **sample.model_fields(mean, scale))
        _, counts = refine_centroids(features, km, refine, 1e-4)
        micro, weights, source = km.centroids, counts.astype(np.float64), "every pixel"
    keep = weights > 0
    micro = micro[keep]
    weights = weights[keep]
    order = np.lexsort((mean + scale * micro).T[::-1])
    micro, weights = np.ascontiguousarray(micro[order]), weights[order]
    if len(micro) < k:
        raise InputError(f"{sample.source}: only {len(micro)} distinct micro-clusters for "
                         f"k={k}; expected at least k (lower cluster.k)")
    z = agglomerate(micro, weights, linkage)
    model = HierarchicalModel(
        micro=micro, micro_weights=weights, linkage_matrix=z, linkage=linkage, n_clusters=k,
        fit_info={"n_micro": int(len(micro)), "linkage": linkage,
                  "micro_weights_from": source,
                  "micro_inertia": float(mbk.inertia_)},
        **sample.model_fields(mean, scale),
    )
    log.info("hierarchical: %d micro-clusters (%s linkage) cut at k=%d", len(micro),
             linkage, k)
    return model
