"""Post-processing of class maps (majority filter, segments, merging, polygons)."""

__all__: list[str] = []
