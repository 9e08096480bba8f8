"""Clustering: the seeded sample, global model fits, and lazy block labelling.

Every method fits on a bounded, seeded, chunking-independent sample of the valid
pixels (K-means and the hierarchical micro-clusters can then make exact passes over
every pixel with ``refine``), saves to ``model.json`` (+ ``.npz``) and labels every
chunk in parallel with a block kernel.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

_WHERE = {
    "BisectingKMeansModel": "_bisecting",
    "fit_bisecting": "_bisecting",
    "DensityModel": "_density",
    "fit_dbscan": "_density",
    "fit_hdbscan": "_density",
    "ELBOW_SAMPLE_SIZE": "_elbow",
    "ElbowResult": "_elbow",
    "elbow": "_elbow",
    "elbow_on": "_elbow",
    "knee_point": "_elbow",
    "fit": "_fit",
    "fit_on": "_fit",
    "predict": "_fit",
    "predict_confidence": "_fit",
    "raw_bands": "_fit",
    "GaussianMixtureModel": "_gmm",
    "fit_gmm": "_gmm",
    "HierarchicalModel": "_hierarchical",
    "agglomerate": "_hierarchical",
    "fit_hierarchical": "_hierarchical",
    "fit_kmeans": "_kmeans",
    "fit_sample": "_kmeans",
    "MeanShiftModel": "_meanshift",
    "fit_meanshift": "_meanshift",
    "METHODS": "_methods",
    "MethodInfo": "_methods",
    "method_info": "_methods",
    "method_options": "_methods",
    "ClusterModel": "_model",
    "KMeansModel": "_model",
    "load_model": "_model",
    "nearest_centroid": "_predict",
    "SAMPLE_CELL": "_sample",
    "pixel_keys": "_sample",
    "sample_pixels": "_sample",
    "Sample": "_training",
    "draw_sample": "_training",
}

__all__ = [
    "BisectingKMeansModel",
    "ClusterModel",
    "DensityModel",
    "ELBOW_SAMPLE_SIZE",
    "ElbowResult",
    "GaussianMixtureModel",
    "HierarchicalModel",
    "KMeansModel",
    "METHODS",
    "MeanShiftModel",
    "SAMPLE_CELL",
    "MethodInfo",
    "Sample",
    "agglomerate",
    "draw_sample",
    "elbow",
    "elbow_on",
    "fit",
    "fit_bisecting",
    "fit_dbscan",
    "fit_gmm",
    "fit_hdbscan",
    "fit_hierarchical",
    "fit_kmeans",
    "fit_meanshift",
    "fit_on",
    "fit_sample",
    "knee_point",
    "load_model",
    "method_info",
    "method_options",
    "nearest_centroid",
    "pixel_keys",
    "predict",
    "predict_confidence",
    "raw_bands",
    "sample_pixels",
]

if TYPE_CHECKING:  # pragma: no cover
    from ._bisecting import BisectingKMeansModel, fit_bisecting
    from ._density import DensityModel, fit_dbscan, fit_hdbscan
    from ._elbow import ELBOW_SAMPLE_SIZE, ElbowResult, elbow, elbow_on, knee_point
    from ._fit import fit, fit_on, predict, predict_confidence, raw_bands
    from ._gmm import GaussianMixtureModel, fit_gmm
    from ._hierarchical import HierarchicalModel, agglomerate, fit_hierarchical
    from ._kmeans import fit_kmeans, fit_sample
    from ._meanshift import MeanShiftModel, fit_meanshift
    from ._methods import METHODS, MethodInfo, method_info, method_options
    from ._model import ClusterModel, KMeansModel, load_model
    from ._predict import nearest_centroid
    from ._sample import SAMPLE_CELL, pixel_keys, sample_pixels
    from ._training import Sample, draw_sample


def __getattr__(name: str) -> Any:
    """Import the modules (scikit-learn, numba kernels) only when a name is first used.

    Every model class registers itself for :func:`load_model` when its module is
    imported, so the first use of any name imports them all.
    """
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import_module(f"{__name__}._fit")  # registers every model type
    obj = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    if callable(obj) and not isinstance(obj, type):
        try:
            obj.__module__ = __name__
        except (AttributeError, TypeError):  # pragma: no cover - builtins
            pass
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted(__all__)
