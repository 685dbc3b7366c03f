"""The workers panel and the connect-to-remote-workers dialog."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from PyQt5 import QtCore, QtGui, QtWidgets

from backend.distributed.executor import ExecutorStatus, WorkerStatus, ZmqStatus
from backend.distributed.security import check_key
from backend.errors import UserError
from backend.wording import counted
from ilastik_desktop.runtime.services import Services
from viewer.bridge import GuiBridge

COLUMNS = ("host", "kind", "endpoint", "processes", "state", "heartbeat_age_s", "blocks_done", "blocks_per_s")
HEADERS = ("Host", "Kind", "Endpoint", "Processes", "State", "Heartbeat age (s)", "Blocks done",
           "Blocks/s (last 10 s)")
DASK_COLUMNS = ("endpoint", "processes", "memory_mb", "memory_limit_mb", "in_flight", "state")
DASK_HEADERS = ("Dask worker", "Threads", "Memory (MB)", "Memory limit (MB)", "Tasks running", "State")


def in_background(pool: ThreadPoolExecutor, bridge: GuiBridge, work, done) -> None:
    """Run ``work()`` on ``pool``; ``done(result, error)`` runs on the GUI thread."""
    def run() -> None:
        try:
            result, error = work(), None
        except UserError as exc:
            result, error = None, str(exc)
        except Exception as exc:  # shown in the dialog rather than lost
            result, error = None, f"{type(exc).__name__}: {exc}"
        bridge.post(done, result, error)

    pool.submit(run)


def workers_summary(status: ExecutorStatus, compiling_kernels: bool = False) -> str:
    """One line for the status bar and the workers panel: workers, processes and queue, or 'no workers' (the
    local workers compiling the compute kernels, on a first start)."""
    if not status.workers and compiling_kernels:
        return (f"starting the local workers: first start, compiling the compute kernels once "
                f"({status.no_workers_s:.0f} s; queue {status.queued})")
    if not status.workers:
        return f"no workers for {status.no_workers_s:.0f} s: blocks wait (queue {status.queued}); see Workers"
    return f"workers: {len(status.workers)} ({counted(status.processes, 'process')}), queue {status.queued}"


class WorkersPanel(QtWidgets.QWidget):
    """Every worker with its state and speed; local worker count; the connect dialog."""

    def __init__(self, services: Services, bridge: GuiBridge, parent=None):
        super().__init__(parent)
        self.services, self.bridge = services, bridge
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workers-ui")
        layout = QtWidgets.QVBoxLayout(self)
        self.table = QtWidgets.QTableWidget(0, max(len(COLUMNS), len(DASK_COLUMNS)))
        self.table.setHorizontalHeaderLabels(HEADERS)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.summary = QtWidgets.QLabel()
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Local processes"))
        current = services.local.processes if services.local else 0
        self.local_count = QtWidgets.QSpinBox(minimum=0, maximum=256, value=current)
        row.addWidget(self.local_count)
        self.apply_local = QtWidgets.QPushButton("Apply")
        self.apply_local.clicked.connect(self._apply_local)
        row.addWidget(self.apply_local)
        row.addStretch(1)
        layout.addLayout(row)
        self.connect_button = QtWidgets.QPushButton("Connect to remote workers...")
        self.connect_button.clicked.connect(self.open_dialog)
        layout.addWidget(self.connect_button)
        self.dialog: ConnectDialog | None = None
        self.columns = COLUMNS
        self._listed: list[tuple[str, bool]] = []  # (endpoint, lost) of the rows, to fit the columns when they change
        if services.settings.dask is not None:  # the Dask cluster decides its workers
            for widget in (self.local_count, self.apply_local, self.connect_button):
                widget.setEnabled(False)
            self.columns = DASK_COLUMNS
            self.table.setHorizontalHeaderLabels(DASK_HEADERS)

    def show_status(self, status: ExecutorStatus) -> None:
        """Fill the table from the executor's status; say plainly when there is no worker at all."""
        workers = [(w, w.state) for w in status.workers]
        lost = [(w, f"lost {w.ago_s:.0f} s ago: {w.reason}")
                for w in reversed(status.lost)] if isinstance(status, ZmqStatus) else []
        self.summary.setText(workers_summary(status, self.services.compiling_kernels))
        self.summary.setStyleSheet("" if workers else "color: #c0392b; font-weight: bold")
        self.table.setRowCount(len(workers) + len(lost))
        for r, (worker, state) in enumerate(workers + lost):
            for c, key in enumerate(self.columns):
                value = state if key == "state" else getattr(worker, key, None)
                item = QtWidgets.QTableWidgetItem("" if value is None else str(value))
                item.setToolTip(item.text())  # long endpoints and reasons stay readable
                if r >= len(workers):
                    item.setForeground(QtGui.QBrush(QtGui.QColor("#999999")))
                self.table.setItem(r, c, item)
        listed = [(getattr(w, "endpoint", ""), r >= len(workers)) for r, (w, _state) in enumerate(workers + lost)]
        if listed != self._listed:  # fitted when workers come or go, not every poll (the user's widths stay)
            self._listed = listed
            self.table.resizeColumnsToContents()

    def _apply_local(self) -> None:
        count = self.local_count.value()
        self.apply_local.setEnabled(False)
        in_background(self.pool, self.bridge, lambda: self.services.set_local_workers(count),
                      lambda _r, _e: self.apply_local.setEnabled(True))

    def open_dialog(self) -> ConnectDialog:
        """Show the connect dialog (non-modal)."""
        if self.dialog is None:
            self.dialog = ConnectDialog(self.services, self.bridge, self.pool, self)
        self.dialog.show()
        return self.dialog

    def shutdown(self) -> None:
        """Wait for a running connection test or worker change, then stop the background thread."""
        self.pool.shutdown(wait=True, cancel_futures=True)


