"""The run configuration: typed, validated, loaded from YAML with dotted overrides.

Every key has a default documented in ``configs/default.yaml``; unknown or misspelt
keys are errors that name the key (and suggest the closest known one).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .features import FeatureSpec, families

__all__ = [
    "RunConfig",
    "ClusterConfig",
    "ComputeConfig",
    "PostprocessConfig",
    "load_config",
    "parse_config",
    "apply_overrides",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterConfig(_Strict):
    """``cluster:``: the clustering model and its fit."""

    method: Literal["kmeans"] = "kmeans"
    k: int = Field(8, ge=2, le=65535)
    seed: int = Field(0, ge=0, lt=2**63)
    sample_size: int = Field(1_000_000, ge=1)
    n_init: int = Field(3, ge=1)
    max_iter: int = Field(300, ge=1)
    tol: float = Field(1e-4, ge=0)
    refine: int = Field(0, ge=0)


class ComputeConfig(_Strict):
    """``compute:``: where the Dask work runs."""

    scheduler: str = "threads"
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str | None = None
    gdal_cachemax: int = Field(64, ge=8)
    dashboard: bool = False

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        if v in ("threads", "processes", "synchronous") or "://" in v:
            return v
        raise ValueError("expected threads, processes, synchronous or a scheduler address "
                         "such as tcp://host:8786")


class PostprocessConfig(_Strict):
    """``postprocess:``: spatial clean-up of the class map, exact for any chunking."""


class RunConfig(_Strict):
    """A whole run: input, output and every stage's options."""

    input: str | list[str]
    output: str
    chunks: int | None = Field(None, ge=16)
    nodata: float | None = None
    features: list[FeatureSpec] = Field(default_factory=lambda: [FeatureSpec.parse("bands")])
    cluster: ClusterConfig = ClusterConfig()
    compute: ComputeConfig = ComputeConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    formats: list[Literal["cog", "zarr"]] = Field(default_factory=lambda: ["cog", "zarr"],
                                                  min_length=1)

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, v: Any) -> list[FeatureSpec]:
        if isinstance(v, str | Mapping):
            v = [v]
        if not isinstance(v, Sequence) or not v:
            raise ValueError("expected a non-empty list of features")
        out = []
        for i, item in enumerate(v):
            name = item if isinstance(item, str) else next(iter(item), None) \
                if isinstance(item, Mapping) else None
            if name is not None and name not in families():
                known = ", ".join(sorted(families()))
                raise ValueError(f"item {i}: unknown feature {name!r}; expected one of {known}")
            try:
                out.append(FeatureSpec.parse(item))
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"item {i} ({name}): {loc}: {err['msg']}") from None
            except TypeError as exc:
                raise ValueError(f"item {i}: {exc}") from None
        return out

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("formats are listed twice")
        return v

    def to_dict(self) -> dict[str, Any]:
        """Plain data, features spelt out, for logs and reports."""
        d = self.model_dump(mode="json", exclude={"features"})
        d["features"] = [f.describe() for f in self.features]
        return d

    def __dask_tokenize__(self) -> str:
        """Deterministic token: the JSON form of the config."""
        import json

        return json.dumps(self.to_dict(), sort_keys=True)


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _format_error(exc: ValidationError, source: str) -> ConfigError:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        model: type[BaseModel] = RunConfig
        for part in loc[:-1]:
            field = model.model_fields.get(part)
            ann = getattr(field, "annotation", None) if field else None
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
        keys = _known_keys(model)
        close = difflib.get_close_matches(loc[-1], keys, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ConfigError(f"{source}: unknown key {key!r}{hint}; expected one of "
                           + ", ".join(keys))
    if err["type"] == "missing":
        return ConfigError(f"{source}: missing key {key!r}")
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return ConfigError(f"{source}: key {key!r}: {msg}{shown}")


def _set_dotted(d: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = d
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: --set {key}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` overrides (dotted keys, YAML values) to a config mapping."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy, never mutate the caller's
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. cluster.k=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value, "--set")
    return data


def parse_config(data: Mapping[str, Any], source: str = "config") -> RunConfig:
    """Validate a config mapping.

    Raises
    ------
    ConfigError
        Naming ``source`` and the first bad key.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys (input, output, ...)")
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise _format_error(exc, source) from None


def load_config(
    path: str | os.PathLike[str], overrides: Sequence[str] = ()
) -> RunConfig:
    """Load a YAML config file, apply ``KEY=VALUE`` overrides, validate.

    Relative paths in the config are relative to the current directory.

    Raises
    ------
    ConfigError
        Missing or unparsable file, unknown key, bad value.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (input, output, ...)")
    return parse_config(apply_overrides(data, overrides), source=os.fspath(path))
