"""The web service through real clients: zarr-python over fsspec's HTTP store, ome-zarr, urllib, threads."""

from __future__ import annotations

import io
import json
import os
import resource
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile
import zarr
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, run_cli
from tests.integration.webserver import ServeProcess, http_get

pytestmark = pytest.mark.timeout(600)


def _export(tmp_path, *args) -> np.ndarray:
    result = run_cli("--headless", "--no-progress", "--output_format", "npy",
                     "--output_filename_format", str(tmp_path / "export"), *args)
    assert result.returncode == 0, result.stderr
    return np.load(tmp_path / "export.npy")


def _metric(server: ServeProcess, name: str) -> float:
    _, body, _ = server.get("/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name in (name, name + "_total"):
                return sample.value
    raise KeyError(name)


@pytest.fixture(scope="module")
def project_3d(data_dir):
    return os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")


@pytest.fixture(scope="module")
def server_3d(project_3d):
    with ServeProcess(project_3d, "--workers", "2", "--block_shape", "32,32,32", "--max-roi-mb", "1") as server:
        yield server


def test_zarr_python_reads_3d_probabilities_equal_to_the_export(server_3d, project_3d, tmp_path):
    array = zarr.open_array(server_3d.url + "/zarr/0/probabilities/0", mode="r", zarr_format=2)
    assert array.shape == (2, 64, 64, 64) and array.chunks == (2, 32, 32, 32) and array.dtype == np.float32
    served = array[:]
    exported = _export(tmp_path, "--project", project_3d, "--block_shape", "32,32,32")
    assert np.array_equal(np.moveaxis(exported, -1, 0), served)  # zyxc export vs czyx NGFF order, bit for bit
    raw = zarr.open_array(server_3d.url + "/zarr/0/raw/0", mode="r", zarr_format=2)
    original = np.load(os.path.join(os.path.dirname(project_3d), "Data_3D.npy"))
    assert np.array_equal(raw[:], np.moveaxis(original, -1, 0))


def test_ome_zarr_reader_recognises_the_image_with_its_axes(server_3d):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    nodes = list(Reader(parse_url(server_3d.url + "/zarr/0/probabilities"))())
    image = nodes[0]
    assert any(isinstance(spec, Multiscales) for spec in image.specs)
    assert [axis["name"] for axis in image.metadata["axes"]] == ["c", "z", "y", "x"]
    assert [axis["type"] for axis in image.metadata["axes"]] == ["channel", "space", "space", "space"]
    assert image.data[0].shape == (2, 64, 64, 64)
    group = zarr.open_group(server_3d.url + "/zarr/0/probabilities", mode="r", zarr_format=2)
    ours = group.attrs["ilastik-desktop"]
    info = json.loads(server_3d.get("/api/v1/info")[1])
    assert ours["classes"] == info["classes"] and len(ours["classes"]) == 2
    channels = group.attrs["omero"]["channels"]  # what napari names and colours the channels by
    assert [c["label"] for c in channels] == [c["name"] for c in info["classes"]]
    assert [c["color"] for c in channels] == ["".join(f"{v:02X}" for v in c["color"]) for c in info["classes"]]
    same = zarr.open_array(server_3d.url + "/zarr/0/probabilities.zarr/0", mode="r", zarr_format=2)
    assert same.shape == image.data[0].shape  # also under a name ending in .zarr, as napari's reader wants
    assert ours["classifier"]


def test_zarr_python_reads_the_2d_seed_project_equal_to_the_export(data_dir, tmp_path):
    seed = os.path.join(data_dir, "seed")
    args = (os.path.join(seed, "pc.ilp"), "--raw_data", os.path.join(seed, "raw.h5/exported_data"))
    server = ServeProcess(*args, "--workers", "2")
    try:
        served = zarr.open_array(server.url + "/zarr/0/probabilities/0", mode="r", zarr_format=2)[:]
    finally:
        code = server.stop()
    assert code == 0 and not server.left_running  # SIGTERM ends it with its workers and redis-server
    exported = _export(tmp_path, "--project", *args)
    assert served.shape == np.moveaxis(exported, -1, 0).shape
    assert np.array_equal(np.moveaxis(exported, -1, 0), served)


def test_eight_clients_on_overlapping_regions_get_every_block_computed_once(project_3d, tmp_path):
    exported = _export(tmp_path, "--project", project_3d, "--block_shape", "32,32,32")
    regions = [((z, y, 0), (z + 40, y + 40, 64)) for z in (0, 24) for y in (0, 12, 24, 20)]
    with ServeProcess(project_3d, "--workers", "2", "--block_shape", "32,32,32") as server:
        def read(region):
            (z0, y0, x0), (z1, y1, x1) = region
            status, body, _ = server.get(f"/api/v1/lanes/0/probabilities?start={z0},{y0},{x0}&stop={z1},{y1},{x1}")
            assert status == 200, body
            return region, np.load(io.BytesIO(body))

        def chunks(_):
            return zarr.open_array(server.url + "/zarr/0/probabilities/0", mode="r", zarr_format=2)[:]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(read, regions))
            whole = list(pool.map(chunks, range(2)))
        for ((z0, y0, x0), (z1, y1, x1)), values in answers:
            assert np.array_equal(values, exported[z0:z1, y0:y1, x0:x1])
        assert all(np.array_equal(np.moveaxis(exported, -1, 0), w) for w in whole)
        assert _metric(server, "ilastik_blocks_computed") == 8  # 2 x 2 x 2 blocks of 32^3, each once
        assert _metric(server, "ilastik_cache_misses") == 8


