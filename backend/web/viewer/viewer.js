// The viewer page: neuroglancer (in the frame) showing one lane's raw data and results from this server.
// The layers read /v/{version}/zarr/{lane}/{source}/; the page polls the versions and swaps a layer's source when
// its version changes (new classifier or thresholding), so no stale chunk stays on screen.
// <body data-state> is "loading" until every visible layer has its chunks on screen, then "ready";
// <body data-versions> holds the versions shown.
"use strict";

const config = JSON.parse(document.getElementById("viewer-config").textContent);
const frame = document.getElementById("neuroglancer");
const statusLine = document.getElementById("status");
const LAYER_URL = /\/v\/[^/]+\/zarr\/(\d+)\/([a-z]+)\/$/;
let shown = config.versions;

function sourceUrl(source, version) {
  const path = `${config.root}v/${encodeURIComponent(version)}/zarr/${config.lane}/${source}/`;
  return "zarr2://" + new URL(path, window.location.origin).href;
}

function layerSource(source, version) {
  // an image's channel axis of one channel becomes a channel dimension ("c^"), which neuroglancer shows no
  // control for (its segmentation layers keep their "c'" control: they take no channel dimension)
  const axes = config.single_channel[source];
  if (axes === undefined) return sourceUrl(source, version);
  const outputDimensions = Object.fromEntries([...axes].map((a) => (a === "c" ? ["c^", [1, ""]]
                                                                          : [a, config.dimensions[a]])));
  return { url: sourceUrl(source, version), transform: { outputDimensions } };
}

function rgb(color) {
  return color.slice(0, 3).map((v) => (v / 255).toFixed(4)).join(", ");
}

function classLayer(cls, index) {
  // one layer per class, its channel of the probabilities in the class colour, as opaque as it is probable
  return {
    type: "image", name: `${cls.name} probability`, source: sourceUrl("probabilities", shown.probabilities),
    localPosition: [index], opacity: 0.6, blend: "default",
    shader: `void main() {\n  emitRGBA(vec4(${rgb(cls.color)}, clamp(toNormalized(getDataValue()), 0.0, 1.0)));\n}\n`,
  };
}

function hex(color) {
  return "#" + color.slice(0, 3).map((v) => v.toString(16).padStart(2, "0")).join("");
}

function rawLayer() {
  // grey, its contrast from the data as the window picks it (not the data type's full range)
  return { type: "image", name: "raw", source: layerSource("raw", shown.raw),
           shader: "#uicontrol invlerp normalized\nvoid main() {\n  emitGrayscale(normalized());\n}\n",
           shaderControls: { normalized: { range: config.raw_range } } };
}

function segmentationLayer() {
  // label k + 1 is class k: drawn in class k's colour
  const colors = Object.fromEntries(config.classes.map((cls, index) => [String(index + 1), hex(cls.color)]));
  return { type: "segmentation", name: "segmentation", source: sourceUrl("segmentation", shown.segmentation),
           segmentColors: colors, visible: false };
}

function initialState() {
  const layers = [rawLayer()];
  config.classes.forEach((cls, index) => layers.push(classLayer(cls, index)));
  layers.push(
    segmentationLayer(),
    { type: "image", name: "uncertainty (white: uncertain)", source: layerSource("uncertainty", shown.uncertainty),
      visible: false, shader: "void main() {\n  float u = clamp(toNormalized(getDataValue()), 0.0, 1.0);\n"
                              + "  emitRGBA(vec4(u, u, u, u));\n}\n" },
    { type: "segmentation", name: "objects", source: sourceUrl("objects", shown.objects), visible: false },
  );
  const axes = Object.keys(config.dimensions);
  const flat = !axes.includes("z") || config.shape.z <= 1;
  // the whole image fits: one panel in 2D, a quarter of the frame in 3D's four panels
  const width = frame.clientWidth / (flat ? 1 : 2);
  const height = (frame.clientHeight - 70) / (flat ? 1 : 2);
  const scale = 1.05 * Math.max(config.shape.x / width, config.shape.y / Math.max(height, 1));
  return { dimensions: config.dimensions, position: axes.map((a) => (a === "t" ? 0.5 : config.shape[a] / 2)),
           crossSectionScale: scale, projectionScale: 2 * Math.max(config.shape.x, config.shape.y),
           layers, layout: flat ? "xy" : "4panel", showDefaultAnnotations: false, showAxisLines: false,
           selectedLayer: { visible: false } };
}

