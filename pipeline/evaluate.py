"""Agreement between two label rasters, from streamed contingency tables.

The table is summed from per-chunk ``bincount``s, so memory is bounded by the chunk
size and the number of labels, never by the image size.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from scipy.special import comb

__all__ = ["contingency_table", "adjusted_rand_index"]


def _codes(pred: np.ndarray, truth: np.ndarray, pred_values, truth_values, skip_p, skip_t):
    pi = np.searchsorted(pred_values, pred)
    ti = np.searchsorted(truth_values, truth)
    ok = np.ones(pred.shape, dtype=bool)
    for v in skip_p:
        ok &= pred != v
    for v in skip_t:
        ok &= truth != v
    n_t = len(truth_values)
    code = pi[ok].astype(np.int64) * n_t + ti[ok]
    table = np.bincount(code, minlength=len(pred_values) * n_t)
    return table.reshape(1, 1, len(pred_values), n_t)


def contingency_table(
    pred: xr.DataArray,
    truth: xr.DataArray,
    pred_values: np.ndarray,
    truth_values: np.ndarray,
    *,
    ignore_pred: tuple = (),
    ignore_truth: tuple = (),
) -> da.Array:
    """Lazy contingency table ``(len(pred_values), len(truth_values))``.

    Parameters
    ----------
    pred, truth : DataArray, shape (y, x)
        Integer label rasters on the same grid, chunked alike.
    pred_values, truth_values : ndarray
        Sorted label values present (every pixel's value must be listed).
    ignore_pred, ignore_truth : tuple
        Values whose pixels are left out (e.g. nodata).
    """
    p = pred.data
    t = truth.data.rechunk(p.chunks)
    pv = np.asarray(pred_values)
    tv = np.asarray(truth_values)
    parts = da.map_blocks(
        _codes, p, t, pv, tv, tuple(ignore_pred), tuple(ignore_truth),
        new_axis=[2, 3],
        chunks=((1,) * p.numblocks[0], (1,) * p.numblocks[1], (len(pv),), (len(tv),)),
        dtype=np.int64,
        meta=np.empty((0, 0, 0, 0), np.int64),
    )
    return parts.sum(axis=(0, 1))


def adjusted_rand_index(table: np.ndarray) -> float:
    """Adjusted Rand index from a contingency table (Hubert and Arabie, 1985)."""
    table = np.asarray(table, dtype=np.float64)
    n = table.sum()
    sum_comb = comb(table, 2).sum()
    a = comb(table.sum(axis=1), 2).sum()
    b = comb(table.sum(axis=0), 2).sum()
    expected = a * b / comb(n, 2) if n > 1 else 0.0
    maximum = (a + b) / 2
    if maximum == expected:
        return 1.0
    return float((sum_comb - expected) / (maximum - expected))
