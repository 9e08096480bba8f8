"""Agreement between a segmentation and a reference, from streamed contingency tables.

Every measure here is a function of one table: how many valid pixels carry each pair
(truth label, predicted label). :func:`contingency` builds that table lazily from two
label rasters of any size: each chunk's pairs are counted on their own (a ``bincount``
when the chunk's labels span a small range, else ``np.unique`` of 64-bit pair codes),
and the sparse per-chunk tables are merged in a tree. Memory is bounded by the chunk
size times the workers plus the number of distinct label pairs, never by the image
size. :func:`evaluate_rasters` (the command line's ``tileseg evaluate``) is the one
function here that computes.

Pixels and labels
-----------------
Label maps are 2-D ``(y, x)`` or volumes ``(z, y, x)`` in any format
:func:`pipeline.open_image` reads (GeoTIFF, NIfTI, OME-Zarr, Zarr, ...); "pixels"
below are voxels of volumes.

- A pixel equal to a raster's nodata value (or NaN) in either map is left out of
  everything (``pixels.nodata``). The NIfTI and OME-Zarr class maps and segment-ID
  images tileseg writes have no nodata value but store "no label" as 0 (class ``c``
  as ``c + 1``): read from their path (the NIfTI ``descrip`` starts with "tileseg
  classes" or "tileseg segment"; the OME-Zarr has ``image-label`` and tileseg's
  ``multiscales`` metadata), their 0 is nodata. Other files' 0 is a label.
- ``ignore`` lists label values that mean "no label" (unlabelled, background). As in
  scikit-image's ``ignore_labels`` and the BSDS500 benchmark's unlabelled pixels, the
  pixels whose *truth* label is ignored are left out of the class and region measures.
  An ignored value is never matched, in either map: it is not a class in the Hungarian
  matching (predicted pixels carrying it are errors), not a region in the covering,
  not an object in the instance measures. Without ``ignore``, 0 is an ordinary label.

Measures
--------
Class maps
    The best one-to-one matching of predicted labels to true classes (Hungarian,
    :func:`scipy.optimize.linear_sum_assignment`, maximising the matched pixels; a
    pair with no common pixel is not a match), the confusion matrix after it, overall
    accuracy (matched pixels / compared pixels), Cohen's kappa of the matched labels
    (unmatched predicted labels are classes of their own), normalised mutual
    information (mutual information over the arithmetic mean of the two entropies,
    scikit-learn's default) and the adjusted Rand index (Hubert and Arabie).
Region maps (the BSDS500 benchmark's definitions, Arbelaez et al. 2011)
    Probabilistic Rand index: the fraction of pixel pairs on which the two maps
    agree (same region in both, or different in both), averaged over the truths;
    variation of information ``H(pred | truth) + H(truth | pred)`` in bits, averaged
    over the truths; segmentation covering of the truths by the prediction,
    ``sum_R |R| max_R' IoU(R, R') / sum_R |R|`` over every true region ``R`` of every
    truth, where a predicted region's size counts all its valid pixels (as in the
    benchmark's ``match_segmentations``).
Instance maps
    A true and a predicted object match when their IoU exceeds 0.5 (strictly, as in
    the 2018 Data Science Bowl metric; such matches are one-to-one); F1 =
    2 TP / (predicted objects + true objects), and the mean IoU of the matched pairs.
    Object sizes count every valid pixel.

Figures (matplotlib; in-memory arrays): :func:`show_labels` draws a label map in the
colours of ``labels.tif``, :func:`show_image` an image quicklook,
:func:`comparison_figure` the original next to segmentations, :func:`plot_confusion`
the confusion matrix of an evaluation.
"""

from ._api import evaluate_rasters, measures, rounded, summary
from ._figures import (
    colour_table,
    comparison_figure,
    label_rgba,
    plot_confusion,
    show_image,
    show_labels,
)
from ._measures import (
    adjusted_rand_index,
    cohen_kappa,
    instance_scores,
    match_labels,
    normalized_mutual_info,
    overall_accuracy,
    probabilistic_rand_index,
    segmentation_covering,
    variation_of_information,
)
from ._table import (
    ContingencyTable,
    check_same_grid,
    class_instances,
    contingency,
    contingency_table,
    labels_from_masks,
)

__all__ = [
    "ContingencyTable",
    "adjusted_rand_index",
    "check_same_grid",
    "class_instances",
    "cohen_kappa",
    "colour_table",
    "comparison_figure",
    "contingency",
    "contingency_table",
    "evaluate_rasters",
    "instance_scores",
    "label_rgba",
    "labels_from_masks",
    "match_labels",
    "measures",
    "normalized_mutual_info",
    "overall_accuracy",
    "plot_confusion",
    "probabilistic_rand_index",
    "rounded",
    "segmentation_covering",
    "show_image",
    "show_labels",
    "summary",
    "variation_of_information",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
