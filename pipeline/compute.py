"""Where the Dask work runs.

The threaded scheduler, a local cluster of worker processes, or an existing
``dask.distributed`` scheduler, named by its address or by its scheduler file. A
scheduler reached from here is checked before any work (versions, the input seen
from its workers) and its workers get this process's GDAL and object storage
settings (:func:`forwarded_env`).
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dask
import dask.local
import dask.threaded

from .config import ComputeConfig
from .errors import ClusterError, InputError, first_line
from .io._remote import is_url, object_storage_env

__all__ = ["dask_context", "n_workers", "chunk_budget", "local_while_workers_warm",
           "GDAL_HTTP_RETRIES", "set_gdal_http_retries", "forwarded_env", "FORWARDED_PREFIXES",
           "JOBQUEUE", "job_script", "CLUSTER_CHUNK", "cluster_chunk", "remote_cluster"]

log = logging.getLogger(__name__)


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the operating system (glibc ``malloc_trim``).

    Arrays of a few megabytes freed by a stage (per-chunk tables, joined contacts) stay
    in glibc's heap, counted in the process's resident memory, after glibc raised its
    mmap threshold to their size: at 4096^2 noise with region merging, 176 MB of the
    684 MB resident before the merge were such pages. A no-op where the C library has
    no ``malloc_trim`` (not glibc); returns whether it ran. Python and numpy offer no
    portable call for this, hence ctypes.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Any:
    """Return glibc's ``malloc_trim`` (None: none), looked up once.

    ``find_library`` may run ``ldconfig``: not once per chunk.
    """
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


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


#: the chunk side a run on a cluster aims at (see :func:`cluster_chunk`)
CLUSTER_CHUNK = 2048


def remote_cluster(cfg: ComputeConfig) -> bool:
    """Whether the config runs on a cluster this process only coordinates.

    A scheduler reached by its address or its scheduler file, or workers submitted as
    batch jobs (slurm, pbs); not this machine's threads or worker processes.
    """
    return cfg.scheduler == "file" or "://" in cfg.scheduler or cfg.scheduler in JOBQUEUE


def cluster_chunk(side: int, cfg: ComputeConfig) -> int:
    """Return the default chunk side for ``cfg``: ``side`` (the file's), grown on a cluster.

    On a cluster this process coordinates, each block costs it about 4 ms of CPU
    whatever its size (distributed's future, the task's messages, its result and its
    tiles): with 1024-pixel chunks its write stage takes 3.5 % of the workers' CPU,
    one client for about 29 workers. Doubling the side (a multiple of the file's tiles
    still) quarters the blocks: 1.1 % (bench/RESULTS.md, section 9c). Elsewhere
    ``side`` itself. :func:`~pipeline.io.fit_chunk` then halves it where memory is short.
    """
    if not remote_cluster(cfg):
        return side
    return side * max(1, CLUSTER_CHUNK // side)


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
    """Set :data:`GDAL_HTTP_RETRIES` in this process unless set; return the values in use.

    Also gives GDAL an S3 endpoint set only as ``AWS_ENDPOINT_URL``
    (:func:`~pipeline.io._remote.object_storage_env`).
    """
    os.environ.update(object_storage_env())
    return {k: os.environ.setdefault(k, v) for k, v in GDAL_HTTP_RETRIES.items()}


#: environment variables sent to the workers of a cluster: GDAL's and PROJ's settings,
#: and the credentials and endpoints of object storage (AWS, Google Cloud, Azure)
FORWARDED_PREFIXES = ("GDAL_", "CPL_", "VSI_", "AWS_", "GS_", "GOOGLE_", "AZURE_", "OSS_",
                      "SWIFT_", "PROJ_")


def forwarded_env(own: dict[str, str] | None = None) -> dict[str, str]:
    """Return the settings a cluster's workers get: this process's, then ``own``.

    Every variable of :data:`FORWARDED_PREFIXES` in this process's environment (a
    worker started on another machine then reads the same S3 endpoint, with the same
    credentials), GDAL's names of ``AWS_ENDPOINT_URL``, and ``own`` (the project's GDAL
    options: ``GDAL_CACHEMAX``, :data:`GDAL_HTTP_RETRIES`) where not set here.
    """
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}
    env.update(object_storage_env(env))
    for k, v in (own or {}).items():
        env.setdefault(k, v)
    return env


@contextmanager
def dask_context(cfg: ComputeConfig | None = None, *,
                 sources: str | Sequence[str] = ()) -> Iterator[Any]:
    """Run the enclosed computations on the configured scheduler.

    Parameters
    ----------
    cfg : ComputeConfig, optional
    sources : str or sequence of str
        The run's input (paths, globs or URLs, as configured): on a scheduler reached by
        its address or file, every worker must be able to read it.

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
    the workers, unless the environment says otherwise. The workers of a cluster get
    :func:`forwarded_env` (through a worker plugin, so workers that join later too).

    Raises
    ------
    ClusterError
        A scheduler file that cannot be read, a scheduler that does not answer, or
        workers whose Python, dask, distributed, numpy or tileseg versions differ from
        this process's.
    InputError
        A worker cannot read the input (another file system, no credentials).
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
                client.register_plugin(_env_plugin(forwarded_env(env)), name="tileseg-env")
                cluster.scale(n_workers(cfg))
                log.info("starting a LocalCluster with %d worker processes%s",
                         n_workers(cfg),
                         f"; dashboard {client.dashboard_link}" if cfg.dashboard else "")
                yield client
            finally:
                client.close()
                cluster.close()
    elif cfg.scheduler in JOBQUEUE:
        with _jobqueue_cluster(cfg) as cluster:
            client = Client(cluster)
            try:
                client.register_plugin(_env_plugin(forwarded_env(env)), name="tileseg-env")
                _scale(cluster, cfg)
                log.info("submitted %s jobs for %s workers; the run starts as they join",
                         cfg.scheduler, cfg.n_workers or "one job's")
                yield client
            finally:
                client.close()
    else:
        client = _connect(cfg)
        try:
            _check_versions(client, _named(cfg))
            client.register_plugin(_env_plugin(forwarded_env(env)), name="tileseg-env")
            _check_input(client, [sources] if isinstance(sources, str) else list(sources))
            yield client
        finally:
            client.close()


