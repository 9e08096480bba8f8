"""Every measure at once, and the entry point that computes (``tileseg evaluate``)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import dask
import numpy as np

from ..errors import InputError, reading
from ._measures import (
    adjusted_rand_index,
    cohen_kappa,
    instance_scores,
    match_labels,
    normalized_mutual_info,
    overall_accuracy,
    probabilistic_rand_index,
    segmentation_covering,
    variation_of_information,
)
from ._table import ContingencyTable, SomeLabels, contingency

__all__ = ["evaluate_rasters", "measures", "rounded", "summary"]


def measures(
    table: ContingencyTable, *, max_classes: int = 256, iou_threshold: float = 0.5
) -> dict[str, Any]:
    """Every measure of one table, as a JSON-able dict (full precision; NaN if undefined).

    Parameters
    ----------
    table : ContingencyTable
    max_classes : int
        Above this many labels in either map, the matching-based class measures
        (confusion, accuracy, kappa) are left out with a note; the others are sparse
        and always computed.
    iou_threshold : float
        For :func:`instance_scores`.

    Returns
    -------
    dict
        ``pixels``, ``labels``, ``ignore``, ``class``, ``region``, ``instance``.
    """
    t = table.compared()
    classes: dict[str, Any] = {
        "overall_accuracy": math.nan, "cohen_kappa": math.nan,
        "normalized_mutual_info": normalized_mutual_info(t),
        "adjusted_rand_index": adjusted_rand_index(t),
        "matching": None, "confusion": None,
    }
    try:
        pairs = match_labels(t, max_classes=max_classes)
    except ValueError as exc:
        classes["note"] = f"no matching: {exc}"
    else:
        classes["overall_accuracy"] = overall_accuracy(t, max_classes=max_classes)
        classes["cohen_kappa"] = cohen_kappa(t, max_classes=max_classes)
        classes["matching"] = [[p, q] for p, q in pairs]
        matched = [p for p, _ in pairs]
        rest = set(matched)
        order = matched + [int(v) for v in t.pred_labels if int(v) not in rest]
        cols = np.searchsorted(t.pred_labels, order)
        classes["confusion"] = {
            "truth_labels": [int(v) for v in t.truth_labels],
            "pred_labels": order,
            "matrix": t.dense()[:, cols].tolist(),
        }
    false_splits, false_merges = variation_of_information(t, split=True)
    n_valid = table.n
    return {
        "pixels": {"total": n_valid + table.nodata_pixels, "nodata": table.nodata_pixels,
                   "ignored": n_valid - t.n, "compared": t.n},
        "labels": {"pred": len(table.pred_labels), "truth": len(table.truth_labels)},
        "ignore": list(table.ignore),
        "class": classes,
        "region": {
            "probabilistic_rand_index": probabilistic_rand_index(t),
            "variation_of_information": false_splits + false_merges,
            "voi_false_splits": false_splits,
            "voi_false_merges": false_merges,
            "segmentation_covering": segmentation_covering(table),
        },
        "instance": instance_scores(table, iou_threshold=iou_threshold),
    }


def rounded(value: Any, decimals: int = 4) -> Any:
    """Round every float of a nested result, NaN becoming ``None`` (valid JSON)."""
    if isinstance(value, dict):
        return {k: rounded(v, decimals) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, decimals) for v in value]
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), decimals)
    return value


#: The headline measures of :func:`summary`: (name, section, key).
_HEADLINE = (
    ("overall accuracy", "class", "overall_accuracy"),
    ("Cohen's kappa", "class", "cohen_kappa"),
    ("NMI", "class", "normalized_mutual_info"),
    ("ARI", "class", "adjusted_rand_index"),
    ("PRI", "region", "probabilistic_rand_index"),
    ("VoI (bits)", "region", "variation_of_information"),
    ("covering", "region", "segmentation_covering"),
    ("instance F1", "instance", "f1"),
    ("mean IoU", "instance", "mean_iou"),
)


def summary(result: dict[str, Any], decimals: int | None = 4) -> dict[str, float | None]:
    """Return the headline measures of a result as one flat row, for tables.

    Parameters
    ----------
    result : dict
        From :func:`evaluate_rasters` or :func:`measures`.
    decimals : int or None
        Rounding (as the command line); ``None`` keeps full precision.

    Returns
    -------
    dict
        Overall accuracy, Cohen's kappa, NMI, ARI, PRI, VoI (bits), covering, instance
        F1 and mean IoU, by those names (``None`` where undefined), e.g. a row of a
        ``pandas.DataFrame``.
    """
    row = {name: result[section][key] for name, section, key in _HEADLINE}
    if decimals is None:
        return {k: None if v is None or math.isnan(v) else v for k, v in row.items()}
    return rounded(row, decimals)


def evaluate_rasters(
    pred: SomeLabels,
    truth: SomeLabels,
    *,
    ignore: Iterable[int] = (),
    max_classes: int = 256,
    iou_threshold: float = 0.5,
    chunks: int | None = None,
) -> dict[str, Any]:
    """Compare a label raster or volume with a reference: reads both, **computes** every measure.

    The streamed table is computed with the current Dask scheduler (threads by default,
    or a ``distributed`` client when one is active); memory stays bounded by the chunk
    size times the workers plus the number of distinct label pairs.

    Parameters
    ----------
    pred, truth : path, DataArray or ndarray
        As for :func:`contingency`.
    ignore : iterable of int
        Label values that mean "no label" (see the module notes).
    max_classes, iou_threshold :
        As for :func:`measures`.
    chunks : int, optional
        As for :func:`contingency`.

    Returns
    -------
    dict
        ``pred`` and ``truth`` (names), then the entries of :func:`measures`, at full
        precision (``rounded`` gives the command line's 4 decimals).

    Raises
    ------
    InputError
        Unreadable input, maps on different grids, labels that are not integers, or
        no pixel valid in both maps.

    Examples
    --------
    >>> ev = evaluate_rasters("out/labels.tif", "truth.tif")  # doctest: +SKIP
    >>> ev["class"]["adjusted_rand_index"]                      # doctest: +SKIP
    0.9731...
    """
    names = [x if isinstance(x, str) else os.fspath(x) if isinstance(x, os.PathLike)
             else str(getattr(x, "attrs", {}).get("source", label))
             for x, label in ((pred, "prediction"), (truth, "truth"))]
    lazy = contingency(pred, truth, ignore=ignore, chunks=chunks)
    with reading(*names):
        (table,) = dask.compute(lazy)
    if table.n == 0:
        raise InputError(f"{names[1]}: no pixel is valid in both maps ({table.nodata_pixels} "
                         "nodata); expected overlapping labelled areas")
    if table.compared().n == 0:
        raise InputError(f"{names[1]}: every valid pixel has an ignored truth label "
                         f"({', '.join(map(str, table.ignore))}); expected some labelled pixels")
    return {"pred": names[0], "truth": names[1],
            **measures(table, max_classes=max_classes, iou_threshold=iou_threshold)}
