"""OME-Zarr 0.5 (zarr v3, sharded or not) through zarr-python 3 and tensorstore, and the HTTP that browsers'
zarr clients expect: HEAD, byte ranges, Content-Length, CORS on every answer. One server for the module."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest
import zarr
from numcodecs import Blosc

from tests.integration.test_web import _export, _metric
from tests.integration.webserver import ServeProcess

pytestmark = pytest.mark.timeout(600)

ORIGIN = "https://viewer.example"
TOKEN = "zarr3-token-1234"
BLOCKS = "24,24,24"  # 64 voxels: chunks of 24, 24 and 16; shards of two blocks: the last one half absent


def ask(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes, dict]:
    """Status, body and headers of one request (HTTP errors included)."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@pytest.fixture(scope="module")
def project_3d(data_dir):
    return os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")


@pytest.fixture(scope="module")
def server(project_3d):
    with ServeProcess(project_3d, "--workers", "2", "--block_shape", BLOCKS, "--cors", ORIGIN,
                      "--token", TOKEN) as serving:
        yield serving


@pytest.fixture(scope="module")
def exported(project_3d, tmp_path_factory):
    """The headless export of the probabilities in NGFF order (c, z, y, x)."""
    return np.moveaxis(_export(tmp_path_factory.mktemp("export"), "--project", project_3d, "--block_shape", BLOCKS),
                       -1, 0)


def test_zarr_python_3_reads_ome_zarr_05_with_and_without_shards_equal_to_the_export(server, exported,
                                                                                     project_3d):
    group = zarr.open_group(server.url + "/zarr3/0/probabilities", mode="r", zarr_format=3)
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "z", "y", "x"]
    assert ome["multiscales"][0]["datasets"][0]["path"] == "0"
    classes = json.loads(server.get("/api/v1/info")[1])["classes"]
    assert [c["label"] for c in ome["omero"]["channels"]] == [c["name"] for c in classes]
    assert group.attrs["ilastik-desktop"]["classes"] == classes
    array = group["0"]
    assert array.metadata.dimension_names == ("c", "z", "y", "x") and array.chunks == (2, 24, 24, 24)
    assert np.array_equal(array[:], exported)  # bit for bit
    sharded = zarr.open_array(server.url + "/zarr3/0/probabilities-sharded/0", mode="r", zarr_format=3)
    assert sharded.shards == (2, 48, 48, 48) and sharded.chunks == (2, 24, 24, 24)
    assert np.array_equal(sharded[:], exported)
    raw = zarr.open_array(server.url + "/zarr3/0/raw.zarr/0", mode="r", zarr_format=3)
    original = np.load(os.path.join(os.path.dirname(project_3d), "Data_3D.npy"))
    assert np.array_equal(raw[:], np.moveaxis(original, -1, 0))


def test_tensorstore_reads_zarr3_with_and_without_shards_equal_to_the_export(server, exported):
    tensorstore = pytest.importorskip("tensorstore")

    def read(path: str) -> np.ndarray:
        spec = {"driver": "zarr3", "kvstore": server.url + path}
        return tensorstore.open(spec, read=True).result().read().result()

    assert np.array_equal(read("/zarr3/0/probabilities/0/"), exported)
    assert np.array_equal(read("/zarr3/0/probabilities-sharded/0/"), exported)
    segmentation = zarr.open_array(server.url + "/zarr/0/segmentation/0", mode="r", zarr_format=2)[:]
    assert np.array_equal(read("/zarr3/0/segmentation-sharded/0/"), segmentation)


def test_the_shard_index_gives_each_inner_chunk_and_marks_the_absent_ones(server):
    """The last shard along each axis holds one block (16 voxels) and three absent places (2**64-1)."""
    shard = "/zarr3/0/probabilities-sharded/0/c/0/1/1/1"
    status, index, headers = server.get(shard, {"Range": "bytes=-128"})  # 8 inner chunks x (offset, nbytes)
    size = int(headers["Content-Range"].rsplit("/", 1)[1])
    assert status == 206 and headers["Content-Range"] == f"bytes {size - 128}-{size - 1}/{size}"
    entries = np.frombuffer(index, "<u8").reshape(2, 2, 2, 2)
    absent = np.iinfo(np.uint64).max
    assert (entries[1:] == absent).all() and (entries[:, 1:] == absent).all() and (entries[:, :, 1:] == absent).all()
    offset, nbytes = (int(v) for v in entries[0, 0, 0])
    status, chunk, _ = server.get(shard, {"Range": f"bytes={offset}-{offset + nbytes - 1}"})
    assert status == 206 and offset + nbytes == size - 128
    unsharded = server.get("/zarr3/0/probabilities/0/c/0/2/2/2")[1]
    assert chunk == unsharded  # the same encoded block
    values = np.frombuffer(Blosc().decode(chunk), "<f4").reshape(2, 24, 24, 24)
    assert values[:, :16, :16, :16].min() >= 0 and (values[:, 16:] == 0).all()  # padded past the edge


