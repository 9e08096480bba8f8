"""``--resume``: what a killed run staged, checked, and the chunks it finished, reused.

Beside the output files in the staging directory (:mod:`._staging`) a run keeps::

    .out.partial/
        manifest.json    the config (less output and compute), the input's fingerprint,
                         tileseg's version: written once the model is fitted
        model.json/.npz  the fitted model, loaded by a resume instead of fitting again
        ledger.jsonl     one line per Zarr chunk written: raster, region, CRC-32

A line is appended (and flushed to the OS) only once its chunk's write has returned,
so a chunk in the ledger was fully handed to the file system. A SIGKILL loses nothing
the OS holds; a power cut may (no fsync: it would cost one disk flush per chunk), so a
resume reads every ledgered chunk back and redoes those whose CRC differs (a torn or
corrupt chunk). The Zarr stores are the source of truth: a reused chunk is read from
them and handed to the GeoTIFF stream, the other formats and the class counts, not
written again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig
from ..errors import ConfigError
from ..io._write import crc

__all__ = ["Ledger", "Manifest", "Resumed", "config_record", "input_fingerprint",
           "region_key", "start_manifest"]

log = logging.getLogger("pipeline.runner")

MANIFEST = "manifest.json"
LEDGER = "ledger.jsonl"


def config_record(config: RunConfig) -> dict[str, Any]:
    """Return the config as a resume compares it: all but ``output`` and ``compute``."""
    d = config.to_dict()
    for key in ("output", "compute"):
        d.pop(key, None)
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def _stat(path: str) -> Any:
    if "://" in path:  # a URL: its name only (no request made here)
        return path
    p = Path(path)
    if p.is_dir():  # Zarr, DICOM series: its files' sizes and times, hashed
        h = hashlib.sha256()
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for f in sorted(files):
                st = os.stat(os.path.join(root, f))
                rel = os.path.relpath(os.path.join(root, f), p)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return [str(p), h.hexdigest()]
    try:
        st = p.stat()
    except OSError:
        return [str(p), None]
    return [str(p), st.st_size, st.st_mtime_ns]


def input_fingerprint(config: RunConfig) -> list[Any]:
    """Size and mtime of every input file (globs expanded, directories hashed)."""
    items = [config.input] if isinstance(config.input, str) else list(config.input)
    out: list[Any] = []
    for item in items:
        names = (sorted(glob.glob(item)) if "://" not in item and any(c in item for c in "*?[")
                 else [item])
        out += [_stat(n) for n in names]
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _differences(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "-") != b.get(k, "-"))
    shown = [f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in keys[:limit]]
    return ", ".join(shown) + (f", and {len(keys) - limit} more" if len(keys) > limit else "")


@dataclass
class Manifest:
    """What a resume must match: the config, the input, the version; the model's source."""

    config: dict[str, Any]
    input: list[Any]
    version: str
    model_source: str = "fitted"
    #: digest of the model given to ``tileseg predict`` (None: fitted from the config)
    model: str | None = None

    @classmethod
    def of(cls, config: RunConfig, version: str, given: Any = None) -> Manifest:
        """Return the manifest of a run; ``given``: the model of ``tileseg predict``."""
        return cls(config_record(config), input_fingerprint(config), version,
                   "fitted" if given is None else "loaded",
                   None if given is None else model_digest(given))

    def write(self, staging: Path) -> None:
        tmp = staging / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(self.__dict__, indent=1, sort_keys=True) + "\n")
        tmp.replace(staging / MANIFEST)

    @classmethod
    def read(cls, staging: Path) -> Manifest | None:
        try:
            return cls(**json.loads((staging / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def refuse_other(self, current: Manifest) -> None:
        """Raise :class:`ConfigError` naming what differs from ``current`` (staging kept)."""
        hint = "; rerun without --resume to start over"
        if self.version != current.version:
            what = f"tileseg's version differs ({self.version} -> {current.version})"
        elif self.config != current.config:
            what = (f"the config differs from the killed run's "
                    f"({_differences(self.config, current.config)})")
        elif self.model != current.model:
            what = "the model differs from the killed run's"
        elif self.input != current.input:
            changed = [str(n[0] if isinstance(n, list) else n)
                       for n, o in zip(current.input, self.input, strict=False) if n != o]
            what = ("the input differs from the killed run's ("
                    + (", ".join(changed[:3]) or "other files") + " changed)")
        else:
            return
        exc = ConfigError(f"resume: {what}{hint}")
        exc.keep_staging = True  # type: ignore[attr-defined]
        raise exc


def model_digest(model: Any) -> str:
    """SHA-256 of a model's parameters and bulk arrays."""
    h = hashlib.sha256(json.dumps(model.to_dict(), sort_keys=True, default=str).encode())
    arrays: dict[str, Any] = getattr(model, "_arrays", dict)() or {}
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).data)
    return h.hexdigest()


def region_key(region: Iterable[slice]) -> tuple[tuple[int, int], ...]:
    return tuple((int(s.start), int(s.stop)) for s in region)


@dataclass
class Ledger:
    """The chunks written so far: appended as they are written, read by a resume."""

    path: Path
    #: (raster, region) -> CRC-32 of the lines a killed run left
    previous: dict[tuple[str, tuple[tuple[int, int], ...]], int] = field(default_factory=dict)
    reused: int = 0
    total: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._file: Any = None

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """Read a killed run's ledger (a torn last line is ignored)."""
        previous: dict[tuple[str, tuple[tuple[int, int], ...]], int] = {}
        try:
            text = path.read_text()
        except OSError:
            text = ""
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                key = (str(rec["raster"]), tuple((int(a), int(b)) for a, b in rec["region"]))
                previous[key] = int(rec["crc32"])
            except (ValueError, KeyError, TypeError):
                continue
        return cls(path, previous)

    def record(self, raster: str, region: tuple[slice, ...], block: np.ndarray | int
               ) -> None:
        """Append the line of a chunk whose write has returned (its block, or its CRC)."""
        line = json.dumps({"raster": raster, "region": [list(r) for r in region_key(region)],
                           "crc32": block if isinstance(block, int) else crc(block)}) + "\n"
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "a")  # noqa: SIM115 - closed by close()
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@dataclass
class Resumed:
    """A killed run's staging that matches this run: its model and its ledger."""

    model: Any
    manifest: Manifest
    ledger: Ledger


