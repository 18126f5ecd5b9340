// The vitkit web page, and a worked example of the service's public API:
//   GET  /v1/models                             the served models (a picker when there are several)
//   GET  /v1/model?model=NAME                   the chosen model's name, labels and head (header)
//   POST /v1/predict?top_k=K&model=NAME         the top-K bars of an uploaded image (multipart files)
//   GET  /predict_image_class?image_url=U       the top-K bars of an image at a URL
//   POST /v1/explain?method=M (multipart image) the attention overlay ("show where the model looked")
//   POST /v1/segment          (multipart image) a segmentation model's overlay (legend below it)
//                                               and each class's share of the pixels
// A service behind API keys answers 401: the page then asks for a key, keeps it for this tab
// only (sessionStorage) and sends it as "Authorization: Bearer KEY".
// Every answer that is not a success is shown as a readable message in the image's card.
// A multi-label model's answer carries each label's threshold and whether it passed: the bars
// then mark the threshold and the labels that pass, and a line above them names those labels.
"use strict";
const $ = (id) => document.getElementById(id);
const METHOD_NAMES = { rollout: "attention rollout", cls: "last-layer [CLS] attention" };
const PARALLEL = 4;  // requests in flight at once: the server batches them, without flooding it

// What the API's error codes mean to someone looking at the page (the detail says the rest).
const ERROR_TITLES = {
  unsupported_image: "This file is not an image vitkit can read",
  bad_image: "The image is damaged or cut short",
  image_too_large: "The image has too many pixels",
  request_too_large: "The file is too large for this server",
  upstream_too_large: "The image at that URL is too large",
  url_not_allowed: "The server refused to fetch that URL",
  bad_url: "That is not a usable image URL",
  upstream_error: "The image at that URL could not be fetched",
  upstream_timeout: "The image at that URL took too long to fetch",
  no_classification_head: "This model has no classification head",
  overloaded: "The server is busy: try again in a moment",
  not_ready: "The model is still loading: try again in a moment",
  deadline_exceeded: "The server took too long to answer",
  network_error: "Could not reach the vitkit server",
  needs_file: "A segmentation model needs the image file",
  unauthorized: "This service needs an API key (enter it above)",
  rate_limited: "Too many requests with this key: try again in a moment",
  too_many_key_failures: "Too many wrong keys from here: try again later",
  model_not_found: "This service has no model of that name",
};
const KEY_STORE = "vitkit-api-key";  // sessionStorage: gone when the tab closes
const SEGMENTATION_TYPES = ["dpt", "vitkit_segmenter"];  // config model_type of per-pixel models
let segmentation = false;  // the model answers per pixel: /v1/segment, overlay and class shares

let items = [];  // the images on show: { name, file | url, card, overlays: {method: answer} }
let generation = 0;  // bumped by each new choice of images; older answers are dropped

// ---- talking to the API ---------------------------------------------------------------------
function withKey(options) {
  const key = sessionStorage.getItem(KEY_STORE);
  if (!key) return options || {};
  return { ...options, headers: { ...((options || {}).headers || {}), Authorization: `Bearer ${key}` } };
}

function chosenModel() {
  return $("model-choice").hidden ? "" : $("model-pick").value;
}

function withModel(params) {
  const model = chosenModel();
  if (model) params.set("model", model);
  return params;
}

async function call(url, options) {
  let response;
  try {
    response = await fetch(url, withKey(options));
  } catch (error) {
    return { error: "network_error", detail: String(error) };
  }
  if (response.status === 401) askForKey(Boolean(sessionStorage.getItem(KEY_STORE)));
  let answer;
  try {
    answer = await response.json();
  } catch {
    // Something between us and the service (a proxy) answered with a non-JSON page.
    answer = { error: `http_${response.status}`, detail: `HTTP ${response.status} ${response.statusText}`.trim() };
  }
  if (!response.ok && !(answer && answer.error)) {
    answer = { error: `http_${response.status}`, detail: JSON.stringify(answer) };
  }
  return answer;
}

function topK() {
  return Number($("top-k").value);
}

