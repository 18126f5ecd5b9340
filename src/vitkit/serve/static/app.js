// The vitkit web page: pick, drop or link an image; show the top-5 labels as bars, and with
// "explain" on, the attention overlay from POST /v1/explain next to the image.
"use strict";
const $ = (id) => document.getElementById(id);
const METHOD_NAMES = { rollout: "attention rollout", cls: "last-layer [CLS] attention" };
let current = null;  // { file } or { url }: what the last request was about, for re-runs
let previewUrl = null;  // the object URL shown in the preview, revoked when replaced
let sequence = 0;  // answers to older requests are dropped (the user picked another image)

function showPredictions(answer) {
  const result = $("result");
  result.replaceChildren();
  if (answer.error) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = `${answer.error}: ${answer.detail}`;
    result.append(p);
    return;
  }
  for (const { label, score } of answer.predictions) {
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span");
    name.textContent = label;  // textContent: labels are data, never HTML
    name.title = label;
    const track = document.createElement("div");
    track.className = "track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * score).toFixed(1)}%`;
    track.append(bar);
    const value = document.createElement("span");
    value.textContent = `${(100 * score).toFixed(1)}%`;
    row.append(name, track, value);
    result.append(row);
  }
}

function showOverlay(answer) {
  const box = $("overlay-box");
  if (!answer || !answer.overlay_png_base64) {
    box.hidden = true;
    return;
  }
  $("overlay").src = `data:image/png;base64,${answer.overlay_png_base64}`;
  const [rows, cols] = answer.grid;
  $("overlay-caption").textContent = `${METHOD_NAMES[answer.method] || answer.method} (${rows}×${cols} patches)`;
  box.hidden = false;
}

async function readAnswer(response) {
  try {
    return await response.json();
  } catch {
    return { error: `http_${response.status}`, detail: response.statusText || "not a JSON answer" };
  }
}

function request() {
  const explain = $("explain").checked;
  if (current.file) {
    const body = new FormData();
    body.append("image", current.file);
    if (explain) {
      const method = encodeURIComponent($("method").value);
      return { explained: true, promise: fetch(`/v1/explain?top_k=5&method=${method}`, { method: "POST", body }) };
    }
    return { explained: false, promise: fetch("/predict_image_class?top_k=5", { method: "POST", body }) };
  }
  const url = encodeURIComponent(current.url);
  return { explained: false, promise: fetch(`/predict_image_class?top_k=5&image_url=${url}`) };
}

async function run() {
  if (!current) return;
  const mine = ++sequence;
  $("result").textContent = "classifying…";
  $("status").textContent = "";
  const started = performance.now();
  const { explained, promise } = request();
  let answer;
  try {
    answer = await readAnswer(await promise);
  } catch (error) {
    answer = { error: "network_error", detail: String(error) };
  }
  if (mine !== sequence) return;
  showPredictions(answer);
  showOverlay(explained && !answer.error ? answer : null);
  let status = `answered in ${Math.round(performance.now() - started)} ms`;
  if ($("explain").checked && !explained) {
    status += " · the attention overlay needs an uploaded file (POST /v1/explain takes image bytes)";
  }
  $("status").textContent = status;
}

function showPreview(src) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = src.startsWith("blob:") ? src : null;
  $("preview").src = src;
  $("preview-box").hidden = false;
  $("overlay-box").hidden = true;
}

function classifyFile(file) {
  if (!file) return;
  current = { file };
  showPreview(URL.createObjectURL(file));
  run();
}

// A file the browser cannot show (or a URL it cannot load): no broken-image icon.
$("preview").addEventListener("error", () => { $("preview-box").hidden = true; });

const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    $("file").click();
  }
});
$("file").addEventListener("change", (event) => {
  classifyFile(event.target.files[0]);
  event.target.value = "";  // picking the same file again still fires "change"
});
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classifyFile(event.dataTransfer.files[0]);
});
$("url-form").addEventListener("submit", (event) => {
  event.preventDefault();
  current = { url: $("url").value };
  showPreview(current.url);
  run();
});
$("explain").addEventListener("change", () => {
  $("method").disabled = !$("explain").checked;
  run();  // re-ask about the same image
});
$("method").disabled = !$("explain").checked;  // a reload may keep the box ticked
$("method").addEventListener("change", () => { if ($("explain").checked) run(); });

fetch("/v1/model")
  .then(readAnswer)
  .then((info) => {
    $("model").textContent = info.name ? `model: ${info.name} (${info.labels.length} labels)` : `${info.error}: ${info.detail}`;
  })
  .catch(() => { $("model").textContent = "model info unavailable"; });
