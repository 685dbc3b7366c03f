"""Options that start processes or clusters: bounded by the machine, checked before anything starts, every value
that reaches a batch job script of its form, a Dask address that is not a scheduler refused within a timeout, a
Ctrl-C to a Dask export one line, and a batch cluster's scheduler on one interface with TLS and no dashboard."""

from __future__ import annotations

import http.server
import logging
import os
import signal
import socketserver
import ssl
import threading
import time

import pytest

from backend.config import Config
from backend.distributed.dask_clusters import DaskSettings
from backend.errors import UserError
from tests.conftest import run_cli
from tests.integration.test_cli_errors import _assert_one_line_error
from tests.integration.test_executor import small_project
from tests.integration.test_faults import FEATURES, Run, assert_all_gone

pytestmark = pytest.mark.timeout(300)


def _refused(*args: str, fragment: str, command: tuple[str, ...] = ("--headless", "--project", "p.ilp")) -> None:
    """``args`` are refused in one line naming ``fragment`` (checked before the missing project is opened)."""
    _assert_one_line_error(run_cli(*command, *args, timeout=120), fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--workers", "100000"], "--workers 100000: this machine runs at most"),
    (["--dask", "local:100000"], "--dask local:100000: this machine runs at most"),
    (["--dask", "local:\u00b2"], "local:N"),
])
def test_process_counts_beyond_the_machine_are_refused_before_any_process_starts(args, fragment):
    _refused(*args, fragment=fragment)


def test_the_worker_refuses_more_processes_than_the_machine_gives_and_says_why():
    from ilastik_desktop.cli.worker import build_parser, worker_options
    from ilastik_desktop.runtime.settings import process_limit

    config = Config()
    limit, _ = process_limit(config.worker)
    assert 1 <= limit <= len(os.sched_getaffinity(0)) * config.worker.max_processes_per_core
    args = build_parser().parse_args(["--listen", "tcp://127.0.0.1:0", "--processes", "100000"])
    with pytest.raises(UserError, match=f"--processes 100000: this machine runs at most {limit} processes .*cores"):
        worker_options(args, config)  # refused before the Worker (and its processes) exists
    args = build_parser().parse_args(["--listen", "tcp://127.0.0.1:0", "--processes", str(limit)])
    assert worker_options(args, config).processes == limit


def test_the_process_limit_follows_cores_and_memory(monkeypatch):
    from types import SimpleNamespace

    import ilastik_desktop.runtime.settings as settings

    monkeypatch.setattr(settings, "default_workers", lambda: 8)
    worker = Config().worker  # 4 per core, 256 MB each
    for memory_gb, limit in ((64, 32), (4, 16), (1, 8)):  # never below one per core, the default
        monkeypatch.setattr(settings.psutil, "virtual_memory", lambda gb=memory_gb: SimpleNamespace(total=gb * 2**30))
        assert settings.process_limit(worker)[0] == limit, memory_gb
    monkeypatch.setattr(settings.psutil, "virtual_memory", lambda: SimpleNamespace(total=64 * 2**30))
    with pytest.raises(UserError, match="--workers 17: this machine runs at most 16 processes"):
        settings.check_process_count(17, "--workers 17", Config().replace(worker__max_processes_per_core=2).worker)


@pytest.mark.parametrize("args, fragment", [
    (["--cluster-cores", "100000000"], "--cluster-cores 100000000: expected 1 to 1024"),
    (["--cluster-jobs", "0"], "--cluster-jobs 0"),
    (["--cluster-jobs", "100001"], "--cluster-jobs 100001"),
    (["--cluster-cores", "64"], "64 worker processes would have 60 MB each"),  # 4GB by default
    (["--cluster-memory", "1e400GB"], "--cluster-memory"),
    (["--cluster-host", "0.0.0.0"], "--cluster-host 0.0.0.0: the scheduler would listen on every interface"),
    (["--cluster-host", "::"], "--cluster-host ::"),
    (["--cluster-dashboard", "8787\necho injected"], "--cluster-dashboard"),
])
def test_batch_cluster_values_out_of_range_are_refused(args, fragment):
    _refused("--cluster", "slurm", "--cluster-dry-run", *args, fragment=fragment)


def test_cluster_options_without_a_cluster_are_refused():
    _refused("--cluster-host", "10.0.0.1", fragment="need --dask or --cluster")
    _refused("--dask", "local:1", "--cluster-dashboard", "127.0.0.1:8787", fragment="need --cluster")


INJECTIONS = [
    ("--cluster-queue", "gpu\necho injected"),
    ("--cluster-queue", "gpu;echo injected"),
    ("--cluster-walltime", "01:00:00\necho injected"),
    ("--cluster-walltime", "$(echo injected)"),
    ("--cluster-account", "lab42 `echo injected`"),
    ("--cluster-memory", "4GB\necho injected"),
    ("--cluster-host", "10.0.0.1;echo injected"),
]


