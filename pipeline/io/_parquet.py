"""Parquet written a part at a time: no table of every row in memory at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ParquetParts"]


class ParquetParts:
    """Appends data frames' rows to one Parquet file (a context manager closes it).

    The first frame sets the schema (pandas' metadata included, without the index);
    a frame of at most pyarrow's row group size (1 Mi rows) makes one row group, so
    that parts of that size write the same file as ``to_parquet(path, index=False)``
    of all of them. Nothing is written until a frame is (:attr:`written`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Any = None

    @property
    def written(self) -> bool:
        return self._writer is not None

    def write(self, frame: Any) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)

    def __enter__(self) -> ParquetParts:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