const TOKEN_GONE = "this link's token is no longer valid: open the new link from File > Serve over HTTP or " +
                   "serve's output";
let progress = "loading";  // what the layers are doing
let problem = "";  // what is wrong with the server, if anything: shown instead

function showStatus() {
  statusLine.textContent = problem || progress;
  statusLine.classList.toggle("problem", problem !== "");
  document.body.dataset.problem = problem;
}

function showProgress(text) {
  progress = text;
  showStatus();
}

function showProblem(text) {
  problem = text;
  showStatus();
}

function showLoading(text) {
  document.body.dataset.state = "loading";
  document.body.dataset.versions = JSON.stringify(shown);
  showProgress(text);
}

function viewer() {
  try {
    return frame.contentWindow.viewer;
  } catch (error) {
    return undefined;
  }
}

function isReady(ng) {
  // every visible layer loaded and every chunk its panels need on the GPU
  ng.chunkQueueManager.flushPendingChunkUpdates();
  if (!ng.display.isReady()) return false;
  return ng.layerManager.managedLayers.every((layer) => !layer.visible || layer.isReady());
}

let readyChecks = 0;
function watchReady() {
  const ng = viewer();
  if (ng === undefined || document.body.dataset.state === "ready") return;
  readyChecks = ng.layerManager && isReady(ng) ? readyChecks + 1 : 0;
  if (readyChecks >= 2) {
    document.body.dataset.state = "ready";
    showProgress("all chunks shown");
  }
}

function swapSources(versions) {
  const ng = viewer();
  if (ng === undefined) return;
  const state = ng.state.toJSON();
  for (const layer of state.layers || []) {
    const url = typeof layer.source === "string" ? layer.source : layer.source && layer.source.url;
    const found = url && url.match(LAYER_URL);
    if (found && Number(found[1]) === config.lane && versions[found[2]] !== undefined) {
      const fresh = sourceUrl(found[2], versions[found[2]]);
      if (typeof layer.source === "string") layer.source = fresh;
      else layer.source.url = fresh;
    }
  }
  shown = versions;
  readyChecks = 0;
  showLoading("new results: loading");
  frame.contentWindow.location.hash = "#!" + encodeURIComponent(JSON.stringify(state));  // as it first loaded
}

async function errorOf(answer) {
  try {
    return (await answer.json()).error;
  } catch (error) {
    return answer.statusText;
  }
}

async function poll() {
  let answer;
  try {
    answer = await fetch(`${config.root}viewer/versions/${config.lane}`, { cache: "no-store" });
  } catch (error) {
    showProblem(`the server stopped (or cannot be reached): the page tries again every ${config.poll_ms / 1000} s`);
    return;
  }
  if (answer.status === 401) {
    showProblem(TOKEN_GONE);
  } else if (!answer.ok) {
    showProblem(`the server answered ${answer.status}: ${await errorOf(answer)}`);
  } else {
    const latest = await answer.json();
    showProblem("");
    document.getElementById("classifier").textContent = latest.classifier;
    if (JSON.stringify(latest.versions) !== JSON.stringify(shown)) swapSources(latest.versions);
  }
}

function hidePythonServerNotice() {
  // neuroglancer's client reports its (here silent) state stream from a Python server as "Disconnected from
  // Python server" once the server stops: our header says what happened instead
  const doc = frame.contentDocument;
  if (!doc || !doc.body) return;
  const hide = () => {
    for (const item of doc.querySelectorAll("[id^='neuroglancer-status-container'] li")) {
      if (item.textContent.includes("Python server")) item.style.display = "none";
    }
  };
  new MutationObserver(hide).observe(doc.body, { childList: true, subtree: true, characterData: true });
  hide();
}

document.getElementById("classifier").textContent = config.classifier;
showLoading("loading");
frame.addEventListener("load", hidePythonServerNotice);
frame.src = `viewer/ng/v/${config.lane}/#!` + encodeURIComponent(JSON.stringify(initialState()));
setInterval(watchReady, 250);
setInterval(poll, config.poll_ms);
