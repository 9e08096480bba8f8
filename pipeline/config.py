"""The run configuration: typed, validated, loaded from YAML with dotted overrides.

Every key has a default documented in ``configs/default.yaml``; unknown or misspelt
keys are errors that name the key (and suggest the closest known one).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .features import FeatureSpec, families

__all__ = [
    "RunConfig",
    "ClusterConfig",
    "ComputeConfig",
    "ReportConfig",
    "PostprocessConfig",
    "MajorityConfig",
    "SegmentsConfig",
    "MinAreaConfig",
    "MinVolumeConfig",
    "MergeConfig",
    "InstancesConfig",
    "load_config",
    "parse_config",
    "apply_overrides",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterConfig(_Strict):
    """``cluster:``: the clustering method and its fit.

    ``sample_size`` defaults to the method's own (``pipeline.cluster.METHODS``); each
    method reads only its options (see ``configs/default.yaml``).
    """

    method: str = "kmeans"
    k: int | Literal["auto"] = 8
    k_range: tuple[int, int] = (2, 16)
    seed: int = Field(0, ge=0, lt=2**63)
    sample_size: int = Field(1_000_000, ge=1)
    n_init: int = Field(3, ge=1)
    max_iter: int = Field(300, ge=1)
    tol: float = Field(1e-4, ge=0)
    refine: int = Field(0, ge=0)
    bandwidth: float | None = Field(None, gt=0)
    quantile: float = Field(0.1, gt=0, le=1)
    eps: float | None = Field(None, gt=0)
    min_samples: int | None = Field(None, ge=1)
    min_cluster_size: int | None = Field(None, ge=2)
    linkage: Literal["ward", "average", "complete"] = "ward"
    n_micro: int = Field(256, ge=2, le=1024)
    covariance: Literal["full", "tied", "diag", "spherical"] = "full"
    confidence: bool = False

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("sample_size") is None:
            from .cluster._methods import METHODS

            method = data.get("method", "kmeans")
            data = {**data, "sample_size": METHODS[method].sample_size
                    if method in METHODS else None}
        return data

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from .cluster._methods import method_info

        return method_info(v).name

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 65535:
            raise ValueError("expected a number of classes greater than or equal to 2 "
                             "(at most 65535), or auto")
        return v

    @field_validator("k_range")
    @classmethod
    def _k_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 2 <= v[0] < v[1] <= 65535:
            raise ValueError("expected [k_min, k_max] with 2 <= k_min < k_max")
        return v

    @model_validator(mode="after")
    def _confidence(self) -> ClusterConfig:
        if self.confidence and self.method != "gmm":
            raise ValueError(f"confidence: a per-pixel confidence needs method gmm, not "
                             f"{self.method}")
        return self

    def fit_options(self) -> dict[str, Any]:
        """Return the options of the configured method (``METHODS[method].options``)."""
        from .cluster._methods import method_options

        return method_options(self.method, self.model_dump())

    @property
    def k_given(self) -> bool:
        """Whether ``k`` was set (methods that find k warn that they ignore it)."""
        return "k" in self.model_fields_set


class ReportConfig(_Strict):
    """``report:``: optional figures."""

    # k values of comparison.png (the original next to the segmentation at each k)
    comparison: list[Annotated[int, Field(ge=2, le=65535)]] = Field(default_factory=list)
    comparison_size: int = Field(1024, ge=64, le=8192)  # long side of the figure's images


class ComputeConfig(_Strict):
    """``compute:``: where the Dask work runs."""

    scheduler: str = "threads"
    n_workers: int | None = Field(None, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str | None = None
    gdal_cachemax: int = Field(64, ge=8)
    dashboard: bool = False
    # a running cluster's scheduler file (`dask scheduler --scheduler-file F`), instead
    # of its address; the scheduler then reads `file`
    scheduler_file: str | None = None
    connect_timeout: float = Field(30.0, gt=0)  # seconds for a cluster's scheduler to answer
    # outputs on object storage (s3://...) are staged here, then uploaded; null:
    # .tileseg-staging in the current directory
    staging_dir: str | None = None
    # scheduler: slurm | pbs: workers run as batch jobs that dask-jobqueue submits (the
    # [cluster] extra); its options, e.g. {cores: 16, memory: 64GiB, processes: 4,
    # walltime: "02:00:00", queue: normal, account: proj}; n_workers: workers in all
    # (null: one job)
    jobqueue: dict[str, Any] = Field(default_factory=dict)

    @field_validator("jobqueue")
    @classmethod
    def _jobqueue(cls, v: dict[str, Any]) -> dict[str, Any]:
        known = ("cores", "memory", "processes", "queue", "account", "project", "walltime",
                 "resource_spec", "job_cpu", "job_mem", "job_name", "interface", "protocol",
                 "local_directory", "log_directory", "job_extra_directives",
                 "job_directives_skip", "job_script_prologue", "worker_extra_args",
                 "python", "shebang", "death_timeout", "scheduler_options")
        for key in v:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown dask-jobqueue option {key!r}{hint}; expected "
                                 "one of " + ", ".join(known))
        return v

    @model_validator(mode="after")
    def _jobqueue_needs_a_queue(self) -> ComputeConfig:
        if self.jobqueue and self.scheduler not in ("slurm", "pbs"):
            raise ValueError(f"jobqueue: options of scheduler slurm or pbs, not of "
                             f"{self.scheduler}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _scheduler_file(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("scheduler_file"):
            if data.get("scheduler", "file") not in ("file", "threads"):
                raise ValueError("give scheduler (an address) or scheduler_file, "
                                 f"not both (got scheduler {data['scheduler']!r})")
            data = {**data, "scheduler": "file"}
        elif isinstance(data, Mapping) and data.get("scheduler") == "file":
            raise ValueError("scheduler: file needs scheduler_file (the path that "
                             "`dask scheduler --scheduler-file` wrote)")
        return data

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, v: str | None) -> str | None:
        if v is None or v == "auto":
            return v
        from dask.utils import parse_bytes

        try:
            size = parse_bytes(v)
        except (ValueError, TypeError):
            size = 0
        if size <= 0:
            raise ValueError(f"expected a size such as 4GiB or 512MB, or auto; got {v!r}")
        return v

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        if v in ("threads", "processes", "synchronous", "file", "slurm", "pbs") or "://" in v:
            return v
        raise ValueError("expected threads, processes, synchronous, slurm, pbs or a scheduler "
                         "address such as tcp://host:8786 (or give compute.scheduler_file)")


class MajorityConfig(_Strict):
    """``postprocess.majority:``: the majority (mode) filter of the class map."""

    # window (2r+1)^2 pixels, (2r+1)^3 voxels; 0: no filter. Or one radius per spatial
    # axis in dims order, e.g. [1, 2, 2] for voxels twice as thick as they are wide
    radius: Annotated[int, Field(ge=0, le=32)] | list[Annotated[int, Field(ge=0, le=32)]] = 0

    @field_validator("radius")
    @classmethod
    def _radius(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, list) and (not 2 <= len(v) <= 3 or max(v) < 1):
            raise ValueError("expected one radius per spatial axis (2 or 3 of them), the "
                             f"largest >= 1; got {v}")
        return v

    def active(self) -> bool:
        """Whether the filter runs."""
        return bool(max(self.radius) if isinstance(self.radius, list) else self.radius)


class SegmentsConfig(_Strict):
    """``postprocess.segments:``: connected segments of one class, with global IDs."""

    # images: 4 (by a side) or 8 (also by a corner); volumes: 6 (by a face), 18 (also
    # by an edge) or 26 (also by a corner). null: 8 for images, 26 for volumes
    connectivity: Literal[4, 8, 6, 18, 26] | None = None

    def for_ndim(self, ndim: int) -> int:
        """Return the connectivity of a ``ndim``-D class map (checked against the dims)."""
        allowed = (4, 8) if ndim == 2 else (6, 18, 26)
        c = self.connectivity
        if c is None:
            return allowed[-1]
        if c not in allowed:
            what = "an image (y, x)" if ndim == 2 else "a volume (z, y, x)"
            raise ConfigError(f"postprocess.segments.connectivity: {c} is not defined on "
                              f"{what}; expected {' or '.join(map(str, allowed))}")
        return c


class MinAreaConfig(_Strict):
    """``postprocess.min_size: {area: A}``: the minimum segment area in map units."""

    area: float = Field(gt=0)  # squared map units (pixels without georeferencing)


class MinVolumeConfig(_Strict):
    """``postprocess.min_size: {volume: V}``: the minimum segment volume (volumes)."""

    volume: float = Field(gt=0)  # the input's unit cubed (e.g. mm^3; voxels without one)


class MergeConfig(_Strict):
    """``postprocess.merge:``: hierarchical region merging of the segments.

    Pairs of touching segments are merged cheapest first (ties: the lower node ID,
    then the higher) until ``threshold`` or ``regions`` is reached (the first of the two
    given); the whole hierarchy is written (``hierarchy.parquet``) so that
    ``tileseg cut`` can cut it elsewhere.
    """

    # ward: size-weighted squared distance of the mean features;
    # baatz_schape: colour heterogeneity plus shape (multiresolution segmentation)
    criterion: Literal["ward", "baatz_schape"] = "ward"
    threshold: float | None = Field(None, ge=0)  # stop before the first merge costing more
    regions: int | None = Field(None, ge=1)  # stop when this many regions are left
    shape: float = Field(0.1, ge=0, lt=1)  # baatz_schape: weight of shape against colour
    compactness: float = Field(0.5, ge=0, le=1)  # baatz_schape: of shape; smoothness = 1 - it
    # weight of the mean feature contrast across the shared border (0: not used)
    boundary: float = Field(0.0, ge=0)
    # where the loop keeps the leaves' graph: in memory, or in files in the staging
    # directory of which it holds 256 MiB at a time (slower: its reads are random);
    # auto: files where it would take more than half the memory available. Files need
    # segments bounded by chunks (workers that share the staging directory)
    graph: Literal["auto", "memory", "files"] = "auto"
    # with the graph in files: MiB of their pages the loop holds (a few steps' worth
    # past it) before it drops them; more is faster: fewer come back from the cache
    resident_mib: int = Field(256, ge=16)

    @model_validator(mode="after")
    def _stop(self) -> MergeConfig:
        if self.threshold is None and self.regions is None:
            raise ValueError("give threshold (the scale parameter) or regions (a count)")
        return self


class InstancesConfig(_Strict):
    """``postprocess.instances:``: touching objects of one class split into instances."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # the class to split: its ID, its name, or auto (see the README)
    klass: int | str = Field("auto", alias="class")
    # distance: seeded watershed of the distance transform; intensity: of the features
    method: Literal["distance", "intensity"] = "distance"
    min_distance: int = Field(3, ge=1)  # pixels (voxels) between two seeds, at least
    # Gaussian sigma (pixels) applied within each object before seeding; 0: none
    smoothing: float = Field(2.0, ge=0, le=16)
    # objects longer than this (pixels, voxels) along an axis stay one instance; a task
    # reads at most its chunk plus this much on each side
    max_extent: int = Field(256, ge=4, le=4096)


