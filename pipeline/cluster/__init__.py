"""Clustering: the seeded sample, global model fits, and lazy block labelling."""

from ._kmeans import fit, fit_sample, predict
from ._model import KMeansModel, load_model
from ._predict import nearest_centroid
from ._sample import pixel_keys, sample_pixels

__all__ = [
    "KMeansModel",
    "fit",
    "fit_sample",
    "load_model",
    "nearest_centroid",
    "pixel_keys",
    "predict",
    "sample_pixels",
]
