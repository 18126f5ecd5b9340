// The vitkit web page: pick, drop or link an image; show the top-5 labels as bars.
"use strict";
const $ = (id) => document.getElementById(id);

function show(answer) {
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
    const track = document.createElement("div");
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

async function call(request) {
  $("result").textContent = "classifying…";
  try {
    const response = await request;
    show(await response.json());
  } catch (error) {
    show({ error: "network_error", detail: String(error) });
  }
}

function classifyFile(file) {
  if (!file) return;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  const body = new FormData();
  body.append("image", file);
  call(fetch("/predict_image_class?top_k=5", { method: "POST", body }));
}

const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
$("file").addEventListener("change", (event) => classifyFile(event.target.files[0]));
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classifyFile(event.dataTransfer.files[0]);
});
$("url-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const url = $("url").value;
  $("preview").src = url;
  $("preview").hidden = false;
  call(fetch(`/predict_image_class?top_k=5&image_url=${encodeURIComponent(url)}`));
});

fetch("/v1/model")
  .then((response) => response.json())
  .then((info) => { $("model").textContent = info.name ? `model: ${info.name} (${info.labels.length} labels)` : info.detail; })
  .catch(() => { $("model").textContent = "model info unavailable"; });
