"""Where a :class:`DaskExecutor` computes: a running scheduler (``tcp://HOST:8786``), a LocalCluster of worker
processes (``local[:N]``), or a SLURM/PBS batch cluster started through dask-jobqueue."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from backend.config import Config
from backend.errors import UserError

CLUSTERS = ("slurm", "pbs")
INSTALL_HINT = "install Dask support with: pip install 'ilastik-desktop[dask]'"


@dataclass(frozen=True)
class DaskSettings:
    """A Dask engine: ``address`` (``tcp://...`` or ``local[:N]``) or a batch ``cluster`` with its jobs."""

    address: str | None = None
    cluster: str | None = None  # slurm | pbs
    jobs: int = 1
    cores: int = 1  # per job; each core is one single-threaded worker process
    memory: str = "4GB"  # per job
    queue: str | None = None
    walltime: str | None = None
    account: str | None = None
    shared_filesystem: bool = False  # workers read raw data by path instead of receiving it

    def describe(self) -> str:
        """How the engine is named to the user."""
        return self.address or f"{self.cluster} ({self.jobs} jobs x {self.cores} cores)"


def check_address(address: str) -> None:
    """UserError unless ``address`` is ``tcp://``/``tls://`` of a scheduler, ``local`` or ``local:N``."""
    if address == "local" or address.startswith("local:"):
        local_worker_count(address)
    elif not address.startswith(("tcp://", "tls://")):
        raise UserError(f"--dask {address}: expected tcp://HOST:PORT of a Dask scheduler, local or local:N")


def local_worker_count(address: str) -> int | None:
    """N of ``local:N`` (None for ``local``: one per core); UserError for a malformed count."""
    _, _, count = address.partition(":")
    if not count:
        return None
    if not count.isdigit() or int(count) < 1:
        raise UserError(f"--dask {address}: expected local or local:N with N a positive number")
    return int(count)


def start_dask(settings: DaskSettings, config: Config = Config()):
    """A :class:`DaskExecutor` on the engine ``settings`` names (UserError if it cannot be reached or started)."""
    try:
        from distributed import Client

        from backend.distributed.dask_executor import DaskExecutor, ParentWatch
    except ImportError:
        raise UserError(f"--dask and --cluster need Dask: {INSTALL_HINT}") from None
    address = settings.address or ""
    if address == "local" or address.startswith("local:"):
        from distributed import LocalCluster

        count = local_worker_count(address) or len(os.sched_getaffinity(0))
        cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
        client.register_plugin(ParentWatch(os.getpid(), config.worker.parent_poll_s))  # a killed app takes them along
        return DaskExecutor(client, f"local Dask cluster of {count} processes", on_close=cluster.close,
                            config=config.executor)
    if settings.cluster:
        cluster = batch_cluster(settings)
        cluster.scale(jobs=settings.jobs)
        return DaskExecutor(Client(cluster), settings.describe(), on_close=cluster.close, config=config.executor)
    check_address(address)
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    return DaskExecutor(client, address, config=config.executor)


def batch_cluster(settings: DaskSettings):
    """The dask-jobqueue cluster (not yet scaled): one job = ``cores`` single-threaded worker processes."""
    try:
        import dask_jobqueue
    except ImportError:
        raise UserError(f"--cluster needs dask-jobqueue: {INSTALL_HINT}") from None
    if settings.cluster not in CLUSTERS:
        raise UserError(f"--cluster {settings.cluster}: choose one of {', '.join(CLUSTERS)}")
    if settings.jobs < 1 or settings.cores < 1:
        raise UserError("--cluster-jobs and --cluster-cores must be positive")
    kind = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[settings.cluster]
    options = {"cores": settings.cores, "processes": settings.cores, "memory": settings.memory,
               "queue": settings.queue, "walltime": settings.walltime, "account": settings.account}
    try:
        given = {k: v for k, v in options.items() if v is not None}
        return kind(**given, scheduler_options={"dashboard_address": None})
    except ValueError as exc:
        raise UserError(f"--cluster {settings.cluster}: {exc}") from None


def job_script(settings: DaskSettings) -> str:
    """The batch script one job of ``settings`` would submit (nothing is submitted)."""
    cluster = batch_cluster(settings)
    try:
        return cluster.job_script()
    finally:
        cluster.close()
