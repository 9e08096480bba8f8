"""Read counter for ``bench/run_bench.py --read-count`` (not part of tileseg).

Put this directory on ``PYTHONPATH`` and set ``TILESEG_BENCH_READ_LOG`` to a file: every
Python process started with that environment (the ``tileseg`` process and any Dask
worker processes it spawns) then appends one line per ``rasterio`` dataset read:

    pid <TAB> dataset name <TAB> bands read <TAB> row_off <TAB> col_off <TAB> height <TAB> width

``rasterio.io.DatasetReader.read`` and ``read_masks`` are wrapped the moment
``rasterio.io`` is first imported (an import hook), so nothing is imported early and the
pipeline's code is untouched. Without the variable this module does nothing.
"""

from __future__ import annotations

import os
import sys

_LOG = os.environ.get("TILESEG_BENCH_READ_LOG")


def _patch(module) -> None:
    cls = module.DatasetReader
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(ds, indexes, window, kind: str) -> None:
        from rasterio.windows import Window

        if window is None:
            row, col, height, width = 0, 0, ds.height, ds.width
        else:
            if not isinstance(window, Window):
                window = Window.from_slices(*window, height=ds.height, width=ds.width)
            row, col = int(window.row_off), int(window.col_off)
            height, width = int(window.height), int(window.width)
        if indexes is None:
            nb = ds.count
        elif isinstance(indexes, int):
            nb = 1
        else:
            nb = len(indexes)
        line = f"{os.getpid()}\t{kind}\t{ds.name}\t{nb}\t{row}\t{col}\t{height}\t{width}\n"
        os.write(fd, line.encode())

    def wrap(name: str):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            indexes = args[0] if args else kwargs.get("indexes")
            window = args[2] if len(args) > 2 else kwargs.get("window")
            try:
                record(self, indexes, window, name)
            except Exception as exc:  # never break the measured run
                os.write(fd, f"{os.getpid()}\terror\t{exc!r}\n".encode())
            return original(self, *args, **kwargs)

        wrapper.__name__ = name
        wrapper.__doc__ = original.__doc__
        return wrapper

    cls.read = wrap("read")
    cls.read_masks = wrap("read_masks")


if _LOG:
    import importlib.abc
    import importlib.machinery

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "rasterio.io":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                _patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, _Finder())
