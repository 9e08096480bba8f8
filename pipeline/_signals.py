"""SIGTERM and SIGINT stop a run cleanly: :class:`Interrupted` unwinds it.

The command line installs :func:`stop_on_signals`: either signal (a scheduler's time
limit, Ctrl-C) raises :class:`Interrupted` in the main thread, which unwinds the run
like an error, except that its staging directory is kept for ``--resume``. The few
steps that must not be cut in two (the final renames, removing the lock) run under
:func:`deferred`. A file size limit (``ulimit -f``) makes writes fail with ``EFBIG``,
reported as an output error, instead of killing the process with SIGXFSZ.

Only the standard library (imported by the command line before the pipeline).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["Interrupted", "deferred", "quiesce", "stop_on_signals"]

log = logging.getLogger("pipeline.signals")

_STOP = (signal.SIGTERM, signal.SIGINT)
_deferring = 0
_pending: int | None = None


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; exit with ``128 + signum`` (143, 130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _deferring:
        _pending = _pending or signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Raise :class:`Interrupted` on SIGTERM and SIGINT in the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {s: signal.signal(s, _handler) for s in _STOP}
    if hasattr(signal, "SIGXFSZ"):
        previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hook = sys.unraisablehook

    def unraisable(u: Any) -> None:
        # raised where Python ignores exceptions (a gc callback of distributed, a
        # __del__): send the signal again, to be raised where it stops the run
        if isinstance(u.exc_value, Interrupted):
            threading.Timer(0.01, os.kill, (os.getpid(), u.exc_value.signum)).start()
        else:
            hook(u)

    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred(swallow: bool = False) -> Iterator[None]:
    """Hold SIGTERM and SIGINT back until the block is done, then act on them.

    With ``swallow``, a signal that came meanwhile is only logged: the block finished
    what the run was for (the output renamed into place), or was its last step.
    """
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        signum, _pending = (_pending, None) if not _deferring else (None, _pending)
    if signum is not None:
        if not swallow:
            raise Interrupted(signum)
        log.warning("%s came while the output was being put in place: the run completed",
                    signal.Signals(signum).name)


def quiesce() -> None:
    """Let the tasks running on Dask's local threads finish; start no new ones.

    After an error or a signal the scheduler returns at once, but the chunks its threads
    are computing still go to the writers: wait for them before the writers are
    aborted and the output's lock is let go. The pools are made anew on their next use.
    """
    threaded: Any = sys.modules.get("dask.threaded")
    if threaded is None:
        return
    with threaded.pools_lock:
        pools = [threaded.default_pool] + [p for d in threaded.pools.values()
                                           for p in d.values()]
        threaded.default_pool = None
        threaded.pools.clear()
    for pool in pools:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
