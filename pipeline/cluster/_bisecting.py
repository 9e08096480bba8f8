"""Bisecting K-means: a divisive hierarchy fitted on the sample, labelled by descent.

Starting from one cluster, the leaf with the largest inertia is split in two by
K-means, ``k - 1`` times. Pixels are labelled the way the sample was: from the root,
each goes to the nearer child until it reaches a leaf. The model keeps every split, so
it can be cut at any smaller ``k`` without refitting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError, ModelError
from ._kmeans import fit_sample
from ._lloyd import assign
from ._model import FittedModel, register_model
from ._predict import descend_tree
from ._training import Sample

__all__ = ["BisectingKMeansModel", "fit_bisecting"]

log = logging.getLogger(__name__)


def _lexorder(points: np.ndarray) -> np.ndarray:
    return np.lexsort(np.asarray(points).T[::-1])


@register_model("bisecting_kmeans")
@dataclass(eq=False, kw_only=True)
class BisectingKMeansModel(FittedModel):
    """A bisecting K-means tree, cut at :attr:`n_clusters` leaves.

    Attributes
    ----------
    centres : ndarray, shape (node, feature), float64
        Node centres in standardised units; node 0 is the root (the sample mean).
    children : ndarray, shape (node, 2), int64
        Children of each node, ``-1`` for nodes never split; the left child has the
        lexicographically smaller centre.
    split : ndarray, shape (node,), int64
        When the node was split (0 for the first split), ``-1`` if never.
    n_clusters : int
        The cut: splits ``0 .. n_clusters - 2`` are used. Leaves become classes
        ordered lexicographically by their centre in original units.
    """

    method: ClassVar[str] = "bisecting_kmeans"
    centres: np.ndarray
    children: np.ndarray
    split: np.ndarray
    n_clusters: int
    _leaf_class: np.ndarray = field(init=False, repr=False)
    _cut_children: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.centres = np.asarray(self.centres, dtype=np.float64)
        self.children = np.asarray(self.children, dtype=np.int64).reshape(-1, 2)
        self.split = np.asarray(self.split, dtype=np.int64)
        used = (self.split >= 0) & (self.split < self.n_clusters - 1)
        self._cut_children = np.where(used[:, None], self.children, -1)
        # leaves reachable from the root under the cut
        leaves: list[int] = []
        stack = [0]
        while stack:
            node = stack.pop()
            if self._cut_children[node, 0] < 0:
                leaves.append(node)
            else:
                stack.extend(self._cut_children[node])
        leaf_ids = np.array(sorted(leaves), dtype=np.int64)
        order = leaf_ids[_lexorder(self.to_raw(self.centres[leaf_ids]))]
        self._leaf_class = np.full(len(self.centres), -1, dtype=np.int64)
        self._leaf_class[order] = np.arange(len(order))

    @property
    def k(self) -> int:
        """Number of classes (leaves under the cut)."""
        return int(self.n_clusters)

    @property
    def k_fitted(self) -> int:
        """The largest ``k`` the tree can be cut at."""
        return int((self.split >= 0).sum()) + 1

    @property
    def cuttable(self) -> bool:
        """True: any ``2 <= k <= k_fitted``."""
        return True

    @property
    def centroids(self) -> np.ndarray:
        """Leaf centres in standardised units, in class order."""
        leaves = np.argsort(np.where(self._leaf_class >= 0, self._leaf_class, self.k))
        return self.centres[leaves[: self.k]]

    def class_centres(self) -> np.ndarray:
        """Leaf centres in original units, in class order."""
        return self.to_raw(self.centroids)

    def predict_block(self, block: np.ndarray) -> np.ndarray:
        """Label one block of raw features by descending the tree; NaN is nodata."""
        return descend_tree(block, self.to_raw(self.centres), self._cut_children,
                            self._leaf_class, self.distance_weights, self.nodata,
                            self.label_dtype)

    def cut(self, k: int) -> BisectingKMeansModel:
        """Return the same tree with ``k`` leaves (``2 <= k <= k_fitted``), no refit."""
        if not 2 <= k <= self.k_fitted:
            raise ModelError(f"model: a bisecting_kmeans model fitted with k="
                             f"{self.k_fitted} can be cut at 2 <= k <= {self.k_fitted}, "
                             f"got k={k}")
        return replace(self, n_clusters=int(k))

    def _state(self) -> dict[str, Any]:
        return {"n_clusters": self.k, "k_fitted": self.k_fitted,
                "centres": self.centres.tolist(), "children": self.children.tolist(),
                "split": self.split.tolist()}

    @classmethod
    def _from_state(cls, fields: dict[str, Any], method: str, state: dict[str, Any],
                    arrays: dict[str, np.ndarray]) -> BisectingKMeansModel:
        return cls(centres=np.asarray(state["centres"], dtype=np.float64),
                   children=np.asarray(state["children"], dtype=np.int64),
                   split=np.asarray(state["split"], dtype=np.int64),
                   n_clusters=int(state["n_clusters"]), **fields)


def fit_bisecting(
    sample: Sample,
    k: int,
    *,
    n_init: int = 3,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> BisectingKMeansModel:
    """Fit bisecting K-means on a sample.

    Each step splits the leaf of largest inertia (ties: the lower node index) with
    2-means (:func:`pipeline.cluster.fit_sample`, seeded by the sample's seed); the
    sample's pixels follow the nearer child, as :meth:`BisectingKMeansModel.predict_block`
    does for every pixel.

    Parameters
    ----------
    sample : Sample
    k : int
        Number of leaves (>= 2).
    n_init, max_iter, tol :
        Of each 2-means split.

    Returns
    -------
    BisectingKMeansModel

    Raises
    ------
    InputError
        If the sample has fewer than ``k`` pixels or cannot be split ``k - 1`` times
        (too few distinct values).
    """
    if k < 2:
        raise ValueError(f"cluster.k: expected at least 2 clusters, got {k}")
    sample.require(k, f"k={k} clusters")
    mean, scale, xs = sample.standardised()
    centres = [xs.mean(axis=0)]
    children = [[-1, -1]]
    split = [-1]
    members = [np.arange(len(xs))]
    sse = [float(((xs - centres[0]) ** 2).sum())]
    splittable = [True]
    step = 0
    while step < k - 1:
        cands = [n for n in range(len(centres))
                 if children[n][0] < 0 and splittable[n] and len(members[n]) >= 2
                 and sse[n] > 0]
        if not cands:
            raise InputError(f"{sample.source}: bisecting K-means could split the sample "
                             f"into only {step + 1} clusters; expected k={k} (lower "
                             "cluster.k)")
        node = max(cands, key=lambda n: (sse[n], -n))
        x = xs[members[node]]
        pair, _, _ = fit_sample(x, 2, seed=sample.seed, n_init=n_init, max_iter=max_iter,
                                tol=tol)
        pair = pair[_lexorder(mean + scale * pair)]
        right = assign(x, pair)[0] == 1  # ties go left
        if right.all() or not right.any():
            splittable[node] = False
            continue
        base = len(centres)
        for side, pick in ((0, ~right), (1, right)):
            centres.append(pair[side])
            children.append([-1, -1])
            split.append(-1)
            idx = members[node][pick]
            members.append(idx)
            sse.append(float(((xs[idx] - pair[side]) ** 2).sum()))
            splittable.append(True)
        children[node] = [base, base + 1]
        split[node] = step
        step += 1
    inertia = float(sum(sse[n] for n in range(len(centres)) if children[n][0] < 0))
    model = BisectingKMeansModel(
        centres=np.array(centres), children=np.array(children), split=np.array(split),
        n_clusters=k, fit_info={"inertia": inertia}, **sample.model_fields(mean, scale))
    log.info("bisecting K-means: %d leaves on %d pixels, inertia %.6g", k, len(sample),
             inertia)
    return model