#: batch systems whose workers dask-jobqueue submits as jobs, by ``compute.scheduler``
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


@contextmanager
def _jobqueue_cluster(cfg: ComputeConfig) -> Iterator[Any]:
    """Start a dask-jobqueue cluster (its scheduler here; no job submitted yet).

    Raises
    ------
    ClusterError
        dask-jobqueue is not installed, or refuses the options (``cores`` and
        ``memory`` of a job are required, here or in dask's ``jobqueue`` config).
    """
    named = f"compute.scheduler: {cfg.scheduler}"
    try:
        import dask_jobqueue
    except ImportError:
        raise ClusterError(f"{named}: needs dask-jobqueue (pip install "
                           "'tileseg[cluster]')") from None
    options = dict(cfg.jobqueue)
    options.setdefault("scheduler_options", {})
    options["scheduler_options"] = {"dashboard_address": ":0" if cfg.dashboard else None,
                                    **options["scheduler_options"]}
    try:
        cluster = getattr(dask_jobqueue, JOBQUEUE[cfg.scheduler])(**options)
    except (ValueError, TypeError) as exc:
        raise ClusterError(f"{named}: {first_line(exc)} (set them under compute.jobqueue)"
                           ) from None
    try:
        yield cluster
    finally:
        try:
            cluster.close()
        except Exception as exc:  # dask-jobqueue cannot close a job whose submission failed
            log.warning("%s: closing the cluster: %s", named, first_line(exc))


