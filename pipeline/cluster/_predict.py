"""Block kernels that label pixels with a fitted model (compiled with numba)."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["nearest_centroid"]


@numba.njit(cache=True, nogil=True, fastmath=False)
def _nearest(block, centroids, weights, nodata, out):  # pragma: no cover - compiled
    nf, h, w = block.shape
    k = centroids.shape[0]
    for i in range(h):
        for j in range(w):
            best = np.float32(np.inf)
            arg = -1
            for c in range(k):
                d = np.float32(0.0)
                for f in range(nf):
                    diff = block[f, i, j] - centroids[c, f]
                    d += weights[f] * diff * diff
                if d < best:
                    best = d
                    arg = c
            # NaN features (nodata) never compare smaller: the pixel stays nodata
            out[i, j] = nodata if arg < 0 else arg


def nearest_centroid(
    block: np.ndarray,
    centroids: np.ndarray,
    weights: np.ndarray,
    nodata: int,
    dtype: np.dtype,
) -> np.ndarray:
    """Label each pixel of a block with the index of its nearest centroid.

    Parameters
    ----------
    block : ndarray, shape (feature, y, x), float32
        Raw (unstandardised) features; NaN marks invalid pixels.
    centroids : ndarray, shape (k, feature), float32
        Centroids in raw feature units.
    weights : ndarray, shape (feature,), float32
        Per-feature weights of the squared distance (``1 / scale**2`` standardises).
    nodata : int
        Label of pixels with any non-finite feature.
    dtype : numpy dtype
        uint8 or uint16.

    Returns
    -------
    ndarray, shape (y, x)
        Labels, ties broken towards the lower class ID.
    """
    out = np.empty(block.shape[1:], dtype=dtype)
    _nearest(
        np.ascontiguousarray(block, dtype=np.float32),
        np.ascontiguousarray(centroids, dtype=np.float32),
        np.ascontiguousarray(weights, dtype=np.float32),
        nodata,
        out,
    )
    return out
