"""Fitted models: plain data saved as JSON (+ ``.npz`` for bulk arrays), never pickle.

Every model derives from :class:`ClusterModel`: it labels a block of raw features
(:meth:`~ClusterModel.predict_block`), describes itself as plain data
(:meth:`~ClusterModel.to_dict`) and saves to ``model.json``; arrays too large for
JSON (the core samples of density models) go to a ``.npz`` beside it, read back with
``allow_pickle=False`` and checked against the SHA-256 recorded in the JSON.
:func:`load_model` dispatches on the ``method`` key.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from ..io import label_dtype
from ._predict import nearest_centroid

__all__ = [
    "ClusterModel",
    "FittedModel",
    "KMeansModel",
    "load_model",
    "register_model",
    "model_types",
    "SCHEMA_VERSION",
    "library_versions",
]

SCHEMA_VERSION = 1

_MODELS: dict[str, type[ClusterModel]] = {}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a fit, recorded in every model."""
    out = {}
    for name in ("tileseg", "numpy", "scikit-learn", "scipy", "dask", "xarray", "numba",
                 "rasterio"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover - not installed
            out[name] = "unknown"
    return out


def register_model(*methods: str) -> Callable[[type[ClusterModel]], type[ClusterModel]]:
    """Class decorator: :func:`load_model` builds models of ``methods`` with this class."""

    def decorator(cls: type[ClusterModel]) -> type[ClusterModel]:
        cls._methods = tuple(methods)
        for m in methods:
            _MODELS[m] = cls
        return cls

    return decorator


def model_types() -> dict[str, type[ClusterModel]]:
    """Return the model class of every registered method."""
    return dict(_MODELS)


def _floats(a: np.ndarray) -> list[Any]:
    """Nested lists of floats, NaN rows as None (JSON has no NaN)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        return [float(v) if np.isfinite(v) else None for v in a]
    return [None if not np.isfinite(row).all() else _floats(row) for row in a]


class ClusterModel:
    """Base class of fitted models.

    Subclasses define :attr:`k`, :meth:`predict_block`, :meth:`class_centres` and the
    plain-data state (``_state``, ``_arrays``, ``_from_state``). Every model has the
    attributes ``method``, ``mean`` and ``scale`` (the global standardisation
    ``(x - mean) / scale``), ``features`` (specs to recompute the features),
    ``feature_names``, ``n_bands``, ``seed``, ``sample_size``, ``n_valid`` and
    ``versions``.

    Class IDs run from 0 to ``k - 1`` in a deterministic order (by class centre);
    a noise class, when the method has one, is the last ID and is named ``noise``.
    """

    _methods: tuple[str, ...] = ()

    # -- the attributes every model has (dataclass fields of the subclasses) ----------
    # Annotations only: no runtime effect, and the base is no dataclass, so these are
    # not fields here; each subclass declares them (``FittedModel``, ``KMeansModel``).
    mean: np.ndarray
    scale: np.ndarray
    features: list[dict[str, Any]]
    feature_names: list[str]
    n_bands: int
    seed: int
    sample_size: int
    n_valid: int
    versions: dict[str, str]

    if TYPE_CHECKING:
        # Read-only for the type checker, so that a subclass may make it a class
        # constant (``ClassVar``) or a field (one class serving several methods).
        # Not defined at runtime: a property here would shadow the subclass fields.
        @property
        def method(self) -> str:
            """Name of the method (the key :func:`load_model` dispatches on)."""

    # -- what subclasses provide -------------------------------------------------
    @property
    def k(self) -> int:
        """Number of classes (the noise class included)."""
        raise NotImplementedError

    def predict_block(self, block: np.ndarray) -> np.ndarray:
        """Label one block of raw features, shape (feature, y, x); NaN is nodata."""
        raise NotImplementedError

    def class_centres(self) -> np.ndarray:
        """Return the centre of each class in original units, shape (k, feature).

        NaN for a class without a centre (noise).
        """
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def _from_state(cls, fields: dict[str, Any], method: str, state: dict[str, Any],
                    arrays: dict[str, np.ndarray]) -> ClusterModel:
        raise NotImplementedError

    # -- shared behaviour -----------------------------------------------------------
    @property
    def noise_label(self) -> int | None:
        """Class ID of the noise class, or None."""
        return None

    @property
    def class_names(self) -> list[str]:
        """``"0"``, ``"1"``, ... and ``"noise"`` for the noise class."""
        return ["noise" if i == self.noise_label else str(i) for i in range(self.k)]

    @property
    def label_dtype(self) -> np.dtype:
        """uint8 up to 255 classes, else uint16."""
        return label_dtype(self.k)[0]

    @property
    def nodata(self) -> int:
        """Label written for invalid pixels."""
        return label_dtype(self.k)[1]

    @property
    def cuttable(self) -> bool:
        """Whether :meth:`cut` gives models with other ``k`` without refitting."""
        return False

    def cut(self, k: int) -> ClusterModel:
        """Return the same model with ``k`` classes, without refitting (hierarchies).

        Raises
        ------
        ModelError
            If the model keeps no hierarchy, or ``k`` is out of its range.
        """
        raise ModelError(f"model: a {self.method} model cannot be cut at k={k}; only "
                         "hierarchical and bisecting_kmeans models keep their hierarchy "
                         "(fit a new model instead)")

    def fit_record(self) -> dict[str, Any]:
        """Return what the fit did (for the report): sample size, seed, numbers."""
        return {"size": self.sample_size, "seed": self.seed,
                **getattr(self, "fit_info", {})}

    def check_features(self, names: Sequence[str], n_bands: int | None = None) -> None:
        """Refuse features (or a band count) other than the model's.

        Raises
        ------
        ModelError
            Naming both lists and what to do.
        """
        names = [str(n) for n in names]
        if names != list(self.feature_names):
            raise ModelError(
                f"model: features {self.feature_names} do not match the image's features "
                f"{names}; expected the same features (and band count) as the fitted scene"
            )
        if n_bands and self.n_bands and int(n_bands) != int(self.n_bands):
            raise ModelError(
                f"model: fitted on an image with {self.n_bands} bands, but this image has "
                f"{n_bands}; expected the same bands as the fitted scene"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form of the model (every float exact), without bulk arrays."""
        return {
            "schema_version": SCHEMA_VERSION,
            "method": self.method,
            "k": self.k,
            "class_names": self.class_names,
            "noise_label": self.noise_label,
            "features": self.features,
            "feature_names": self.feature_names,
            "n_bands": self.n_bands,
            "scaler": {"mean": self.mean.tolist(), "scale": self.scale.tolist()},
            "label_dtype": self.label_dtype.name,
            "nodata": self.nodata,
            "class_centres_original": _floats(self.class_centres()),
            "model": self._state(),
            "fit": {
                "seed": self.seed,
                "sample_size": self.sample_size,
                "n_valid_pixels": self.n_valid,
                **getattr(self, "fit_info", {}),
            },
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model",
                  arrays: dict[str, np.ndarray] | None = None) -> ClusterModel:
        """Rebuild a model from :meth:`to_dict` output (and its bulk arrays).

        Called on :class:`ClusterModel`, dispatches on ``d["method"]``.

        Raises
        ------
        ModelError
            If ``d`` is not a model of a supported schema and method.
        """
        method = d.get("method") if isinstance(d, dict) else None
        if cls is ClusterModel:
            from . import _fit  # noqa: F401  (imports, so registers, every model type)

            if method is None:
                raise ModelError(f"{source}: not a tileseg model (no 'method' key)")
            if method not in _MODELS:
                raise ModelError(f"{source}: unknown model method {method!r}; expected one "
                                 "of " + ", ".join(_MODELS))
            return _MODELS[method].from_dict(d, source, arrays)
        try:
            _check_schema(d, source)
            if method not in cls._methods:
                raise ModelError(f"{source}: method {method!r} is not a {cls.__name__}")
            fit = d["fit"]
            common = ("seed", "sample_size", "n_valid_pixels")
            fields = {
                "mean": np.asarray(d["scaler"]["mean"], dtype=np.float64),
                "scale": np.asarray(d["scaler"]["scale"], dtype=np.float64),
                "features": list(d["features"]),
                "feature_names": list(d["feature_names"]),
                "n_bands": int(d["n_bands"]),
                "seed": int(fit["seed"]),
                "sample_size": int(fit["sample_size"]),
                "n_valid": int(fit["n_valid_pixels"]),
                "fit_info": {k: v for k, v in fit.items() if k not in common},
                "versions": dict(d.get("versions", {})),
            }
            return cls._from_state(fields, method, d["model"], arrays or {})
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"{source}: not a tileseg model ({type(exc).__name__}: {exc})") \
                from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as JSON (and its bulk arrays as ``.npz``); return the JSON path."""
        path = Path(path)
        d = self.to_dict()
        arrays = self._arrays()
        if arrays:
            buf = io.BytesIO()
            np.savez(buf, allow_pickle=False, **arrays)  # plain arrays, as load reads them
            data = buf.getvalue()
            npz = path.with_suffix(".npz")
            npz.write_bytes(data)
            d["arrays"] = {"file": npz.name, "sha256": hashlib.sha256(data).hexdigest(),
                           "names": sorted(arrays)}
        path.write_text(json.dumps(d, indent=2) + "\n")
        return path

    def __dask_tokenize__(self) -> tuple:
        """Deterministic Dask token (the same model gives the same graph keys)."""
        from dask.base import tokenize

        d = self.to_dict()
        d.pop("versions", None)
        return (type(self).__name__, tokenize(json.dumps(d, sort_keys=True),
                                              *self._arrays().values()))


def _check_schema(d: dict[str, Any], source: str) -> None:
    if d["schema_version"] != SCHEMA_VERSION:
        raise ModelError(f"{source}: schema_version {d['schema_version']} is not "
                         f"supported; expected {SCHEMA_VERSION}")


@dataclass(eq=False, kw_only=True)
class FittedModel(ClusterModel):
    """The fields every model other than :class:`KMeansModel` shares.

    Attributes
    ----------
    mean, scale : ndarray, shape (feature,), float64
        The global standardisation.
    features : list of dict
    feature_names : list of str
    n_bands : int
    seed, sample_size, n_valid : int
        Seed, pixels in the fit sample, valid pixels in the image.
    fit_info : dict
        Method-specific numbers of the fit (plain JSON values).
    versions : dict
    """

    mean: np.ndarray
    scale: np.ndarray
    features: list[dict[str, Any]]
    feature_names: list[str]
    n_bands: int
    seed: int = 0
    sample_size: int = 0
    n_valid: int = 0
    fit_info: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)

    @property
    def distance_weights(self) -> np.ndarray:
        """Per-feature weights of squared raw distances that standardise them."""
        return 1.0 / self.scale**2

    def to_raw(self, centres: np.ndarray) -> np.ndarray:
        """Standardised points to original feature units."""
        return self.mean + self.scale * np.asarray(centres)

    def standardise_block(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the valid-pixel mask (y, x) and the standardised valid rows."""
        flat = np.asarray(block, dtype=np.float32).reshape(block.shape[0], -1)
        valid = np.asarray(np.isfinite(flat).all(axis=0))  # asarray: typed as an array
        x = (flat[:, valid].T.astype(np.float64) - self.mean) / self.scale
        return valid.reshape(block.shape[1:]), x


