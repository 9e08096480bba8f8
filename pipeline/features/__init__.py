"""Feature families and the lazy feature cube."""

from . import _spectral  # noqa: F401  (registers the built-in families)
from ._registry import FeatureFamily, FeatureParams, FeatureSpec, families, get_family, register
from ._stack import compute_features, parse_features

__all__ = [
    "FeatureFamily",
    "FeatureParams",
    "FeatureSpec",
    "compute_features",
    "families",
    "get_family",
    "parse_features",
    "register",
]