def test_roi_formats_npy_tiff_and_png(server_3d):
    status, body, headers = server_3d.get("/api/v1/lanes/0/probabilities?start=10,0,0&stop=12,64,64&format=npy")
    assert status == 200 and headers["X-Axes"] == "zyxc"
    values = np.load(io.BytesIO(body))
    status, body, _ = server_3d.get("/api/v1/lanes/0/probabilities?start=10,0,0&stop=12,64,64&format=tiff")
    assert status == 200 and np.array_equal(tifffile.imread(io.BytesIO(body)).reshape(values.shape), values)
    status, body, headers = server_3d.get("/api/v1/lanes/0/probabilities?start=10,0,0&stop=11,64,64&format=png"
                                          "&channel=1")
    import imageio.v3 as iio

    grey = iio.imread(body)
    assert status == 200 and headers["Content-Type"] == "image/png" and grey.shape == (64, 64)
    assert np.abs(grey.astype(int) - np.round(values[0, ..., 1] * 255)).max() <= 1
    status, body, _ = server_3d.get("/api/v1/lanes/0/probabilities?start=10,0,0&stop=11,64,64&format=png&colors=1")
    assert status == 200 and iio.imread(body).shape == (64, 64, 4)


@pytest.mark.parametrize("path, status, words", [
    ("/api/v1/lanes/0/nonsense", 404, "unknown source 'nonsense'"),
    ("/api/v1/lanes/7/probabilities", 404, "no lane '7'"),
    ("/api/v1/lanes/0/probabilities?start=a,b,c", 400, "expected 3 whole numbers"),
    ("/api/v1/lanes/0/probabilities?start=0,0&stop=4,4", 400, "expected 3 numbers"),
    ("/api/v1/lanes/0/probabilities?start=0,0,0&stop=65,10,10", 400, "outside the image"),
    ("/api/v1/lanes/0/probabilities?start=5,0,0&stop=5,10,10", 400, "outside the image (0 to 64) or empty"),
    ("/api/v1/lanes/0/probabilities?t=3", 400, "outside the time steps"),
    ("/api/v1/lanes/0/probabilities", 413, "more than this server's limit of 1 MB"),
    ("/api/v1/lanes/0/probabilities?stop=4,4,4&format=jpeg", 400, "unknown format 'jpeg'"),
    ("/api/v1/lanes/0/probabilities?stop=4,4,4&format=png", 400, "needs one plane"),
    ("/zarr/0/probabilities/0/0.0.x.0", 404, "not a chunk key"),
    ("/zarr/0/probabilities/0/0.0.9.0", 404, "no chunk 0.0.9.0"),
    ("/zarr/0/probabilities/0/0.0.0.9", 404, "no chunk 0.0.0.9"),
    ("/zarr/0/probabilities/3/.zarray", 404, "no resolution level '3'"),
    ("/nowhere", 404, "Not Found"),
])
def test_bad_requests_answer_4xx_with_a_message_and_the_server_stays_up(server_3d, path, status, words):
    got, body, headers = server_3d.get(path)
    assert got == status and words in json.loads(body)["error"], (got, body)
    assert headers["Content-Type"].startswith("application/json")
    assert server_3d.get("/health")[0] == 200


