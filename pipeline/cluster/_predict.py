"""Block kernels that label pixels with a fitted model (compiled with numba)."""

from __future__ import annotations

import numba
import numpy as np

from ..io._mask import nodata_in

__all__ = [
    "nearest_centroid",
    "nearest_centroid_raw",
    "nearest_centroid_sorted",
    "descend_tree",
    "gaussian_posterior",
]


@numba.njit(inline="always")
def _nearest_row(block, i, centroids, weights, nodata, out_row, best, arg,
                 dist):  # pragma: no cover - compiled
    # Label row i of block (feature, y, x) into out_row, one centroid at a time, one
    # feature at a time: every inner loop runs along a contiguous image row, so LLVM
    # vectorises it (about 5x the pixel-by-pixel loop). Each pixel's distance is still
    # summed feature 0, 1, ... in float32, so the labels are bit-identical to the plain
    # loop, whatever the block's shape. Shared by `_nearest` and `_nearest_raw`, inlined
    # (a call per row would hide the contiguous layouts from the vectoriser), so both
    # kernels give the same labels for the same float32 rows. best, arg, dist: scratch
    # rows of the image's width.
    nf = block.shape[0]
    w = block.shape[2]
    k = centroids.shape[0]
    for j in range(w):
        best[j] = np.inf
        arg[j] = -1
    for c in range(k):
        for j in range(w):
            dist[j] = 0.0
        for f in range(nf):
            row = block[f, i]
            cf = centroids[c, f]
            wf = weights[f]
            for j in range(w):
                diff = row[j] - cf
                dist[j] += wf * diff * diff
        for j in range(w):
            better = dist[j] < best[j]  # ties keep the lower class ID
            best[j] = dist[j] if better else best[j]
            arg[j] = c if better else arg[j]
    for j in range(w):
        # NaN features (nodata) never compare smaller: the pixel stays nodata
        out_row[j] = nodata if arg[j] < 0 else arg[j]


@numba.njit(cache=True, nogil=True, fastmath=False)
def _nearest(block, centroids, weights, nodata, out):  # pragma: no cover - compiled
    h, w = block.shape[1], block.shape[2]
    best = np.empty(w, dtype=np.float32)
    arg = np.empty(w, dtype=np.int64)
    dist = np.empty(w, dtype=np.float32)
    for i in range(h):
        _nearest_row(block, i, centroids, weights, nodata, out[i], best, arg, dist)


@numba.njit(cache=True, nogil=True, fastmath=False)
def _nearest_raw(block, nodata_in, use_nodata, check_finite, bands, centroids, weights,
                 nodata, out):  # pragma: no cover - compiled
    # `_mask_rows` + `_nearest` in one pass, without the float32 copy of the whole block:
    # each image row is masked and converted into a one-row float32 buffer (in cache),
    # then labelled by the same `_nearest_row` as `_nearest`. The buffer holds exactly
    # the values the two-kernel path gives that row (float32 of the raw value, NaN in
    # every feature of an invalid pixel), so the labels are bit-identical.
    nb, h, w = block.shape
    nf = bands.shape[0]
    buf = np.empty((nf, 1, w), dtype=np.float32)
    bad = np.empty(w, dtype=np.bool_)
    best = np.empty(w, dtype=np.float32)
    arg = np.empty(w, dtype=np.int64)
    dist = np.empty(w, dtype=np.float32)
    for i in range(h):
        for j in range(w):
            bad[j] = False
        # as `_mask_rows`: ANY band of the image (selected or not) equal to nodata, or
        # not finite once float32, invalidates the pixel. The flags are tested outside
        # the loops, and `|=` has no branch, so each loop vectorises (a test per pixel
        # made the mask cost as much as in `_mask_rows`). check_finite is False for
        # integer types, whose float32 is always finite.
        if use_nodata:
            for b in range(nb):
                row = block[b, i]
                for j in range(w):
                    bad[j] |= row[j] == nodata_in
        if check_finite:
            for b in range(nb):
                row = block[b, i]
                for j in range(w):
                    bad[j] |= not np.isfinite(np.float32(row[j]))
        for f in range(nf):
            row = block[bands[f], i]
            brow = buf[f, 0]
            for j in range(w):
                brow[j] = np.float32(np.nan) if bad[j] else np.float32(row[j])
        _nearest_row(buf, 0, centroids, weights, nodata, out[i], best, arg, dist)


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


#: Image data types :func:`nearest_centroid_raw` labels straight from.
RAW_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.uint32,
                                         np.int32, np.float32, np.float64))