class ConnectDialog(QtWidgets.QDialog):
    """Add a listening worker by endpoint and key, or let workers connect to this computer."""

    finished_check = QtCore.pyqtSignal(bool, str)  # connected?, message

    def __init__(self, services: Services, bridge: GuiBridge, pool: ThreadPoolExecutor, parent=None):
        super().__init__(parent)
        self.services, self.bridge, self.pool = services, bridge, pool
        self.setWindowTitle("Connect to remote workers")
        layout = QtWidgets.QVBoxLayout(self)
        add = QtWidgets.QGroupBox("Use a worker started with 'ilastik-worker --listen tcp://*:PORT'")
        form = QtWidgets.QFormLayout(add)
        self.endpoint = QtWidgets.QLineEdit(placeholderText="tcp://host:port")
        self.key = QtWidgets.QLineEdit(placeholderText="the worker's key (ilastik-worker --print-key)")
        self.connect_button = QtWidgets.QPushButton("Connect and test")
        self.connect_button.clicked.connect(self.connect_worker)
        self.result = QtWidgets.QLabel(wordWrap=True, textInteractionFlags=QtCore.Qt.TextSelectableByMouse)
        form.addRow("Endpoint", self.endpoint)
        form.addRow("Public key", self.key)
        form.addRow(self.connect_button, self.result)
        layout.addWidget(add)
        accept = QtWidgets.QGroupBox("Let workers connect to this computer")
        form = QtWidgets.QFormLayout(accept)
        self.command = QtWidgets.QLineEdit(readOnly=True)
        self.own_key = QtWidgets.QLineEdit(readOnly=True)
        listen = QtWidgets.QPushButton("Start accepting workers")
        listen.clicked.connect(self.start_listening)
        self.allow_key = QtWidgets.QLineEdit(placeholderText="a worker's key (ilastik-worker --print-key)")
        allow = QtWidgets.QPushButton("Allow")
        allow.clicked.connect(self.allow_worker)
        form.addRow(listen)
        form.addRow("This app's key", self.own_key)
        form.addRow("Run on the worker", self.command)
        form.addRow(self.allow_key, allow)
        layout.addWidget(accept)
        if services.identity is not None:
            self.own_key.setText(services.identity.public.decode())

    def connect_worker(self) -> None:
        """Connect to the endpoint with the key and report what happened."""
        endpoint, text = self.endpoint.text().strip(), self.key.text().strip()
        try:
            key = check_key(text, "worker key") if text else None
            if not endpoint.startswith("tcp://"):
                raise UserError(f"'{endpoint}' is not an endpoint like tcp://host:5556")
        except UserError as exc:
            self._report(None, str(exc))
            return
        self.connect_button.setEnabled(False)
        self.result.setText(f"connecting to {endpoint} ...")
        in_background(self.pool, self.bridge, lambda: self.services.add_remote_worker(endpoint, key), self._report)

    def _report(self, worker: WorkerStatus | None, error: str | None) -> None:
        self.connect_button.setEnabled(True)
        if error is None:
            message = f"connected: {worker.host} with {counted(worker.processes, 'process')}"
            self.result.setStyleSheet("color: #1a7f37;")
        else:
            message = error
            self.result.setStyleSheet("color: #c62828;")
        self.result.setText(message)
        self.finished_check.emit(error is None, message)

    def start_listening(self) -> None:
        """Listen for workers and show the command to run on them."""
        try:
            self.command.setText(self.services.worker_command())
        except UserError as exc:
            self.command.setText(str(exc))

    def allow_worker(self) -> None:
        """Accept workers with the given key."""
        try:
            self.services.allow_worker(check_key(self.allow_key.text(), "worker key"))
            self.allow_key.clear()
            self.allow_key.setPlaceholderText("allowed; add another key")
        except UserError as exc:
            self.allow_key.setPlaceholderText(str(exc))
            self.allow_key.clear()