def test_token_is_required_on_every_request_including_chunks(project_3d):
    with ServeProcess(project_3d, "--workers", "1", "--token", "sesame-1234") as server:
        assert server.url == server.base + "/t/sesame-1234"  # the link it prints carries the token
        base = server.base
        for path in ("/health", "/api/v1/info", "/zarr/0/raw/0/.zarray", "/zarr/0/raw/0/0.0.0.0",
                     "/zarr3/0/raw/zarr.json", "/zarr3/0/raw/0/c/0/0/0/0", "/zarr3/0/raw-sharded/0/c/0/0/0/0"):
            assert http_get(base + path)[0] == 401
            assert http_get(base + path, {"Authorization": "Bearer wrong-token"})[0] == 401
            assert http_get(base + path, {"Authorization": "Bearer sesame-1234"})[0] == 200
        assert json.loads(http_get(base + "/health")[1])["error"].startswith("a token is required")
        assert http_get(base + "/health?token=sesame-1234")[0] == 200
        assert http_get(base + "/t/sesame-1234/zarr/0/raw/.zattrs")[0] == 200
        array = zarr.open_array(server.url + "/zarr/0/raw/0", mode="r", zarr_format=2)
        assert array[:].shape == (1, 64, 64, 64)
        for path, headers in (("/health?token=%C3%A9", {}), ("/t/%C3%A9/health", {}),
                              ("/health", {"Authorization": "Bearer é"}), ("/health?token=%ED%A0%80", {})):
            status, body, _ = http_get(base + path, headers)
            assert status == 401 and json.loads(body)["error"] == "wrong token", (path, status, body)
        answer = _raw_get(server, b"/health", b"Authorization: Bearer \xc3\xa9sesame-1234\r\n")
        assert answer.startswith(b"HTTP/1.1 401"), answer


def _raw_get(server: ServeProcess, path: bytes, headers: bytes = b"") -> bytes:
    """The first bytes of the answer to a request sent byte for byte (headers that urllib would not send)."""
    port = int(server.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"Connection: close\r\n\r\n")
        return client.recv(200)


def test_a_loopback_server_has_a_token_by_default_and_answers_to_loopback_names_only(server_3d):
    """As Jupyter: a token is generated and printed in the links even on 127.0.0.1, and a request naming
    another host (a DNS-rebinding page's name pointing at 127.0.0.1) is refused even with the token."""
    token = server_3d.token
    assert token and len(token) >= 24 and server_3d.url.endswith(f"/t/{token}")
    assert any(f"/t/{token}/zarr/0/probabilities" in line for line in server_3d.lines)
    assert http_get(server_3d.base + "/api/v1/info")[0] == 401
    port = server_3d.base.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "127.0.0.2", "LOCALHOST."):
        assert server_3d.get("/health", {"Host": host})[0] == 200, host
    for host in ("rebind.attacker.example", f"rebind.attacker.example:{port}", "192.168.1.10", "[::1",
                 "localhost.evil"):
        status, body, _ = server_3d.get("/health", {"Host": host})
        assert status == 403 and "loopback names only" in json.loads(body)["error"], host


def test_no_token_is_an_explicit_choice_and_only_on_loopback(project_3d):
    with ServeProcess(project_3d, "--workers", "1", "--no-token") as server:
        assert server.token is None and server.url == server.base
        assert any("no token (--no-token)" in line for line in server.lines)
        assert server.get("/health")[0] == 200
        assert server.get("/health", {"Host": "rebind.attacker.example"})[0] == 403


