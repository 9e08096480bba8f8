"""The ``ome-zarr`` output format: a result streamed into an NGFF multiscale image.

``{stem}.ome.zarr`` is an OME-Zarr (NGFF) multiscale image: NGFF 0.5 on Zarr v3 (the
attributes under ``"ome"``, arrays with ``dimension_names``), or NGFF 0.4 on Zarr v2
(``.zattrs``, ``/``-separated chunk keys) when the input was NGFF 0.4
(``geometry.extra["ngff_version"] == "0.4"``). Class maps and segment IDs are *label
images* (``image-label`` metadata) that viewers such as napari and QuPath overlay:
class ``c`` is stored as ``c + 1`` with 0 for no label, its colour and name in
``image-label``; IDs are stored as they are (0 = none), coloured by the viewer; values
are a plain image.

Level 0 has the blocks' Dask chunks as its Zarr chunks, so each block is one chunk,
written from any thread without a lock. The other levels are built by :meth:`close`
from the previous level, chunk by chunk (:func:`pyramid_steps`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ._geometry import Geometry, unit_name
from ._sinks import Role, encode_block, sink_shape, stored_dtype

__all__ = ["OmeZarrSink", "pyramid_steps"]

#: Levels are added until the long y/x side is at most this.
MAX_SIDE = 512
#: Images with a long y/x side of at least this get at least one level besides level 0.
MIN_SIDE = 32


def pyramid_steps(shape: tuple[int, ...], spacing: tuple[float, ...],
                  *, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE
                  ) -> list[tuple[int, ...]]:
    """Return the decimation step from each pyramid level to the next.

    Each level keeps every 2nd voxel of ``y`` and ``x`` of the one before; of ``z``
    too, but only when that leaves the ``z`` spacing no larger than the ``y`` spacing
    (both after the step): anisotropic volumes (thick slices) keep their slices until
    ``y`` and ``x`` have caught up, then shrink evenly. Levels are added while the long
    ``y``/``x`` side exceeds ``max_side``, and at least one when it is ``min_side`` or
    more; ``len(result) + 1`` levels in all.
    """
    sizes, spacings = list(shape), [float(s) for s in spacing]
    steps: list[tuple[int, ...]] = []
    while True:
        side = max(sizes[-2:])
        if not (side > max_side or (not steps and side >= min_side)):
            return steps
        step = [1] * len(sizes)
        step[-2:] = [2, 2]
        if (len(sizes) == 3 and sizes[0] > 1
                and 2 * spacings[0] <= 2 * spacings[1] * (1 + 1e-9)):
            step[0] = 2
        steps.append(tuple(step))
        sizes = [-(-n // s) for n, s in zip(sizes, step, strict=True)]
        spacings = [p * s for p, s in zip(spacings, step, strict=True)]


def _translation(geometry: Geometry) -> list[float] | None:
    """Return the world origin in ``dims`` order, or ``None``.

    ``None`` unless NGFF's scale-then-translate can say where the voxels are (an
    axis-aligned affine with positive spacing) and the origin is not 0.
    """
    n = geometry.ndim
    affine = geometry.world_affine()
    m = affine[:n, :n]
    if not np.allclose(m, np.diag(np.diag(m))) or np.any(np.diag(m) <= 0):
        return None
    origin = [float(v) for v in affine[:n, 3][::-1]]
    return origin if any(origin) else None


class OmeZarrSink:
    """Stream a result into ``{stem}.ome.zarr`` (see the module's notes).

    Parameters
    ----------
    directory : path
        Where the store goes.
    stem : str
        Store stem: ``labels`` gives ``labels.ome.zarr``.
    geometry : Geometry
        Its ``spacing`` and ``units`` become the axes' scales and units; the origin of
        an axis-aligned affine becomes a translation; ``extra["ngff_version"]``
        chooses NGFF 0.4 or 0.5.
    shape, chunks : tuple
        Spatial shape ``(z, y, x)`` or ``(y, x)`` and the Dask chunks of the blocks:
        regular (all equal but the last), each block becoming one Zarr chunk.
    dtype : dtype
        The blocks' dtype.
    nodata : int
        The value of invalid voxels in the blocks.
    role : {"classes", "ids", "values"}
        Classes are stored as class + 1 with 0 for nodata, in the smallest unsigned type
        that holds them; IDs and values as they are. Classes and IDs make a label image.
    n_classes : int, optional
        Number of classes: one colour and one property per class in ``image-label``.
    class_names : list of str, optional
        The classes' names (``properties``); ``"class {c}"`` where missing.

    Notes
    -----
    The fill value (what a chunk never written means) is 0 for label images, ``nodata``
    for values; every chunk is written all the same.
    """

    def __init__(self, directory: str | os.PathLike[str], stem: str, geometry: Geometry, *,
                 shape: tuple[int, ...], chunks: tuple[tuple[int, ...], ...],
                 dtype: np.dtype, nodata: int, role: Role,
                 n_classes: int | None = None, class_names: list[str] | None = None) -> None:
        import zarr

        from ._write import regular_chunks

        shape = sink_shape(role, shape, geometry)
        if tuple(sum(c) for c in chunks) != shape or not regular_chunks(chunks):
            raise ValueError(f"chunks {chunks} are not a regular grid over {shape}")
        self.directory = Path(directory)
        self.path = self.directory / f"{stem}.ome.zarr"
        self.stem = stem
        self.geometry = geometry
        self.shape = shape
        self.chunks = tuple(int(c[0]) for c in chunks)
        self.role = role
        self.nodata = nodata
        self.n_classes = n_classes
        self.class_names = list(class_names or [])
        self.dtype = stored_dtype(role, dtype, n_classes)
        self.fill_value = nodata if role == "values" else 0
        self.version = "0.4" if str(geometry.extra.get("ngff_version")) == "0.4" else "0.5"
        self.steps = pyramid_steps(shape, geometry.spacing)
        self._group = zarr.open_group(str(self.path), mode="w-",
                                      zarr_format=2 if self.version == "0.4" else 3)
        self._level0: Any = self._create("0", shape)
        self._closed = False

    @property
    def dims(self) -> tuple[str, ...]:
        """Spatial dims in array order."""
        return self.geometry.dims

    def _create(self, name: str, shape: tuple[int, ...]) -> Any:
        from ._write import ZARR_WRITE_CONFIG

        chunks = tuple(min(c, s) for c, s in zip(self.chunks, shape, strict=True))
        kwargs: dict[str, Any]
        if self.version == "0.4":
            from numcodecs import Blosc

            kwargs = {"compressors": Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE),
                      "chunk_key_encoding": {"name": "v2", "separator": "/"}}
        else:
            from zarr.codecs import BloscCodec

            kwargs = {"compressors": BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"),
                      "dimension_names": self.dims}
        return self._group.create_array(name, shape=shape, chunks=chunks, dtype=self.dtype,
                                        fill_value=self.fill_value, config=ZARR_WRITE_CONFIG,
                                        **kwargs)

    def __setitem__(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        """Write one block: one Zarr chunk of level 0 (thread-safe, no lock)."""
        array = self._level0
        if array is None:
            raise RuntimeError(f"{self.path.name}: the sink is closed")
        if any((r.start or 0) % c for r, c in zip(region, self.chunks, strict=True)):
            raise ValueError(f"region {region} does not start a chunk of {self.chunks}")
        array[region] = encode_block(block, self.role, self.nodata, self.dtype)

    def scales(self) -> list[list[float]]:
        """Return the scale of each level, in ``dims`` order."""
        scale = [float(s) for s in self.geometry.spacing]
        out = [scale]
        for step in self.steps:
            scale = [p * s for p, s in zip(scale, step, strict=True)]
            out.append(scale)
        return out

    def attributes(self) -> dict[str, Any]:
        """Return the group's NGFF attributes (``multiscales``, ``image-label``)."""
        axes = []
        for dim, unit in zip(self.dims, self.geometry.units, strict=True):
            axis = {"name": dim, "type": "space"}
            name = unit_name(unit)
            if name is not None:
                axis["unit"] = name
            axes.append(axis)
        translation = _translation(self.geometry)
        datasets = []
        for i, scale in enumerate(self.scales()):
            transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
            if translation is not None:  # voxel f*i of level 0 is voxel i: same origin
                transforms.append({"type": "translation", "translation": translation})
            datasets.append({"path": str(i), "coordinateTransformations": transforms})
        multiscale: dict[str, Any] = {
            "name": self.stem, "axes": axes, "datasets": datasets, "type": "nearest",
            "metadata": {"method": "every 2nd voxel of the level before (nearest)",
                         "tileseg": {"role": self.role, "nodata": int(self.fill_value)}},
        }
        if self.version == "0.4":
            multiscale["version"] = "0.4"
        attrs: dict[str, Any] = {"multiscales": [multiscale]}
        if self.role in ("classes", "ids"):
            attrs["image-label"] = self._image_label()
        if self.version == "0.4":
            return attrs
        return {"ome": {"version": "0.5", **attrs}}

    def _image_label(self) -> dict[str, Any]:
        label: dict[str, Any] = {"version": "0.4"} if self.version == "0.4" else {}
        if self.role == "classes" and self.n_classes:
            from ._write import palette

            colours = palette(self.n_classes)
            names = self.class_names
            label["colors"] = [{"label-value": c + 1, "rgba": list(colours[c])}
                               for c in range(self.n_classes)]
            label["properties"] = [
                {"label-value": c + 1, "class": c,
                 "name": names[c] if c < len(names) and names[c] else f"class {c}"}
                for c in range(self.n_classes)]
        return label

    def close(self) -> list[Path]:
        """Build the pyramid from level 0, write the NGFF metadata; return the store."""
        import dask
        import dask.array as da

        if self._closed:
            return [self.path]
        source = self._level0
        if source is None:
            raise RuntimeError(f"{self.path.name}: the sink was aborted")
        self._level0 = None
        shape = self.shape
        for i, step in enumerate(self.steps, start=1):
            shape = tuple(-(-n // s) for n, s in zip(shape, step, strict=True))
            target = self._create(str(i), shape)
            level = da.from_zarr(source, chunks=source.chunks)
            level = level[tuple(slice(None, None, s) for s in step)].rechunk(target.chunks)
            # each chunk of the level is one chunk of the store: no lock
            dask.compute(da.store(level, target, lock=False, compute=False),
                         scheduler="threads")
            source = target
        self._group.attrs.update(self.attributes())
        self._closed = True
        return [self.path]

    def abort(self) -> None:
        """Remove the store."""
        self._level0 = None
        if not self._closed:
            shutil.rmtree(self.path, ignore_errors=True)

