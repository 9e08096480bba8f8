"""Reading images and writing results: GeoTIFF/COG, plain images, mosaics, Zarr."""

from ._mask import masked_float, valid_mask
from ._read import SUPPORTED_DTYPES, default_chunk, fit_chunk, open_image
from ._write import LABEL_FORMATS, LabelWriter, label_dtype, palette

__all__ = [
    "LABEL_FORMATS",
    "LabelWriter",
    "SUPPORTED_DTYPES",
    "default_chunk",
    "fit_chunk",
    "label_dtype",
    "masked_float",
    "open_image",
    "palette",
    "valid_mask",
]
