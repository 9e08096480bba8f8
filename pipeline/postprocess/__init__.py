"""Post-processing of class maps (majority filter, segments, merging, polygons).

Segments, their merging and their table work on 2-D class maps ``(y, x)`` and on
volumes ``(z, y, x)`` alike (the functions dispatch on ``labels.ndim``).

Names load on first use: segments and polygons bring pandas, pyarrow and shapely,
which a run without them should not pay for at start-up.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

_WHERE = {
    "majority_filter": "_majority",
    "load_kernels": "_merge",
    "merge_small_segments": "_merge",
    "pixels_for_area": "_merge",
    "voxels_for_volume": "_merge",
    "SegmentIndex": "_resolve",
    "SegmentStats": "_resolve",
    "SegmentTasks": "_chunk_tasks",
    "relabel_segments": "_relabel",
    "resolve_segments": "_resolve",
    "segment_tasks": "_segments",
    "segment_table": "_table",
    "chunk_polygons": "_vectorize",
    "dissolve_polygons": "_vectorize",
    "polygons_frame": "_vectorize",
    # postprocess.instances
    "InstanceIndex": "_instance_tasks",
    "InstanceObjects": "_instances",
    "InstanceTasks": "_instance_tasks",
    "auto_class": "_instances",
    "instance_table": "_instances",
    "instance_tasks": "_instance_tasks",
    "relabel_instances": "_instance_tasks",
    "resolve_instances": "_instance_tasks",
    "select_objects": "_instances",
    "split_object": "_instances",
}

__all__: list[str] = sorted(_WHERE)

if TYPE_CHECKING:  # pragma: no cover
    from ._chunk_tasks import SegmentTasks  # noqa: F401
    from ._instance_tasks import (  # noqa: F401
        InstanceIndex,
        InstanceTasks,
        instance_tasks,
        relabel_instances,
        resolve_instances,
    )
    from ._instances import (  # noqa: F401
        InstanceObjects,
        auto_class,
        instance_table,
        select_objects,
        split_object,
    )
    from ._majority import majority_filter  # noqa: F401
    from ._merge import (  # noqa: F401
        load_kernels,
        merge_small_segments,
        pixels_for_area,
        voxels_for_volume,
    )
    from ._relabel import relabel_segments  # noqa: F401
    from ._resolve import SegmentIndex, SegmentStats, resolve_segments  # noqa: F401
    from ._segments import segment_tasks  # noqa: F401
    from ._table import segment_table  # noqa: F401
    from ._vectorize import chunk_polygons, dissolve_polygons, polygons_frame  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use."""
    if name in _WHERE:
        value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
