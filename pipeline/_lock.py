"""One writer per output: a lock file beside it, ``.{name}.lock``.

The lock is created atomically (``O_CREAT | O_EXCL``) and holds one JSON object naming
its run: ``{"pid": 123, "host": "node7", "started": "2026-01-05T10:12:03+01:00",
"command": "tileseg run c.yaml"}``. The holder also keeps an exclusive ``flock`` on it
for as long as it lives, so a run that died (``kill -9``, the OOM killer) is told apart
from a live one even when its pid was reused: a lock on this host that no live process
holds is taken over with one warning (its file rewritten in place, under the flock, so
that two runs taking it over at once cannot both win). A lock of another host is never
taken over: its pid cannot be checked from here.

Only the standard library: the command line takes the lock before it imports the
pipeline (a second run is refused in a fraction of a second).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import OutputError, OutputLockedError, write_cause

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: liveness by pid only
    fcntl = None  # type: ignore[assignment]

__all__ = ["Holder", "OutputLock", "lock_path", "output_lock", "pid_alive"]

log = logging.getLogger("pipeline.lock")

#: how long a lock being created (empty: its JSON not written yet) is waited for
STARTING_S = 1.0


def lock_path(output: Path) -> Path:
    """Return the lock file of ``output``: ``.{name}.lock`` beside it."""
    return output.parent / f".{output.name}.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


@dataclass(frozen=True)
class Holder:
    """The run a lock names."""

    pid: int
    host: str
    started: str
    command: str = ""

    @classmethod
    def me(cls, command: str | None = None) -> Holder:
        """Return this process, now."""
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        if command is None:
            command = " ".join([Path(sys.argv[0]).name or "python", *sys.argv[1:]])
        return cls(os.getpid(), socket.gethostname(), now, command[:500])

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """Return the holder a lock file's text names, or None (empty or not ours)."""
        try:
            d = json.loads(text)
            return cls(int(d["pid"]), str(d["host"]), str(d["started"]),
                       str(d.get("command", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    def local(self) -> bool:
        return self.host == socket.gethostname()

    def describe(self) -> str:
        """``pid 123 on node7, started 2026-01-05T10:12:03+01:00: tileseg run c.yaml``."""
        what = f": {self.command}" if self.command else ""
        return f"pid {self.pid} on {self.host}, started {self.started}{what}"


def _flock(fd: int) -> bool | None:
    """Try to take an exclusive flock on ``fd``.

    True if taken, False if another process holds it, None where this file system has
    no locks.
    """
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP: an NFS mount without locks, a FUSE file system
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 65536).decode("utf-8", "replace")


def _refusal(output: Path, path: Path, holder: Holder | None) -> OutputLockedError:
    if holder is None:
        return OutputLockedError(f"{output}: another run is starting on this output "
                                 f"({path.name}); try again once it has finished")
    hint = "" if holder.local() else f"; if that run is gone, remove {path}"
    if holder.local() and not pid_alive(holder.pid):
        hint = " (its process is gone, but one it started still holds the lock)"
    return OutputLockedError(f"{output}: in use by another run ({holder.describe()}){hint}; "
                             "wait for it to finish")


class OutputLock:
    """The lock of one output, held by this process between :meth:`acquire` and :meth:`release`."""

    def __init__(self, output: Path, command: str | None = None) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self.holder = Holder.me(command)
        self.fd: int | None = None
        self.took_over: Holder | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`OutputLockedError` naming its holder.

        Raises
        ------
        OutputLockedError
            A live run holds it (or one of another host, or one being created).
        OutputError
            The lock cannot be created beside the output (read-only directory, ...).
        """
        deadline = time.monotonic() + STARTING_S
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if self._judge(deadline):
                    return
                continue
            except OSError as exc:
                raise OutputError(self.output, f"cannot create its lock {self.path.name} "
                                  f"beside it ({write_cause(exc)})") from exc
            try:
                # a process that opened it first (to judge it) lets go within a moment
                while _flock(fd) is False and time.monotonic() < deadline + 1:
                    time.sleep(0.01)
                os.write(fd, self.holder.to_json().encode())
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    self.path.unlink()
                raise
            self.fd = fd
            return

    def _judge(self, deadline: float) -> bool:
        """Take over the existing lock if its run is dead (True), retry (False), or raise."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False  # released meanwhile
        except PermissionError:
            fd = os.open(self.path, os.O_RDONLY)  # another user's: never taken over
        keep = False
        try:
            # True: no live process holds it; False: one does; None: no flock here
            locked = _flock(fd)
            holder = Holder.parse(_read(fd))
            if locked and not _same_file(fd, self.path):
                return False  # released (and maybe taken) between open and flock
            if holder is None:  # being created, or its creator died before writing it
                age = time.time() - os.fstat(fd).st_mtime
                if locked is False or age < 2 * STARTING_S:
                    if time.monotonic() > deadline:
                        raise _refusal(self.output, self.path, None)
                    time.sleep(0.05)
                    return False
            elif (locked is False or not holder.local()
                  or (locked is None and pid_alive(holder.pid))):
                raise _refusal(self.output, self.path, holder)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, self.holder.to_json().encode(), 0)
            except OSError as exc:
                raise OutputError(self.output, f"cannot take over the lock {self.path.name} "
                                  f"of a dead run ({write_cause(exc)})") from exc
            self.took_over = holder
            log.warning("%s: took over the lock of a run that is no longer running (%s)",
                        self.output, "an empty lock" if holder is None else holder.describe())
            self.fd, keep = fd, True
            return True
        finally:
            if not keep:
                os.close(fd)

    def release(self) -> None:
        """Remove the lock file (if still ours) and let go of it."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if _same_file(fd, self.path) and Holder.parse(_read(fd)) == self.holder:
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


#: the locks this process holds, by lock file, with the thread that took each
_held: dict[str, tuple[OutputLock, int]] = {}


@contextlib.contextmanager
def output_lock(output: Path, command: str | None = None) -> Iterator[OutputLock]:
    """Hold the lock of ``output`` for the block (see :class:`OutputLock`).

    Re-entrant in one thread: the command line takes the lock before it imports the
    pipeline (a second run is refused in a fraction of a second), and the run it
    calls holds it on.
    """
    from ._signals import deferred

    key = os.path.abspath(lock_path(Path(output)))
    held = _held.get(key)
    if held is not None and held[1] == threading.get_ident():
        yield held[0]
        return
    lock = OutputLock(output, command)
    lock.acquire()
    _held[key] = (lock, threading.get_ident())
    try:
        yield lock
    finally:
        with deferred(swallow=True):
            _held.pop(key, None)
            lock.release()