def _scale(cluster: Any, cfg: ComputeConfig) -> None:
    """Submit the jobs: ``n_workers`` workers in all, else one job.

    dask-jobqueue submits them in the background: a submit command that is missing
    here is found out first.
    """
    import shlex
    import shutil

    command = shlex.split(cluster.job_cls.submit_command)[0]
    if shutil.which(command) is None:
        raise ClusterError(f"compute.scheduler: {cfg.scheduler}: {command} is not on PATH; "
                           f"run tileseg where jobs are submitted (a login node)")
    try:
        if cfg.n_workers:
            cluster.scale(n=cfg.n_workers)
        else:
            cluster.scale(jobs=1)
    except (OSError, RuntimeError) as exc:  # no sbatch/qsub here, or the queue refused
        raise ClusterError(f"compute.scheduler: {cfg.scheduler}: cannot submit its jobs "
                           f"({first_line(exc)})") from None


def job_script(cfg: ComputeConfig) -> str:
    """Return the batch script that ``scheduler: slurm`` or ``pbs`` would submit.

    A scheduler is started (and closed) here for the script to name its address.
    """
    if cfg.scheduler not in JOBQUEUE:
        raise ValueError(f"scheduler {cfg.scheduler!r} submits no jobs; expected one of "
                         + ", ".join(JOBQUEUE))
    with _jobqueue_cluster(cfg) as cluster:
        return str(cluster.job_script())


def _named(cfg: ComputeConfig) -> str:
    """Return how the config names its scheduler (for messages)."""
    if cfg.scheduler_file:
        return f"compute.scheduler_file: {cfg.scheduler_file}"
    return f"compute.scheduler: {cfg.scheduler}"


def _address(cfg: ComputeConfig) -> str:
    """Return the scheduler's address: the config's, or the one its scheduler file holds."""
    if not cfg.scheduler_file:
        return cfg.scheduler
    path = cfg.scheduler_file
    hint = f"; start the cluster with `dask scheduler --scheduler-file {path}`"
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ClusterError(f"{_named(cfg)}: no such file{hint}") from None
    except OSError as exc:
        raise ClusterError(f"{_named(cfg)}: cannot read it ({exc.strerror or exc})") from None
    except ValueError:
        raise ClusterError(f"{_named(cfg)}: not a scheduler file (expected the JSON that "
                           f"`dask scheduler --scheduler-file` writes){hint}") from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or "://" not in address:
        raise ClusterError(f"{_named(cfg)}: names no scheduler address (expected the JSON "
                           f"that `dask scheduler --scheduler-file` writes){hint}")
    return address


def _connect(cfg: ComputeConfig) -> Any:
    """Connect to the configured scheduler within ``compute.connect_timeout`` seconds."""
    from distributed import Client

    address = _address(cfg)
    try:
        client = Client(address, timeout=cfg.connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"{_named(cfg)}: no scheduler answers at {address} within "
                           f"{cfg.connect_timeout:g} s ({first_line(exc)})") from None
    try:
        client.wait_for_workers(1, timeout=cfg.connect_timeout)
    except TimeoutError:
        client.close()
        raise ClusterError(f"{_named(cfg)}: the scheduler at {address} has no workers (none "
                           f"joined within {cfg.connect_timeout:g} s); start some with `dask "
                           "worker`") from None
    log.info("connected to %s (%d workers)", address,
             len(client.scheduler_info(n_workers=-1).get("workers", {})))
    return client


#: packages whose versions must be the same in the client and every worker: the
#: graph's functions and arrays are pickled here and unpickled there
MUST_MATCH = ("python", "dask", "distributed", "cloudpickle", "msgpack", "numpy", "tileseg")


def _version_of(info: Any, pkg: str) -> str:
    packages = (info or {}).get("packages") or {}
    v = packages.get(pkg)
    if v is None:
        return "missing"
    return ".".join(str(v).split(".")[:2]) if pkg == "python" else str(v)


def _check_versions(client: Any, named: str) -> None:
    """Raise :class:`ClusterError` if a worker's versions differ from this process's."""
    versions = client.get_versions(packages=["tileseg"])
    here = versions["client"]
    found = []
    for pkg in MUST_MATCH:
        mine = _version_of(here, pkg)
        theirs = {addr: _version_of(info, pkg) for addr, info in versions["workers"].items()}
        if pkg in ("dask", "distributed", "python"):
            theirs["the scheduler"] = _version_of(versions["scheduler"], pkg)
        odd = sorted((v, addr) for addr, v in theirs.items() if v != mine)
        if odd:
            v, addr = odd[0]
            more = f" and {len(odd) - 1} more" if len(odd) > 1 else ""
            found.append(f"{pkg} {v} on {addr}{more} (here {mine})")
    if found:
        raise ClusterError(f"{named}: versions differ from this process's: "
                           + "; ".join(found) + "; install the same versions everywhere")


