"""An HDF5 output written by one process that the workers feed (``--shared-filesystem`` with hdf5).

HDF5 files must not be written by several processes at once, so the gateway starts one *writer process* on its
own machine (:class:`H5Output`); it creates the file under a hidden temporary name, exactly as the ordinary
hdf5 export does, and binds a ZeroMQ ROUTER socket. Each task's target names that socket and a secret token; the
compute process that computed a block sends it there (:func:`send_block`: a JSON header and the raw bytes, no
pickle) and answers "written" only once the writer has confirmed that the block is in the file. A compute process
waits for that confirmation before taking its next task, so the writer holds at most one block per compute
process: when it lags, the workers wait (backpressure). At the end the gateway asks the writer to commit: the
file is closed and renamed to its final name. A writer that dies fails the export and its temporary file is
removed, so a torn file never has the output's name.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid

import numpy as np
import zmq

from backend.compute.geometry import Roi
from backend.errors import UserError
from backend.io.writers import BlockWriter, _partial_name

COMMIT = b"commit"
WRITTEN_REPLY = b"written"
_sockets: dict[str, tuple[zmq.Socket, zmq.Socket]] = {}  # a compute process's connections (and their
# disconnection monitors) to writers, by endpoint


class H5Output:
    """The gateway's side of one writer process: what each task carries, and the commit or abort at the end."""

    def __init__(self, path: str, spec: dict, host: str, timeout_s: float, poll_s: float):
        self.path, self.run, self.timeout_s = path, uuid.uuid4().hex, timeout_s
        self.token = uuid.uuid4().hex
        self.region = Roi(tuple(spec["region"][0]), tuple(spec["region"][1]))
        description = {**spec, "path": path, "host": host, "token": self.token, "parent": os.getpid(),
                       "poll_s": poll_s}
        self.process = subprocess.Popen([sys.executable, "-m", "backend.io.h5_writer"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.process.stdin.write(json.dumps(description) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline().strip()
        if not line.startswith("tcp://"):
            self.process.wait(timeout=timeout_s)
            raise UserError(self.process.stderr.read().strip().splitlines()[-1] if self.process.returncode
                            else f"{path}: the HDF5 writer process did not start")
        self.endpoint = line

    def target(self, block: Roi) -> dict:
        """Where the values of ``block`` (tzyx, global) go: what a task carries."""
        return {"writer": self.endpoint, "token": self.token, "timeout_s": self.timeout_s,
                "region": [list(self.region.start), list(self.region.stop)],
                "block": [list(block.start), list(block.stop)]}

    def holds(self, block: Roi, channels: int) -> bool:
        """Never: each run writes a new file."""
        return False

    def remove_partials(self, mine) -> int:
        """Nothing to remove: the writer alone writes the file."""
        return 0

    def check(self) -> None:
        """UserError if the writer process has ended (killed, out of memory) before the commit."""
        if self.process.poll() is not None:
            raise UserError(f"{self.path}: the HDF5 writer process ended (exit code {self.process.returncode}) "
                            "before the export finished; nothing was written there")

    def commit(self) -> None:
        """Have the writer close the file and give it its final name; UserError if it cannot."""
        self.check()
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.connect(self.endpoint)
            socket.send_multipart([self.token.encode(), COMMIT])
            if not socket.poll(self.timeout_s * 1000) or socket.recv_multipart() != [COMMIT]:
                raise UserError(f"{self.path}: the HDF5 writer process did not finish the file")
        finally:
            socket.close()
        self.process.wait(timeout=self.timeout_s)

    def abort(self) -> None:
        """Stop the writer and remove the unfinished file."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.unlink(_partial_name(self.path))
        except FileNotFoundError:
            pass


def is_writer_target(target: dict) -> bool:
    """Whether a task's output names a writer process (else a zarr array it writes itself)."""
    return "writer" in target


def check_writer_target(target: dict) -> dict:
    """``target`` if it names a tcp writer, a token and sane bounds; ValueError if not."""
    if not (isinstance(target.get("writer"), str) and target["writer"].startswith("tcp://")
            and isinstance(target.get("token"), str) and isinstance(target.get("timeout_s"), (int, float))
            and target["timeout_s"] > 0):
        raise ValueError("a task's HDF5 writer must be a tcp endpoint with a token and a timeout")
    return target


def send_block(target: dict, values: np.ndarray) -> None:
    """Send a block's ``values`` (z, y, x, c over the target's block) to the writer and wait until it is in the
    file; OSError if the writer refuses it or does not answer within the target's timeout."""
    start, stop = target["block"]
    region_stop = target["region"][1]
    stop = [min(b, r) for b, r in zip(stop, region_stop)]
    values = np.ascontiguousarray(values[:stop[1] - start[1], :stop[2] - start[2], :stop[3] - start[3]])
    header = {"start": start, "stop": stop, "dtype": values.dtype.str, "shape": list(values.shape)}
    endpoint = target["writer"]
    if endpoint not in _sockets:
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        _sockets[endpoint] = (socket, socket.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED))
        socket.connect(endpoint)
    socket, monitor = _sockets[endpoint]
    socket.send_multipart([target["token"].encode(), json.dumps(header).encode(), values.data])
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    ready = dict(poller.poll(target["timeout_s"] * 1000))
    if socket not in ready:  # no answer in time, or the writer went away: a late answer must not be taken
        _forget(endpoint)    # for the next block's
        why = "went away" if monitor in ready else f"did not confirm a block within {target['timeout_s']:g} s"
        raise OSError(f"the HDF5 writer at {endpoint} {why}")
    reply = socket.recv_multipart()
    if reply[0] != WRITTEN_REPLY:
        raise OSError(f"the HDF5 writer refused a block: {reply[-1].decode(errors='replace')[:200]}")


def _forget(endpoint: str) -> None:
    socket, monitor = _sockets.pop(endpoint)
    socket.disable_monitor()
    monitor.close()
    socket.close()


def serve(description: dict) -> int:
    """The writer process: create the file, write the blocks it is sent until asked to commit (0) or its
    gateway goes away (the unfinished file removed, 1)."""
    from backend.io.voxel_size import VoxelSize

    voxel = description.get("voxel_size")
    voxel_size = VoxelSize(voxel[0], tuple(tuple(pair) for pair in voxel[1])) if voxel else None
    region = Roi(tuple(description["region"][0]), tuple(description["region"][1]))
    writer = BlockWriter(description["path"], "hdf5", description["axes"], region, description["channels"],
                         np.dtype(description["dtype"]), tuple(description["block_shape"]),
                         description["internal_path"], voxel_size)
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    block_bytes = math.prod(description["block_shape"]) * description["channels"] * writer.dtype.itemsize
    socket.setsockopt(zmq.MAXMSGSIZE, block_bytes + 4096)  # one block and its header: larger frames never arrive
    socket.bind(f"tcp://{description['host']}:*")
    print(socket.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    token = description["token"].encode()
    dropped = 0
    try:
        while True:
            if not socket.poll(description["poll_s"] * 1000):
                if os.getppid() != description["parent"]:
                    break  # the gateway went away
                continue
            frames = socket.recv_multipart(copy=True)
            if len(frames) < 3 or frames[1] != token:
                dropped += 1  # not from one of our tasks
                continue
            if frames[2] == COMMIT:
                writer.commit()
                socket.send_multipart([frames[0], COMMIT])
                return 0
            socket.send_multipart([frames[0], *_write(writer, frames[2:])])
    finally:
        if dropped:
            print(f"the HDF5 writer dropped {dropped} message(s) without its token", file=sys.stderr)
        if writer.array is not None:
            writer.abort()
        socket.close()
    return 1


def _write(writer: BlockWriter, frames: list[bytes]) -> list[bytes]:
    """Write one block message into the file: the reply to its sender."""
    try:
        header = json.loads(frames[0])
        values = np.frombuffer(frames[1], np.dtype(header["dtype"])).reshape(header["shape"])
        roi = Roi(tuple(header["start"]), tuple(header["stop"]))
        inside = all(lo <= a < b <= hi for a, b, lo, hi in zip(roi.start, roi.stop, writer.region.start,
                                                                 writer.region.stop))
        if not inside or values.shape[:3] != roi.shape[1:]:
            raise ValueError(f"block {roi} with values of shape {values.shape} is not a block of the output")
        writer.write(roi, values[None])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return [b"error", str(exc)[:200].encode()]
    return [WRITTEN_REPLY]


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped by the gateway: the finally removes the file
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the gateway stops us
    try:
        code = serve(json.loads(sys.stdin.readline()))
    except UserError as exc:  # the gateway says it in its own error line
        print(exc, file=sys.stderr)
        code = 2
    sys.exit(code)