def test_byte_ranges_on_chunks_and_documents(server):
    chunk = "/zarr3/0/probabilities/0/c/0/0/0/0"
    whole = server.get(chunk)[1]
    size = len(whole)
    for asked, start, stop in (("bytes=10-19", 10, 20), ("bytes=100-", 100, size), ("bytes=-7", size - 7, size),
                               (f"bytes=5-{size + 50}", 5, size), (f"bytes=-{size + 9}", 0, size)):
        status, body, headers = server.get(chunk, {"Range": asked})
        assert status == 206 and body == whole[start:stop], asked
        assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert headers["Content-Length"] == str(stop - start)
    for asked in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        status, body, headers = server.get(chunk, {"Range": asked})
        assert status == 416 and headers["Content-Range"] == f"bytes */{size}", asked
        assert "outside" in json.loads(body)["error"]
    for ignored in ("bytes=0-1,5-9", "bytes=9-3", "items=0-5", "bytes=" + "9" * 30 + "-"):  # answered whole
        status, body, headers = server.get(chunk, {"Range": ignored})
        assert status == 200 and body == whole and "Content-Range" not in headers, ignored
    status, body, _ = server.get(chunk, {"Range": "bytes=0-3", "If-Range": '"another-etag"'})
    assert status == 200 and body == whole
    document = server.get("/zarr3/0/probabilities/zarr.json")[1]
    status, body, headers = server.get("/zarr3/0/probabilities/zarr.json", {"Range": "bytes=-10"})
    assert status == 206 and body == document[-10:] and headers["Accept-Ranges"] == "bytes"
    v2 = server.get("/zarr/0/probabilities/0/0.0.0.0")[1]
    assert v2 == whole and server.get("/zarr/0/probabilities/0/0.0.0.0", {"Range": "bytes=2-5"})[1] == whole[2:6]


