"""Output formats: the registry of label sinks, and how labels are stored in them.

A *sink* receives the computed blocks of one result (a class map, segment IDs or a
raster of measured values) and writes one output file or store. ``"cog"`` and
``"zarr"`` are written by :class:`~pipeline.io._write.LabelWriter` itself (their
:attr:`SinkSpec.factory` is ``None``); the other formats are objects made by their
spec's factory::

    sink = SINKS["nifti"].factory(directory, "labels", geometry, shape=(z, y, x),
                                  chunks=array.chunks, dtype=np.uint8, nodata=255,
                                  role="classes", n_classes=5)
    sink[region] = block      # from any thread, blocks in any order, each block once
    paths = sink.close()      # or sink.abort()

Viewers of medical and microscopy images (napari, QuPath, ITK-SNAP, 3D Slicer) take
label value 0 as "no label", so the formats made for them store class ``c`` as
``c + 1`` and nodata as 0 (:func:`encode_block`), and say so in their metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ._geometry import Geometry

__all__ = [
    "ROLES",
    "SINKS",
    "Role",
    "Sink",
    "SinkSpec",
    "encode_block",
    "output_name",
    "register_sink",
    "sink_shape",
    "sink_spec",
    "stored_dtype",
]

Role = Literal["classes", "ids", "values"]
#: What a result's values are: a class map (classes ``0 .. n - 1`` and ``nodata``),
#: segment IDs (0 = none) or measured values (stored as they are).
ROLES: tuple[str, ...] = ("classes", "ids", "values")


@runtime_checkable
class Sink(Protocol):
    """One output being written, block by block."""

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        """Write one block (thread-safe; blocks in any order, each block once)."""

    def close(self) -> list[Path]:
        """Finish the output; return the files or directories written."""

    def abort(self) -> None:
        """Drop everything half-written (the caller deletes the directory too)."""


@dataclass(frozen=True)
class SinkSpec:
    """An output format.

    Attributes
    ----------
    name : str
        The format's name in the configuration (``"nifti"``, ``"ome-zarr"``).
    suffix : str
        What :func:`output_name` appends to the stem (``".nii.gz"``).
    volumes, images : bool
        Whether it can write ``(z, y, x)`` volumes and ``(y, x)`` images.
    factory : callable or None
        Makes the :class:`Sink`: ``factory(directory, stem, geometry, *, shape, chunks,
        dtype, nodata, role, n_classes=None, class_names=None)``. ``None`` for the
        formats :class:`~pipeline.io._write.LabelWriter` writes itself.
    """

    name: str
    suffix: str
    volumes: bool
    images: bool
    factory: Callable[..., Sink] | None

    def accepts(self, ndim: int) -> bool:
        """Whether the format can write an image with ``ndim`` spatial dims."""
        return self.volumes if ndim == 3 else self.images if ndim == 2 else False


#: Every output format, by name.
SINKS: dict[str, SinkSpec] = {}


def register_sink(spec: SinkSpec, *, replace: bool = False) -> None:
    """Add an output format to :data:`SINKS`.

    Registering the same spec again does nothing; another spec under a registered
    name is refused unless ``replace``.
    """
    if not spec.name or not spec.suffix.startswith("."):
        raise ValueError(f"a sink needs a name and a suffix starting with '.': {spec}")
    if not (spec.volumes or spec.images):
        raise ValueError(f"sink {spec.name!r} writes neither images nor volumes")
    old = SINKS.get(spec.name)
    if old is not None and old != spec and not replace:
        raise ValueError(f"an output format {spec.name!r} is already registered")
    SINKS[spec.name] = spec


def sink_spec(fmt: str) -> SinkSpec:
    """Return the registered format ``fmt`` (``ValueError`` naming the known ones)."""
    try:
        return SINKS[fmt]
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}; known: "
                         f"{', '.join(sorted(SINKS))}") from None


def output_name(fmt: str, stem: str) -> str:
    """Return the name of the output of format ``fmt``.

    ``output_name("nifti", "labels")`` is ``"labels.nii.gz"``.
    """
    return stem + sink_spec(fmt).suffix


def stored_dtype(role: str, dtype: np.dtype | type, n_classes: int | None = None) -> np.dtype:
    """Return the dtype a result is stored with by the formats that shift classes.

    Classes: the smallest unsigned type holding ``1 .. n_classes`` (0 being no label);
    IDs and values: ``dtype`` unchanged.
    """
    dtype = np.dtype(dtype)
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if role != "classes":
        return dtype
    if n_classes is None:  # classes below nodata, the type's maximum
        return dtype
    for t in (np.uint8, np.uint16, np.uint32):
        if n_classes <= np.iinfo(t).max:
            return np.dtype(t)
    raise ValueError(f"too many classes: {n_classes}")


def sink_shape(role: str, shape: tuple[int, ...], geometry: Geometry) -> tuple[int, ...]:
    """Check a sink's ``role`` and spatial ``shape`` against its geometry; return the shape.

    Raises
    ------
    ValueError
        An unknown role, or a shape that is not 2-D or 3-D like the geometry's dims.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or len(shape) != geometry.ndim:
        raise ValueError(f"shape {shape} does not match the geometry's dims "
                         f"{geometry.dims}")
    return shape


def encode_block(block: np.ndarray, role: str, nodata: int, dtype: np.dtype) -> np.ndarray:
    """Return a block as stored.

    Classes: class ``c`` as ``c + 1`` and nodata as 0; IDs and values: cast to
    ``dtype`` only.
    """
    block = np.asarray(block)
    if role != "classes":
        return block.astype(dtype, copy=False)
    out = block.astype(dtype)  # a copy (or a new array): changed in place below
    out += 1  # nodata may wrap around: set just after
    out[block == nodata] = 0
    return out


def _nifti_factory(*args: Any, **kwargs: Any) -> Sink:
    from ._nifti_sink import NiftiSink  # nibabel is imported by the runs that write it

    return NiftiSink(*args, **kwargs)


def _omezarr_factory(*args: Any, **kwargs: Any) -> Sink:
    from ._omezarr_sink import OmeZarrSink

    return OmeZarrSink(*args, **kwargs)


register_sink(SinkSpec("cog", ".tif", volumes=False, images=True, factory=None))
register_sink(SinkSpec("zarr", ".zarr", volumes=True, images=True, factory=None))
register_sink(SinkSpec("nifti", ".nii.gz", volumes=True, images=True, factory=_nifti_factory))
register_sink(SinkSpec("ome-zarr", ".ome.zarr", volumes=True, images=True,
                       factory=_omezarr_factory))