async function predict(item) {
  if (item.file) {
    const body = new FormData();
    body.append("files", item.file, item.name);
    const query = withModel(new URLSearchParams({ top_k: String(topK()) }));
    const answer = await call(`/v1/predict?${query}`, { method: "POST", body });
    return answer.error ? answer : { predictions: answer[0] };
  }
  const query = withModel(new URLSearchParams({ image_url: item.url, top_k: String(topK()) }));
  return call(`/predict_image_class?${query}`);
}

async function segment(item) {
  if (!item.file) {
    return { error: "needs_file", detail: "POST /v1/segment takes the image bytes: save the image and drop it here." };
  }
  const body = new FormData();
  body.append("image", item.file, item.name);
  return call(`/v1/segment?${withModel(new URLSearchParams())}`, { method: "POST", body });
}

async function explain(item, method) {
  const body = new FormData();
  body.append("image", item.file, item.name);
  const query = withModel(new URLSearchParams({ top_k: "1", method }));
  return call(`/v1/explain?${query}`, { method: "POST", body });
}

// Runs job(item) for every item, PARALLEL at a time; returns when all are done.
async function forEach(list, job) {
  const queue = [...list];
  const worker = async () => {
    while (queue.length) await job(queue.shift());
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, queue.length) }, worker));
}

// ---- drawing --------------------------------------------------------------------------------
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;  // textContent: names and labels are data, never HTML
  return node;
}

function makeCard(item) {
  const card = element("article", "card");
  card.dataset.name = item.name;
  card.setAttribute("aria-busy", "true");
  const title = element("h2", "", item.name);
  const pictures = element("div", "pictures");
  const figure = element("figure", "picture");
  const img = element("img");
  img.alt = item.file ? `the uploaded image ${item.name}` : `the image at ${item.name}`;
  img.addEventListener("error", () => {
    // A file the browser cannot show (or a URL it cannot load): say so, no broken-image icon.
    const why = item.file ? "the browser cannot show this file" : "the browser could not load this URL";
    figure.replaceChildren(element("div", "no-preview", `no preview: ${why}`));
  });
  img.src = item.file ? URL.createObjectURL(item.file) : item.url;
  figure.append(img, element("figcaption", "", "image"));
  const overlay = element("figure", "overlay");
  overlay.hidden = true;
  overlay.append(element("img"), element("figcaption"));
  pictures.append(figure, overlay);
  const result = element("div", "result");
  result.append(element("p", "note", "classifying…"));
  card.append(title, pictures, result, element("p", "note explain-note"));
  item.card = card;
  return card;
}

function showPredictions(item, answer) {
  const result = item.card.querySelector(".result");
  result.replaceChildren();
  item.failed = Boolean(answer.error);
  if (answer.error) {
    result.append(errorBox(answer));
    return;
  }
  const multiLabel = answer.predictions.some((p) => p.threshold !== undefined);
  const list = element("ol", multiLabel ? "bars multi" : "bars");
  if (multiLabel) {
    const present = answer.predictions.filter((p) => p.positive).map((p) => p.label);
    const line = present.length ? `present: ${present.join(", ")}` : "no label reaches its threshold";
    result.append(element("p", "present", line));
    list.setAttribute("aria-label", `${answer.predictions.length} labels, each with its threshold`);
  } else {
    list.setAttribute("aria-label", `top ${answer.predictions.length} labels`);
  }
  for (const prediction of answer.predictions) list.append(predictionRow(prediction));
  result.append(list);
  const scale = answer.predictions.length ? answer.predictions[0].decoded_scale : undefined;
  if (scale !== undefined) {
    result.append(element("p", "note", `a large image: read at ${scale * 100}% of its size (decoded_scale ${scale})`));
  }
}

function showSegmentation(item, answer) {
  const result = item.card.querySelector(".result");
  result.replaceChildren();
  item.failed = Boolean(answer.error);
  if (answer.error) {
    result.append(errorBox(answer));
    return;
  }
  const overlay = item.card.querySelector(".overlay");
  const img = overlay.querySelector("img");
  img.src = `data:image/png;base64,${answer.overlay_png_base64}`;
  const present = answer.classes.filter((row) => row.pixels > 0).sort((a, b) => b.pixels - a.pixels);
  img.alt = `${item.name} with its classes painted on it: ${present.map((row) => row.label).join(", ")}`;
  const [height, width] = answer.size;
  overlay.querySelector("figcaption").textContent = `classes (mask ${width}×${height}, legend below)`;
  overlay.hidden = false;
  const list = element("ol", "bars");
  list.setAttribute("aria-label", "each class's share of the image");
  for (const row of present) list.append(predictionRow({ label: row.label, score: row.fraction }));
  result.append(element("p", "present", "share of the pixels"), list);
}