def test_head_answers_the_length_without_a_body_and_computes_nothing_twice(server):
    chunk = server.url + "/zarr3/0/uncertainty-sharded/0/c/0/0/0/0"
    status, body, headers = ask(chunk, "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    looked_up = _metric(server, "ilastik_cache_hits") + _metric(server, "ilastik_cache_misses")
    status, body, got = ask(chunk)
    assert status == 200 and len(body) == int(headers["Content-Length"]) and got["ETag"] == headers["ETag"]
    assert _metric(server, "ilastik_cache_hits") + _metric(server, "ilastik_cache_misses") == looked_up
    region = server.url + "/api/v1/lanes/0/uncertainty?start=40,40,40&stop=64,64,64"
    status, body, headers = ask(region, "HEAD")  # a region's length is known without computing it
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 24 ** 3 * 4
    assert _metric(server, "ilastik_cache_hits") + _metric(server, "ilastik_cache_misses") == looked_up
    for path in ("/health", "/api/v1/info", "/openapi.json", "/doc", "/doc/static/swagger-ui.css", "/metrics",
                 "/zarr/0/raw/.zattrs", "/zarr3/0/raw/0/zarr.json", "/api/v1/lanes/0/raw?stop=8,8,8",
                 "/zarr3/0/raw/0/c/0/0/0/0"):
        status, body, headers = ask(server.url + path, "HEAD")
        _, full, _ = ask(server.url + path)
        assert status == 200 and body == b"", path
        if path != "/metrics":  # its numbers change between the two requests
            assert int(headers["Content-Length"]) == len(full), path


def test_every_answer_has_a_content_length(server):
    """Chunks, ranges, errors, streamed regions and files: all say their length (none is sent chunked)."""
    etag = server.get("/zarr3/0/raw/0/zarr.json")[2]["ETag"]
    answers = {"chunk": server.get("/zarr3/0/raw/0/c/0/0/0/0"), "range": server.get("/zarr3/0/raw/0/c/0/0/0/0",
                                                                                     {"Range": "bytes=-5"}),
               "416": server.get("/zarr3/0/raw/zarr.json", {"Range": "bytes=99999-"}),
               "404": server.get("/zarr3/0/raw/0/c/9/9/9/9"), "401": ask(server.base + "/zarr3/0/raw/zarr.json"),
               "npy stream": server.get("/api/v1/lanes/0/probabilities?stop=30,30,30"),
               "file": server.get("/doc/static/swagger-ui.css"), "json": server.get("/health")}
    for name, (status, body, headers) in answers.items():
        assert int(headers.get("Content-Length", -1)) == len(body), (name, status, headers)
        assert "Transfer-Encoding" not in headers, name
    status, body, headers = server.get("/zarr3/0/raw/0/zarr.json", {"If-None-Match": etag})
    assert status == 304 and body == b"" and "Transfer-Encoding" not in headers  # RFC 9110: no length of its own


def test_cors_headers_on_every_answer_and_the_preflight(server):
    origin = {"Origin": ORIGIN}

    def assert_cors(headers: dict, what: str) -> None:
        assert headers.get("Access-Control-Allow-Origin") == ORIGIN, (what, headers)
        exposed = {h.strip() for h in headers["Access-Control-Expose-Headers"].split(",")}
        assert {"Content-Range", "Content-Length", "ETag", "Accept-Ranges"} <= exposed, what

    status, _, headers = ask(server.base + "/t/" + TOKEN + "/zarr3/0/probabilities/0/c/0/0/0/0", "OPTIONS",
                             {**origin, "Access-Control-Request-Method": "GET",
                              "Access-Control-Request-Headers": "range"})
    assert status == 204 and {"GET", "HEAD", "OPTIONS"} <= {m.strip() for m in
                                                           headers["Access-Control-Allow-Methods"].split(",")}
    assert "range" in headers["Access-Control-Allow-Headers"].lower()
    assert_cors(headers, "preflight")
    for what, (status, _, headers), expected in (
            ("v2 probe of zarr.json", server.get("/zarr/0/probabilities/zarr.json", origin), 404),
            ("v3 probe of .zattrs", server.get("/zarr3/0/probabilities/.zattrs", origin), 404),
            ("no token", ask(server.base + "/zarr3/0/probabilities/zarr.json", headers=origin), 401),
            ("foreign Host", server.get("/zarr3/0/raw/zarr.json", {**origin, "Host": "rebound.example"}), 403),
            ("range", server.get("/zarr3/0/raw/0/c/0/0/0/0", {**origin, "Range": "bytes=0-3"}), 206),
            ("416", server.get("/zarr3/0/raw/zarr.json", {**origin, "Range": "bytes=99999-"}), 416),
            ("streamed npy", server.get("/api/v1/lanes/0/raw?stop=8,8,8", origin), 200),
            ("docs file", server.get("/doc/static/swagger-ui.css", origin), 200)):
        assert status == expected, what
        assert_cors(headers, what)
    assert "Access-Control-Allow-Origin" not in server.get("/health", {"Origin": "https://other.example"})[2]


def test_a_token_is_required_on_every_zarr3_path(server):
    paths = ("/zarr3/0/probabilities/zarr.json", "/zarr3/0/probabilities/0/zarr.json",
             "/zarr3/0/probabilities/0/c/0/0/0/0", "/zarr3/0/probabilities-sharded/0/zarr.json",
             "/zarr3/0/probabilities-sharded/0/c/0/0/0/0", "/zarr3/0/objects.zarr/zarr.json")
    for path in paths:
        for method in ("GET", "HEAD"):
            assert ask(server.base + path, method)[0] == 401, (method, path)
            assert ask(server.base + path, method, {"Authorization": "Bearer wrong-token"})[0] == 401
            assert ask(server.base + path, method, {"Authorization": f"Bearer {TOKEN}"})[0] == 200, (method, path)
        assert ask(server.base + f"/t/{TOKEN}" + path)[0] == 200
        assert ask(server.base + path + f"?token={TOKEN}")[0] == 200


@pytest.mark.parametrize("path, words", [
    ("/zarr3/0/probabilities/0/c/0/0/x/0", "not a chunk key"),
    ("/zarr3/0/probabilities/0/c/0/0/0", "not a chunk key"),
    ("/zarr3/0/probabilities/0/0.0.0.0", "not a chunk key"),
    ("/zarr3/0/probabilities/0/.zarray", "not a chunk key"),
    ("/zarr3/0/probabilities/0/c/0/0/0/%C2%B2", "not a chunk key"),
    ("/zarr3/0/probabilities/0/c/0/3/0/0", "no chunk c/0/3/0/0 in"),
    ("/zarr3/0/probabilities-sharded/0/c/0/2/0/0", "no chunk c/0/2/0/0 in"),
    ("/zarr3/0/probabilities/0/c/0/0/0/" + "9" * 5000, "not a chunk key"),
    ("/zarr3/0/probabilities/3/zarr.json", "no resolution level '3'"),
    ("/zarr3/0/nonsense/zarr.json", "unknown source 'nonsense'"),
    ("/zarr3/0/probabilities-sharded-sharded/zarr.json", "unknown source"),
    ("/zarr3/7/probabilities/zarr.json", "no lane '7'"),
    ("/zarr3/0/probabilities/.zattrs", "no resolution level '.zattrs'"),
])
def test_bad_zarr3_requests_answer_404_with_a_message_and_the_server_stays_up(server, path, words):
    status, body, headers = server.get(path)
    assert status == 404 and words in json.loads(body)["error"], (status, body[:300])
    assert headers["Content-Type"].startswith("application/json")
    assert server.get("/health")[0] == 200


def test_openapi_lists_the_zarr3_and_viewer_paths(server):
    paths = json.loads(server.get("/openapi.json")[1])["paths"]
    assert {"/zarr3/{lane}/{source}/zarr.json", "/zarr3/{lane}/{source}/0/zarr.json",
            "/zarr3/{lane}/{source}/0/c/{chunk}", "/viewer", "/viewer/versions/{lane}"} <= set(paths)
    assert "head" in paths["/zarr3/{lane}/{source}/0/c/{chunk}"]