def _input_problem(sources: list[str]) -> str | None:
    """Return why this process cannot read ``sources`` (run on each worker), or None."""
    import glob

    for source in sources[:8]:
        try:
            if is_url(source) and source.rstrip("/").endswith(".zarr"):
                import fsspec

                fs, path = fsspec.core.url_to_fs(source)
                ok = bool(fs.exists(path))
            elif is_url(source) or source.startswith("/vsi"):
                import rasterio

                set_gdal_http_retries()
                with rasterio.open(source):
                    ok = True
            elif any(ch in source for ch in "*?["):
                ok = bool(glob.glob(source))
            else:
                ok = os.path.exists(source)
        except Exception as exc:  # rasterio, botocore, OSError: the cause, in its words
            return f"{source}: {first_line(exc)}"
        if not ok:
            return f"{source}: no such file (working directory {os.getcwd()})"
    return None


def _check_input(client: Any, sources: list[str]) -> None:
    """Raise :class:`InputError` if a worker cannot read the input."""
    if not sources:
        return
    problems = client.run(_input_problem, sources)
    for addr, problem in sorted(problems.items()):
        if problem is not None:
            from ._secrets import redact

            raise InputError(redact(
                f"{problem}: not readable from the cluster's worker {addr}; the workers "
                "must see the input at the same path (a shared file system, an absolute "
                "path) or URL"))


def _local_cluster(cfg: ComputeConfig, env: dict[str, str]) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=0,  # added by the caller's `scale`, without waiting for them
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        # a free port either way: the scheduler's HTTP server starts even without the
        # dashboard, and a busy 8787 (another run, a notebook) would print a warning
        dashboard_address=":0",
        scheduler_kwargs={"dashboard": cfg.dashboard},
        memory_limit=cfg.memory_limit or "auto",
        env=env,
        # a task's error reaches this process as the exception it raised (one line);
        # what the workers themselves log at ERROR is distributed's shutdown races
        # (a heartbeat after the scheduler closed), noise on a quiet run
        silence_logs=logging.CRITICAL,
    )


def _warm_worker() -> None:
    """Import the pipeline's block code and load its numba kernels (in a worker)."""
    import numpy as np

    from .cli._options import quiet_pixel_grids

    quiet_pixel_grids()  # a worker's warnings reach the run's stderr too

    from .cluster._predict import _nearest
    from .io import _write  # noqa: F401  (the writers' code, rasterio, zarr on demand)

    out = np.empty((1, 1), dtype=np.uint8)
    _nearest(np.zeros((1, 1, 1), np.float32), np.zeros((1, 1), np.float32),
             np.ones(1, np.float32), 255, out)


def _env_plugin(env: dict[str, str]) -> Any:
    """Return a worker plugin that sets ``env`` in each worker's environment.

    GDAL reads its configuration (``AWS_S3_ENDPOINT``, ``GDAL_HTTP_MAX_RETRY`` ...) from
    the environment when it opens a file, and botocore its credentials: both see
    these in every task that runs after the plugin. The values travel to the workers
    over the cluster's comms (credentials included: use TLS between machines you do
    not trust); they are never logged.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class Env(WorkerPlugin):
        def __init__(self, env: dict[str, str]) -> None:
            self.env = env

        def __repr__(self) -> str:  # the values are secrets
            return f"Env({sorted(self.env)})"

        def setup(self, worker: Any) -> None:
            os.environ.update(self.env)

    return Env(env)


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
    if (client is None or getattr(client, "cluster", None) is None
            or cfg.scheduler in JOBQUEUE):  # jobs start when the queue says
        yield
        return
    with dask.config.set(scheduler=dask.threaded.get, num_workers=n_workers(cfg)):
        yield
    client.wait_for_workers(n_workers(cfg), timeout=120)
