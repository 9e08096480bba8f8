"""A bounded, seeded sample of valid pixels chosen by global pixel position.

Every pixel gets a 64-bit key from a counter-based hash of its global index
``y * width + x`` and the seed (SplitMix64, written here with numba because numpy and
scikit-learn have no counter-based generator usable per block). The sample is the
``size`` valid pixels with the smallest keys: a uniform sample without replacement that
does not depend on the chunking or the number of workers, drawn in one pass.

On large images the pass reads only a seeded subset of *sample cells*: squares of
``SAMPLE_CELL`` pixels on a fixed global grid, chosen by a hash of the cell index and
the seed, enough of them to hold about ``COVER * size`` pixels and at least
``MIN_CELLS`` cells (spread over the whole image). Cells are defined globally, so the
sample still does not depend on the chunking; with chunks aligned to the cell grid
(``open_image(..., chunks=SAMPLE_CELL)``) only the chosen cells' tiles are read.
"""

from __future__ import annotations

import math

import dask
import numba
import numpy as np
import xarray as xr
from numpy.typing import ArrayLike

from ._predict import finite_pixel

__all__ = ["sample_pixels", "pixel_keys", "cell_fraction", "OVERSAMPLE", "SAMPLE_CELL",
           "COVER", "MIN_CELLS"]

#: Blocks return the pixels whose key falls below ``OVERSAMPLE * size / n_pixels`` of
#: the key range (pixels of the sampled cells), so an image at least
#: ``1 / OVERSAMPLE`` valid yields a full sample.
OVERSAMPLE = 4.0
#: ... and this many more pixels (see _key_threshold)
KEY_MARGIN = 64
#: Side of the sample cells, in pixels (a multiple of the usual 256/512 tiles).
SAMPLE_CELL = 512
#: The sampled cells hold about ``COVER * size`` pixels ...
COVER = 8.0
#: ... and are at least this many, so the sample covers the whole image.
MIN_CELLS = 64

_U = np.uint64


@numba.njit(cache=True, nogil=True)
def _splitmix64(x):  # pragma: no cover - compiled
    x = x + _U(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U(27))) * _U(0x94D049BB133111EB)
    return x ^ (x >> _U(31))


@numba.njit(cache=True, nogil=True)
def _scan(block, y0, x0, width, seed_key, threshold, cells, cy0, cx0, cell, keys, rows):
    # pragma: no cover - compiled
    # Visit every valid pixel of the chosen cells once; store the candidates while
    # ``keys`` has room and count them all (the caller retries with the exact size in
    # the rare block that overflows its estimate). The cell of each column is looked
    # up once per block, not divided out per pixel.
    nf, h, w = block.shape
    col_cell = np.empty(w, dtype=np.int64)
    for j in range(w):
        col_cell[j] = (x0 + j) // cell - cx0
    cap = len(keys)
    n = 0
    valid = 0
    for i in range(h):
        row_cells = cells[(y0 + i) // cell - cy0]
        g0 = (y0 + i) * width + x0
        for j in range(w):
            if not row_cells[col_cell[j]]:
                continue
            if not finite_pixel(block, i, j):
                continue
            valid += 1
            key = _splitmix64(_splitmix64(_U(g0 + j)) ^ seed_key)
            if key <= threshold:
                if n < cap:
                    keys[n] = key
                    for f in range(nf):
                        rows[n, f] = block[f, i, j]
                n += 1
    return n, valid


def _select(block, y0, x0, width, seed_key, threshold, cells, cy0, cx0, cell):
    """Candidates of one block: their keys and feature rows, and its valid pixels."""
    nf, h, w = block.shape
    # room for the expected candidates of the chosen cells plus a wide margin (the
    # count is binomial: 6 standard deviations and 256 more)
    read = h * w * cells.mean()
    expected = read * min(1.0, (int(threshold) + 1) / 2.0**64)
    cap = int(min(read, expected + 6 * np.sqrt(expected) + 256))
    while True:
        keys, rows = np.empty(cap, np.uint64), np.empty((cap, nf), np.float32)
        n, valid = _scan(block, y0, x0, width, seed_key, threshold, cells, cy0, cx0, cell,
                         keys, rows)
        if n <= cap:
            return keys[:n].copy(), rows[:n].copy(), valid
        cap = n


def _mix(x: ArrayLike) -> np.ndarray:
    """SplitMix64 of every element, in numpy (the same bits as the numba kernel's).

    Used for the few keys drawn in the main thread (cells, seeds, tests), so that the
    first numba call, which loads numba's lowering libraries (~0.3 s), happens in the
    pass's worker threads while others read, not before the pass starts.
    """
    z = np.array(x, dtype=np.uint64, ndmin=1)
    with np.errstate(over="ignore"):
        z = z + _U(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
    return z ^ (z >> _U(31))


def pixel_keys(y: np.ndarray, x: np.ndarray, width: int, seed: int) -> np.ndarray:
    """Return the sampling keys of pixels at global positions ``(y, x)``."""
    g = np.ravel(y).astype(np.uint64) * _U(width) + np.ravel(x).astype(np.uint64)
    return _mix(_mix(g) ^ _mix(seed)[0])


def _select_block(block, y0, x0, width, seed_key, threshold, cells, cy0, cx0, cell):
    return _select(np.ascontiguousarray(block), y0, x0, width, seed_key, threshold,
                   cells, cy0, cx0, cell)


def _select_volume_block(block, z0, y0, x0, height, width, seed_key, threshold):
    """Candidates of a volume's block (feature, z, y, x), from every voxel.

    Voxel ``(z, y, x)`` has the global index ``(z * height + y) * width + x``: that of
    pixel ``(z * height + y, x)`` of the volume's slices stacked as rows. Each z-slice
    of the block is scanned as such a 2-D block (one sample cell holding everything),
    so a volume's sample is the same for any chunking, as an image's is.
    """
    block = np.ascontiguousarray(block)
    everything = np.ones((1, 1), dtype=bool)
    parts = [_select(block[:, k], (z0 + k) * height + y0, x0, width, seed_key, threshold,
                     everything, 0, 0, _WHOLE)
             for k in range(block.shape[1])]
    if not parts:
        return np.empty(0, np.uint64), np.empty((0, block.shape[0]), np.float32), 0
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            sum(p[2] for p in parts))


#: a sample cell larger than any volume's stacked slices (cells are not used there)
_WHOLE = 1 << 62


def _volume_parts(features: xr.DataArray, seed_key, threshold) -> list:
    data = features.data.rechunk({0: -1})
    _, depth, height, width = features.shape
    blocks = data.to_delayed(optimize_graph=False)
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in data.chunks[1:]]
    select = dask.delayed(_select_volume_block, pure=True, nout=3)
    return [dask.delayed(tuple)(select(blocks[(0, i, j, k)], int(starts[0][i]),
                                       int(starts[1][j]), int(starts[2][k]), height, width,
                                       seed_key, threshold))
            for i in range(len(starts[0])) for j in range(len(starts[1]))
            for k in range(len(starts[2]))]


