// Who's my President? — sends the chosen photo to POST /api/predict and draws the answer.
// Plain DOM code, no framework and no external resources (the page's Content-Security-Policy forbids them).
"use strict";

const COLOURS = ["#e63946", "#1f77b4", "#2a9d4b", "#ff7f0e", "#9467bd", "#8c564b", "#d62798", "#17becf"];
const $ = (id) => document.getElementById(id);
let model = null;
let photoUrl = null;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function pct(p) {
  // One decimal; never "100%" for a probability short of certainty.
  const v = 100 * p;
  if (v >= 99.95 && v < 100) return ">99.9%";
  if (v > 0 && v < 0.05) return "<0.1%";
  return (v === 0 || v === 100 ? v.toFixed(0) : v.toFixed(1)) + "%";
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", Boolean(isError));
}

function fact(dl, term, value) {
  dl.append(el("dt", null, term), el("dd", null, value));
}

async function loadModel() {
  const dl = $("facts");
  try {
    const r = await fetch("/api/model");
    if (!r.ok) throw new Error("HTTP " + r.status);
    model = await r.json();
  } catch (err) {
    dl.replaceChildren();
    fact(dl, "error", "could not read the model's facts (" + err.message + ")");
    return;
  }
  dl.replaceChildren();
  fact(dl, "backbone", model.backbone + (model.architecture ? " — " + model.architecture : ""));
  fact(dl, "head", model.head);
  fact(dl, "knows", model.classes.join(", "));
  if (model.accuracy !== null && model.accuracy !== undefined) {
    let acc = pct(model.accuracy) + " on " + model.n_test + " held-out photos";
    if (model.accuracy_ci95) acc += " (95% CI " + pct(model.accuracy_ci95[0]) + "–" + pct(model.accuracy_ci95[1]) + ")";
    fact(dl, "held-out accuracy", acc);
    if (model.groups) {
      for (const [g, v] of Object.entries(model.groups)) {
        fact(dl, (model.group_by || "group") + " = " + g, pct(v.accuracy) + " (n=" + v.n + ")");
      }
    }
  } else {
    fact(dl, "held-out accuracy", "not recorded in this model");
  }
  if (model.face_model) {
    fact(dl, "faces", "each face is detected, aligned and compared; a face not close enough to anyone it knows is 'unknown'");
  }
  if (model.fallback) fact(dl, "no face", "answered by the whole-image model " + model.fallback);
  $("limit").textContent = "JPEG, PNG, WebP, GIF, BMP or TIFF, up to " + (model.max_upload_bytes / 1048576).toFixed(0) + " MB";
  showExamples(model.examples || []);
}

function showExamples(examples) {
  if (!examples.length) return;
  const thumbs = $("thumbs");
  for (const ex of examples) {
    const b = el("button");
    b.type = "button";
    b.title = ex.caption;
    b.setAttribute("aria-label", "Try the example photo: " + ex.caption);
    const img = el("img");
    img.src = ex.url;
    img.alt = ex.caption;
    b.append(img);
    b.addEventListener("click", async () => {
      try {
        const r = await fetch(ex.url);
        if (!r.ok) throw new Error("HTTP " + r.status);
        const blob = await r.blob();
        predict(blob, ex.caption);
      } catch (err) {
        setStatus("Could not load the example (" + err.message + ").", true);
      }
    });
    thumbs.append(b);
  }
  $("examples").hidden = false;
}

async function predict(blob, name) {
  if (model && blob.size > model.max_upload_bytes) {
    setStatus("This file is " + (blob.size / 1048576).toFixed(1) + " MB; the limit is " +
      (model.max_upload_bytes / 1048576).toFixed(0) + " MB. Choose a smaller photo.", true);
    return;
  }
  setStatus("Looking at " + name + "…");
  $("result").hidden = true;
  const form = new FormData();
  form.append("file", blob, name || "photo");
  let r, body;
  try {
    r = await fetch("/api/predict", { method: "POST", body: form });
    body = await r.json();
  } catch (err) {
    setStatus("The server did not answer (" + err.message + ").", true);
    return;
  }
  if (!r.ok) {
    setStatus((body && body.detail) || ("The server refused the photo (HTTP " + r.status + ")."), true);
    return;
  }
  setStatus("");
  show(blob, body);
}

