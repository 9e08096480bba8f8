"""The physical geometry of an image: where its pixels or voxels are in the world.

Every reader returns the lazy array and one :class:`Geometry`; every writer takes it.
Two kinds of images share it:

- georeferenced 2-D rasters (GDAL): a CRS and an affine pixel-to-map ``transform``;
- images in physical space (NIfTI, DICOM, OME-TIFF, OME-Zarr, plain Zarr): a 4 x 4
  ``affine`` from voxel indices ``(x, y, z, 1)`` (the file's fastest axis first, as
  nibabel orders them) to world coordinates, the voxel ``spacing`` and ``units`` of
  each spatial axis, and what the file format needs to write the same geometry back
  (NIfTI sform/qform codes, the NGFF version).

Arrays are ``(band, y, x)`` or ``(band, z, y, x)``; ``x`` is always the file's fastest
axis. :attr:`Geometry.dims` names the spatial dims in array order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["Geometry", "SPATIAL_DIMS", "spatial_dims"]

#: The spatial dims of the two shapes an image can have, in array order.
SPATIAL_DIMS = {2: ("y", "x"), 3: ("z", "y", "x")}

#: Unit names as NGFF spells them (UDUNITS-2), from the names files use.
_UNIT_NAMES = {
    "mm": "millimeter", "millimeter": "millimeter", "millimetre": "millimeter",
    "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer",
    "micrometer": "micrometer", "micrometre": "micrometer",
    "nm": "nanometer", "nanometer": "nanometer", "cm": "centimeter",
    "centimeter": "centimeter", "m": "meter", "meter": "meter", "metre": "meter",
}


def unit_name(unit: str | None) -> str | None:
    """Return the NGFF (UDUNITS-2) name of a length unit, or ``None`` if unknown."""
    if unit is None:
        return None
    return _UNIT_NAMES.get(str(unit).strip().lower(), _UNIT_NAMES.get(str(unit).strip()))


def spatial_dims(ndim: int) -> tuple[str, ...]:
    """Spatial dims of an image with ``ndim`` spatial axes (2 or 3)."""
    try:
        return SPATIAL_DIMS[ndim]
    except KeyError:
        raise ValueError(f"expected 2 or 3 spatial dims, got {ndim}") from None


@dataclass(frozen=True)
class Geometry:
    """Where an image's pixels or voxels lie, and in which units.

    Attributes
    ----------
    dims : tuple of str
        Spatial dims in array order: ``("y", "x")`` or ``("z", "y", "x")``.
    shape : tuple of int
        Spatial shape, in ``dims`` order.
    kind : str
        The reader that made it: ``"gdal"``, ``"nifti"``, ``"dicom"``, ``"tiff"``,
        ``"ome-zarr"`` or ``"zarr"``. It chooses the default output formats.
    spacing : tuple of float
        Voxel size along each spatial dim (``dims`` order), in ``units``.
    units : tuple of str or None
        Length unit of each spatial dim (NGFF names: ``"millimeter"``,
        ``"micrometer"``, ...); ``None`` where the file does not say.
    affine : ndarray, shape (4, 4), optional
        Voxel index ``(x, y, z, 1)`` (fastest axis first; ``z = 0`` for 2-D) to world
        coordinates. ``None`` for georeferenced rasters (see ``transform``).
    crs, transform : optional
        The CRS (rasterio) and pixel-to-map :class:`affine.Affine` of a georeferenced
        raster.
    extra : dict
        What a format needs to write the geometry back as it was read: NIfTI
        ``sform_code``/``qform_code``/``xyzt_units``, NGFF ``ngff_version``, ...
    """

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    kind: str = "gdal"
    spacing: tuple[float, ...] = ()
    units: tuple[str | None, ...] = ()
    affine: np.ndarray | None = field(default=None, repr=False, compare=False)
    crs: Any = None
    transform: Any = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.dims) not in SPATIAL_DIMS.values():
            raise ValueError(f"dims must be ('y', 'x') or ('z', 'y', 'x'), got {self.dims}")
        if len(self.shape) != len(self.dims):
            raise ValueError(f"shape {self.shape} does not match dims {self.dims}")
        n = len(self.dims)
        if not self.spacing:
            object.__setattr__(self, "spacing", self._spacing_from_transforms())
        if not self.units:
            object.__setattr__(self, "units", (None,) * n)
        if len(self.spacing) != n or len(self.units) != n:
            raise ValueError(f"spacing {self.spacing} and units {self.units} need one "
                             f"value per dim of {self.dims}")

    def _spacing_from_transforms(self) -> tuple[float, ...]:
        n = len(self.dims)
        if self.transform is not None and n == 2:
            t = self.transform
            return (math.hypot(t.b, t.e), math.hypot(t.a, t.d))
        if self.affine is not None:
            cols = np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0)  # x, y, z
            return tuple(float(v) for v in cols[:n][::-1])
        return (1.0,) * n

    @property
    def ndim(self) -> int:
        """Number of spatial dims (2 or 3)."""
        return len(self.dims)

    @property
    def is_volume(self) -> bool:
        """Whether the image has a ``z`` axis."""
        return self.ndim == 3

    @property
    def georeferenced(self) -> bool:
        """Whether the image has a CRS (a map, not a body or a slide)."""
        return self.crs is not None

    @property
    def unit(self) -> str | None:
        """The length unit shared by every axis, else ``None``."""
        return self.units[0] if len(set(self.units)) == 1 else None

    @property
    def voxel_size(self) -> float:
        """Area (2-D) or volume (3-D) of one pixel or voxel, in ``unit`` to the ndim."""
        if self.transform is not None and self.ndim == 2:
            t = self.transform
            return abs(t.a * t.e - t.b * t.d)
        if self.affine is not None:
            m = np.asarray(self.affine, dtype=np.float64)[:3, :3]
            if self.ndim == 3:
                return float(abs(np.linalg.det(m)))
        return float(np.prod(self.spacing))

    def world_affine(self) -> np.ndarray:
        """Return the 4 x 4 voxel-to-world affine (built from spacing when the file had none)."""
        if self.affine is not None:
            return np.asarray(self.affine, dtype=np.float64)
        out = np.eye(4)
        if self.transform is not None and self.ndim == 2:
            t = self.transform
            out[:2, :2] = [[t.a, t.b], [t.d, t.e]]
            out[:2, 3] = [t.c, t.f]
            return out
        for i, s in enumerate(self.spacing[::-1]):  # x, y, z
            out[i, i] = s
        return out

    def world(self, index: np.ndarray) -> np.ndarray:
        """World coordinates of voxel indices, shape (n, ndim) in ``dims`` order.

        ``index`` holds (continuous) indices in ``dims`` order, e.g. ``(z, y, x)``;
        the result has the world axes in the same order (for NIfTI, ``(S, A, R)``
        reversed from RAS: the third, second and first world axes).
        """
        index = np.atleast_2d(np.asarray(index, dtype=np.float64))
        return self._world_extreme(index, index, np.minimum)

    def world_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World boxes of index boxes: the extremes of :meth:`world` over their corners.

        ``lo``, ``hi``: shape (n, ndim), (continuous) index corners in ``dims`` order.
        The same values as :meth:`world` of all ``2^ndim`` corners, reduced, without
        them: each world coordinate is a sum of one term per index axis added in a
        fixed order, and rounding is monotone, so the extreme corner takes the
        extreme term of every axis.
        """
        lo = np.atleast_2d(np.asarray(lo, dtype=np.float64))
        hi = np.atleast_2d(np.asarray(hi, dtype=np.float64))
        return self._world_extreme(lo, hi, np.minimum), self._world_extreme(lo, hi, np.maximum)

    def _world_extreme(self, lo: np.ndarray, hi: np.ndarray, pick: Any) -> np.ndarray:
        """Per world axis: its offset plus ``pick`` of the two terms of each index axis.

        Element by element in a fixed order (not a matrix product, whose rounding may
        follow the number of rows): a row's bits do not depend on the others. With
        ``lo`` = ``hi``, the world coordinates of those indices.
        """
        n = self.ndim
        a = self.world_affine()
        out = np.empty(lo.shape)
        for k in range(n):  # world axis k (x, y[, z]): column n - 1 - k
            col = np.full(lo.shape[0], a[k, 3])
            for j in range(n):  # index axis j (x, y[, z]) is column n - 1 - j
                col += pick(a[k, j] * lo[:, n - 1 - j], a[k, j] * hi[:, n - 1 - j])
            out[:, n - 1 - k] = col
        return out

    def decimated(self, factors: tuple[int, ...]) -> Geometry:
        """Return the geometry of every ``factors[i]``-th voxel along each dim (a level).

        Nearest decimation: voxel ``i`` of the level is voxel ``f * i`` of this one, so
        the origin is unchanged and the spacing grows by ``f``.
        """
        if len(factors) != self.ndim:
            raise ValueError(f"expected {self.ndim} factors, got {factors}")
        shape = tuple(-(-s // f) for s, f in zip(self.shape, factors, strict=True))
        spacing = tuple(s * f for s, f in zip(self.spacing, factors, strict=True))
        affine = None
        if self.affine is not None:
            affine = np.asarray(self.affine, dtype=np.float64).copy()
            for i, f in enumerate(factors[::-1]):  # x, y, z columns
                affine[:3, i] *= f
        transform = None
        if self.transform is not None and self.ndim == 2:
            from affine import Affine

            transform = self.transform * Affine.scale(factors[1], factors[0])
        return replace(self, shape=shape, spacing=spacing, affine=affine,
                       transform=transform)

    def describe(self) -> dict[str, Any]:
        """Return a JSON-able summary for ``report.json``."""
        out: dict[str, Any] = {"kind": self.kind, "dims": list(self.dims),
                               "shape": list(self.shape),
                               "spacing": [float(s) for s in self.spacing],
                               "units": list(self.units)}
        if self.affine is not None:
            out["affine"] = np.asarray(self.affine, dtype=float).round(9).tolist()
        if self.crs is not None:
            out["crs"] = str(self.crs)
        return out
