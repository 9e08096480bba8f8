"""Instances: touching objects of one class split by a seeded watershed.

An *object* is a segment of the chosen class (after ``min_size``). Each object is split
on its own bounding-box crop (:func:`split_object`), so its instances depend only on the
object (and, for ``method: intensity``, on the features inside it), never on the chunks.
Objects longer than ``max_extent`` pixels (voxels) along any axis are not split: they are
one instance each, so that a task never reads more than its chunk plus ``max_extent``
on each side. The passes over the chunks are in :mod:`._instance_tasks`.

scipy and scikit-image do the work (distance transform, peaks, watershed); written
here by hand is only what they lack: the masked (normalised) smoothing of the
intensity and the renumbering by first pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)

from ._resolve import SegmentStats

__all__ = ["InstanceObjects", "auto_class", "instance_table", "select_objects",
           "split_object"]


# --- the split of one object ---------------------------------------------------------

def _masked_smooth(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian mean of ``values`` over the pixels of ``mask`` only (0 outside it).

    Normalised convolution: no value from outside the object enters, so the result
    depends on the object alone. (scipy filters every pixel of the array.)
    """
    from scipy import ndimage as ndi

    w = mask.astype(np.float64)
    num = ndi.gaussian_filter(np.where(mask, values, 0.0), sigma, mode="constant")
    den = ndi.gaussian_filter(w, sigma, mode="constant")
    return np.where(mask, num / np.maximum(den, 1e-12), 0.0)


def split_object(mask: np.ndarray, *, method: str = "distance", min_distance: int = 3,
                 smoothing: float = 0.0, spacing: Sequence[float] | None = None,
                 intensity: np.ndarray | None = None) -> np.ndarray:
    """Split one object (its mask on its box) with a seeded watershed.

    Parameters
    ----------
    mask : ndarray of bool, shape (y, x) or (z, y, x)
        The object's pixels on (at least) its bounding box.
    method : {"distance", "intensity"}
        ``distance``: the Euclidean distance to the nearest pixel outside the object
        (``spacing`` scaled to the smallest voxel side; outside the array counts as
        outside the object); ``intensity``: ``intensity`` itself (high inside).
    min_distance : int
        Pixels (voxels) between two seeds at least (``peak_local_max``).
    smoothing : float
        Sigma (pixels) of a Gaussian applied first, within the object only; 0: none.
    spacing : sequence of float, optional
        Pixel (voxel) size per axis, for the distance transform.
    intensity : ndarray, optional
        Same shape as ``mask``: the landscape of ``method: intensity``.

    Returns
    -------
    ndarray of int32, same shape
        0 outside the object, instances 1..n numbered by first pixel in C order.
        Seeds are the local maxima of the (smoothed) landscape at least
        ``min_distance`` apart; touching maxima (a plateau) are one seed. The flood
        uses full connectivity, so every pixel of the object gets an instance.
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    m = np.pad(np.asarray(mask, dtype=bool), 1)
    if method == "distance":
        sampling = None if spacing is None else np.asarray(spacing, float) / min(spacing)
        land = ndi.distance_transform_edt(m, sampling=sampling)
        if smoothing > 0:
            land = np.where(m, ndi.gaussian_filter(land, smoothing, mode="constant"), 0.0)
    elif method == "intensity":
        if intensity is None:
            raise ValueError("method 'intensity' needs the intensity")
        land = np.pad(np.asarray(intensity, dtype=np.float64), 1)
        land = (_masked_smooth(land, m, smoothing) if smoothing > 0
                else np.where(m, land, 0.0))
        land = np.where(m, land - land[m].min() + 1.0, 0.0)  # > 0 inside for the peaks
    else:
        raise ValueError(f"method: expected distance or intensity, got {method!r}")
    peaks = peak_local_max(land, min_distance=int(min_distance), labels=m.astype(np.int32),
                           exclude_border=False)
    seeds = np.zeros(m.shape, dtype=bool)
    seeds[tuple(peaks.T)] = True
    markers, n = ndi.label(seeds, structure=np.ones((3,) * m.ndim, dtype=bool))
    inner = tuple(slice(1, -1) for _ in range(m.ndim))
    if n <= 1:
        return m[inner].astype(np.int32)
    flooded = watershed(-land, markers, mask=m, connectivity=m.ndim)[inner]
    return _by_first_pixel(flooded)


def _by_first_pixel(labels: np.ndarray) -> np.ndarray:
    """Renumber a labelling 1..n by each label's first pixel in C order (0 stays 0)."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    keep = values != 0
    values, first = values[keep], first[keep]
    lut = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.int32)
    lut[values[np.argsort(first, kind="stable")]] = np.arange(1, values.size + 1)
    return lut[labels]


