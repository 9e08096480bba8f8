"""The measures, each a function of a computed :class:`ContingencyTable`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
from scipy.optimize import linear_sum_assignment

from ._table import ContingencyTable, _compact

__all__ = [
    "adjusted_rand_index",
    "cohen_kappa",
    "instance_scores",
    "match_labels",
    "normalized_mutual_info",
    "overall_accuracy",
    "probabilistic_rand_index",
    "segmentation_covering",
    "variation_of_information",
]


def _as_table(table: ContingencyTable | np.ndarray) -> ContingencyTable:
    if isinstance(table, ContingencyTable):
        return table.compared()
    arr = np.asarray(table)
    if arr.ndim != 2:
        raise ValueError(f"table: expected a 2-D array of counts, got shape {arr.shape}")
    rows, cols = np.nonzero(arr)
    return _compact(np.arange(arr.shape[0]), np.arange(arr.shape[1]), rows, cols,
                    arr[rows, cols].astype(np.int64), (), 0)


def match_labels(table: ContingencyTable, *, max_classes: int = 256) -> list[tuple[int, int]]:
    """Best one-to-one matching of predicted labels to true classes (Hungarian).

    Parameters
    ----------
    table : ContingencyTable
    max_classes : int
        Refuse maps with more labels than this (they are region or instance maps).

    Returns
    -------
    list of (predicted label, true class)
        Sorted by true class; maximises the pixels on matched pairs. Ignored values
        are never matched, nor pairs without a common pixel.

    Raises
    ------
    ValueError
        If either map has more than ``max_classes`` labels.
    """
    t = table.compared()
    cols = np.flatnonzero(~t.pred_ignored())
    m, n = len(t.truth_labels), len(cols)
    if m > max_classes or n > max_classes:
        raise ValueError(f"{n} predicted and {m} true labels; class measures need at most "
                         f"{max_classes} of each (a region or instance map?)")
    dense = t.dense()[:, cols]
    r, c = linear_sum_assignment(dense, maximize=True)
    keep = dense[r, c] > 0
    pairs = [(int(t.pred_labels[cols[j]]), int(t.truth_labels[i]))
             for i, j in zip(r[keep], c[keep], strict=True)]
    return sorted(pairs, key=lambda pair: pair[1])


def _matched(t: ContingencyTable, pairs: list[tuple[int, int]]):
    """Return the counts on matched pairs and the truth and prediction totals of each."""
    dense = t.dense()
    ti = np.searchsorted(t.truth_labels, [q for _, q in pairs]).astype(np.intp)
    pi = np.searchsorted(t.pred_labels, [p for p, _ in pairs]).astype(np.intp)
    return dense[ti, pi], dense.sum(axis=1)[ti], dense.sum(axis=0)[pi]


def overall_accuracy(table: ContingencyTable, *, max_classes: int = 256) -> float:
    """Fraction of the compared pixels whose predicted label matches their class.

    See :func:`match_labels` for the matching; NaN when no pixel is compared.
    """
    t = table.compared()
    if t.n == 0:
        return math.nan
    hits, _, _ = _matched(t, match_labels(table, max_classes=max_classes))
    return float(hits.sum() / t.n)


def cohen_kappa(table: ContingencyTable, *, max_classes: int = 256) -> float:
    """Cohen's kappa of the true classes and the matched predicted labels.

    ``(p_o - p_e) / (1 - p_e)`` with ``p_o`` the overall accuracy and ``p_e`` the
    agreement expected by chance, ``sum_i r_i c_m(i) / N**2`` over true classes ``i``
    and their matched labels ``m(i)``; equal to scikit-learn's ``cohen_kappa_score``
    of the relabelled prediction (unmatched labels kept apart). NaN when ``p_e = 1``.
    """
    t = table.compared()
    if t.n == 0:
        return math.nan
    hits, r, c = _matched(t, match_labels(table, max_classes=max_classes))
    n = float(t.n)
    po = hits.sum() / n
    pe = float((r.astype(np.float64) * c).sum()) / (n * n)
    return math.nan if pe >= 1.0 else float((po - pe) / (1.0 - pe))


def _entropy(counts: np.ndarray, n: float, log=np.log) -> float:
    c = counts[counts > 0].astype(np.float64)
    return float(log(n) - (c * log(c)).sum() / n) if n > 0 else 0.0


def _mutual_info(t: ContingencyTable) -> float:
    """Mutual information in nats, term by term (accurate near zero)."""
    n = float(t.n)
    r, c = t.truth_sizes().astype(np.float64), t.pred_sizes().astype(np.float64)
    v = t.counts.astype(np.float64)
    terms = v / n * (np.log(v) + math.log(n) - np.log(r[t.rows]) - np.log(c[t.cols]))
    terms[np.abs(terms) < np.finfo(np.float64).eps] = 0.0
    return max(float(terms.sum()), 0.0)


def normalized_mutual_info(table: ContingencyTable | np.ndarray) -> float:
    """Normalised mutual information, arithmetic mean normalisation.

    ``I(T; P) / ((H(T) + H(P)) / 2)``, as scikit-learn's
    ``normalized_mutual_info_score`` (1 when both maps have one label, 0 when the
    mutual information is 0); NaN when no pixel is compared.
    """
    t = _as_table(table)
    if t.n == 0:
        return math.nan
    if len(t.truth_labels) == len(t.pred_labels) == 1:
        return 1.0
    mi = _mutual_info(t)
    if mi == 0.0:
        return 0.0
    n = float(t.n)
    norm = (_entropy(t.truth_sizes(), n) + _entropy(t.pred_sizes(), n)) / 2
    return float(mi / norm)


def _sum_squares(x: np.ndarray) -> int:
    """Exact ``sum(x**2)`` as a Python int."""
    x = np.asarray(x, dtype=np.int64)
    if x.size == 0:
        return 0
    total = int(x.sum())
    if total < 3_000_000_000:  # sum(x**2) <= total**2 fits in int64
        return int(np.dot(x, x))
    return sum(int(v) * int(v) for v in x)


def _pair_counts(t: ContingencyTable) -> tuple[int, int, int, int]:
    """Sum of squares of the cells, the truth sizes and the prediction sizes, and N."""
    return (_sum_squares(t.counts), _sum_squares(t.truth_sizes()),
            _sum_squares(t.pred_sizes()), t.n)


def adjusted_rand_index(table: ContingencyTable | np.ndarray) -> float:
    """Return the adjusted Rand index (Hubert and Arabie, 1985), from exact pair counts.

    Parameters
    ----------
    table : ContingencyTable or 2-D array of counts
        A table (its compared part is used) or dense counts (used as given).

    Returns
    -------
    float
        As scikit-learn's ``adjusted_rand_score``: 1 for identical partitions (up to
        renaming), about 0 for independent ones; NaN when no pixel is compared.
    """
    t = _as_table(table)
    sq, sq_t, sq_p, n = _pair_counts(t)
    if n == 0:
        return math.nan
    tp = sq - n
    fp = sq_t - sq  # ordered pairs together in the truth only
    fn = sq_p - sq
    tn = n * n - sq_t - sq_p + sq
    if fn == 0 and fp == 0:
        return 1.0
    return float(2 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


# ===== Region-map measures (BSDS500) =====


def _tables(tables: ContingencyTable | Sequence[ContingencyTable]) -> list[ContingencyTable]:
    out = [tables] if isinstance(tables, ContingencyTable) else list(tables)
    if not out:
        raise ValueError("tables: expected at least one contingency table")
    return out


def _rand_index(t: ContingencyTable) -> float:
    sq, sq_t, sq_p, n = _pair_counts(t)
    if n < 2:
        return math.nan if n == 0 else 1.0
    disagree = (sq_t + sq_p - 2 * sq) // 2
    return float(1 - disagree / (n * (n - 1) // 2))


def probabilistic_rand_index(tables: ContingencyTable | Sequence[ContingencyTable]) -> float:
    """Probabilistic Rand index: the Rand index averaged over one or more truths.

    The Rand index of one truth is the fraction of unordered pixel pairs on which the
    maps agree: ``1 - (sum r_i**2 / 2 + sum c_j**2 / 2 - sum n_ij**2) / C(N, 2)``
    (BSDS500 ``compare_segmentations``), on the compared pixels; NaN without any.
    """
    return float(np.mean([_rand_index(t.compared()) for t in _tables(tables)]))


def _voi(t: ContingencyTable) -> tuple[float, float]:
    """(H(pred | truth), H(truth | pred)) in bits."""
    n = float(t.n)
    if n == 0:
        return math.nan, math.nan
    joint = _entropy(t.counts, n, np.log2)
    h_t = _entropy(t.truth_sizes(), n, np.log2)
    h_p = _entropy(t.pred_sizes(), n, np.log2)
    return max(joint - h_t, 0.0), max(joint - h_p, 0.0)


@overload
def variation_of_information(
    tables: ContingencyTable | Sequence[ContingencyTable], *, split: Literal[False] = ...
) -> float: ...
@overload
def variation_of_information(
    tables: ContingencyTable | Sequence[ContingencyTable], *, split: Literal[True]
) -> tuple[float, float]: ...
@overload
def variation_of_information(
    tables: ContingencyTable | Sequence[ContingencyTable], *, split: bool = ...
) -> float | tuple[float, float]: ...


def variation_of_information(
    tables: ContingencyTable | Sequence[ContingencyTable], *, split: bool = False
) -> float | tuple[float, float]:
    """Variation of information in bits, averaged over one or more truths.

    ``VI = H(P | T) + H(T | P)`` with base-2 logarithms (BSDS500), on the compared
    pixels. With ``split=True`` return ``(H(P | T), H(T | P))`` instead: false splits
    (over-segmentation) and false merges (under-segmentation), in the order of
    scikit-image's ``variation_of_information``. NaN when no pixel is compared.
    """
    parts = np.array([_voi(t.compared()) for t in _tables(tables)]).mean(axis=0)
    if split:
        return float(parts[0]), float(parts[1])
    return float(parts.sum())


def _best_iou(t: ContingencyTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair of non-ignored labels: IoU, with sizes over all valid pixels."""
    a, b = t.truth_sizes(), t.pred_sizes()
    ok = ~t.truth_ignored()[t.rows] & ~t.pred_ignored()[t.cols]
    rows, cols, n = t.rows[ok], t.cols[ok], t.counts[ok]
    iou = n / (a[rows] + b[cols] - n).astype(np.float64)
    return rows, cols, iou


