"""The fitted model: plain data saved as JSON (floats round-trip exactly), never pickle."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..io import label_dtype
from ._predict import nearest_centroid

__all__ = ["KMeansModel", "load_model", "SCHEMA_VERSION", "library_versions"]

SCHEMA_VERSION = 1


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a fit, recorded in every model."""
    out = {}
    for name in ("tileseg", "numpy", "scikit-learn", "dask", "xarray", "numba", "rasterio"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover - not installed
            out[name] = "unknown"
    return out


@dataclass(eq=False)
class KMeansModel:
    """A K-means model fitted on standardised features.

    Attributes
    ----------
    centroids : ndarray, shape (k, feature), float64
        Centroids in standardised units, ordered lexicographically by their
        original-unit coordinates (so class IDs are deterministic).
    mean, scale : ndarray, shape (feature,), float64
        The global standardisation (``(x - mean) / scale``); 0 and 1 for features
        that are not scaled.
    features : list of dict
        Feature specs, each ``{family: {param: value}}``, to recompute the features.
    feature_names : list of str
    n_bands : int
        Band count of the image the model was fitted on.
    seed, sample_size, inertia, n_iter : fit record
    """

    centroids: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    features: list[dict[str, Any]]
    feature_names: list[str]
    n_bands: int
    seed: int = 0
    sample_size: int = 0
    n_valid: int = 0
    inertia: float = float("nan")
    n_iter: int = 0
    method: str = "kmeans"
    versions: dict[str, str] = field(default_factory=library_versions)

    def __dask_tokenize__(self) -> tuple:
        """Deterministic Dask token (the same model gives the same graph keys)."""
        from dask.base import tokenize

        return ("KMeansModel", tokenize(self.centroids, self.mean, self.scale,
                                        self.feature_names))

    @property
    def k(self) -> int:
        """Number of classes."""
        return int(self.centroids.shape[0])

    @property
    def centroids_original(self) -> np.ndarray:
        """Centroids in the features' original units."""
        return self.mean + self.scale * self.centroids

    @property
    def label_dtype(self) -> np.dtype:
        """uint8 up to 255 classes, else uint16."""
        return label_dtype(self.k)[0]

    @property
    def nodata(self) -> int:
        """Label written for invalid pixels."""
        return label_dtype(self.k)[1]

    def predict_block(self, block: np.ndarray) -> np.ndarray:
        """Label one block of raw features, shape (feature, y, x); NaN is nodata."""
        weights = 1.0 / self.scale**2
        return nearest_centroid(
            block, self.centroids_original, weights, self.nodata, self.label_dtype
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form of the model (every float exact)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "k": self.k,
            "features": self.features,
            "feature_names": self.feature_names,
            "n_bands": self.n_bands,
            "centroids": self.centroids.tolist(),
            "centroids_original": self.centroids_original.tolist(),
            "scaler": {"mean": self.mean.tolist(), "scale": self.scale.tolist()},
            "label_dtype": self.label_dtype.name,
            "nodata": self.nodata,
            "fit": {
                "seed": self.seed,
                "sample_size": self.sample_size,
                "n_valid_pixels": self.n_valid,
                "inertia": self.inertia,
                "n_iter": self.n_iter,
            },
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model") -> KMeansModel:
        """Rebuild a model from :meth:`to_dict` output."""
        try:
            if d["schema_version"] != SCHEMA_VERSION:
                raise ModelError(f"{source}: schema_version {d['schema_version']} is not "
                                 f"supported; expected {SCHEMA_VERSION}")
            if d["method"] != "kmeans":
                raise ModelError(f"{source}: method {d['method']!r} is not a K-means model")
            fit = d["fit"]
            return cls(
                centroids=np.asarray(d["centroids"], dtype=np.float64),
                mean=np.asarray(d["scaler"]["mean"], dtype=np.float64),
                scale=np.asarray(d["scaler"]["scale"], dtype=np.float64),
                features=list(d["features"]),
                feature_names=list(d["feature_names"]),
                n_bands=int(d["n_bands"]),
                seed=int(fit["seed"]),
                sample_size=int(fit["sample_size"]),
                n_valid=int(fit["n_valid_pixels"]),
                inertia=float(fit["inertia"]),
                n_iter=int(fit["n_iter"]),
                versions=dict(d.get("versions", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"{source}: not a tileseg model ({type(exc).__name__}: {exc})") \
                from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as JSON and return the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def load_model(path: str | os.PathLike[str]) -> KMeansModel:
    """Read a model written by :meth:`KMeansModel.save`.

    Raises
    ------
    ModelError
        If the file is missing, not JSON, or not a tileseg model.
    """
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the model ({exc})") from None
    return KMeansModel.from_dict(d, source=os.fspath(path))
