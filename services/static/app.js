// Upload page: POST the chosen file to /predict as multipart and draw the answer.
// No external scripts (the CSP allows only this origin); no framework.
"use strict";

const $ = (id) => document.getElementById(id);

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function drawBars(result) {
  const bars = $("bars");
  bars.replaceChildren();
  const positive = $("positive").textContent;
  for (const [name, p] of Object.entries(result.probabilities)) {
    const row = document.createElement("div");
    row.className = "bar" + (name === result.label ? " winner" : "");
    row.dataset.class = name;
    row.dataset.probability = String(p);
    const text = document.createElement("span");
    text.textContent = `${name}: ${(100 * p).toFixed(1)}%`;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${(100 * p).toFixed(2)}%`;
    track.append(fill);
    if (name === positive) {
      const mark = document.createElement("div");
      mark.className = "mark";
      mark.title = "threshold";
      mark.style.left = `${(100 * result.threshold).toFixed(2)}%`;
      track.append(mark);
    }
    row.append(text, track);
    bars.append(row);
  }
}

async function classify(file) {
  $("error").hidden = true;
  $("status").textContent = `Classifying ${file.name}…`;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const response = await fetch("/predict", { method: "POST", body: form, headers: headers() });
    const body = await response.json();
    if (!response.ok) {
      $("status").textContent = "";
      showError(`${response.status} ${body.error.code}: ${body.error.message}`);
      return;
    }
    $("label").textContent = body.label;
    $("label").dataset.label = body.label;
    $("threshold").textContent = String(body.threshold);
    drawBars(body);
    $("result").hidden = false;
    $("status").textContent = `${file.name}: ${body.model.name} ${body.model.version} (${body.model.precision})`;
    document.body.dataset.state = "done";
  } catch (err) {
    $("status").textContent = "";
    showError(`Request failed: ${err}`);
  }
}

async function loadModelInfo() {
  try {
    const response = await fetch("/metadata", { headers: headers() });
    if (!response.ok) {
      $("model").textContent = `Model: unavailable (${response.status})`;
      return;
    }
    const meta = await response.json();
    $("model").textContent = `Model: ${meta.name} ${meta.version}, ${meta.precision}, classes ${meta.classes.join(" / ")}`;
    $("positive").textContent = meta.positive_class;
  } catch (err) {
    $("model").textContent = "Model: unavailable";
  }
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    if (e.target.files.length) classify(e.target.files[0]);
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => {
    if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
  });
  $("token").addEventListener("change", loadModelInfo);
  loadModelInfo();
}

document.addEventListener("DOMContentLoaded", setup);