@register_model("kmeans")
@dataclass(eq=False)
class KMeansModel(ClusterModel):
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

    def class_centres(self) -> np.ndarray:
        """Centroids in original units (one per class)."""
        return self.centroids_original

    def fit_record(self) -> dict[str, Any]:
        """Sample size, inertia on the sample, Lloyd iterations, seed."""
        return {"size": self.sample_size, "inertia": self.inertia, "n_iter": self.n_iter,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model",
                  arrays: dict[str, np.ndarray] | None = None) -> KMeansModel:
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


def _read_arrays(path: Path, spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read the ``.npz`` a model JSON points to: no pickle, checked against its hash."""
    name = str(spec.get("file", ""))
    if not name or Path(name).name != name:
        raise ModelError(f"{path}: arrays file {name!r} must be a file name beside the model")
    npz = path.parent / name
    try:
        data = npz.read_bytes()
    except OSError as exc:
        raise ModelError(f"{npz}: cannot read the model's arrays ({exc.strerror or exc}); "
                         "keep the .npz beside its model.json") from None
    if hashlib.sha256(data).hexdigest() != spec.get("sha256"):
        raise ModelError(f"{npz}: does not belong to {path.name} (SHA-256 differs); "
                         "expected the .npz saved with this model")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        raise ModelError(f"{npz}: not a plain-array .npz ({exc})") from None


def load_model(path: str | os.PathLike[str]) -> ClusterModel:
    """Read a model written by :meth:`ClusterModel.save` (any method).

    Raises
    ------
    ModelError
        If the file (or its ``.npz``) is missing, not JSON, or not a tileseg model.
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the model ({exc})") from None
    if not isinstance(d, dict):
        raise ModelError(f"{path}: not a tileseg model (expected a JSON object)")
    arrays = _read_arrays(path, d["arrays"]) if isinstance(d.get("arrays"), dict) else None
    return ClusterModel.from_dict(d, source=os.fspath(path), arrays=arrays)