def nearest_centroid_raw(
    block: np.ndarray,
    image_nodata: float | None,
    bands: np.ndarray,
    centroids: np.ndarray,
    weights: np.ndarray,
    nodata: int,
    dtype: np.dtype,
) -> np.ndarray:
    """Label the pixels of a raw image block by nearest centroid of some of its bands.

    The same labels, bit for bit, as :func:`pipeline.io.masked_float` followed by band
    selection and :func:`nearest_centroid`, in one pass and without the float32 copy of
    the block.

    Parameters
    ----------
    block : ndarray, shape (band, y, x)
        Raw image block, every band of the image; one of :data:`RAW_DTYPES`.
    image_nodata : float or None
        The image's nodata value (``rio.nodata``); ``None`` or NaN when it has none.
        A pixel is invalid when any band (selected or not) equals it, compared in the
        block's own type, or is not finite as float32.
    bands : ndarray, shape (feature,), int
        0-based band of each feature, in feature order.
    centroids : ndarray, shape (k, feature)
        Centroids in raw feature units (used as float32, as :func:`nearest_centroid`).
    weights : ndarray, shape (feature,)
        Per-feature weights of the squared distance (float32 too).
    nodata : int
        Label of invalid pixels.
    dtype : numpy dtype
        uint8 or uint16.

    Returns
    -------
    ndarray, shape (y, x)
        Labels, ties broken towards the lower class ID.
    """
    block = np.ascontiguousarray(block)
    value, use = nodata_in(block.dtype, image_nodata)  # as `masked_float` compares
    out = np.empty(block.shape[1:], dtype=dtype)
    _nearest_raw(
        block,
        value,
        use,
        block.dtype.kind == "f",
        np.ascontiguousarray(bands, dtype=np.int64),
        np.ascontiguousarray(centroids, dtype=np.float32),
        np.ascontiguousarray(weights, dtype=np.float32),
        nodata,
        out,
    )
    return out


@numba.njit(inline="always")
def finite_pixel(block, i, j):  # pragma: no cover - compiled
    """Whether every feature of pixel (i, j) is finite (NaN marks nodata)."""
    for f in range(block.shape[0]):
        if not np.isfinite(block[f, i, j]):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _descend(block, centres, children, leaf_class, weights, nodata, out):  # pragma: no cover
    nf, h, w = block.shape
    for i in range(h):
        for j in range(w):
            if not finite_pixel(block, i, j):
                out[i, j] = nodata
                continue
            node = 0
            while children[node, 0] >= 0:
                a = children[node, 0]
                b = children[node, 1]
                da = 0.0
                db = 0.0
                for f in range(nf):
                    v = np.float64(block[f, i, j])
                    ea = v - centres[a, f]
                    eb = v - centres[b, f]
                    da += weights[f] * ea * ea
                    db += weights[f] * eb * eb
                node = a if da <= db else b
            out[i, j] = leaf_class[node]


def descend_tree(
    block: np.ndarray,
    centres: np.ndarray,
    children: np.ndarray,
    leaf_class: np.ndarray,
    weights: np.ndarray,
    nodata: int,
    dtype: np.dtype,
) -> np.ndarray:
    """Label each pixel with the leaf reached by descending a binary tree of centres.

    At every internal node the pixel goes to the nearer of the two children (the left
    one on a tie), as bisecting K-means assigned its sample.

    Parameters
    ----------
    block : ndarray, shape (feature, y, x), float32
        Raw features; NaN marks invalid pixels.
    centres : ndarray, shape (node, feature), float64
        Node centres in raw units; node 0 is the root.
    children : ndarray, shape (node, 2), int64
        Child node indices, ``-1`` for leaves.
    leaf_class : ndarray, shape (node,), int64
        Class ID of each leaf.
    weights : ndarray, shape (feature,), float64
        Per-feature weights of the squared distance.
    nodata : int
    dtype : numpy dtype

    Returns
    -------
    ndarray, shape (y, x)
    """
    out = np.empty(block.shape[1:], dtype=dtype)
    _descend(np.ascontiguousarray(block, dtype=np.float32),
             np.ascontiguousarray(centres, dtype=np.float64),
             np.ascontiguousarray(children, dtype=np.int64),
             np.ascontiguousarray(leaf_class, dtype=np.int64),
             np.ascontiguousarray(weights, dtype=np.float64), nodata, out)
    return out


