"""Feature families and the lazy feature cube."""

# importing the family modules registers the built-in families
from . import _colour, _coords, _indices, _spectral, _texture  # noqa: F401
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