def segmentation_covering(tables: ContingencyTable | Sequence[ContingencyTable]) -> float:
    """Covering of the truth(s) by the prediction, weighted by true region size.

    ``sum_R |R| max_R' IoU(R, R') / sum_R |R|`` over every non-ignored region ``R`` of
    every truth and non-ignored predicted region ``R'``; sizes count all valid
    pixels (BSDS500 ``match_segmentations``). NaN when there is no true region.
    """
    num = den = 0.0
    for t in _tables(tables):
        rows, _, iou = _best_iou(t)
        best = np.zeros(len(t.truth_labels))
        np.maximum.at(best, rows, iou)
        regions = ~t.truth_ignored()
        size = t.truth_sizes()[regions].astype(np.float64)
        num += float((size * best[regions]).sum())
        den += float(size.sum())
    return num / den if den > 0 else math.nan


# ===== Instance-map measures =====


def instance_scores(table: ContingencyTable, *, iou_threshold: float = 0.5) -> dict[str, Any]:
    """Object detection scores: F1 at an IoU threshold and the mean IoU of matches.

    Parameters
    ----------
    table : ContingencyTable
        Objects are the non-ignored labels of each map (pass ``ignore=[0]`` when 0 is
        the background); sizes count every valid pixel.
    iou_threshold : float
        A true and a predicted object match when their IoU is above it (strictly);
        at least 0.5, which makes matches one-to-one.

    Returns
    -------
    dict
        ``f1``, ``precision``, ``recall``, ``mean_iou`` (NaN when undefined),
        ``matched``, ``pred_objects``, ``truth_objects``, ``iou_threshold``.
    """
    if not 0.5 <= iou_threshold < 1:
        raise ValueError(f"iou_threshold: expected a value in [0.5, 1), got {iou_threshold!r}")
    _, _, iou = _best_iou(table)
    hits = iou[iou > iou_threshold]
    n_pred = int((~table.pred_ignored()).sum())
    n_truth = int((~table.truth_ignored()).sum())
    tp = int(hits.size)

    def ratio(a: float, b: float) -> float:
        return a / b if b else math.nan

    return {
        "iou_threshold": float(iou_threshold),
        "f1": ratio(2 * tp, n_pred + n_truth),
        "precision": ratio(tp, n_pred),
        "recall": ratio(tp, n_truth),
        "mean_iou": float(hits.mean()) if tp else math.nan,
        "matched": tp,
        "pred_objects": n_pred,
        "truth_objects": n_truth,
    }