def _submodel(model: type[BaseModel], v: Any) -> BaseModel:
    """Validate a nested mapping, naming its bad key and the keys it accepts."""
    if not isinstance(v, Mapping):
        raise ValueError(f"expected a mapping with keys {', '.join(model.model_fields)}")
    try:
        return model.model_validate(dict(v))
    except ValidationError as exc:
        err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, list(model.model_fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown key {key!r}{hint}; expected one of "
                             + ", ".join(model.model_fields)) from None
        if not key:  # a rule of the whole mapping (a model validator)
            raise ValueError(str(err["msg"]).removeprefix("Value error, ")) from None
        raise ValueError(f"{key}: {err['msg']} (got {err.get('input')!r})") from None


class PostprocessConfig(_Strict):
    """``postprocess:``: spatial clean-up of the class map, exact for any chunking."""

    majority: MajorityConfig = MajorityConfig()
    keep_raw: bool = False  # also write the class map before post-processing (labels_raw.*)
    # connected segments with global IDs (segments.tif/.zarr, segments.parquet); implied
    # by min_size and polygons; `true` means the defaults
    segments: SegmentsConfig | None = None
    # merge segments smaller than this many pixels, or {area: A} in squared map units
    min_size: Annotated[int, Field(ge=1)] | MinAreaConfig | MinVolumeConfig | None = None
    polygons: bool = False  # one polygon per segment: polygons.gpkg + polygons.parquet
    # hierarchical region merging of the segments (hierarchy.parquet; see MergeConfig)
    merge: MergeConfig | None = None
    # split touching objects of one class (instances.*, instances.parquet)
    instances: InstancesConfig | None = None

    @field_validator("segments", "merge", "instances", mode="before")
    @classmethod
    def _nested(cls, v: Any, info: ValidationInfo) -> Any:
        models: dict[str, type[BaseModel]] = {
            "segments": SegmentsConfig, "merge": MergeConfig, "instances": InstancesConfig}
        model = models[str(info.field_name)]
        if v is None or isinstance(v, model):
            return v
        return _submodel(model, {} if v is True else v)  # true: the defaults

    @field_validator("min_size", mode="before")
    @classmethod
    def _min_size(cls, v: Any) -> Any:
        if v is None or isinstance(v, MinAreaConfig | MinVolumeConfig):
            return v
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            return v
        if isinstance(v, Mapping):
            return _submodel(MinVolumeConfig if "volume" in v else MinAreaConfig, v)
        raise ValueError("expected a pixel (voxel) count >= 1 (e.g. 16), {area: A} in "
                         "squared map units or {volume: V} in the volume's unit cubed")

    @model_validator(mode="before")
    @classmethod
    def _implied_segments(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        seg = data.get("segments")
        if seg is True:
            data["segments"] = {}
        elif seg is False:
            data["segments"] = None
        wanted = (data.get("min_size") is not None or bool(data.get("polygons"))
                  or data.get("merge") is not None or bool(data.get("instances")))
        if wanted and data.get("segments") is None:
            if seg is False:
                raise ValueError("min_size, polygons, merge and instances need segments; "
                                 "remove segments: false")
            data["segments"] = {}
        return data


class RunConfig(_Strict):
    """A whole run: input, output and every stage's options."""

    input: str | list[str]
    output: str
    input_level: int = Field(0, ge=0)  # pyramid level of the input (0: full resolution)
    # valid pixels: a raster/volume on the same grid (nonzero = valid), `otsu`, or a
    # vector file (GeoPackage, GeoJSON, Shapefile) for georeferenced inputs
    mask: str | None = None
    chunks: int | None = Field(None, ge=16)
    nodata: float | None = None
    # a chunk of a GDAL raster that cannot be read (a corrupt tile): fail (exit 2,
    # naming the window) or nodata (read as nodata, listed in report.json)
    input_errors: Literal["fail", "nodata"] = "fail"
    features: list[FeatureSpec] = Field(default_factory=lambda: [FeatureSpec.parse("bands")])
    cluster: ClusterConfig = ClusterConfig()
    compute: ComputeConfig = ComputeConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    report: ReportConfig = ReportConfig()
    # NGFF version of ome-zarr outputs: null = the input's when it is OME-Zarr, else 0.4
    # (on Zarr v2: the version every current viewer reads); 0.5 is on Zarr v3
    ngff_version: Literal["0.4", "0.5"] | None = None
    # null: by input kind (GeoTIFF and photos [cog, zarr]; NIfTI and DICOM
    # [nifti, ome-zarr]; OME-TIFF, whole-slide TIFF and OME-Zarr [ome-zarr])
    formats: list[Literal["cog", "zarr", "nifti", "ome-zarr"]] | None = Field(
        None, min_length=1)

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

    @field_validator("ngff_version", mode="before")
    @classmethod
    def _ngff_version(cls, v: Any) -> Any:
        return f"{v:.1f}" if isinstance(v, float) else v  # YAML reads 0.4 as a number

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("formats are listed twice")
        return v

    @model_validator(mode="after")
    def _input_errors(self) -> RunConfig:
        # the windows read as nodata are collected in this process: threads only
        if self.input_errors == "nodata" and self.compute.scheduler not in (
                "threads", "synchronous"):
            raise ValueError(f"input_errors: nodata runs on the threads or synchronous "
                             f"scheduler, not {self.compute.scheduler}; use input_errors: "
                             "fail or compute.scheduler: threads")
        return self

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
    if not loc:  # a check across keys: its message names them
        return ConfigError(f"{source}: {msg}")
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