@numba.njit(cache=True, nogil=True)
def _gaussian(block, means, prec_chol, log_norm, nodata, out, conf):  # pragma: no cover
    nf, h, w = block.shape
    k = means.shape[0]
    lp = np.empty(k, dtype=np.float64)
    diff = np.empty(nf, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            if not finite_pixel(block, i, j):
                out[i, j] = nodata
                conf[i, j] = 255
                continue
            best = -np.inf
            arg = 0
            for c in range(k):
                for f in range(nf):
                    diff[f] = np.float64(block[f, i, j]) - means[c, f]
                sq = 0.0
                for g in range(nf):
                    y = 0.0
                    for f in range(nf):
                        y += diff[f] * prec_chol[c, f, g]
                    sq += y * y
                lp[c] = log_norm[c] - 0.5 * sq
                if lp[c] > best:
                    best = lp[c]
                    arg = c
            total = 0.0
            for c in range(k):
                total += np.exp(lp[c] - best)
            out[i, j] = arg
            conf[i, j] = np.uint8(np.rint(100.0 / total))


def gaussian_posterior(
    block: np.ndarray,
    means: np.ndarray,
    prec_chol: np.ndarray,
    log_norm: np.ndarray,
    nodata: int,
    dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray]:
    """Most probable Gaussian component of each pixel, and its posterior in percent.

    Parameters
    ----------
    block : ndarray, shape (feature, y, x), float32
        Raw features; NaN marks invalid pixels.
    means : ndarray, shape (k, feature), float64
        Component means in raw units.
    prec_chol : ndarray, shape (k, feature, feature), float64
        Cholesky factors of the precision matrices in raw units (``P = L L^T``).
    log_norm : ndarray, shape (k,), float64
        ``log weight + log det L - feature / 2 log(2 pi)`` per component.
    nodata : int
    dtype : numpy dtype

    Returns
    -------
    labels : ndarray, shape (y, x)
        Ties broken towards the lower class ID.
    confidence : ndarray, shape (y, x), uint8
        ``round(100 * max posterior)``; 255 for invalid pixels.
    """
    out = np.empty(block.shape[1:], dtype=dtype)
    conf = np.empty(block.shape[1:], dtype=np.uint8)
    _gaussian(np.ascontiguousarray(block, dtype=np.float32),
              np.ascontiguousarray(means, dtype=np.float64),
              np.ascontiguousarray(prec_chol, dtype=np.float64),
              np.ascontiguousarray(log_norm, dtype=np.float64), nodata, out, conf)
    return out, conf


@numba.njit(cache=True, nogil=True)
def _nearest_sorted(block, centroids, weights, axis, proj, order, nodata, out):  # pragma: no cover
    nf, h, w = block.shape
    m = centroids.shape[0]
    sw = np.sqrt(weights)
    for i in range(h):
        for j in range(w):
            ok = True
            p = 0.0
            for f in range(nf):
                v = np.float64(block[f, i, j])
                if not np.isfinite(v):
                    ok = False
                    break
                p += sw[f] * v * axis[f]
            if not ok:
                out[i, j] = nodata
                continue
            lo = 0
            hi = m
            while lo < hi:
                mid = (lo + hi) // 2
                if proj[mid] < p:
                    lo = mid + 1
                else:
                    hi = mid
            left = lo - 1
            right = lo
            best = np.inf
            arg = -1
            while left >= 0 or right < m:
                if right < m and (left < 0 or proj[right] - p <= p - proj[left]):
                    r = right
                    gap = proj[right] - p
                    right += 1
                else:
                    r = left
                    gap = p - proj[left]
                    left -= 1
                # the projection gap bounds the distance from below; candidates come in
                # increasing gap, so none left can be nearer (the margin absorbs rounding)
                if gap * gap > best * (1.0 + 1e-9) + 1e-300:
                    break
                c = order[r]
                d = 0.0
                for f in range(nf):
                    e = np.float64(block[f, i, j]) - centroids[c, f]
                    d += weights[f] * e * e
                if d < best or (d == best and c < arg):
                    best = d
                    arg = c
            out[i, j] = arg


def nearest_centroid_sorted(
    block: np.ndarray,
    centroids: np.ndarray,
    weights: np.ndarray,
    nodata: int,
    dtype: np.dtype,
) -> np.ndarray:
    """Nearest centroid for many centroids: exact, with projection pruning.

    The centroids are sorted by their projection on their first principal axis (in
    the weighted space); for each pixel the candidates are visited in increasing
    projection gap, which bounds the distance from below, so the search stops early.
    Distances are float64; ties go to the lower centroid index.

    Parameters
    ----------
    block : ndarray, shape (feature, y, x), float32
        Raw features; NaN marks invalid pixels.
    centroids : ndarray, shape (m, feature)
        Centroids in raw units.
    weights : ndarray, shape (feature,)
        Per-feature weights of the squared distance.
    nodata : int
    dtype : numpy dtype

    Returns
    -------
    ndarray, shape (y, x)
    """
    cents = np.ascontiguousarray(centroids, dtype=np.float64)
    wts = np.ascontiguousarray(weights, dtype=np.float64)
    scaled = cents * np.sqrt(wts)
    if len(cents) > 1:
        _, _, vt = np.linalg.svd(scaled - scaled.mean(axis=0), full_matrices=False)
        axis = vt[0]
    else:
        axis = np.eye(cents.shape[1])[0]
    axis = axis * (1.0 if axis[np.argmax(np.abs(axis))] >= 0 else -1.0)
    proj = scaled @ axis
    order = np.argsort(proj, kind="stable")
    out = np.empty(block.shape[1:], dtype=dtype)
    _nearest_sorted(np.ascontiguousarray(block, dtype=np.float32), cents, wts,
                    np.ascontiguousarray(axis), np.ascontiguousarray(proj[order]),
                    order.astype(np.int64), nodata, out)
    return out
