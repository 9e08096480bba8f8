"""Where the Dask work runs.

The threaded scheduler, a local cluster of worker processes, or an existing
``dask.distributed`` scheduler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
import dask.local
import dask.threaded

from .config import ComputeConfig

__all__ = ["dask_context", "n_workers"]

log = logging.getLogger(__name__)


def n_workers(cfg: ComputeConfig) -> int:
    """Return the number of workers the config asks for (default: the usable cores)."""
    if cfg.n_workers:
        return cfg.n_workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextmanager
def dask_context(cfg: ComputeConfig | None = None) -> Iterator[Any]:
    """Run the enclosed computations on the configured scheduler.

    Yields
    ------
    distributed.Client or None
        A client for ``processes`` (a ``LocalCluster`` of worker processes, one thread
        each by default) and for a scheduler address; ``None`` for ``threads`` and
        ``synchronous``.

    Notes
    -----
    GDAL's block cache is set small (``gdal_cachemax`` MiB) in this process and in the
    workers: tile-at-a-time reads gain nothing from GDAL's default cache (5 % of RAM).
    """
    cfg = cfg or ComputeConfig()
    env = {"GDAL_CACHEMAX": str(cfg.gdal_cachemax)}
    os.environ.setdefault("GDAL_CACHEMAX", env["GDAL_CACHEMAX"])
    if cfg.scheduler in ("threads", "synchronous"):
        # the scheduler function, not its name: dask imports `distributed` (~0.8 s) to
        # look for a client whenever the scheduler is given by name
        get = dask.threaded.get if cfg.scheduler == "threads" else dask.local.get_sync
        with dask.config.set(scheduler=get, num_workers=n_workers(cfg)):
            yield None
        return
    from distributed import Client

    # distributed configures its loggers at INFO on import: follow ours, at least WARNING
    ours = logging.getLogger("pipeline").getEffectiveLevel()
    logging.getLogger("distributed").setLevel(ours if ours < logging.INFO else
                                              max(ours, logging.WARNING))

    if cfg.scheduler == "processes":
        # distributed starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also stops
        # glibc from raising its mmap threshold: every block-sized array is then mapped
        # fresh and page-faulted in (6x the page faults, ~1 s of system time a worker
        # per 144 MPix). Our tasks allocate same-sized blocks over and over; leave
        # glibc's defaults.
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ",
                                                    {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = _local_cluster(cfg, env)
        client = Client(cluster)
        log.info("started a LocalCluster with %d worker processes%s", n_workers(cfg),
                 f"; dashboard {client.dashboard_link}" if cfg.dashboard else "")
        try:
            yield client
        finally:
            client.close()
            cluster.close()
    else:
        client = Client(cfg.scheduler)
        log.info("connected to %s", cfg.scheduler)
        try:
            yield client
        finally:
            client.close()


def _local_cluster(cfg: ComputeConfig, env: dict[str, str]) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers(cfg),
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        dashboard_address=":0" if cfg.dashboard else None,
        scheduler_kwargs={"dashboard": cfg.dashboard},
        memory_limit=cfg.memory_limit or "auto",
        env=env,
        silence_logs=logging.ERROR,
    )
