"""Post-processing of class maps (majority filter, segments, merging, polygons)."""

from ._majority import majority_filter
from ._merge import merge_small_segments, pixels_for_area
from ._segments import (
    SegmentIndex,
    SegmentStats,
    SegmentTasks,
    relabel_segments,
    resolve_segments,
    segment_tasks,
)
from ._table import segment_table
from ._vectorize import chunk_polygons, dissolve_polygons, polygons_frame

for _f in (majority_filter, merge_small_segments, pixels_for_area, relabel_segments,
           resolve_segments, segment_table, segment_tasks, chunk_polygons,
           dissolve_polygons, polygons_frame, SegmentIndex, SegmentStats, SegmentTasks):
    _f.__module__ = __name__
del _f

__all__: list[str] = [
    "majority_filter",
    "SegmentIndex",
    "SegmentStats",
    "SegmentTasks",
    "chunk_polygons",
    "dissolve_polygons",
    "merge_small_segments",
    "pixels_for_area",
    "polygons_frame",
    "relabel_segments",
    "resolve_segments",
    "segment_table",
    "segment_tasks",
]
