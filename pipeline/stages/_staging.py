"""Staging: outputs are written under a hidden name and renamed into place when complete.

Also the run's stage timings (:class:`Timings`), which every stage records through one
context manager.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputExistsError

__all__ = ["PREPARED", "Timings", "prepared", "refuse_existing", "staged_output"]


class Timings(dict[str, float]):
    """Seconds per stage, as ``report.json``'s ``timings_s`` lists them."""

    def __init__(self) -> None:
        super().__init__()
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (added to what it already has)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - t

    def total(self) -> float:
        """Seconds since the run started; recorded as ``total``."""
        self["total"] = time.perf_counter() - self.start
        return self["total"]


def refuse_existing(output: Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` if ``output`` exists and may not be replaced."""
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: output exists; pass --overwrite to replace it")


@contextlib.contextmanager
def staged_output(output: Path, overwrite: bool, keep: tuple[Path, ...] = ()
                  ) -> Iterator[Path]:
    """Yield a staging directory that replaces ``output`` only if the block succeeds.

    Files in ``keep`` (of the old ``output``) are copied into the staging directory
    first, so they survive unless the block rewrites them.

    Raises
    ------
    OutputExistsError
        If ``output`` exists and ``overwrite`` is false (it is left untouched).
    """
    refuse_existing(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for path in keep:
        shutil.copy2(path, staging / path.name)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = output.parent / f".{output.name}.old-{os.getpid()}"
    if output.exists():
        output.rename(old)
    staging.rename(output)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


#: Files of ``tileseg fit`` and ``tileseg elbow``: an output holding only these is not a
#: finished run, so ``run`` and ``predict`` write into it (keeping the figures).
PREPARED = ("model.json", "model.npz", "elbow.json", "elbow.png", "comparison.png")


def prepared(output: Path) -> tuple[Path, ...] | None:
    """Return the figures to keep if ``output`` holds only fit/elbow files, else None."""
    if not output.is_dir():
        return None
    entries = list(output.iterdir())
    if not entries or any(p.name not in PREPARED or not p.is_file() for p in entries):
        return None
    return tuple(p for p in entries if p.name not in ("model.json", "model.npz"))
