"""The ``/viewer`` page in headless Chromium with software WebGL (SwiftShader): neuroglancer draws each class in
its colour where the export says the class wins, and follows a new classifier and thresholds without a reload."""

from __future__ import annotations

import asyncio
import base64
import colorsys
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import aiohttp
import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage

from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.service.rendering import raw_display_range
from backend.web.server import WebServer, WebSettings
from backend.web.viewer_page import client_files
from ilastik_desktop.cli.serve import announce
from ilastik_desktop.runtime.services import Services
from ilastik_desktop.runtime.serving import describe_project, open_served_lane
from ilastik_desktop.runtime.settings import ComputeSettings
from tests.conftest import IN_CI, run_cli
from tests.helpers import wait_for
from tests.integration.webserver import http_get

pytestmark = pytest.mark.timeout(300)

# Software WebGL in headless Chromium: without SwiftShader through ANGLE the canvas stays black.
WEBGL = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
QUIET = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-dev-shm-usage", "--window-size=1000,700"]
READY_S = 90


class Chromium:
    """Headless Chromium driven over the DevTools protocol (a websocket): navigate, evaluate, screenshot."""

    def __init__(self, folder: str):
        found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if found is None:
            if IN_CI:
                pytest.fail("headless Chromium is required under CI=true (apt-get install -y chromium)")
            pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")
        self.process = subprocess.Popen([found, *QUIET, *WEBGL, f"--user-data-dir={folder}",
                                         "--remote-debugging-port=0", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(folder, "DevToolsActivePort")
        port = wait_for(lambda: os.path.exists(port_file) and open(port_file).read().split("\n")[0], 60,
                        interval=0.05, message="Chromium did not open its DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            page = next(target for target in json.load(answer) if target["type"] == "page")
        self.loop = asyncio.new_event_loop()
        self.session = self.loop.run_until_complete(self._session())
        self.socket = self.loop.run_until_complete(self.session.ws_connect(page["webSocketDebuggerUrl"],
                                                                           max_msg_size=0))
        self.calls = 0

    @staticmethod
    async def _session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def call(self, method: str, **params) -> dict:
        """The result of one DevTools method."""
        self.calls += 1
        number = self.calls

        async def send() -> dict:
            await self.socket.send_json({"id": number, "method": method, "params": params})
            while True:
                message = await self.socket.receive_json(timeout=60)
                if message.get("id") == number:
                    assert "error" not in message, message
                    return message["result"]

        return self.loop.run_until_complete(send())

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Load ``url`` and wait until the page says every visible layer's chunks are on screen."""
        self.call("Page.navigate", url=url)
        self.wait_ready()

    def wait_ready(self, condition: str = "true") -> None:
        """Wait until ``<body data-state>`` is "ready" and ``condition`` holds."""
        wait_for(lambda: self.evaluate(f"document.body && document.body.dataset.state === 'ready' && ({condition})"),
                 READY_S, interval=0.2, message=lambda: f"the page is not ready: {self.evaluate(STATUS)}")

    def screenshot(self) -> np.ndarray:
        """The page as RGB pixels."""
        return iio.imread(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))[..., :3]

    def close(self) -> None:
        """Close the connection and end the browser."""
        self.loop.run_until_complete(self.socket.close())
        self.loop.run_until_complete(self.session.close())
        self.loop.close()
        self.process.terminate()
        self.process.wait(timeout=30)


STATUS = "document.body && [document.body.dataset.state, document.body.innerText.slice(0, 300)]"
# Where the slice panel is on the page and how neuroglancer maps voxels to it (x first, then y).
GEOMETRY = """(() => {
  const frame = document.getElementById("neuroglancer");
  const outer = frame.getBoundingClientRect();
  const viewer = frame.contentWindow.viewer;
  const rects = [...viewer.display.panels].map((panel) => panel.element.getBoundingClientRect());
  const panel = rects.sort((a, b) => b.width * b.height - a.width * a.height)[0];
  return { left: outer.left + panel.left, top: outer.top + panel.top, width: panel.width, height: panel.height,
           scale: viewer.crossSectionScale.value, position: Array.from(viewer.position.value) };
})()"""


@pytest.fixture(scope="module")
def project_2d(data_dir):
    return os.path.join(data_dir, "ilastik-api", "PixelClass.ilp")


@pytest.fixture(scope="module")
def served(project_2d, tmp_path_factory):
    """The 2D project served in this process (its gateway at hand), with a generated token."""
    settings = ComputeSettings(workers=1, cache_mb=64, config_dir=str(tmp_path_factory.mktemp("config")))
    with Services(settings) as services:
        project = open_project(project_2d)
        lane = open_served_lane(project, 0, services)
        server = WebServer([lane], describe_project(project),
                           WebSettings(port=0, limits=services.config.web), "test").start()
        try:
            yield server
        finally:
            server.stop()
            lane.gateway.close()


@pytest.fixture(scope="module")
def browser():
    folder = tempfile.mkdtemp(prefix="chromium-")
    chromium = Chromium(folder)
    yield chromium
    chromium.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def exported(project_2d, tmp_path_factory) -> np.ndarray:
    """The headless export's probabilities (y, x, class)."""
    folder = tmp_path_factory.mktemp("export")
    result = run_cli("--headless", "--no-progress", "--output_format", "npy", "--output_filename_format",
                     str(folder / "export"), "--project", project_2d)
    assert result.returncode == 0, result.stderr
    return np.load(folder / "export.npy")


def _hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue (degrees) and saturation of RGB pixels."""
    hsv = np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in rgb.reshape(-1, 3)])
    return hsv[:, 0] * 360, hsv[:, 1]


def _class_pixels(shot: np.ndarray, geometry: dict, winner: np.ndarray) -> np.ndarray:
    """The screenshot's pixels at the centres of the voxels in ``winner`` (y, x), away from its edges."""
    inner = ndimage.binary_erosion(winner, iterations=3)
    ys, xs = np.nonzero(inner)
    scale, (px, py) = geometry["scale"], geometry["position"][:2]
    sx = geometry["left"] + geometry["width"] / 2 + (xs + 0.5 - px) / scale
    sy = geometry["top"] + geometry["height"] / 2 + (ys + 0.5 - py) / scale
    return shot[sy.astype(int), sx.astype(int)]


def _hue_distance(a: np.ndarray, b: float) -> np.ndarray:
    return np.abs((a - b + 180) % 360 - 180)


def _check_class_colours(browser: Chromium, probabilities: np.ndarray, colours: list) -> np.ndarray:
    """The screenshot, after checking it is neither blank nor black and that where class k's probability is
    above 0.9, the pixels have class k's hue (the colours are the served project's, in class order)."""
    shot = browser.screenshot()
    geometry = browser.evaluate(GEOMETRY)
    top, left = int(geometry["top"]), int(geometry["left"])
    panel = shot[top:top + int(geometry["height"]), left:left + int(geometry["width"])]
    assert panel.std() > 20 and len(np.unique(panel.reshape(-1, 3), axis=0)) > 50, "the panel is blank"
    assert (panel.max(axis=-1) > 60).mean() > 0.2, "the panel is black"
    for k, colour in enumerate(colours):
        winner = probabilities[..., k] > 0.9
        assert winner.sum() > 500, f"class {k} wins too few voxels to check"
        hue, saturation = _hue(_class_pixels(shot, geometry, winner))
        wanted = _hue(np.array(colour[:3], np.float64))[0][0]
        close = (_hue_distance(hue, wanted) < 20) & (saturation > 0.3)
        assert close.mean() > 0.9, (k, colour, close.mean(), np.median(hue), np.median(saturation))
    return shot


def test_the_page_shows_each_class_in_its_colour_where_the_export_says_it_wins(served, browser, exported,
                                                                               tmp_path):
    info = json.loads(http_get(served.link + "/api/v1/info")[1])
    browser.open(served.link + "/viewer?lane=0")
    header = browser.evaluate("document.querySelector('header').textContent")
    assert "PixelClass.ilp" in header and "2d_cells_128px" in header and info["lanes"][0]["classifier"] in header
    shot = _check_class_colours(browser, exported, [c["color"] for c in info["classes"]])
    iio.imwrite(tmp_path / "viewer.png", shot)
    wanted = browser.evaluate("config.raw_range")
    handed = browser.evaluate("initialState().layers")  # what the page hands neuroglancer
    assert next(layer for layer in handed if layer["name"] == "raw")["shaderControls"] == {
        "normalized": {"range": wanted}}
    assert wanted == [0, 255]  # 8-bit data: neuroglancer's default, which its state then leaves out
    assert _layer(browser, "raw").get("shaderControls", {"normalized": {"range": wanted}}) == {
        "normalized": {"range": wanted}}


def _layer(browser: Chromium, name: str) -> dict:
    """The state of neuroglancer's layer ``name``."""
    state = browser.evaluate("document.getElementById('neuroglancer').contentWindow.viewer.state.toJSON()")
    return next(layer for layer in state["layers"] if layer["name"] == name)


def _show_only(browser: Chromium, *names: str) -> None:
    """Make only the raw layer and ``names`` visible and wait until their chunks are on screen."""
    shown = json.dumps(["raw", *names])
    browser.evaluate(f"""(() => {{
      for (const layer of frame.contentWindow.viewer.layerManager.managedLayers)
        layer.setVisible({shown}.includes(layer.name));
      readyChecks = 0;
      showLoading("layers changed");
    }})()""")
    browser.wait_ready()


def test_the_segmentation_is_in_the_class_colours_and_the_uncertainty_grey(served, browser, exported):
    colours = [c["color"] for c in served.service.classes]
    browser.open(served.link + "/viewer?lane=0")
    try:
        _show_only(browser, "segmentation")
        _check_class_colours(browser, exported, colours)
        names = "frame.contentWindow.viewer.layerManager.getLayerByName('{}').layer.localCoordinateSpace.value.names"
        assert browser.evaluate(names.format("uncertainty (white: uncertain)")) == []  # one channel: no "c'" control
        _show_only(browser, "uncertainty (white: uncertain)")
        shot = browser.screenshot()
        geometry = browser.evaluate(GEOMETRY)
        top, left = int(geometry["top"]), int(geometry["left"])
        panel = shot[top:top + int(geometry["height"]), left:left + int(geometry["width"])]
        _, saturation = _hue(panel[::4, ::4])
        assert np.mean(saturation < 0.1) > 0.95, np.mean(saturation < 0.1)  # no class colour: grey and white
    finally:
        _show_only(browser, *[f"{c['name']} probability" for c in served.service.classes])


def test_the_raw_contrast_of_16_bit_data_comes_from_the_data(data_dir):
    """The 2D+t mitocheck images are uint16 from 33028 to 36863: the page's raw range lies inside the data's
    (neuroglancer's default, 0 to 65535, shows them nearly black)."""
    project = open_project(os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp"))
    source = open_lane(project, 0)
    low, high = raw_display_range(source)
    values = source.read(Roi((0, 0, 0, 0), source.spatial_shape))
    assert values.min() <= low < high <= values.max() and (values.min(), values.max()) == (33028, 36863)


def test_an_open_page_follows_a_new_classifier_and_new_thresholds_without_a_reload(served, browser, exported):
    lane = served.service.lanes[0]
    gateway = lane.gateway
    colours = [c["color"] for c in served.service.classes]
    browser.open(served.link + "/viewer?lane=0")
    before = browser.evaluate("JSON.parse(document.body.dataset.versions)")
    browser.evaluate("window.sameDocument = true")
    original = gateway.pipeline
    swapped = dataclasses.replace(original, known_labels=original.known_labels[::-1])  # the classes trade places
    gateway.set_pipeline(swapped)
    try:
        wanted = lane.view().etag("probabilities").strip('"')
        browser.wait_ready(f"JSON.parse(document.body.dataset.versions).probabilities === '{wanted}'")
        assert wanted != before["probabilities"] and browser.evaluate("window.sameDocument === true")
        assert gateway.pipeline_fingerprint in browser.evaluate("document.getElementById('classifier').textContent")
        _check_class_colours(browser, exported[..., ::-1], colours)  # each class where the other one was
    finally:
        gateway.set_pipeline(original)
    lane.threshold = ThresholdSettings(high=0.7)
    wanted = lane.view().etag("objects").strip('"')
    started = time.monotonic()
    browser.wait_ready(f"JSON.parse(document.body.dataset.versions).objects === '{wanted}'")
    assert wanted != before["objects"] and time.monotonic() - started < 30
    assert browser.evaluate("window.sameDocument === true")


def test_the_page_and_its_files_need_the_token_and_the_project_is_escaped(served):
    base, token = served.url, served.token
    for path in ("/viewer", "/viewer/versions/0", "/viewer/ng/v/0/", "/viewer/assets/viewer.js",
                 "/viewer/ng/static/index.html", "/viewer/ng/events/0", "/v/1/zarr/0/raw/.zattrs"):
        assert http_get(base + path)[0] == 401, path
    request = urllib.request.Request(f"{base}/viewer?token={token}&lane=0")
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as moved:
        opener.open(request, timeout=30)
    assert moved.value.code == 302 and moved.value.headers["Location"] == f"/t/{token}/viewer?lane=0"
    link = served.link
    client = http_get(link + "/viewer/ng/v/0/")[1].decode()
    scripts = re.findall(r'src="\.\./\.\./static/([^"]+)"', client)
    assert scripts and all(http_get(f"{link}/viewer/ng/static/{name}")[0] == 200 for name in scripts)
    status, _, headers = http_get(link + "/viewer/ng/static/" + next(n for n in client_files() if n.endswith(".wasm")))
    assert status == 200 and headers["Content-Type"] == "application/wasm"
    for path in ("/viewer/ng/static/..%2F..%2Fviewer_page.py", "/viewer/ng/static/neuroglancer.js",
                 "/viewer/assets/page.html", "/viewer?lane=1", "/viewer?lane=%C2%B2", "/viewer/versions/7"):
        assert http_get(link + path)[0] == 404, path
    versions = json.loads(http_get(link + "/viewer/versions/0")[1])
    assert versions["classifier"] == served.service.lanes[0].gateway.pipeline_fingerprint
    assert http_get(f"{link}/v/{versions['versions']['raw']}/zarr/0/raw/.zattrs")[0] == 200

    lane = served.service.lanes[0]
    nickname = lane.nickname
    lane.nickname = '</script><img src=x onerror=alert(1)>"&'
    try:
        page = http_get(link + "/viewer")[1].decode()
    finally:
        lane.nickname = nickname
    assert "<img" not in page and "</script><" not in page
    config = json.loads(re.search(r'<script id="viewer-config" type="application/json">(.*?)</script>', page).group(1))
    assert config["nickname"] == '</script><img src=x onerror=alert(1)>"&' and config["root"] == f"/t/{token}/"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


PROBLEM = "document.body.dataset.problem"
# neuroglancer's notices about its Python server: [all, shown]
PYTHON_NOTICES = """(() => {
  const notices = [...document.getElementById("neuroglancer").contentDocument.querySelectorAll(
    "[id^='neuroglancer-status-container'] li")].filter((item) => item.textContent.includes("Python server"));
  return [notices.length, notices.filter((item) => item.offsetParent !== null).length];
})()"""


def test_the_page_says_when_the_server_stops_comes_back_or_wants_a_new_token(served, browser):
    """The status line says "the server stopped" (and neuroglancer's "Disconnected from Python server" is hidden),
    clears when the server answers again, and says the link's token is no longer valid after a restart with a
    token (File > Serve over HTTP's Stop then Start)."""
    lane, limits = served.service.lanes[0], served.settings.limits

    def serve(port: int, **settings) -> WebServer:
        return WebServer([lane], served.service.project, WebSettings(port=port, limits=limits, **settings),
                         "test").start()

    server = serve(0, no_token=True)
    port = server.port
    try:
        browser.open(server.url + "/viewer?lane=0")
        assert browser.evaluate(PROBLEM) == ""
        server.stop()
        wait_for(lambda: "the server stopped" in browser.evaluate("document.getElementById('status').textContent"),
                 30, interval=0.2, message=lambda: browser.evaluate(STATUS))
        wait_for(lambda: browser.evaluate(PYTHON_NOTICES)[0] > 0, 30, interval=0.2)
        assert browser.evaluate(PYTHON_NOTICES)[1] == 0  # made by neuroglancer, hidden by the page
        server = serve(port, no_token=True)
        wait_for(lambda: browser.evaluate(PROBLEM) == "", 30, interval=0.2, message=lambda: browser.evaluate(STATUS))
        assert browser.evaluate("document.getElementById('status').textContent") == "all chunks shown"
        server.stop()
        server = serve(port, token="a-new-token-5678")
        wait_for(lambda: "token is no longer valid" in browser.evaluate(PROBLEM), 30, interval=0.2,
                 message=lambda: browser.evaluate(STATUS))
        assert "File > Serve over HTTP" in browser.evaluate("document.getElementById('status').textContent")
    finally:
        server.stop()


def test_an_open_event_stream_does_not_hold_the_service_when_it_stops(served):
    """neuroglancer's client keeps ``events`` open for as long as the page is: stopping ends it at once rather
    than after the requests' grace time."""
    lane = served.service.lanes[0]
    server = WebServer([lane], served.service.project, WebSettings(port=0, no_token=True,
                                                                   limits=served.settings.limits), "test").start()
    stream = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    stream.sendall(b"GET /viewer/ng/events/0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert stream.recv(4096).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    server.stop()
    took = time.monotonic() - started
    stream.close()
    assert took < served.settings.limits.stop_grace_s / 2, took


def test_serve_prints_the_viewer_link_with_its_token(served, capsys):
    announce(served)
    lines = capsys.readouterr().err.splitlines()
    viewer = next(line for line in lines if line.startswith("viewer: "))
    assert viewer.split()[1] == f"{served.url}/t/{served.token}/viewer?lane=0"
    zarr3 = next(line for line in lines if line.startswith("zarr3: ")).split()[1]
    assert zarr3 == f"{served.link}/zarr3/0/probabilities"
    assert json.loads(http_get(zarr3 + "/zarr.json")[1])["zarr_format"] == 3
    assert lines[-1].startswith("zarr: ")  # the last line, which scripts wait for, stays last


def test_the_printed_link_and_the_root_lead_to_the_viewer_page(served):
    """``serve`` prints ``http://HOST:PORT/t/TOKEN/``: a browser opening it (or ``/`` without a token) lands on
    the viewer page, the token kept in the path."""
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as moved:
        opener.open(served.link + "/", timeout=30)
    assert moved.value.code == 302 and moved.value.headers["Location"] == f"/t/{served.token}/viewer?lane=0"
    status, body, headers = http_get(served.link + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"viewer-config" in body
    assert http_get(served.url + "/")[0] == 401
    open_server = WebServer(served.service.lanes, served.service.project,
                            WebSettings(port=0, no_token=True, limits=served.settings.limits), "test").start()
    try:
        with pytest.raises(urllib.error.HTTPError) as moved:
            opener.open(open_server.url + "/", timeout=30)
        assert moved.value.code == 302 and moved.value.headers["Location"] == "/viewer?lane=0"
    finally:
        open_server.stop()


def test_a_browser_without_the_token_is_told_in_a_page_and_json_clients_keep_json(served):
    as_browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    status, body, headers = http_get(served.url + "/viewer%3Cscript%3E?lane=0", as_browser)
    page = body.decode()
    assert status == 401 and headers["Content-Type"].startswith("text/html"), (status, headers)
    assert "needs its token" in page and "File &gt; Serve over HTTP" in page and "a token is required" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    status, body, headers = http_get(served.url + "/viewer", {**as_browser, "Authorization": "Bearer wrong-token"})
    assert status == 401 and "wrong token" in body.decode()
    for accept in ({}, {"Accept": "application/json"}, {"Accept": "*/*"}):
        status, body, headers = http_get(served.url + "/viewer", accept)
        assert status == 401 and headers["Content-Type"].startswith("application/json")
        assert "token" in json.loads(body)["error"]
