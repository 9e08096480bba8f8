"""Reading images and writing results.

GeoTIFF/COG, plain images, mosaics, Zarr, NIfTI, DICOM, OME-TIFF and whole-slide TIFFs,
OME-Zarr.
"""

from ._geometry import Geometry
from ._mask import masked_float, valid_mask
from ._read import open_image, open_with_geometry, read_overview
from ._reader_common import SUPPORTED_DTYPES, default_chunk, fit_chunk
from ._write import LABEL_FORMATS, LabelWriter, label_dtype, palette

__all__ = [
    "Geometry",
    "LABEL_FORMATS",
    "LabelWriter",
    "SUPPORTED_DTYPES",
    "default_chunk",
    "fit_chunk",
    "label_dtype",
    "masked_float",
    "open_dicom",
    "open_image",
    "open_nifti",
    "open_ome_zarr",
    "open_tiff",
    "open_with_geometry",
    "palette",
    "read_overview",
    "valid_mask",
]


def __getattr__(name: str) -> object:
    # the format readers import nibabel, pydicom, tifffile or zarr: only when used
    lazy = {"open_nifti": "._nifti", "open_dicom": "._dicom", "open_tiff": "._ome",
            "open_ome_zarr": "._ome"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