function predictionRow({ label, score, threshold, positive }) {
  const percent = `${(100 * score).toFixed(1)}%`;
  const row = element("li", "row");
  row.dataset.label = label;
  row.dataset.score = String(score);  // the API's number, unrounded (tests compare it)
  const name = element("span", "label", label);
  name.title = label;
  const track = element("span", "track");
  track.setAttribute("aria-hidden", "true");  // the percentage beside it says the same
  const bar = element("span", "bar");
  bar.style.width = percent;
  track.append(bar);
  if (threshold !== undefined) {
    const cut = `${(100 * threshold).toFixed(1)}%`;
    row.classList.add(positive ? "pass" : "fail");
    row.dataset.threshold = String(threshold);
    row.dataset.positive = String(positive);
    const tick = element("span", "tick");
    tick.style.left = cut;
    track.append(tick);
    row.title = `${label}: ${percent}, threshold ${cut}: ${positive ? "present" : "absent"}`;
    name.append(element("span", "visually-hidden", positive ? " (present)" : " (absent)"));
  }
  row.append(name, track, element("span", "score", percent));
  return row;
}

function errorBox(answer) {
  const box = element("div", "error");
  box.setAttribute("role", "alert");
  box.dataset.error = answer.error;
  const status = /^http_(\d+)$/.exec(answer.error);
  const title = ERROR_TITLES[answer.error] || (status ? `The server answered HTTP ${status[1]}` : "Something went wrong");
  box.append(element("strong", "", title), element("p", "", answer.detail || answer.error));
  return box;
}

function showOverlay(item, answer, method) {
  const overlay = item.card.querySelector(".overlay");
  const note = item.card.querySelector(".explain-note");
  note.replaceChildren();
  if (!answer) {
    overlay.hidden = true;
    return;
  }
  if (answer.error) {
    overlay.hidden = true;
    note.append(errorBox(answer));
    return;
  }
  const img = overlay.querySelector("img");
  img.src = `data:image/png;base64,${answer.overlay_png_base64}`;
  img.alt = `${METHOD_NAMES[method]} over ${item.name}: brighter patches got more attention`;
  const [rows, cols] = answer.grid;
  overlay.querySelector("figcaption").textContent = `${METHOD_NAMES[method]} (${rows}×${cols} patches)`;
  overlay.hidden = false;
}

// ---- what the controls do -------------------------------------------------------------------
async function updateOverlays(list) {
  const on = $("explain").checked;
  const method = $("method").value;
  const mine = generation;
  await forEach(list, async (item) => {
    if (!on || item.failed) {
      showOverlay(item, null, method);
      return;
    }
    if (!item.file) {
      item.card.querySelector(".explain-note").textContent =
        "The attention overlay needs an uploaded file (POST /v1/explain takes the image bytes): save the image and drop it here.";
      return;
    }
    // The promise is cached, so a toggle while a request is out does not send a second one.
    if (!item.overlays[method]) item.overlays[method] = explain(item, method);
    const answer = await item.overlays[method];
    if (mine === generation && !item.failed && $("explain").checked && $("method").value === method) {
      showOverlay(item, answer, method);
    }
  });
}

async function classify(list) {
  const mine = ++generation;
  const started = performance.now();
  $("status").textContent = `classifying ${list.length} image${list.length === 1 ? "" : "s"}…`;
  await forEach(list, async (item) => {
    const answer = segmentation ? await segment(item) : await predict(item);
    if (mine !== generation) return;
    (segmentation ? showSegmentation : showPredictions)(item, answer);
    item.card.removeAttribute("aria-busy");
  });
  if (mine !== generation) return;
  if (!segmentation) await updateOverlays(list);
  if (mine !== generation) return;
  const failed = list.filter((item) => item.failed).length;
  const summary = failed ? ` · ${failed} could not be classified` : "";
  $("status").textContent = `${list.length} image${list.length === 1 ? "" : "s"} in ${Math.round(performance.now() - started)} ms${summary}`;
}

