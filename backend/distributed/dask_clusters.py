"""Where a :class:`DaskExecutor` computes: a running scheduler (``tcp://HOST:8786``), a LocalCluster of worker
processes (``local[:N]``), or a SLURM/PBS batch cluster started through dask-jobqueue.

Every value that reaches a batch job script is checked for its form first (:func:`check_batch`): the script is
run by a shell, so a newline or a metacharacter in a queue name would be a command of its own."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import resource_tracker
from typing import Any
from urllib.parse import urlsplit

from backend.config import Config, WorkerConfig
from backend.errors import UserError

log = logging.getLogger(__name__)

CLUSTERS = ("slurm", "pbs")
INSTALL_HINT = "install Dask support with: pip install 'ilastik-desktop[dask]'"
MAX_JOBS = 10_000  # batch jobs of one run; more is a typo rather than a plan
MAX_JOB_CORES = 1024  # cores of one job, which runs on one node
MAX_JOB_MEMORY = 64 * 2**40  # memory of one job (one node)
_WALLTIME = {"slurm": (r"([0-9]{1,3}-)?[0-9]{1,4}:[0-5][0-9]:[0-5][0-9]", "HH:MM:SS or D-HH:MM:SS"),
             "pbs": (r"[0-9]{1,5}:[0-5][0-9]:[0-5][0-9]", "HH:MM:SS")}
_QUEUE = r"[A-Za-z0-9][A-Za-z0-9_.@,+-]{0,127}"  # a partition list (SLURM) or queue@server (PBS)
_ACCOUNT = r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}"
_HOST = r"[A-Za-z0-9:][A-Za-z0-9.:-]{0,252}"  # a host name, an IPv4 or an IPv6 address
_MEMORY = r"[0-9]{1,9}(\.[0-9]{1,6})?\s?([kKmMgGtTpP]i?)?[bB]?"
_PATH = r"[A-Za-z0-9_./+@%,:=~-]+"  # a path a shell takes as one word, as it is
_PLAIN = "letters, digits and _.@+-"
_FOLDER_PREFIX = ".ilastik-desktop-dask-"  # a batch cluster's certificates, in the shared folder


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
    host: str | None = None  # the batch cluster's scheduler listens here (None: this host's address)
    dashboard: str | None = None  # HOST:PORT of the scheduler's dashboard (None: no dashboard)

    def describe(self) -> str:
        """How the engine is named to the user."""
        return self.address or f"{self.cluster} ({self.jobs} jobs x {self.cores} cores)"


def is_local_cluster(address: str) -> bool:
    """Whether ``address`` asks for a LocalCluster (``local`` or ``local:N``)."""
    return address == "local" or address.startswith("local:")


def check_address(address: str) -> None:
    """UserError unless ``address`` is ``tcp://HOST[:PORT]`` (or ``tls://`` with this client's certificates in
    the Dask configuration), ``local`` or ``local:N``."""
    if is_local_cluster(address):
        local_worker_count(address)
        return
    scheme = address.partition("://")[0]
    if scheme not in ("tcp", "tls"):
        raise UserError(f"--dask {address!r}: expected tcp://HOST:PORT of a Dask scheduler, local or local:N")
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        parts = port = None
    if (parts is None or not parts.hostname or not re.fullmatch(_HOST, parts.hostname) or port == 0
            or parts.path or parts.query or parts.fragment or "@" in parts.netloc):
        raise UserError(f"--dask {address!r}: expected {scheme}://HOST:PORT with a port from 1 to 65535 (an IPv6 "
                        f"address in brackets: {scheme}://[::1]:8786)")
    if scheme == "tls" and _client_security().get_connection_args("client")["ssl_context"] is None:
        raise UserError(f"--dask {address}: TLS needs this client's certificates in the Dask configuration "
                        "(distributed.comm.tls.ca-file, .client.cert and .client.key; e.g. the environment variable "
                        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE)")


def local_worker_count(address: str) -> int | None:
    """N of ``local:N`` (None for ``local``: one per core); UserError for a malformed count."""
    _, _, count = address.partition(":")
    if not count:
        return None
    if not re.fullmatch(r"[0-9]{1,9}", count) or int(count) < 1:
        raise UserError(f"--dask {address!r}: expected local or local:N with N a positive number")
    return int(count)


def check_batch(settings: DaskSettings, limits: WorkerConfig) -> None:
    """UserError unless every value of ``settings`` that reaches a job script is of its form and in range
    (a job's memory must give each of its processes ``limits.process_memory_mb``)."""
    if settings.cluster not in CLUSTERS:
        raise UserError(f"--cluster {settings.cluster!r}: choose one of {', '.join(CLUSTERS)}")
    if not 1 <= settings.jobs <= MAX_JOBS:
        raise UserError(f"--cluster-jobs {settings.jobs}: expected 1 to {MAX_JOBS}")
    if not 1 <= settings.cores <= MAX_JOB_CORES:
        raise UserError(f"--cluster-cores {settings.cores}: expected 1 to {MAX_JOB_CORES} (the cores of one job, "
                        "which runs on one node)")
    memory = _memory_bytes(settings.memory)
    per_process = memory / settings.cores / 2**20
    if per_process < limits.process_memory_mb:
        raise UserError(f"--cluster-memory {settings.memory}: {settings.cores} worker processes would have "
                        f"{per_process:.0f} MB each; each needs at least {limits.process_memory_mb:g} MB "
                        "(worker.process_memory_mb)")
    _check_form("--cluster-queue", settings.queue, _QUEUE, _PLAIN + " and ,")
    _check_form("--cluster-account", settings.account, _ACCOUNT, _PLAIN)
    pattern, form = _WALLTIME[settings.cluster]
    _check_form("--cluster-walltime", settings.walltime, pattern, form)
    _check_form("--cluster-host", settings.host, _HOST, "a host name or IP address")
    if settings.host is not None and _is_wildcard(settings.host):
        raise UserError(f"--cluster-host {settings.host}: the scheduler would listen on every interface and the jobs "
                        "cannot connect to a wildcard; give this machine's address on the cluster's network")
    if settings.dashboard is not None:
        check_dashboard(settings.dashboard)


def check_dashboard(address: str) -> None:
    """UserError unless ``address`` (of ``--cluster-dashboard``) is ``HOST:PORT``."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not (re.fullmatch(_HOST, host) and re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
        raise UserError(f"--cluster-dashboard {address!r}: expected HOST:PORT, e.g. 127.0.0.1:8787")


def start_dask(settings: DaskSettings, config: Config = Config()):
    """A :class:`DaskExecutor` on the engine ``settings`` names (UserError if it cannot be reached or started)."""
    try:
        from distributed import Client

        from backend.distributed.dask_executor import DaskExecutor, ParentWatch
    except ImportError:
        raise UserError(f"--dask and --cluster need Dask: {INSTALL_HINT}") from None
    address = settings.address or ""
    if is_local_cluster(address):
        from distributed import LocalCluster

        count = local_worker_count(address) or len(os.sched_getaffinity(0))
        with _sigint_blocked():  # its loop thread and worker processes inherit the blocked SIGINT
            cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
        client = Client(cluster)
        client.register_plugin(ParentWatch(os.getpid(), config.worker.parent_poll_s))  # a killed app takes them along
        return DaskExecutor(client, f"local Dask cluster of {count} processes", on_close=cluster.close,
                            config=config.executor)
    if settings.cluster:
        cluster, close = batch_cluster(settings, config.worker)
        try:
            cluster.scale(jobs=settings.jobs)
            return DaskExecutor(Client(cluster), settings.describe(), on_close=close, config=config.executor)
        except BaseException:
            close()
            raise
    check_address(address)
    timeout = config.executor.dask_connect_timeout_s
    _probe(address, timeout)
    try:
        client = Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    return DaskExecutor(client, address, config=config.executor)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread meanwhile. The threads and processes started meanwhile keep it blocked: a
    Ctrl-C to the terminal's process group then reaches the app alone, which stops them itself (instead of each
    printing its KeyboardInterrupt traceback). A Ctrl-C meanwhile is delivered when this ends."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    resource_tracker.ensure_running()  # started later, it would unblock SIGINT in the thread that starts it
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _probe(address: str, timeout: float) -> None:
    """UserError unless a Dask scheduler at ``address`` completes Dask's handshake within ``timeout`` seconds
    (Dask's own connect waits for ever on a silent server, and reads another server's answer as a frame size)."""
    from distributed.comm import connect

    async def handshake() -> None:
        args = _client_security().get_connection_args("client")
        comm = await asyncio.wait_for(connect(address, timeout=timeout, **args), timeout)
        await comm.close()

    with ThreadPoolExecutor(1, thread_name_prefix="dask-probe") as pool:  # the caller may run an event loop
        try:
            pool.submit(asyncio.run, handshake()).result()
        except (TimeoutError, asyncio.TimeoutError):
            raise UserError(f"no Dask scheduler answered at {address} within {timeout:g} s "
                            "(executor.dask_connect_timeout_s)") from None
        except OSError as exc:
            raise UserError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any other failure means another protocol answered
            raise UserError(f"{address} does not answer like a Dask scheduler (another service, e.g. a web server? "
                            f"{type(exc).__name__})") from None


def _client_security():
    """This client's TLS settings from the Dask configuration (UserError if a file it names cannot be read)."""
    try:
        from distributed.security import Security
    except ImportError:
        raise UserError(f"--dask needs Dask: {INSTALL_HINT}") from None
    try:
        return Security()
    except OSError as exc:
        raise UserError(f"the Dask configuration's TLS settings: {exc}") from None


def batch_cluster(settings: DaskSettings, limits: WorkerConfig = WorkerConfig()) -> tuple[Any, Callable[[], None]]:
    """The dask-jobqueue cluster (not yet scaled; one job = ``cores`` single-threaded worker processes) and what
    closes it and removes the private folder (in a shared one) that the jobs read its temporary certificates
    from. Its scheduler listens on ``settings.host`` only, with TLS; no dashboard unless ``settings.dashboard``
    asks for one."""
    kind = _cluster_class(settings, limits)
    try:
        from distributed.security import Security

        security = Security.temporary()
    except ImportError:
        raise UserError("--cluster secures its scheduler with TLS, which needs the cryptography package: "
                        "pip install cryptography") from None
    import dask

    host = settings.host or scheduler_host()
    if settings.dashboard:
        dashboard = {"dashboard": True, "dashboard_address": settings.dashboard}
        routes = dask.config.get("distributed.scheduler.http.routes")
    else:  # the scheduler always has an HTTP server: on loopback, serving nothing
        dashboard = {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
        routes = []
    folder = tempfile.mkdtemp(prefix=_FOLDER_PREFIX, dir=shared_folder(settings.cluster))
    try:
        with dask.config.set({"distributed.scheduler.http.routes": routes}):
            cluster = kind(**job_options(settings), protocol="tls://", security=security,
                           shared_temp_directory=folder, scheduler_options={"host": host, **dashboard})
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, (ValueError, OSError, RuntimeError)):
            raise UserError(f"--cluster {settings.cluster}: cannot start its scheduler on {host}: {exc}") from None
        raise
    shown = f"a dashboard at {settings.dashboard} (unauthenticated)" if settings.dashboard else "no dashboard"
    log.warning("the Dask scheduler of the %s jobs listens at %s (TLS with temporary certificates, which the jobs "
                "read from %s); %s", settings.cluster, cluster.scheduler_address, folder, shown)

    def close() -> None:
        try:
            cluster.close()
        finally:  # the certificate files' own handles delete them; then the folder is empty
            for value in list(vars(cluster).values()):
                if str(getattr(value, "name", "")).startswith(folder + os.sep) and hasattr(value, "close"):
                    value.close()
            shutil.rmtree(folder, ignore_errors=True)

    return cluster, close


def job_script(settings: DaskSettings, limits: WorkerConfig = WorkerConfig()) -> str:
    """The batch script one job of ``settings`` would submit, with placeholders for the scheduler's port and the
    certificates' names; nothing is started or submitted."""
    kind = _cluster_class(settings, limits)
    from distributed.security import Security

    try:
        host = settings.host or scheduler_host()
    except UserError:
        host = "<scheduler-host>"
    folder = os.path.join(shared_folder(settings.cluster), _FOLDER_PREFIX + "XXXXXXXX")
    names = {f"tls_{role}": f"{folder}/.dask-jobqueue.worker.{key}.XXXXXXXX"
             for role, key in (("ca_file", "ca_file"), ("worker_cert", "cert"), ("worker_key", "key"))}
    job = kind.job_cls(f"tls://{host}:<port>", name="dummy-name", protocol="tls://",
                       security=Security(require_encryption=True, **names), **job_options(settings))
    return job.job_script()


def job_options(settings: DaskSettings) -> dict:
    """The job's resources as dask-jobqueue takes them (the values checked by :func:`check_batch`)."""
    options = {"cores": settings.cores, "processes": settings.cores, "memory": settings.memory,
               "queue": settings.queue, "walltime": settings.walltime, "account": settings.account}
    return {k: v for k, v in options.items() if v is not None}


def scheduler_host() -> str:
    """The address of this host that batch jobs reach it at: its name's address, else that of the interface
    with the default route (UserError if both are loopback)."""
    from distributed.utils import get_ip

    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = "127.0.0.1"
    if ipaddress.ip_address(address).is_loopback:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            address = get_ip()
    if ipaddress.ip_address(address).is_loopback:
        raise UserError("--cluster: this host's name resolves to a loopback address, which batch jobs cannot reach; "
                        "give the address they reach it at with --cluster-host")
    return address


def shared_folder(cluster: str | None) -> str:
    """Where the jobs read their certificates: dask-jobqueue's shared-temp-directory, else the home folder
    (UserError if a shell would not take its path as one word)."""
    import dask

    folder = dask.config.get(f"jobqueue.{cluster}.shared-temp-directory", None) or os.path.expanduser("~")
    _check_form(f"jobqueue.{cluster}.shared-temp-directory (Dask configuration) or the home folder", folder, _PATH,
                "a path of letters, digits and _./+@%,:=~-")
    return folder


def _cluster_class(settings: DaskSettings, limits: WorkerConfig):
    """The dask-jobqueue cluster class of ``settings`` (checked, with the Python the jobs would run)."""
    try:
        import dask
        import dask_jobqueue
    except ImportError:
        raise UserError(f"--cluster needs dask-jobqueue: {INSTALL_HINT}") from None
    check_batch(settings, limits)
    python = dask.config.get(f"jobqueue.{settings.cluster}.python", None) or sys.executable
    _check_form("the jobs' Python", python, _PATH, "a path of letters, digits and _./+@%,:=~-")
    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[settings.cluster]


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name


def _memory_bytes(text: str) -> int:
    try:
        from dask.utils import parse_bytes
    except ImportError:
        raise UserError(f"--cluster needs dask-jobqueue: {INSTALL_HINT}") from None
    try:
        if not re.fullmatch(_MEMORY, text):
            raise ValueError
        memory = parse_bytes(text)
    except ValueError:
        raise UserError(f"--cluster-memory {text!r}: expected an amount like 4GB or 512MiB") from None
    if memory > MAX_JOB_MEMORY:
        raise UserError(f"--cluster-memory {text}: more than the {MAX_JOB_MEMORY // 2**40} TiB one job can have")
    return memory


def _check_form(option: str, value: str | None, pattern: str, form: str) -> None:
    if value is not None and not re.fullmatch(pattern, value):
        raise UserError(f"{option} {value!r}: expected {form} (the value is written into a job script)")
