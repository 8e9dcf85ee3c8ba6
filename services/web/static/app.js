// Upload page: POST the chosen file to /predict as multipart and draw the answer.
// No external scripts (the CSP allows only this origin); no framework.
"use strict";

const $ = (id) => document.getElementById(id);
// Numbers for people: 3 decimals, or a percentage with 1. The JSON API keeps full precision,
// and so do the data-* attributes here.
const round3 = (x) => Number(x).toFixed(3);
let uncertainBand = null; // {low, high} on P(positive) from /metadata, when the model has one
// The model's crop as a share of the preview: the preview shows the image's central square
// (object-fit: cover), the model a centred size/resize_size of it (from /metadata).
let cropShare = 1;
let lastFile = null; // re-sent when the explain box changes

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

// The highlighted bar is the decision's class: none when the answer is "uncertain" or
// "not_assessable", so the page never shows a class the decision did not give.
function drawBars(result, decision) {
  const bars = $("bars");
  bars.replaceChildren();
  const positive = $("positive").textContent;
  for (const [name, p] of Object.entries(result.probabilities)) {
    const row = document.createElement("div");
    row.className = "bar" + (name === decision ? " winner" : "");
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
      if (uncertainBand) {
        const band = document.createElement("div");
        band.className = "band";
        band.title = `uncertain: ${round3(uncertainBand.low)} to ${round3(uncertainBand.high)}`;
        band.style.left = `${(100 * uncertainBand.low).toFixed(2)}%`;
        band.style.width = `${(100 * (uncertainBand.high - uncertainBand.low)).toFixed(2)}%`;
        track.append(band);
      }
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
  lastFile = file;
  showExplanation(null);
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const url = $("explain").checked ? "/predict?explain=1" : "/predict";
    const response = await fetch(url, { method: "POST", body: form, headers: headers() });
    const body = await response.json();
    if (!response.ok) {
      $("status").textContent = "";
      showError(`${response.status} ${body.error.code}: ${body.error.message}`);
      return;
    }
    $("label").textContent = body.label;
    $("label").dataset.label = body.label;
    const decision = body.decision ?? body.label; // a server from before decisions existed
    $("decision").textContent = DECISION_WORDS[decision] ?? decision;
    $("decision").dataset.decision = decision;
    showWarnings(body.warnings || []);
    $("threshold").textContent = round3(body.threshold);
    $("threshold").dataset.threshold = String(body.threshold);
    const scale = body.threshold_scale ?? "raw";
    $("threshold-scale").textContent = scale;
    $("threshold-scale").dataset.scale = scale;
    drawBars(body, decision);
    showExplanation(body.explanation);
    $("result").hidden = false;
    $("status").textContent = `${file.name}: ${body.model.name} ${body.model.version} (${body.model.precision})`;
    document.body.dataset.state = "done";
  } catch (err) {
    $("status").textContent = "";
    showError(`Request failed: ${err}`);
  }
}

const SYNTHETIC = "synthetic_training_data";
const DECISION_WORDS = { not_assessable: "Not assessable", uncertain: "Uncertain" };

// Every warning in words, the model's own notice apart (above the form, for every answer).
function showWarnings(warnings) {
  const list = $("warnings");
  list.replaceChildren();
  for (const warning of warnings) {
    if (warning.code === SYNTHETIC) {
      showNotice(warning.message);
      continue;
    }
    const item = document.createElement("li");
    item.dataset.code = warning.code;
    item.textContent = warning.message;
    list.append(item);
  }
  list.hidden = list.children.length === 0;
}

function showNotice(message) {
  $("notice").textContent = message;
  $("notice").dataset.code = SYNTHETIC;
  $("notice").hidden = false;
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
    const prep = meta.preprocessing || {};
    cropShare = prep.size && prep.resize_size ? prep.size / prep.resize_size : 1;
    if (meta.calibration) {
      $("model").textContent += `, calibrated (temperature ${round3(meta.calibration.temperature)})`;
    }
    showBand(meta.uncertain_band);
    if (meta.provenance && meta.provenance.synthetic_data === true) {
      showNotice("This model was trained on the synthetic sample, not on real tissue: its " +
                 "answers say nothing about real polyps.");
    }
  } catch (err) {
    $("model").textContent = "Model: unavailable";
  }
}

// The answer's class activation map (PNG of the model's crop, tinted) laid over the preview.
function showExplanation(explanation) {
  const overlay = $("overlay");
  overlay.hidden = !explanation;
  $("explain-info").hidden = !explanation;
  if (!explanation) {
    overlay.removeAttribute("src");
    return;
  }
  overlay.src = "data:image/png;base64," + explanation.overlay_png_base64;
  overlay.dataset.class = explanation.class;
  overlay.style.width = overlay.style.height = `${(224 * cropShare).toFixed(1)}px`;
  $("explained-class").textContent = explanation.class;
}

function showBand(band) {
  uncertainBand = band ? { low: band.low, high: band.high } : null;
  $("band-info").hidden = !band;
  if (!band) return;
  $("band").textContent = `${round3(band.low)} and ${round3(band.high)}`;
  $("band").dataset.low = String(band.low);
  $("band").dataset.high = String(band.high);
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
  $("explain").addEventListener("change", () => { if (lastFile) classify(lastFile); });
  loadModelInfo();
}

document.addEventListener("DOMContentLoaded", setup);