function show(newItems) {
  if (!newItems.length) return;
  for (const item of items) {
    const img = item.card.querySelector(".picture img");
    if (img && img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  }
  items = newItems.map((item) => ({ ...item, overlays: {} }));
  const results = $("results");
  results.classList.toggle("single", items.length === 1);
  results.replaceChildren(...items.map(makeCard));
  classify(items);
}

function showFiles(fileList) {
  show([...fileList].map((file) => ({ name: file.name || "pasted image", file })));
}

function showUrl(url) {
  show([{ name: url, url }]);
}

$("drop").addEventListener("click", () => $("file").click());  // the button's click lands here too
$("file").addEventListener("change", (event) => {
  showFiles(event.target.files);
  event.target.value = "";  // picking the same files again still fires "change"
});
// Drops anywhere on the page count (a near miss must not navigate away from it).
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  $("drop").classList.add("over");
});
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) $("drop").classList.remove("over");
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  const data = event.dataTransfer;
  if (data.files.length) {
    showFiles(data.files);
  } else {
    // An image dragged from another page arrives as its URL.
    const url = (data.getData("text/uri-list") || data.getData("text/plain")).split("\n")[0].trim();
    if (/^https?:\/\//i.test(url)) {
      $("url").value = url;
      showUrl(url);
    }
  }
});
document.addEventListener("paste", (event) => {
  if (event.clipboardData && event.clipboardData.files.length) {
    event.preventDefault();
    showFiles(event.clipboardData.files);
  }
});
$("url-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showUrl($("url").value.trim());
});
$("top-k").addEventListener("change", () => {
  if (items.length) classify(items);
});
$("explain").addEventListener("change", () => {
  $("method").disabled = !$("explain").checked;
  updateOverlays(items);
});
$("method").addEventListener("change", () => updateOverlays(items));
$("method").disabled = !$("explain").checked;  // a reload may keep the box ticked

function askForKey(wrong) {
  $("key-why").textContent = wrong
    ? "That API key was not accepted: enter another. It is kept in this tab only."
    : "This service needs an API key. It is kept in this tab only, and sent with each request.";
  $("key-form").hidden = false;
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("key").value.trim());
  $("key").value = "";
  $("key-form").hidden = true;
  showModels();
});

// The models the service has; a picker when there are several (the first is the default).
async function showModels() {
  const listed = await call("/v1/models");
  if (listed.error) {
    $("model").textContent = `${ERROR_TITLES[listed.error] || "model info unavailable"} (${listed.detail})`;
    if (listed.error === "not_ready") setTimeout(showModels, 2000);
    return;
  }
  const names = listed.models.map((model) => model.name);
  const picked = names.includes($("model-pick").value) ? $("model-pick").value : listed.default;
  $("model-pick").replaceChildren(...names.map((name) => {
    const option = element("option", "", name);
    option.value = name;
    return option;
  }));
  $("model-pick").value = picked;
  $("model-choice").hidden = names.length < 2;
  showModel();
}

$("model-pick").addEventListener("change", () => {
  showModel();
  if (items.length) show(items.map(({ name, file, url }) => ({ name, file, url })));
});

async function showModel() {
  const query = withModel(new URLSearchParams());
  const info = await call(`/v1/model?${query}`);
  if (info.error) {
    $("model").textContent = `${ERROR_TITLES[info.error] || "model info unavailable"} (${info.detail})`;
    if (info.error === "not_ready") setTimeout(showModels, 2000);
    return;
  }
  segmentation = SEGMENTATION_TYPES.includes(info.config && info.config.model_type);
  const multi = info.head && info.head.activation === "sigmoid" ? " · multi-label: labels pass their own thresholds (marked on each bar)" : "";
  const kind = segmentation ? " · segmentation: every pixel gets a class" : multi;
  const tta = info.tta && info.tta !== "none" ? ` · test-time augmentation: ${info.tta}` : "";
  $("model").textContent = `model: ${info.name}${kind}${tta}`;
  $("labels-summary").textContent = `${info.labels.length} labels`;
  $("labels").replaceChildren(...info.labels.map((label) => element("li", "", label)));
  $("labels-box").hidden = false;
}
showModels();