function show(blob, res) {
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(blob);
  const img = $("photo");
  $("photo-note").hidden = true;
  img.hidden = false;
  img.onerror = () => { img.hidden = true; $("photo-note").hidden = false; };
  img.src = photoUrl;

  const answer = $("answer");
  answer.replaceChildren();
  const faces = res.faces || [];
  if (!faces.length) {
    answer.append(el("span", "message", res.message || "no face found"));
  } else {
    const best = faces.find((f) => f.answer) || faces[0];
    answer.append(el("span", "name", res.label || best.label));
    if (best.label !== "unknown") answer.append(" ", el("span", "conf", pct(best.probabilities[best.label] || 0)));
    if (res.message) answer.append(el("div", "note", res.message));
  }

  const boxes = $("boxes");
  boxes.replaceChildren();
  const list = $("faces");
  list.replaceChildren();
  const W = res.image.width, H = res.image.height;
  faces.forEach((f, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const who = f.label;
    if (f.box) {
      const b = el("div", "box" + (who === "unknown" ? " unknown" : ""));
      // Keep the name tag over the photo: right-aligned on the right half, below the box at the very top.
      if (f.box[0] + f.box[2] / 2 > W / 2) b.classList.add("right");
      if (f.box[1] < 0.08 * H) b.classList.add("below");
      b.style.setProperty("--c", colour);
      b.style.left = (100 * f.box[0] / W) + "%";
      b.style.top = (100 * f.box[1] / H) + "%";
      b.style.width = (100 * f.box[2] / W) + "%";
      b.style.height = (100 * f.box[3] / H) + "%";
      b.append(el("span", "tag", (i + 1) + " " + who));
      boxes.append(b);
    }
    list.append(faceItem(f, i, colour, faces.length));
  });
  showNearest(res.explanation);
  $("result").hidden = false;
}

// The training photos the answer resembles most (served from the --gallery folder; absent without one).
function showNearest(explanation) {
  const box = $("nearest");
  const thumbs = $("nearest-thumbs");
  thumbs.replaceChildren();
  const shown = ((explanation && explanation.neighbours) || []).filter((n) => n.url);
  box.hidden = !shown.length;
  shown.forEach((n) => {
    const fig = el("figure", "neighbour");
    const img = el("img");
    img.src = n.url;
    img.alt = "training photo of " + n.label;
    img.onerror = () => { img.remove(); };
    fig.append(img, el("figcaption", "", n.label + " · similarity " + n.similarity.toFixed(2)));
    thumbs.append(fig);
  });
}

function faceItem(f, i, colour, n) {
  const li = el("li", "face");
  li.style.setProperty("--c", colour);
  const head = el("div", "face-head");
  head.append(el("span", "who", f.label));
  head.append(el("span", "where", f.box ? "face " + (i + 1) + " of " + n + (f.answer && n > 1 ? " · the answer" : "")
    : "whole photo"));
  li.append(head);
  const probs = Object.entries(f.probabilities).sort((a, b) => b[1] - a[1]);
  probs.forEach(([cls, p], k) => {
    const row = el("div", "bar" + (k === 0 && f.label !== "unknown" ? " top" : ""));
    const track = el("span", "track");
    const fill = el("span", "fill");
    fill.style.width = (100 * p).toFixed(1) + "%";
    track.append(fill);
    row.append(el("span", "cls", cls), track, el("span", "pct", pct(p)));
    row.setAttribute("aria-label", cls + " " + pct(p));
    li.append(row);
  });
  if (f.label === "unknown") {
    const why = "Not close enough to anyone this model knows" +
      (f.similarity !== undefined && model && model.unknown_threshold !== null
        ? " (similarity " + f.similarity.toFixed(2) + ", needs " + model.unknown_threshold.toFixed(2) + ")." : ".");
    li.append(el("p", "why", why));
  }
  return li;
}

function setUp() {
  const input = $("file");
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) predict(input.files[0], input.files[0].name);
    input.value = "";
  });
  const drop = $("drop");
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, () => drop.classList.remove("dragging"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) predict(file, file.name);
  });
  // A photo dropped next to the box should not make the browser navigate away to it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  loadModel();
}

setUp();