@pytest.mark.parametrize("option, value", INJECTIONS)
@pytest.mark.parametrize("command", ["export", "serve"])
def test_no_value_reaches_a_job_script_as_a_shell_line(option, value, command):
    start = ("--headless", "--project", "p.ilp") if command == "export" else ("serve", "p.ilp")
    result = run_cli(*start, "--cluster", "pbs" if "walltime" in option else "slurm", option, value,
                     "--cluster-dry-run", timeout=120)
    _assert_one_line_error(result, option)
    assert "injected" not in result.stdout


def test_well_formed_values_still_make_a_job_script():
    result = run_cli("--headless", "--project", "p.ilp", "--cluster", "slurm", "--cluster-queue", "gpu,cpu",
                     "--cluster-walltime", "1-02:00:00", "--cluster-account", "lab-42", "--cluster-host", "10.0.0.7",
                     "--cluster-dry-run", timeout=120)
    assert result.returncode == 0, result.stderr
    for line in ("#SBATCH -p gpu,cpu", "#SBATCH -t 1-02:00:00", "#SBATCH -A lab-42", "tls://10.0.0.7:<port>"):
        assert line in result.stdout, (line, result.stdout)


@pytest.mark.parametrize("address", ["tcp://", "tcp://[::1", "tcp://host:99999", "tcp://host:0", "tcp://a@host:1",
                                     "tcp://host:1/path"])
def test_malformed_dask_addresses_are_one_line(address):
    _refused("--dask", address, fragment="expected tcp://HOST:PORT")


def test_tls_without_certificates_is_one_line():
    _refused("--dask", "tls://127.0.0.1:8786", fragment="TLS needs this client's certificates")


class _AnswersHttp(socketserver.BaseRequestHandler):
    """A web server's answer to whatever it is sent (Dask would read its first 8 bytes as a 3 EiB frame)."""

    def handle(self) -> None:
        self.request.recv(4096)
        self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@pytest.fixture(params=["answering", "silent"])
def web_server(request):
    """A tiny local HTTP server on a random port: one that answers at once, or Python's, which waits for a
    request line that Dask's binary handshake never completes."""
    kind = _AnswersHttp if request.param == "answering" else http.server.BaseHTTPRequestHandler
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), kind)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield request.param, f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_a_web_server_at_the_dask_address_is_one_line_within_the_timeout(web_server, data_dir, tmp_path,
                                                                        monkeypatch):
    kind, address = web_server
    monkeypatch.setenv("ILASTIK_DESKTOP__EXECUTOR__DASK_CONNECT_TIMEOUT_S", "2")
    seed = os.path.join(data_dir, "seed")
    started = time.monotonic()
    result = run_cli("--headless", "--no-progress", "--project", os.path.join(seed, "pc.ilp"), "--raw_data",
                     os.path.join(seed, "raw.h5/exported_data"), "--output_filename_format", str(tmp_path / "out"),
                     "--dask", address, timeout=60)
    expected = "does not answer like a Dask scheduler" if kind == "answering" else "within 2 s"
    _assert_one_line_error(result, address, expected)
    assert time.monotonic() - started < 45
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("launch")), shape=(64, 256, 256), selection=FEATURES)[0]