def start_manifest(staging: Path, manifest: Manifest, model: Any) -> Ledger:
    """Record a fresh run's manifest and model; return its (empty) ledger."""
    from ._fit import save_model

    staging.mkdir(parents=True, exist_ok=True)
    (staging / LEDGER).unlink(missing_ok=True)
    save_model(model, staging)
    manifest.write(staging)
    return Ledger(staging / LEDGER)


def load_resumed(staging: Path, current: Manifest, refit: bool) -> Resumed | None:
    """Check a killed run's staging against this run (raising if it differs).

    Returns None when it has no manifest (killed before its model was fitted). With
    ``refit`` the model is fitted again (the figures need its sample); else loaded.
    """
    from ..cluster import load_model

    manifest = Manifest.read(staging)
    if manifest is None:
        log.info("%s: no manifest: the killed run had not fitted its model", staging.name)
        return None
    manifest.refuse_other(current)
    swept = sweep_partial_files(staging)
    if swept:
        log.info("%s: removed %d chunk file(s) a killed write left half-written",
                 staging.name, swept)
    model = None if refit else load_model(staging / "model.json")
    return Resumed(model, manifest, Ledger.load(staging / LEDGER))


def sweep_partial_files(staging: Path) -> int:
    """Delete the ``*.partial`` files a killed Zarr chunk write left (return how many).

    zarr writes a chunk to ``<key>.<uuid>.partial`` and renames it: a kill between the
    two leaves the temporary file in the store, never a torn chunk. The chunk itself is
    missing or old, and the ledger (written only after the chunk) does not list it, so
    it is computed again.
    """
    n = 0
    for path in staging.rglob("*.partial"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            n += 1
    return n