# --- which objects ---------------------------------------------------------------------

@dataclass
class InstanceObjects:
    """The objects to split: the segments of one class, ID order.

    Attributes
    ----------
    klass : int
    ids : ndarray, shape (n,), int64
        Their segment IDs, ascending.
    lo, hi : ndarray, shape (n, ndim), int64
        Inclusive bounding boxes, axes in dims order.
    first, count : ndarray, shape (n,), int64
        First pixel (global flat index in C order) and pixel count.
    split : ndarray, shape (n,), bool
        Whether the object is split (no side longer than ``max_extent``).
    means : ndarray, shape (n, feature)
        The segments' feature means (reported for the objects not split).
    max_extent : int
    """

    klass: int
    ids: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    first: np.ndarray
    count: np.ndarray
    split: np.ndarray
    means: np.ndarray = field(repr=False)
    max_extent: int = 256

    def __len__(self) -> int:
        return int(self.ids.size)


def auto_class(stats: SegmentStats, n_classes: int) -> int:
    """Return the class ``class: auto`` splits: the one with the fewest pixels.

    Among the classes that have segments; ties: the smallest class ID. (Measured on
    the nuclei images, where the foreground is the minority class: see the README.)
    """
    pixels = np.bincount(stats.klass, weights=stats.count, minlength=n_classes)
    present = np.bincount(stats.klass, minlength=n_classes) > 0
    pixels = np.where(present, pixels, np.inf)
    return int(np.argmin(pixels))


def select_objects(stats: SegmentStats, klass: int, *, max_extent: int,
                   means: np.ndarray | None = None) -> InstanceObjects:
    """Select the segments of class ``klass``; mark those split (pure, in memory).

    ``means``: the segments' feature means, (n_segments, feature); default: none.
    """
    rows = np.flatnonzero(stats.klass == klass)
    lo, hi = stats.bbox()
    lo, hi = lo[rows], hi[rows]
    split = ((hi - lo + 1) <= max_extent).all(axis=1)
    m = (np.zeros((len(stats), 0)) if means is None else np.asarray(means))[rows]
    return InstanceObjects(klass=int(klass), ids=rows.astype(np.int64) + 1, lo=lo, hi=hi,
                           first=stats.first[rows].astype(np.int64),
                           count=stats.count[rows].astype(np.int64), split=split,
                           means=m, max_extent=int(max_extent))


# --- the table ---------------------------------------------------------------------------------

def instance_table(index: Any, *, transform: Any = None, geometry: Any = None,
                   feature_names: Sequence[str] = ()) -> Any:
    """instances.parquet as a DataFrame: the segment table's columns, per instance.

    Columns as :func:`pipeline.postprocess.segment_table` (``id``, ``class``, sizes in
    pixels and map units, or voxels and volume; boxes; for volumes the centroids),
    plus ``segment`` (the object's segment ID) after ``id``, and for images
    ``centroid_row``, ``centroid_col`` (mean pixel index) and ``centroid_x``,
    ``centroid_y`` (map coordinates of that point, pixel centres), then
    ``mean_<feature>`` (the features' own units).
    """
    from ._table import segment_table

    stats = index.stats
    frame = segment_table(stats, transform=transform if stats.ndim == 2 else None,
                          geometry=geometry)
    frame.insert(1, "segment", index.segment.astype(frame["id"].dtype))
    if stats.ndim == 2:
        assert stats.coord_sum is not None
        c = stats.coord_sum / np.maximum(stats.count, 1)[:, None].astype(np.float64)
        frame["centroid_row"], frame["centroid_col"] = c[:, 0], c[:, 1]
        t = _transform(transform, geometry)
        x, y = c[:, 1] + 0.5, c[:, 0] + 0.5
        frame["centroid_x"] = t.a * x + t.b * y + t.c
        frame["centroid_y"] = t.d * x + t.e * y + t.f
    means = index.means
    for f, name in enumerate(feature_names[:means.shape[1]]):
        frame[f"mean_{name}"] = means[:, f]
    return frame


def _transform(transform: Any, geometry: Any) -> Any:
    from affine import Affine

    from ._table import _transform_of

    if transform is not None:
        return transform
    return Affine.identity() if geometry is None else _transform_of(geometry)
