"""Where the Dask work runs.

The threaded scheduler, a local cluster of worker processes, or an existing
``dask.distributed`` scheduler.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
import dask.local
import dask.threaded

from .config import ComputeConfig

__all__ = ["dask_context", "n_workers", "chunk_budget", "local_while_workers_warm",
           "GDAL_HTTP_RETRIES", "set_gdal_http_retries"]

log = logging.getLogger(__name__)


def n_workers(cfg: ComputeConfig) -> int:
    """Return the number of workers the config asks for (default: the usable cores)."""
    if cfg.n_workers:
        return cfg.n_workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: chunks a worker thread may hold at once: the one it computes, its inputs (with
#: neighbours' halos), and finished blocks waiting to be written or summarised
CHUNKS_PER_THREAD = 8


def chunk_budget(cfg: ComputeConfig) -> float:
    """Return the bytes one chunk's working set may take on the configured workers.

    A worker thread's share of the memory (``memory_limit`` per worker if set, else
    this machine's RAM shared by every thread) over :data:`CHUNKS_PER_THREAD`. A
    scheduler reached by its address is assumed to have workers like this machine
    unless ``memory_limit`` says otherwise.
    """
    import psutil
    from dask.utils import parse_bytes

    workers = n_workers(cfg)
    threads = cfg.threads_per_worker if cfg.scheduler not in ("threads", "synchronous") else 1
    if cfg.memory_limit and cfg.memory_limit != "auto":
        per_worker = float(parse_bytes(cfg.memory_limit))
    else:
        per_worker = psutil.virtual_memory().total / workers
    return per_worker / threads / CHUNKS_PER_THREAD


#: GDAL's retries of transient HTTP errors (``/vsicurl/``, ``/vsis3/`` and the other
#: network file systems): 429, 500, 502-504, an S3 ``RequestTimeout``, and a
#: connection reset or timed out before a response are retried up to 5 times, 0.5 s
#: apart at first, the delay doubling each time (GDAL's own backoff). A response cut
#: short is not (GDAL 3.10): :mod:`pipeline.io._gdal` retries those reads itself.
#: Defaults only: a value in the environment wins.
GDAL_HTTP_RETRIES = {"GDAL_HTTP_MAX_RETRY": "5", "GDAL_HTTP_RETRY_DELAY": "0.5"}


def set_gdal_http_retries() -> dict[str, str]:
    """Set :data:`GDAL_HTTP_RETRIES` in this process unless set; return the values in use."""
    return {k: os.environ.setdefault(k, v) for k, v in GDAL_HTTP_RETRIES.items()}


@contextmanager
def dask_context(cfg: ComputeConfig | None = None) -> Iterator[Any]:
    """Run the enclosed computations on the configured scheduler.

    Yields
    ------
    distributed.Client or None
        A client for ``processes`` (a ``LocalCluster`` of worker processes, one thread
        each by default, which join in the background: work submitted before they do
        waits for them, see :func:`local_while_workers_warm`) and for a scheduler
        address; ``None`` for ``threads`` and ``synchronous``.

    Notes
    -----
    GDAL's block cache is set small (``gdal_cachemax`` MiB) in this process and in the
    workers: tile-at-a-time reads gain nothing from GDAL's default cache (5 % of RAM).
    Remote reads retry transient HTTP errors (:data:`GDAL_HTTP_RETRIES`), here and in
    the workers, unless the environment says otherwise.
    """
    cfg = cfg or ComputeConfig()
    env = {"GDAL_CACHEMAX": str(cfg.gdal_cachemax)}
    os.environ.setdefault("GDAL_CACHEMAX", env["GDAL_CACHEMAX"])
    env.update(set_gdal_http_retries())
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
        settings: dict[str, Any] = {"distributed.nanny.pre-spawn-environ": environ}
        if "forkserver" in multiprocessing.get_all_start_methods():
            # workers forked from one server that imported distributed, dask and numpy
            # once, instead of each spawned process importing them (~0.9 CPU-s a
            # worker): processes runs 0.5-0.8 s shorter at 16384^2 on 2 cores
            settings["distributed.worker.multiprocessing-method"] = "forkserver"
        # set for as long as the cluster lives: the nannies read them when the workers
        # are added, in the cluster's own thread, after `scale` below returns
        with dask.config.set(settings):
            # The scheduler starts here; the workers are added in the background, each
            # warmed up by a plugin before its first task (imports, numba kernels):
            # the caller's first stage runs on this process's threads meanwhile
            # (local_while_workers_warm) instead of waiting ~0.5 s for them.
            cluster = _local_cluster(cfg, env)
            client = Client(cluster)
            try:
                client.register_plugin(_warm_up_plugin(), name="tileseg-warm-up")
                cluster.scale(n_workers(cfg))
                log.info("starting a LocalCluster with %d worker processes%s",
                         n_workers(cfg),
                         f"; dashboard {client.dashboard_link}" if cfg.dashboard else "")
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
        n_workers=0,  # added by the caller's `scale`, without waiting for them
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        dashboard_address=":0" if cfg.dashboard else None,
        scheduler_kwargs={"dashboard": cfg.dashboard},
        memory_limit=cfg.memory_limit or "auto",
        env=env,
        silence_logs=logging.ERROR,
    )


def _warm_worker() -> None:
    """Import the pipeline's block code and load its numba kernels (in a worker)."""
    import numpy as np

    from .cluster._predict import _nearest
    from .io import _write  # noqa: F401  (the writers' code, rasterio, zarr on demand)

    out = np.empty((1, 1), dtype=np.uint8)
    _nearest(np.zeros((1, 1, 1), np.float32), np.zeros((1, 1), np.float32),
             np.ones(1, np.float32), 255, out)


def _warm_up_plugin() -> Any:
    """Return a worker plugin that runs :func:`_warm_worker` as each worker starts.

    Defined here, not at module level, so that threads runs never import
    ``distributed``; cloudpickle sends the class to the workers by value.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class WarmUp(WorkerPlugin):
        def setup(self, worker: Any) -> None:
            _warm_worker()

    return WarmUp()


@contextmanager
def local_while_workers_warm(client: Any, cfg: ComputeConfig) -> Iterator[None]:
    """Compute on local threads while a fresh ``LocalCluster``'s workers start.

    A new worker process starts (forked from a forkserver where the platform has one),
    then imports the pipeline and loads its numba kernels (~0.4 s) in a worker plugin,
    before its first task. The first stage (the sample pass and the fit) reads a small
    part of the image: on a cluster started here, on this machine's files, it runs on
    this process's threads while the workers start and warm up, and the label pass
    then waits for every worker. A cluster reached by its address is used as is (its
    workers may see other files than this process).
    """
    if client is None or getattr(client, "cluster", None) is None:
        yield
        return
    with dask.config.set(scheduler=dask.threaded.get, num_workers=n_workers(cfg)):
        yield
    client.wait_for_workers(n_workers(cfg), timeout=120)