def test_ctrl_c_to_a_local_dask_export_prints_one_line(project, tmp_path):
    out = str(tmp_path / "out")
    run = Run("--headless", "--project", project, "--output_format", "npy", "--output_filename_format", out,
              "--block_shape", "32,64,64", "--dask", "local:2")
    try:
        run.wait_progress(1, timeout=180)
        run.tree()
        os.killpg(run.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        code = run.finish(timeout=120)
    finally:
        if run.process.poll() is None:
            run.kill()
    text = "".join(run.stderr)
    lines = [line for line in text.splitlines() if line.strip() and "%" not in line]
    assert code == 130 and "Traceback" not in text, text[-3000:]
    assert len(lines) == 1 and "interrupted" in lines[0], lines
    assert os.listdir(tmp_path) == []
    assert_all_gone(run.seen - {run.process.pid}, within=10)


def test_a_dry_run_starts_nothing(monkeypatch):
    import dask_jobqueue
    import distributed

    from backend.distributed.dask_clusters import job_script

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run started a cluster or a scheduler")

    for name in ("SLURMCluster", "PBSCluster"):
        monkeypatch.setattr(getattr(dask_jobqueue, name), "__init__", refuse)
    monkeypatch.setattr(distributed.Scheduler, "__init__", refuse)
    script = job_script(DaskSettings(cluster="slurm", cores=2, host="10.0.0.7"))
    assert "#SBATCH --cpus-per-task=2" in script and "tls://10.0.0.7:<port>" in script
    assert "--tls-ca-file" in script and "--tls-key" in script
    assert "#PBS -l select=1:ncpus=1" in job_script(DaskSettings(cluster="pbs", host="10.0.0.7"))


class _RecordingCluster:
    """Stands for dask-jobqueue's SLURMCluster: records what it is given (no batch system here)."""

    job_cls = None
    made: list[dict] = []

    def __init__(self, **kwargs):
        import dask

        kwargs["routes"] = list(dask.config.get("distributed.scheduler.http.routes"))
        _RecordingCluster.made.append(kwargs)
        self.scheduler_address = f"tls://{kwargs['scheduler_options']['host']}:4567"


@pytest.fixture
def shared(tmp_path):
    """dask-jobqueue's shared-temp-directory (where the jobs read their certificates): a private folder."""
    import dask

    with dask.config.set({"jobqueue.slurm.shared-temp-directory": str(tmp_path)}):
        yield tmp_path


@pytest.fixture
def recording(monkeypatch, shared):
    import dask_jobqueue

    _RecordingCluster.made = []
    monkeypatch.setattr(dask_jobqueue, "SLURMCluster", _RecordingCluster)
    return _RecordingCluster.made


def test_a_batch_cluster_listens_on_one_interface_with_tls_and_no_dashboard(recording, shared, caplog):
    from backend.distributed.dask_clusters import batch_cluster

    with caplog.at_level(logging.WARNING, logger="backend.distributed.dask_clusters"):
        batch_cluster(DaskSettings(cluster="slurm", cores=2, host="10.1.2.3"))
    (made,) = recording
    folder = made["shared_temp_directory"]  # the jobs read the certificates from a private folder in it
    assert os.path.dirname(folder) == str(shared) and os.stat(folder).st_mode & 0o777 == 0o700
    options = made["scheduler_options"]
    assert options["host"] == "10.1.2.3"  # not 0.0.0.0
    assert options["dashboard"] is False and options["dashboard_address"].startswith("127.0.0.1:")
    assert made["routes"] == []  # its HTTP server, on loopback, serves nothing
    assert made["protocol"] == "tls://" and made["security"].require_encryption
    listening = made["security"].get_listen_args("scheduler")["ssl_context"]
    assert listening.verify_mode == ssl.CERT_REQUIRED  # only holders of the certificates connect
    assert made["cores"] == 2 and made["processes"] == 2
    said = caplog.text
    assert "tls://10.1.2.3:4567" in said and "TLS" in said and "no dashboard" in said


def test_a_dashboard_only_when_asked(recording):
    from backend.distributed.dask_clusters import batch_cluster

    batch_cluster(DaskSettings(cluster="slurm", host="10.1.2.3", dashboard="127.0.0.1:8787"))
    options = recording[0]["scheduler_options"]
    assert options["dashboard"] is True and options["dashboard_address"] == "127.0.0.1:8787"
    assert recording[0]["routes"]


def test_the_scheduler_host_is_this_hosts_address_never_a_wildcard(monkeypatch):
    import socket

    import distributed.utils

    from backend.distributed.dask_clusters import scheduler_host

    monkeypatch.setattr(socket, "gethostbyname", lambda name: "10.0.0.5")
    assert scheduler_host() == "10.0.0.5"
    monkeypatch.setattr(socket, "gethostbyname", lambda name: "127.0.1.1")  # as Debian's /etc/hosts has it
    monkeypatch.setattr(distributed.utils, "get_ip", lambda: "192.168.7.9")
    assert scheduler_host() == "192.168.7.9"
    monkeypatch.setattr(distributed.utils, "get_ip", lambda: "127.0.0.1")
    with pytest.raises(UserError, match="--cluster-host"):
        scheduler_host()


def test_the_real_slurm_cluster_class_listens_on_the_host_alone(shared):
    """dask-jobqueue's own SLURMCluster (its scheduler starts; no job is submitted): every new listening socket
    is on the given host, the HTTP one serves nothing, the job script names the TLS scheduler and its
    certificates, and the certificates' folder goes at close."""
    import urllib.error
    import urllib.request

    import psutil

    from backend.distributed.dask_clusters import batch_cluster

    def listening() -> set:
        return {c.laddr for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN}

    before = listening()
    cluster, close = batch_cluster(DaskSettings(cluster="slurm", cores=2, host="127.0.0.1"))
    (folder,) = [str(path) for path in shared.iterdir()]
    try:
        new = listening() - before
        assert new and {address.ip for address in new} == {"127.0.0.1"}, new
        http = [a for a in new if f":{a.port}" not in cluster.scheduler_address]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{http[0].port}/info/main/workers.html", timeout=10)
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:") and cluster.scheduler_address in script
        assert f"--tls-key {folder}/" in script and len(os.listdir(folder)) == 3
    finally:
        close()
    assert list(shared.iterdir()) == [] and cluster.status.name == "closed"
