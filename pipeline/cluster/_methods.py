"""The clustering methods: names, default sample sizes and the options each one takes.

This module is plain data (no heavy imports), the single source that the fit
dispatcher, the config validation and the documentation read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MethodInfo", "METHODS", "method_info", "method_options"]


@dataclass(frozen=True)
class MethodInfo:
    """What the pipeline needs to know about one clustering method.

    Attributes
    ----------
    name : str
        The ``cluster.method`` value.
    sample_size : int
        Default number of sampled pixels the fit sees: small enough that the fit of a
        4-band image takes well under a minute on 2 cores (see ``bench/``).
    finds_k : bool
        The method finds its own number of clusters (``k`` is ignored with a warning).
    cuttable : bool
        The model keeps a hierarchy that can be cut at another ``k`` without refitting.
    options : tuple of str
        The ``cluster.*`` options the fit takes, besides ``k``, ``seed`` and
        ``sample_size``.
    summary : str
        One line for help texts.
    """

    name: str
    sample_size: int
    finds_k: bool
    cuttable: bool
    options: tuple[str, ...]
    summary: str


METHODS: Mapping[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("kmeans", 1_000_000, False, False, ("n_init", "max_iter", "tol", "refine"),
                   "K-means: k-means++ restarts, then Lloyd on the sample"),
        MethodInfo("bisecting_kmeans", 1_000_000, False, True, ("n_init", "max_iter", "tol"),
                   "bisecting K-means: split the cluster of largest inertia in two, k - 1 "
                   "times (a divisive hierarchy)"),
        MethodInfo("meanshift", 100_000, True, False, ("bandwidth", "quantile", "max_iter"),
                   "mean shift with bin seeding; pixels take their nearest mode"),
        MethodInfo("dbscan", 50_000, True, False, ("eps", "min_samples"),
                   "DBSCAN; pixels take the label of the nearest core sample within eps, "
                   "else noise"),
        MethodInfo("hdbscan", 30_000, True, False, ("min_samples", "min_cluster_size", "eps"),
                   "HDBSCAN; pixels take the label of the nearest clustered sample within "
                   "eps, else noise"),
        MethodInfo("hierarchical", 500_000, False, True,
                   ("linkage", "n_micro", "n_init", "refine"),
                   "agglomeration (ward, average or complete) of MiniBatch K-means "
                   "micro-clusters"),
        MethodInfo("gmm", 200_000, False, False, ("covariance", "n_init", "max_iter", "tol"),
                   "Gaussian mixture (EM); optional per-pixel confidence"),
    )
}


def method_info(method: str) -> MethodInfo:
    """Return the :class:`MethodInfo` of ``method``.

    Raises
    ------
    ValueError
        If the method is unknown; the message lists the known ones.
    """
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown clustering method {method!r}; expected one of "
                         + ", ".join(METHODS)) from None


def method_options(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Pick the options of ``method`` from a mapping of every ``cluster.*`` value."""
    return {name: values[name] for name in method_info(method).options if name in values}