@pytest.mark.parametrize("args, says", [
    (("--no-token", "--host", "0.0.0.0"), "--no-token: only on a loopback address"),
    (("--token", "tökentökentöken"), "expected 8 to 256 characters, each an ASCII letter"),
    (("--token", "with space 1234"), "expected 8 to 256 characters"),
    (("--chunk-memory-mb", "nan"), "--chunk-memory-mb nan: expected a number of MB from 0"),
    (("--chunk-memory-mb", "inf"), "--chunk-memory-mb inf"),
    (("--max-roi-mb", "nan"), "--max-roi-mb nan: expected a number of MB from more than 0"),
    (("--max-roi-mb=-inf",), "--max-roi-mb -inf"),
    (("--max-roi-mb", "1e300"), "--max-roi-mb 1e+300"),
])
def test_unusable_settings_are_refused_at_start_in_one_line_leaving_nothing(project_3d, tmp_path, args, says):
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "ilastik_desktop", "serve", project_3d, "--port", "0",
                             "--workers", "1", *args], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert os.listdir(tmp_path) == []


def test_slow_connections_neither_lock_out_other_clients_nor_stay_open(project_3d):
    """1,100 connections sending half a request head to a server allowed 1,024 open files (they locked out
    every client): beyond the cap (256) the oldest slow ones are dropped (counted in /metrics), a normal client
    is answered at once, and a slow connection is closed after the header timeout (set to 3 s here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    slow: list[socket.socket] = []
    try:
        with ServeProcess(project_3d, "--workers", "1", env={"ILASTIK_DESKTOP__WEB__HEADER_TIMEOUT_S": "3"},
                          max_files=1024) as server:
            port = int(server.base.rsplit(":", 1)[1])
            for _ in range(1100):
                connection = socket.create_connection(("127.0.0.1", port), timeout=10)
                slow.append(connection)
                try:
                    connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                except OSError:  # dropped already to make room
                    pass
            assert server.get("/health", timeout=10)[0] == 200
            started = time.monotonic()
            assert slow[-1].recv(100) == b""  # the newest slow connection: closed by the server...
            assert 1 < time.monotonic() - started < 8  # ... after the header timeout
            dropped = _metric(server, "ilastik_http_connections_dropped")  # the others timed out meanwhile
            assert dropped > 0, dropped
            assert server.get("/health", timeout=10)[0] == 200
    finally:
        for connection in slow:
            connection.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_tiff_answer_is_streamed_and_logs_nothing(server_3d):
    """TIFF answers were written whole into a temporary file and logged two tracebacks each; now the file's
    head, the values slab by slab and its tail are streamed, equal to what tifffile writes."""
    status, body, headers = server_3d.get("/api/v1/lanes/0/probabilities?start=0,0,0&stop=16,64,64&format=tiff")
    values = np.load(io.BytesIO(server_3d.get("/api/v1/lanes/0/probabilities?start=0,0,0&stop=16,64,64")[1]))
    assert status == 200 and int(headers["Content-Length"]) == len(body)
    assert np.array_equal(tifffile.imread(io.BytesIO(body)), values)
    written = io.BytesIO()
    tifffile.imwrite(written, values, photometric="minisblack", planarconfig="contig", metadata={"axes": "ZYXS"})
    assert written.getvalue() == body
    status, body, _ = server_3d.get("/api/v1/lanes/0/segmentation?start=3,0,0&stop=5,64,64&format=tiff")
    assert status == 200 and tifffile.imread(io.BytesIO(body)).shape == (2, 64, 64)
    assert not any("Traceback" in line or "Error" in line for line in server_3d.lines), server_3d.lines


def test_a_server_on_all_interfaces_gets_a_generated_token(project_3d):
    with ServeProcess(project_3d, "--workers", "1", "--host", "0.0.0.0") as server:
        assert server.token and len(server.token) >= 24
        local = "http://127.0.0.1:" + server.base.rsplit(":", 1)[1]
        assert http_get(local + "/health")[0] == 401
        assert http_get(local + "/health", {"Authorization": f"Bearer {server.token}"})[0] == 200


def test_cors_only_for_configured_origins_and_etag_carries_the_classifier(project_3d, server_3d):
    origin = {"Origin": "https://viewer.example"}
    assert "Access-Control-Allow-Origin" not in server_3d.get("/zarr/0/raw/.zattrs", origin)[2]
    with ServeProcess(project_3d, "--workers", "1", "--cors", "https://viewer.example") as server:
        headers = server.get("/zarr/0/probabilities/.zattrs", origin)[2]
        assert headers["Access-Control-Allow-Origin"] == "https://viewer.example"
        info = json.loads(server.get("/api/v1/info")[1])
        etag = server.get("/zarr/0/probabilities/0/0.0.0.0")[2]["ETag"]
        assert info["lanes"][0]["classifier"] in etag and info["lanes"][0]["data_fingerprint"] in etag
        assert server.get("/zarr/0/probabilities/0/0.0.0.0", {"If-None-Match": etag})[0] == 304


def test_metrics_info_health_and_openapi(server_3d):
    info = json.loads(server_3d.get("/api/v1/info")[1])
    lane = info["lanes"][0]
    assert lane["sources"]["probabilities"]["axes"] == "czyx" and lane["spatial_axes"] == "zyx"
    assert set(lane["sources"]) == {"raw", "probabilities", "segmentation", "uncertainty", "objects"}
    assert len(info["classes"]) == 2 and all(len(c["color"]) == 3 for c in info["classes"])
    assert json.loads(server_3d.get("/health")[1])["worker_processes"] == 2
    spec = json.loads(server_3d.get("/openapi.json")[1])
    assert "/api/v1/lanes/{lane}/{source}" in spec["paths"] and "/zarr/{lane}/{source}/0/{chunk}" in spec["paths"]
    server_3d.get("/zarr/0/probabilities/0/0.0.0.0")
    _, body, headers = server_3d.get("/metrics")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"ilastik_blocks_computed", "ilastik_cache_hits", "ilastik_queue_depth", "ilastik_workers",
            "ilastik_http_request_seconds"} <= names
    assert _metric(server_3d, "ilastik_workers") >= 1
    status, page, _ = server_3d.get("/doc")
    assert status == 200 and b"/doc/static/swagger-ui-bundle.js" in page and b"https://" not in page
    assert server_3d.get("/doc/static/swagger-ui-bundle.js")[0] == 200


def test_objects_and_segmentation_chunks(server_3d, project_3d, tmp_path):
    objects = zarr.open_array(server_3d.url + "/zarr/0/objects/0", mode="r", zarr_format=2)[:]
    exported = _export(tmp_path, "--project", project_3d, "--block_shape", "32,32,32", "--export_source", "Objects")
    assert objects.dtype == np.uint64 and np.array_equal(objects, np.moveaxis(exported, -1, 0))
    segmentation = zarr.open_array(server_3d.url + "/zarr/0/segmentation/0", mode="r", zarr_format=2)[:]
    exported = _export(tmp_path, "--project", project_3d, "--block_shape", "32,32,32",
                       "--export_source", "Simple Segmentation")
    assert segmentation.dtype == np.uint8 and np.array_equal(segmentation, np.moveaxis(exported, -1, 0))


def _chromium() -> str:
    import shutil

    from tests.conftest import IN_CI

    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if IN_CI:
            pytest.fail("headless Chromium is required under CI=true (apt-get install -y chromium)")
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")
    return found


def test_docs_page_renders_offline_in_headless_chromium(server_3d, tmp_path):
    import subprocess

    import imageio.v3 as iio

    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--window-size=1280,1400"]
    url = server_3d.url + "/doc"
    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    for endpoint in ("/api/v1/info", "/api/v1/lanes/{lane}/{source}", "/zarr/{lane}/{source}/0/{chunk}", "/metrics"):
        assert endpoint in dom, f"{endpoint} is not on the rendered page"
    shot = tmp_path / "docs.png"
    subprocess.run([*browser, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    image = iio.imread(shot)
    assert image.shape[0] >= 1000 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20


def test_what_the_path_brings_is_escaped_and_odd_numbers_are_not_found(server_3d):
    """A link that puts markup into the path gets it back escaped (it was written into the docs page as is);
    numbers that are digits to Python but not plain ASCII digits ("²") or absurdly long are 404s, not 500s."""
    _, body, _ = http_get(server_3d.base + "/t/x%22%3E%3Cimg%20src=x%20onerror=alert(document.domain)%3E/doc")
    assert b"<img" not in body and b'x">' not in body
    for path in ("/api/v1/lanes/%C2%B2/raw?start=0,0,0&stop=1,1,1", "/zarr/%C2%B2/raw/.zattrs",
                 "/zarr/0/raw/0/%C2%B2.0.0.0", "/api/v1/lanes/" + "9" * 5000 + "/raw?start=0,0,0&stop=1,1,1"):
        status, body, _ = server_3d.get(path)
        assert status == 404, (path[:60], status, body[:200])
    status, _, _ = server_3d.get("/api/v1/lanes/0/probabilities?start=0,0,0&stop=1,8,8&format=png&channel=%C2%B2")
    assert status == 400


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_token_bypasses_and_path_traversals_read_nothing(server_3d):
    """Forty ways around the token and a dozen ways out of the docs' folder, sent byte for byte: none reads
    anything, none is an error of the server."""
    token = server_3d.token.encode()
    wrong = token[:-1] + (b"A" if token[-1:] != b"A" else b"B")
    target = b"/api/v1/info"
    paths = [target, b"/t/" + token[:-1] + target, b"/t/" + token + b"x" + target, b"/t/" + token.upper() + target,
             b"/t/" + token.swapcase() + target, b"/t/" + wrong + target, b"/t//" + target[1:], b"/t/%2e%2e" + target,
             b"/t/" + token + b"%2F.." + target, b"/x/t/" + token + target, b"//t/" + token + target,
             b"/T/" + token + target, b"/t/" + token[:8] + target, target + b"?token=", target + b"?token=" + wrong,
             target + b"?TOKEN=" + token, target + b"?token%3D" + token, target + b"?tok=" + token,
             target + b"?token=" + token + b"%00", target + b"?token=%20" + token, target + b"#token=" + token,
             b"/t/" + token + b"%00" + target, b"/t/" + token + b";x" + target, b"/t/%00" + target]
    headers = [b"Authorization: Bearer\r\n", b"Authorization: Bearer " + wrong + b"\r\n",
               b"Authorization: Basic " + token + b"\r\n", b"Authorization: Bearer " + token + b" extra\r\n",
               b"Authorization: Token " + token + b"\r\n", b"Authorization: " + token + b"\r\n",
               b"X-Token: " + token + b"\r\n", b"Cookie: token=" + token + b"\r\n",
               b"Authorization: Bearer " + token + b"\x00\r\n", b"Authorization: Bearer " + token.upper() + b"\r\n",
               b"Authorization: Bearer " + token[:-1] + b"\r\n", b"Authorization: Bearer " + b"x" * 10_000 + b"\r\n",
               b"Authorization: Bearer " + wrong + b"\r\nAuthorization: Bearer " + wrong + b"\r\n",
               b"Authorization: Bearer \xff\xfe" + token + b"\r\n", b"Authorization: Bearer " + token[::-1] + b"\r\n",
               b"Proxy-Authorization: Bearer " + token + b"\r\n"]
    attempts = [(path, b"") for path in paths] + [(target, header) for header in headers]
    assert len(attempts) == 40
    for path, header in attempts:
        answer = _raw_get(server_3d, path, header)
        assert answer.startswith(b"HTTP/1."), (path, header, answer)
        assert _status(answer) in (400, 401, 403, 404, 431), (path, header, answer)
    good = b"/t/" + token
    traversals = [b"/doc/static/../../../../etc/passwd", b"/doc/static/..%2F..%2F..%2Fetc%2Fpasswd",
                  b"/doc/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", b"/doc/static/....//....//etc/passwd",
                  b"/doc/static/%252e%252e%252fetc%252fpasswd", b"/doc/static/..\\..\\..\\etc\\passwd",
                  b"/doc/static/%00../../etc/passwd", b"/doc/static//etc/passwd", b"/doc/static/%2Fetc%2Fpasswd",
                  b"/doc/static/..", b"/doc/static/.", b"/doc/static/swagger-ui.css/../../../../etc/passwd"]
    for path in traversals:
        answer = _raw_get(server_3d, good + path)
        assert _status(answer) in (400, 403, 404), (path, answer)
    assert _status(_raw_get(server_3d, good + b"/doc/static/swagger-ui.css")) == 200
    assert server_3d.get("/health")[0] == 200