def _key_threshold(size: int, n_pixels: float) -> np.uint64:
    """Return the largest key a block keeps: a fraction of the key range (all: every pixel).

    ``OVERSAMPLE`` times the sample, plus ``KEY_MARGIN`` pixels: the number of keys
    below the threshold is random (Poisson), and for a small sample four times its size
    is too few (a one-pixel sample came up empty once in 55).
    """
    fraction = min(1.0, (OVERSAMPLE * size + KEY_MARGIN) / max(n_pixels, 1))
    return _U(np.iinfo(np.uint64).max) if fraction >= 1.0 else _U(int(fraction * 2.0**64))


def _with_fraction(merged, fraction):
    return (*merged, fraction)


def cell_fraction(height: int, width: int, size: int, cell: int = SAMPLE_CELL,
                  min_cells: int = MIN_CELLS, valid: float = 1.0) -> float:
    """Fraction of sample cells the pass reads for a ``size``-pixel sample (1: all).

    ``valid`` is the expected fraction of valid pixels (a mask's): sparser images read
    more cells.
    """
    n_pixels = max(height * width * min(max(valid, 0.0), 1.0), 1)
    n_cells = -(-height // cell) * -(-width // cell)
    return min(1.0, max(COVER * size / n_pixels, min_cells / n_cells))


def _chosen_cells(height: int, width: int, fraction: float, seed: int,
                  cell: int = SAMPLE_CELL) -> np.ndarray:
    """Boolean grid of the sample cells chosen for ``seed`` (all when fraction is 1)."""
    ny, nx = -(-height // cell), -(-width // cell)
    if fraction >= 1.0:
        return np.ones((ny, nx), dtype=bool)
    cell_seed = _mix(_U(seed) ^ _U(0x5EED5A3D1E5C0DE5))[0]
    cy, cx = np.indices((ny, nx)).reshape(2, -1)
    keys = pixel_keys(cy, cx, nx, int(cell_seed))
    # exactly the cells with the smallest keys (a threshold on the keys would choose a
    # random number of them: none at all, now and then, on a small grid)
    n_chosen = min(keys.size, max(1, math.ceil(fraction * keys.size)))
    chosen = np.zeros(keys.size, dtype=bool)
    chosen[np.argsort(keys, kind="stable")[:n_chosen]] = True
    return chosen.reshape(ny, nx)


def _merge(parts, size, n_features):
    """Keep the ``size`` candidates with the smallest keys, in key order.

    Keys are unique (SplitMix64 is a bijection of 64-bit integers, and so is the
    key of a global index), so sorting by key alone orders the sample the same for
    any chunking.
    """
    valid = sum(p[2] for p in parts)
    if not parts:
        return np.empty((0, n_features)), 0
    keys = np.concatenate([p[0] for p in parts])
    if len(keys) > size:  # O(n) cut on the keys first: rows are copied only once
        kth = np.partition(keys, size - 1)[size - 1]
        keeps = [p[0] <= kth for p in parts]
        keys = np.concatenate([p[0][k] for p, k in zip(parts, keeps, strict=True)])
        rows = np.concatenate([p[1][k] for p, k in zip(parts, keeps, strict=True)])
    else:
        rows = np.concatenate([p[1] for p in parts])
    order = np.argsort(keys)
    return rows[order].astype(np.float64), int(valid)


def sample_pixels(features: xr.DataArray, size: int, seed: int, *, cells: bool = True,
                  cell: int = SAMPLE_CELL, min_cells: int = MIN_CELLS,
                  valid_hint: float | None = None, valid: float = 1.0):
    """Build the lazy sample of valid pixels.

    Parameters
    ----------
    features : DataArray, shape (feature, y, x) or (feature, z, y, x), float32
        Invalid pixels are NaN. Volumes are sampled from every voxel (``cells`` is
        ignored): a chunk of a volume spans many slices, so cells would save no read.
    size : int
        Maximum number of pixels in the sample.
    seed : int
        Seed of the pixel keys and of the sample cells.
    cells : bool
        Read only a seeded subset of sample cells on large images (see the module
        notes); ``False`` samples from every pixel.
    cell, min_cells : int
        Side of the sample cells and their minimum number.
    valid_hint : float, optional
        Expected number of valid pixels among those read (from an earlier pass): sets
        the key threshold so that sparse images still yield ``size`` pixels.
    valid : float
        Expected fraction of valid pixels (known before any pass, e.g. from a mask;
        it must not depend on the chunking): sizes the cells read and the threshold
        so that one pass yields the sample.

    Returns
    -------
    dask.delayed.Delayed
        Computes to ``(sample, n_valid, fraction)``: ``sample`` is float64
        ``(n, feature)`` in key order (random, chunking-independent) with
        ``n <= size``; ``n_valid`` the exact number of valid pixels in the cells read,
        and ``fraction`` the fraction of cells read (1.0: the whole image).
    """
    if features.ndim == 4:  # a volume: every voxel is read (see _select_volume_block)
        nf, depth, height, width = features.shape
        n_voxels = valid_hint if valid_hint else depth * height * width * valid
        parts = _volume_parts(features, _mix(seed)[0], _key_threshold(size, n_voxels))
        merged = dask.delayed(_merge, pure=True)(parts, size, nf)
        return dask.delayed(_with_fraction, pure=True)(merged, 1.0)
    nf, height, width = features.shape
    cfrac = cell_fraction(height, width, size, cell, min_cells, valid) if cells else 1.0
    chosen = _chosen_cells(height, width, cfrac, seed, cell)
    n_pixels = valid_hint if valid_hint else height * width * cfrac * valid
    threshold = _key_threshold(size, n_pixels)
    seed_key = _mix(seed)[0]
    data = features.data.rechunk({0: -1})
    # unoptimised: optimising the graph of every block costs 0.35 s at 16384^2; the
    # compute culls it to the chosen cells' blocks
    blocks = data.to_delayed(optimize_graph=False)
    ystarts = np.concatenate([[0], np.cumsum(data.chunks[1])[:-1]])
    xstarts = np.concatenate([[0], np.cumsum(data.chunks[2])[:-1]])
    select = dask.delayed(_select_block, pure=True, nout=3)
    parts = []
    for i, (y0, h) in enumerate(zip(ystarts, data.chunks[1], strict=True)):
        for j, (x0, w) in enumerate(zip(xstarts, data.chunks[2], strict=True)):
            cy0, cy1 = int(y0) // cell, (int(y0) + h - 1) // cell + 1
            cx0, cx1 = int(x0) // cell, (int(x0) + w - 1) // cell + 1
            mask = chosen[cy0:cy1, cx0:cx1]
            if not mask.any():  # no task: this block is never read
                continue
            parts.append(dask.delayed(tuple)(
                select(blocks[0, i, j], int(y0), int(x0), width, seed_key, threshold,
                       np.ascontiguousarray(mask), cy0, cx0, cell)))
    merged = dask.delayed(_merge, pure=True)(parts, size, nf)
    return dask.delayed(_with_fraction, pure=True)(merged, cfrac)
