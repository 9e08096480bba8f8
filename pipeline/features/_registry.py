"""The feature registry: small named functions that turn an image into features.

A *feature family* is a function ``(image, params) -> DataArray(feature, *spatial)``
(spatial ``(y, x)`` or ``(z, y, x)``, the image's own) plus a pydantic model for its
parameters and a function giving the halo (in pixels) that its parameters need.
Families register themselves with :func:`register`; third-party
packages add more through the ``tileseg.features`` entry-point group, loaded on first
lookup of an unknown name (no hard-coded list of modules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["FeatureParams", "FeatureFamily", "FeatureSpec", "register", "get_family", "families"]


class FeatureParams(BaseModel):
    """Parameters every feature family accepts.

    Attributes
    ----------
    scale : bool
        Standardise the feature with global statistics (mean and standard deviation
        estimated on the sample) before clustering.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: bool = True


@dataclass(frozen=True)
class FeatureFamily:
    """A registered feature family."""

    name: str
    func: Callable[..., Any]
    params: type[FeatureParams]
    halo: Callable[[Any], int]


_FAMILIES: dict[str, FeatureFamily] = {}
_ENTRY_POINTS_LOADED = False


def register(
    name: str,
    params: type[FeatureParams] = FeatureParams,
    halo: Callable[[Any], int] = lambda p: 0,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a feature family under ``name``.

    Parameters
    ----------
    name : str
        The name used in the ``features:`` list of a config.
    params : type of FeatureParams
        The pydantic model of the family's parameters (unknown keys are errors).
    halo : callable
        ``halo(params) -> int``: the neighbourhood radius in pixels the family reads
        around each pixel (the largest over the axes); 0 for per-pixel families. It
        only tells per-pixel families from neighbourhood ones (how the sample is
        drawn): the family itself passes the exact per-axis depth to ``map_overlap``.

    Returns
    -------
    callable
        A decorator that registers the function and returns it unchanged.
    """

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        if name in _FAMILIES and _FAMILIES[name].func is not func:
            raise ValueError(f"feature family {name!r} is already registered")
        _FAMILIES[name] = FeatureFamily(name=name, func=func, params=params, halo=halo)
        return func

    return decorator


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group="tileseg.features"):
        ep.load()


def families() -> Mapping[str, FeatureFamily]:
    """Return the registered feature families, plugins included."""
    _load_entry_points()
    return dict(_FAMILIES)


def get_family(name: str) -> FeatureFamily:
    """Return the family registered as ``name``.

    Raises
    ------
    KeyError
        If no family of that name exists (built in or from a plugin).
    """
    if name not in _FAMILIES:
        _load_entry_points()
    return _FAMILIES[name]


@dataclass(frozen=True)
class FeatureSpec:
    """One entry of a ``features:`` list: a family name and its validated parameters."""

    name: str
    params: FeatureParams

    @classmethod
    def parse(cls, item: str | Mapping[str, Any] | FeatureSpec) -> FeatureSpec:
        """Normalise ``"bands"``, ``{"bands": [1, 2]}`` or ``{"bands": {...}}``.

        A bare list or scalar value is passed as the family's first parameter.

        Raises
        ------
        KeyError
            If the family is unknown.
        pydantic.ValidationError
            If a parameter is unknown or has a bad value.
        """
        if isinstance(item, FeatureSpec):
            return item
        raw: Any
        if isinstance(item, str):
            name, raw = item, {}
        elif isinstance(item, Mapping) and len(item) == 1:
            ((name, raw),) = item.items()
        else:
            raise TypeError(f"a feature is a name or a one-key mapping, got {item!r}")
        family = get_family(name)
        if raw is None:
            raw = {}
        elif not isinstance(raw, Mapping):
            # shorthand: {bands: [1, 2]} sets the family's own first parameter
            own = [f for f in family.params.model_fields if f not in FeatureParams.model_fields]
            if not own:
                raise TypeError(f"feature {name!r} takes no value, got {raw!r}")
            raw = {own[0]: raw}
        return cls(name=name, params=family.params.model_validate(dict(raw)))

    @property
    def family(self) -> FeatureFamily:
        """The registered family."""
        return get_family(self.name)

    @property
    def halo(self) -> int:
        """Neighbourhood radius in pixels."""
        return int(self.family.halo(self.params))

    def describe(self) -> dict[str, Any]:
        """Return ``{name: params}``, every parameter spelt out, for model files."""
        return {self.name: self.params.model_dump(mode="json")}
