"""Cache codec: memory and speed of the codecs a cached block could use, on real blocks.

    python bench/cache_codec.py [--dir bench/out] [--repeat 5]

Blocks: ilastik's own exported probabilities of the shared 3D project (64^3 x 2 float32, if
``../shared`` is present), and blocks our pipeline computes for the demo project (raw uint8,
probabilities float32, simple segmentation uint8, objects uint32), each at the export's block shape
(64 x 128 x 128). Codecs: lz4.frame on the raw bytes (the cache's codec), and numcodecs Blosc with
byte shuffle, with bit shuffle, and zstd level 1 with byte shuffle (one thread each, as a cache write
runs). Reports compression ratio and compress/decompress throughput (MB/s of uncompressed data, the
best of ``--repeat`` runs) per block kind and codec. Prints JSON and a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lz4.frame  # noqa: E402
import numpy as np  # noqa: E402
from numcodecs import Blosc  # noqa: E402

from backend.compute.geometry import Roi  # noqa: E402
from backend.compute.pipeline import BlockTask, simple_segmentation  # noqa: E402
from backend.compute.threshold import ThresholdSettings, threshold_frame  # noqa: E402
from backend.io.dataset import open_lane  # noqa: E402
from backend.io.project import open_project  # noqa: E402
from backend.io.project_pipeline import build_pipeline  # noqa: E402
from bench.common import report  # noqa: E402
from ilastik_desktop.runtime.demo import write_demo_project  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_PROBABILITIES = os.path.join(HERE, "..", "..", "shared", "data", "ilastik-api", "res-Data_3D_pc3d.npy")


class Lz4Frame:
    """The cache's codec: lz4.frame over the array's bytes."""

    codec_id = "lz4.frame"

    def encode(self, array: np.ndarray) -> bytes:
        """Compressed bytes."""
        return lz4.frame.compress(array.tobytes())

    def decode(self, blob: bytes) -> bytes:
        """The array's bytes again."""
        return lz4.frame.decompress(blob)


def codecs() -> dict:
    """Every codec measured, by name."""
    Blosc.use_threads = False
    return {"lz4.frame": Lz4Frame(),
            "blosc lz4 shuffle": Blosc("lz4", 5, Blosc.SHUFFLE),
            "blosc lz4 bitshuffle": Blosc("lz4", 5, Blosc.BITSHUFFLE),
            "blosc zstd1 shuffle": Blosc("zstd", 1, Blosc.SHUFFLE)}


def demo_blocks(directory: str) -> dict[str, np.ndarray]:
    """One export-sized block of each kind the cache holds, computed by our pipeline on the demo project."""
    project = open_project(write_demo_project(directory))
    source = open_lane(project, 0, None, None)
    pipeline = build_pipeline(project, source.channels, source.shape[1] > 1)
    volume = source.read(Roi((0, 0, 0, 0), source.spatial_shape))[0, ..., 0]
    target = tuple((0, min(n, b)) for n, b in zip(volume.shape, (64, 128, 128)))
    hi = [min(n, b + h) for (_, b), h, n in zip(target, pipeline.halo, volume.shape)]
    raw = volume[: hi[0], : hi[1], : hi[2], None]
    task = BlockTask("bench", "Probabilities", raw, (0, 0, 0), volume.shape, target, pipeline.fingerprint())
    probabilities = pipeline.run(task)
    return {"raw uint8": volume[: target[0][1], : target[1][1], : target[2][1]],
            "probabilities float32": probabilities,
            "segmentation uint8": simple_segmentation(probabilities),
            "objects uint32": threshold_frame(probabilities, ThresholdSettings())}


def measure(name: str, array: np.ndarray, codec, repeat: int) -> dict:
    """Ratio and best-of-``repeat`` throughputs of one codec on one block."""
    array = np.ascontiguousarray(array)
    megabytes = array.nbytes / 2**20
    encode_s = decode_s = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        blob = codec.encode(array)
        encode_s = min(encode_s, time.perf_counter() - started)
        started = time.perf_counter()
        back = codec.decode(blob)
        decode_s = min(decode_s, time.perf_counter() - started)
    assert np.array_equal(np.frombuffer(back, array.dtype).reshape(array.shape), array)
    return {"block": name, "codec": codec.codec_id if isinstance(codec, Lz4Frame) else _blosc_name(codec),
            "MB": round(megabytes, 2), "ratio": round(array.nbytes / len(blob), 2),
            "compress_MB_s": round(megabytes / encode_s), "decompress_MB_s": round(megabytes / decode_s)}


def _blosc_name(codec) -> str:
    shuffle = {Blosc.SHUFFLE: "shuffle", Blosc.BITSHUFFLE: "bitshuffle"}.get(codec.shuffle, "noshuffle")
    return f"blosc {codec.cname} {codec.clevel} {shuffle}"


def main() -> None:
    """Measure every codec on every block kind and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(HERE, "out", "codec"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    blocks = demo_blocks(args.dir)
    if os.path.exists(SHARED_PROBABILITIES):
        blocks = {"ilastik probabilities float32": np.load(SHARED_PROBABILITIES), **blocks}
    rows = [measure(name, array, codec, args.repeat) for name, array in blocks.items() for codec in codecs().values()]
    report("cache_codec", rows, {"repeat": args.repeat})


if __name__ == "__main__":
    main()
