"""tileseg: seam-free unsupervised segmentation of rasters larger than memory.

The public API takes and returns lazy xarray objects::

    import pipeline
    image = pipeline.open_image("scene.tif")            # DataArray(band, y, x), lazy
    vol, geometry = pipeline.open_with_geometry("t1.nii.gz")  # (band, z, y, x) + Geometry
    feats = pipeline.compute_features(image, ["bands"])  # DataArray(feature, y, x), lazy
    model = pipeline.fit(feats, k=8, seed=0)             # computes the sample only
    labels = pipeline.predict(feats, model)              # DataArray(y, x), lazy
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "open_image",
    "open_with_geometry",
    "Geometry",
    "compute_features",
    "fit",
    "predict",
    "segment",
    "run",
    "cut",
    "load_config",
    "load_model",
    "KMeansModel",
    "RunConfig",
]

_WHERE = {
    "open_image": "pipeline.io",
    "open_with_geometry": "pipeline.io",
    "Geometry": "pipeline.io",
    "compute_features": "pipeline.features",
    "fit": "pipeline.cluster",
    "predict": "pipeline.cluster",
    "load_model": "pipeline.cluster",
    "KMeansModel": "pipeline.cluster",
    "segment": "pipeline._api",
    "run": "pipeline.runner",
    "cut": "pipeline.stages._cut",
    "load_config": "pipeline.config",
    "RunConfig": "pipeline.config",
}

if TYPE_CHECKING:  # pragma: no cover
    from ._api import segment
    from .cluster import KMeansModel, fit, load_model, predict
    from .config import RunConfig, load_config
    from .features import compute_features
    from .io import Geometry, open_image, open_with_geometry
    from .runner import run
    from .stages._cut import cut_output as cut


def __getattr__(name: str) -> Any:
    """Import the heavy modules only when a public name is first used."""
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
