"""Staging: one run at a time writes an output, under a hidden name, renamed into place.

Beside an output ``out`` a run holds (see :mod:`pipeline._lock` for the lock)::

    .out.lock            the lock: JSON naming the run (pid, host, start, command)
    .out.partial/        the staging directory: deterministic, so --resume finds it
        job.json         the run that staged it (the lock's JSON and tileseg's version)
        output/          the files of the output, renamed to ``out`` once complete
    .out.old             the previous output, only between the two renames of a swap

The swap (:meth:`Job.staged`, ``--overwrite`` checked again at that moment): rename
``out`` to ``.out.old``, ``.out.partial/output`` to ``out``, then delete ``.out.old`` and
``.out.partial``. The next run on the output (holding the lock) repairs a swap that
was killed half-way (:func:`recover`): the previous output is restored if the new one
is not in place yet, else ``.out.old`` is deleted. A killed run's staging is kept for
``--resume``; a plain rerun deletes it (one warning) and starts over.

Also the run's stage timings (:class:`Timings`), which every stage records through one
context manager.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._lock import output_lock, pid_alive
from .._signals import deferred, quiesce
from ..errors import OutputError, OutputExistsError, write_cause

__all__ = ["PREPARED", "Job", "Timings", "check_space", "hold_output", "output_bytes",
           "prepared", "recover", "refuse_existing", "staged_output", "staging_dir"]

log = logging.getLogger("pipeline.runner")


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


def staging_dir(output: Path) -> Path:
    """Return the staging directory of ``output``: ``.{name}.partial`` beside it."""
    return output.parent / f".{output.name}.partial"


def _old(output: Path) -> Path:
    return output.parent / f".{output.name}.old"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def recover(output: Path) -> None:
    """Finish or undo what killed runs left beside ``output`` (the lock held).

    A swap killed between its two renames gets the previous output back; one killed
    after them loses ``.{name}.old``. Staging directories of earlier versions
    (``.{name}.tmp-PID``, ``.{name}.old-PID``) whose process is gone are deleted, or
    restored when the output itself is missing.
    """
    legacy: dict[str, list[Path]] = {"old": [], "tmp": []}
    prefix = f".{output.name}."
    for p in sorted(output.parent.iterdir()):
        kind, _, pid = p.name[len(prefix):].partition("-")
        if p.name.startswith(prefix) and kind in legacy and pid.isdigit() \
                and not pid_alive(int(pid)):
            legacy[kind].append(p)
    for old in [_old(output), *legacy["old"]]:
        if not _exists(old):
            continue
        if _exists(output):
            _remove(old)
            log.warning("%s: deleted %s, the previous output a killed run had replaced",
                        output, old.name)
        else:
            old.rename(output)
            log.warning("%s: restored the previous output from %s (a run was killed while "
                        "replacing it)", output, old.name)
    for tmp in legacy["tmp"]:
        _remove(tmp)
        log.warning("%s: deleted %s, left by a killed run", output, tmp.name)


def _keeps_staging(exc: BaseException) -> bool:
    """Whether a run stopped by ``exc`` keeps its staging (for ``--resume``)."""
    return isinstance(exc, KeyboardInterrupt) or getattr(exc, "keep_staging", False)


#: errno of a write that cannot succeed: the output's disk, not its path, is the cause
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class Job:
    """A run's hold on its output, the lock held: staging, then the swap.

    Attributes
    ----------
    output : Path
    staging : Path
        ``.{name}.partial``: :attr:`files` and, later, what ``--resume`` needs.
    files : Path
        Where the run writes its output files (``staging / "output"``).
    keep : tuple of Path or None
        Figures of ``tileseg fit``/``elbow`` to keep, when ``output`` holds only those.
    resume : bool
        ``--resume``: a killed run's staging is kept, and its finished chunks reused
        when its manifest matches this run (:mod:`._resume`).
    """

    def __init__(self, output: Path, overwrite: bool, resume: bool, holder: Any) -> None:
        self.output = output
        self.staging = staging_dir(output)
        self.files = self.staging / "output"
        self.keep = prepared(output)
        self.overwrite = overwrite
        self.resume = resume
        self.holder = holder
        # an output on object storage (pipeline.io._remote.RemoteOutput): `output` is
        # its local stand-in, and the swap uploads the staged files instead of a rename
        self.remote: Any = None

    def _public(self, path: str) -> str:
        """Return a path in the staging directory as the user will see it (in ``output``)."""
        p = Path(path)
        for base, shown in ((self.files, self.output), (self.staging, self.output)):
            if p == base or base in p.parents:
                return os.fspath(shown / p.relative_to(base))
        return path

    def _named(self, exc: BaseException) -> OutputError | None:
        """Return the :class:`OutputError` a failure to write the output is reported as."""
        if isinstance(exc, OutputError):
            exc.path = self._public(exc.path)
            return None
        if isinstance(exc, OSError):
            name = exc.filename if isinstance(exc.filename, str) else None
            ours = name is not None and self._public(name) != name
            if ours or exc.errno in _WRITE_ERRNOS:
                return OutputError(self._public(name) if ours and name else self.output,
                                   write_cause(exc))
        return None

    @contextlib.contextmanager
    def staged(self, keep: tuple[str, ...] | None = None) -> Iterator[Path]:
        """Yield :attr:`files`, renamed to ``output`` if the block succeeds.

        ``keep``: a resume keeps these files of the killed run's :attr:`files` (its
        Zarr stores), and deletes the others; by default all are deleted.

        On an error the staging is deleted, except after a signal (kept for
        ``--resume``). Write failures are raised as :class:`OutputError` naming the
        file in ``output``.

        Raises
        ------
        OutputExistsError
            ``output`` appeared during the run and ``--overwrite`` was not given (not
            replaced; the finished staging is kept).
        """
        try:
            if _exists(self.files) and keep is None:
                _remove(self.files)
            elif _exists(self.files):
                for p in self.files.iterdir():
                    if p.name not in (keep or ()):
                        _remove(p)
            self.files.mkdir(parents=True, exist_ok=True)
            record = {**asdict(self.holder), "tileseg_version": _version()}
            (self.staging / "job.json").write_text(json.dumps(record, indent=1) + "\n")
            for path in self.keep or ():
                shutil.copy2(path, self.files / path.name)
            yield self.files
            self._swap()
        except BaseException as exc:
            quiesce()  # the chunks still being computed are written before all else
            named = self._named(exc)
            if not _keeps_staging(exc):
                shutil.rmtree(self.staging, ignore_errors=True)
            if named is not None:
                raise named from exc
            raise

    def _swap(self) -> None:
        if self.remote is not None:  # --- object storage: upload, report.json last
            self.remote.commit(self.files, self.overwrite)
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        with deferred(swallow=True):
            if _exists(self.output):
                if not (self.overwrite or (self.keep is not None
                                           and prepared(self.output) is not None)):
                    exc = OutputExistsError(
                        f"{self.output}: output appeared during this run; not replaced "
                        f"(pass --overwrite to replace it; the finished run is kept in "
                        f"{self.staging.name} for --resume)")
                    exc.keep_staging = True  # type: ignore[attr-defined]
                    raise exc
                old = _old(self.output)
                self.output.rename(old)
                self.files.rename(self.output)
                _remove(old)
            else:
                self.files.rename(self.output)
            shutil.rmtree(self.staging, ignore_errors=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tileseg")
    except PackageNotFoundError:  # pragma: no cover - not installed
        return "unknown"


@contextlib.contextmanager
def hold_output(output: Path, *, overwrite: bool = False, resume: bool = False,
                command: str | None = None) -> Iterator[Job]:
    """Lock ``output`` for a run, repair what killed runs left, and yield its :class:`Job`.

    Raises
    ------
    OutputLockedError
        Another run holds the output (exit 2, naming it).
    OutputExistsError
        ``output`` exists, ``overwrite`` is false and it holds more than fit/elbow files.
    """
    with output_lock(output, command) as lock:
        recover(output)
        job = Job(output, overwrite, resume, lock.holder)
        refuse_existing(output, overwrite or job.keep is not None)
        staging = job.staging
        if _exists(staging) and resume:
            log.warning("%s: resuming from %s", output, staging.name)
        elif _exists(staging):
            _remove(staging)
            log.warning("%s: deleted %s, the staged work of an interrupted run (pass "
                        "--resume to continue it instead)", output, staging.name)
        elif resume:
            log.warning("%s: nothing to resume (no %s): running from the start", output,
                        staging.name)
        yield job


@contextlib.contextmanager
def staged_output(output: Path, overwrite: bool, keep: tuple[Path, ...] = ()
                  ) -> Iterator[Path]:
    """Yield a staging directory that replaces ``output`` only if the block succeeds.

    :func:`hold_output` and :meth:`Job.staged` in one (the lock held throughout);
    ``keep`` is ignored: the figures of a fit/elbow-only ``output`` are kept anyway.
    """
    with hold_output(output, overwrite=overwrite) as job, job.staged() as files:
        yield files


#: bytes a pixel of a raster takes on disk per byte of its dtype, by format, at the
#: peak of a run: a COG of bytes is streamed uncompressed with its overviews (1.34)
#: and encoded beside them (~0.3); wider IDs are streamed with ZSTD; NIfTI goes
#: through an uncompressed map. Labels compress to ~0.3 (conservative: often less).
_BYTES_PER_PIXEL = {"cog": 1.64, "zarr": 0.3, "ome-zarr": 0.4, "nifti": 1.3}


def output_bytes(rasters: Mapping[str, Any], formats: tuple[str, ...] | list[str],
                 segments: bool = False) -> float:
    """Estimate the disk space the run's rasters need at the peak of their writing.

    ``rasters``: the lazy rasters (a ``size`` and a ``dtype`` each); ``segments`` adds
    a uint32 segment raster of the same size.
    """
    sizes = [(r.size, r.dtype.itemsize) for r in rasters.values()]
    if segments and sizes:
        sizes.append((sizes[0][0], 4))
    total = 0.0
    for n, item in sizes:
        for fmt in formats:
            factor = _BYTES_PER_PIXEL.get(fmt, 1.0)
            if fmt == "cog" and item > 1:
                factor = 0.7  # ZSTD stream + DEFLATE COG
            total += n * item * factor
    return total


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_space(output: Path, need: float) -> None:
    """Refuse early when the output's file system has less free space than ``need``.

    Raises
    ------
    OutputError
        ``output: <path>: needs about X GB, Y GB free``.
    """
    where = output.parent if output.parent.exists() else Path.cwd()
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if need > free:
        raise OutputError(output, f"needs about {_size(need)}, {_size(free)} free")


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
