// steelscan web page: upload images, draw the model's defect masks client-side.
//
// Each image is sent once to POST /v1/inspect?candidates=true. The answer carries, per class, the
// final mask (the model's tuned decision) and a "candidate" mask (what the class would look like
// if its presence threshold let it through), both as Kaggle RLE. Masks are decoded and drawn here,
// so the class toggles and the threshold slider work without asking the server again.
// With a detector in the model the answer also lists its boxes ("detections", best first); they
// are drawn as elements over the image (.det-box, one per box, with a "name score" tag) and the
// same class toggles hide them. They are the model's decision at its tuned box score threshold:
// the presence-threshold slider acts on masks only.
"use strict";

const FALLBACK_COLORS = ["#e69f00", "#56b4e9", "#009e73", "#d55e00", "#cc79a7", "#f0e442", "#0072b2", "#969696"];
const FILL_ALPHA = 0.45;

const state = {
  model: null,        // GET /v1/model
  classes: [],        // [{index, class_id, name, color, class_threshold, ...}]
  hidden: new Set(),  // class indices toggled off
  useModel: true,     // true: the model's tuned per-class decision; false: the slider
  threshold: 0.5,
  showBoxes: true,
  showFill: true,
  showDetections: true,
  items: [],          // {file, card, result, error, bitmap, masks: Map}
};

const $ = (sel, root = document) => root.querySelector(sel);

// ---- Kaggle RLE ---------------------------------------------------------------------------
// Pixels are numbered from 1, top to bottom, then left to right (column-major). Returns a
// row-major Uint8Array(h * w) ready for ImageData.
function decodeRle(rle, height, width) {
  const mask = new Uint8Array(height * width);
  if (!rle) return mask;
  const t = rle.trim().split(/\s+/);
  for (let i = 0; i + 1 < t.length; i += 2) {
    const start = parseInt(t[i], 10) - 1;
    const length = parseInt(t[i + 1], 10);
    for (let p = start; p < start + length; p++) {
      const row = p % height;
      const col = (p - row) / height;
      mask[row * width + col] = 1;
    }
  }
  return mask;
}

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// "class 3" when the model's class names are just the ids (Severstal), else "3 · scratches".
function classLabel(c) {
  return c.name === String(c.class_id) ? `class ${c.class_id}` : `${c.class_id} · ${c.name}`;
}

function colorOf(index) {
  const c = state.classes[index] && state.classes[index].color;
  return c || FALLBACK_COLORS[index % FALLBACK_COLORS.length];
}

// ---- what is shown for one class of one result --------------------------------------------
// Returns {rle, area, boxes} when the class is shown at the current threshold, else null.
function shownMask(cls) {
  if (state.useModel) {
    return cls.present ? { rle: cls.rle, area: cls.area, boxes: cls.boxes } : null;
  }
  if (cls.probability < state.threshold) return null;
  const c = cls.candidate || { rle: cls.rle, area: cls.area, boxes: cls.boxes };
  return c.area > 0 ? c : null;
}

// ---- model info and legend ----------------------------------------------------------------
async function loadModel() {
  const info = $("#model-info");
  try {
    const res = await fetch("/v1/model");
    if (!res.ok) throw new Error((await res.json()).message || res.statusText);
    state.model = await res.json();
    state.classes = state.model.classes;
    info.textContent = `${state.model.name} · ${state.model.version} · ${state.model.engine}${state.model.precision ? " " + state.model.precision : ""}`;
    $("#size-hint").textContent =
      `${state.model.image_width} × ${state.model.image_height} px, up to ` +
      `${Math.round(state.model.limits.max_upload_bytes / 1048576)} MB each`;
    buildLegend();
  } catch (err) {
    info.textContent = `model unavailable: ${err.message}`;
    info.classList.add("bad");
  }
}

function buildLegend() {
  const ul = $("#legend");
  ul.replaceChildren();
  for (const c of state.classes) {
    const li = document.createElement("li");
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = !state.hidden.has(c.index);
    box.dataset.classIndex = String(c.index);
    box.setAttribute("aria-label", `show class ${c.class_id} (${c.name})`);
    box.addEventListener("change", () => {
      if (box.checked) state.hidden.delete(c.index);
      else state.hidden.add(c.index);
      renderAll();
    });
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = colorOf(c.index);
    const text = document.createElement("span");
    text.textContent = classLabel(c);
    text.title = `tuned presence threshold ${c.class_threshold.toFixed(2)}`;
    label.append(box, sw, text);
    li.append(label);
    ul.append(li);
  }
}

// ---- uploads ------------------------------------------------------------------------------
function addFiles(files) {
  for (const file of files) {
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    $(".card-title", card).textContent = file.name;
    $("#results").prepend(card);
    const item = { file, card, result: null, error: null, bitmap: null, masks: new Map() };
    state.items.unshift(item);
    pending.push(item);
  }
  pump();
  updateChrome();
}

// A few requests at a time, so dropping fifty images does not fill the server's bounded queue.
const MAX_IN_FLIGHT = 2;
const MAX_BUSY_RETRIES = 5;
const pending = [];
let inFlight = 0;

function pump() {
  while (inFlight < MAX_IN_FLIGHT && pending.length) {
    const item = pending.shift();
    inFlight++;
    inspect(item).finally(() => {
      inFlight--;
      pump();
    });
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// POST the image; a 503 (queue full) is retried after the server's Retry-After.
async function postImage(file) {
  const url = `/v1/inspect?candidates=true&image_id=${encodeURIComponent(file.name)}`;
  for (let attempt = 0; ; attempt++) {
    const form = new FormData();
    form.append("file", file, file.name);
    const res = await fetch(url, { method: "POST", body: form });
    const wait = parseInt(res.headers.get("Retry-After") || "0", 10);
    if (res.status !== 503 || attempt >= MAX_BUSY_RETRIES) return res;
    await sleep(Math.max(1, wait) * 1000);
  }
}

async function inspect(item) {
  try {
    const [res, bitmap] = await Promise.all([
      postImage(item.file),
      createImageBitmap(item.file).catch(() => null),
    ]);
    const body = await res.json().catch(() => ({ message: res.statusText }));
    if (!res.ok) throw new Error(`${res.status}: ${body.message}`);
    if (!bitmap) throw new Error("the browser could not display this image");
    item.result = body;
    item.bitmap = bitmap;
  } catch (err) {
    item.error = err.message;
  }
  render(item);
  updateChrome();
}

// ---- drawing ------------------------------------------------------------------------------
function maskFor(item, cls, shown) {
  const key = `${cls.class_id}:${shown.rle === cls.rle ? "final" : "candidate"}`;
  if (!item.masks.has(key)) {
    item.masks.set(key, decodeRle(shown.rle, item.result.height, item.result.width));
  }
  return item.masks.get(key);
}

function render(item) {
  const { card, result } = item;
  const badge = $(".badge", card);
  if (item.error) {
    card.dataset.status = "error";
    badge.textContent = "error";
    const p = $(".error", card);
    p.textContent = item.error;
    p.hidden = false;
    $(".stage", card).hidden = true;
    return;
  }
  if (!result) return;
  const { width: w, height: h } = result;
  const imgCanvas = $(".image-layer", card);
  const maskCanvas = $(".mask-layer", card);
  for (const cv of [imgCanvas, maskCanvas]) {
    cv.width = w;
    cv.height = h;
  }
  imgCanvas.getContext("2d").drawImage(item.bitmap, 0, 0, w, h);

  const ctx = maskCanvas.getContext("2d");
  const pixels = ctx.createImageData(w, h);
  const data = pixels.data;
  const rows = [];
  const boxes = [];
  const dets = detectionsByClass(result);
  for (const cls of result.classes) {
    const index = state.classes.findIndex((c) => c.class_id === cls.class_id);
    const k = index >= 0 ? index : result.classes.indexOf(cls);
    const found = dets.get(k) || [];
    const shown = shownMask(cls) || (found.length ? { rle: "", area: 0, boxes: [] } : null);
    if (!shown) continue;
    rows.push({ cls, shown, k, found });
    if (state.hidden.has(k)) continue;
    const [r, g, b] = hexToRgb(colorOf(k));
    if (state.showFill) {
      const m = maskFor(item, cls, shown);
      const a = Math.round(255 * FILL_ALPHA);
      for (let i = 0; i < m.length; i++) {
        if (m[i]) {
          const o = i * 4;
          data[o] = r;
          data[o + 1] = g;
          data[o + 2] = b;
          data[o + 3] = a;
        }
      }
    }
    for (const bx of shown.boxes) boxes.push({ bx, color: colorOf(k) });
  }
  ctx.putImageData(pixels, 0, 0);
  if (state.showBoxes) {
    ctx.lineWidth = Math.max(2, Math.round(w / 600));
    for (const { bx, color } of boxes) {
      const [x1, y1, x2, y2] = bx;
      ctx.strokeStyle = color;
      ctx.strokeRect(x1 + 0.5, y1 + 0.5, x2 - x1 - 1, y2 - y1 - 1);
    }
  }
  renderDetections(card, result);

  card.dataset.status = "done";
  const n = rows.length;
  badge.textContent = n ? `${n} defect class${n > 1 ? "es" : ""}` : "no defect";
  badge.className = `badge ${n ? "bad" : "ok"}`;
  const t = result.timings_ms || {};
  $(".meta", card).textContent =
    `${w} × ${h} px · P(defect) ${(result.defect_probability * 100).toFixed(1)}% · ` +
    `${Math.round(t.total || 0)} ms`;
  renderTable(card, rows, Array.isArray(result.detections));
}

// The detector's boxes of one result, per 0-based class index, best first.
function detectionsByClass(result) {
  const byClass = new Map();
  for (const d of result.detections || []) {
    if (!byClass.has(d.class_index)) byClass.set(d.class_index, []);
    byClass.get(d.class_index).push(d);
  }
  return byClass;
}

// One absolutely placed element per detector box, in percent of the image so it follows the
// canvas when the page scales it; a class toggled off in the legend gets none, as its mask gets
// no pixels. Drawn worst first, so the best box and its tag end on top.
function renderDetections(card, result) {
  const layer = $(".det-layer", card);
  layer.replaceChildren();
  layer.hidden = !state.showDetections;
  const { width: w, height: h } = result;
  const dets = result.detections || [];
  for (let i = dets.length - 1; i >= 0; i--) {
    const d = dets[i];
    if (state.hidden.has(d.class_index)) continue;
    const [x1, y1, x2, y2] = d.box;
    const el = document.createElement("div");
    el.className = "det-box";
    el.dataset.classIndex = String(d.class_index);
    el.dataset.classId = String(d.class_id);
    Object.assign(el.style, {
      left: `${(100 * x1) / w}%`,
      top: `${(100 * y1) / h}%`,
      width: `${(100 * (x2 - x1)) / w}%`,
      height: `${(100 * (y2 - y1)) / h}%`,
      borderColor: colorOf(d.class_index),
    });
    el.title = `${classLabel(d)} · score ${d.score.toFixed(3)} · ${x1}, ${y1} – ${x2}, ${y2}`;
    const tag = document.createElement("span");
    tag.className = y1 < 0.08 * h ? "det-tag below" : "det-tag";
    tag.style.background = colorOf(d.class_index);
    tag.textContent = `${d.name} ${d.score.toFixed(2)}`;
    el.append(tag);
    layer.append(el);
  }
}

function renderTable(card, rows, hasDetector) {
  const table = $(".defects", card);
  const tbody = $("tbody", table);
  tbody.replaceChildren();
  table.hidden = false;
  table.classList.toggle("no-detector", !hasDetector);
  if (!rows.length) {
    const tr = tbody.insertRow();
    const td = tr.insertCell();
    td.colSpan = hasDetector ? 5 : 4;
    td.className = "none";
    td.textContent = state.useModel
      ? "No defects found at the model's tuned thresholds."
      : `No class reaches the presence threshold ${state.threshold.toFixed(2)}.`;
    return;
  }
  for (const { cls, shown, k, found } of rows) {
    const tr = tbody.insertRow();
    tr.dataset.classId = String(cls.class_id);
    if (state.hidden.has(k)) tr.classList.add("muted");
    const name = tr.insertCell();
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = colorOf(k);
    name.append(sw, document.createTextNode(` ${classLabel(cls)}`));
    const prob = tr.insertCell();
    prob.className = "num";
    prob.textContent = `${(cls.probability * 100).toFixed(1)}%`;
    const area = tr.insertCell();
    area.className = "num";
    area.textContent = shown.area.toLocaleString("en-US");
    const bx = tr.insertCell();
    bx.className = "boxes";
    const list = shown.boxes.slice(0, 3).map(([x1, y1, x2, y2]) => `${x1}, ${y1} – ${x2}, ${y2}`);
    if (shown.boxes.length > 3) list.push(`+${shown.boxes.length - 3} more`);
    bx.textContent = list.join("; ");
    const det = tr.insertCell();
    det.className = "num dets";
    det.textContent = found.length ? `${found.length} · best ${found[0].score.toFixed(2)}` : "";
  }
}

function renderAll() {
  for (const item of state.items) render(item);
}

function updateChrome() {
  const done = state.items.filter((i) => i.result);
  $("#download-json").disabled = !done.length;
  $("#download-csv").disabled = !done.length;
  $("#clear").disabled = !state.items.length;
  $("#empty-state").hidden = state.items.length > 0;
}

// ---- downloads ----------------------------------------------------------------------------
function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function downloadJson() {
  const results = state.items.filter((i) => i.result).map((i) => i.result).reverse();
  download("steelscan-results.json", JSON.stringify(results, null, 2), "application/json");
}

// Kaggle submission rows, one per image and class, as `steelscan predict` writes them; the masks
// are the ones shown at the current threshold (class toggles only change the view).
function downloadCsv() {
  const lines = ["ImageId,EncodedPixels,ClassId"];
  for (const item of [...state.items].reverse()) {
    if (!item.result) continue;
    for (const cls of item.result.classes) {
      const shown = shownMask(cls);
      const id = /[",\n]/.test(item.result.image_id)
        ? `"${item.result.image_id.replace(/"/g, '""')}"`
        : item.result.image_id;
      lines.push(`${id},${shown ? shown.rle : ""},${cls.class_id}`);
    }
  }
  download("steelscan-submission.csv", lines.join("\n") + "\n", "text/csv");
}

// ---- wiring -------------------------------------------------------------------------------
function wire() {
  const input = $("#file-input");
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = "";
  });
  const zone = $("#drop-zone");
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const ev of ["dragleave", "drop"]) {
    zone.addEventListener(ev, (e) => {
      e.preventDefault();
      zone.classList.remove("over");
    });
  }
  zone.addEventListener("drop", (e) => addFiles([...e.dataTransfer.files]));

  const slider = $("#threshold");
  const out = $("#threshold-value");
  const useModel = $("#use-model-thresholds");
  slider.classList.add("inactive");
  const syncThreshold = () => {
    out.textContent = state.useModel ? "model" : state.threshold.toFixed(2);
    useModel.checked = state.useModel;
    slider.classList.toggle("inactive", state.useModel);
    renderAll();
  };
  slider.addEventListener("input", () => {
    state.threshold = parseFloat(slider.value);
    state.useModel = false;
    syncThreshold();
  });
  useModel.addEventListener("change", () => {
    state.useModel = useModel.checked;
    syncThreshold();
  });
  $("#show-boxes").addEventListener("change", (e) => {
    state.showBoxes = e.target.checked;
    renderAll();
  });
  $("#show-detections").addEventListener("change", (e) => {
    state.showDetections = e.target.checked;
    renderAll();
  });
  $("#show-fill").addEventListener("change", (e) => {
    state.showFill = e.target.checked;
    renderAll();
  });
  $("#download-json").addEventListener("click", downloadJson);
  $("#download-csv").addEventListener("click", downloadCsv);
  $("#clear").addEventListener("click", () => {
    pending.length = 0;
    state.items = [];
    $("#results").replaceChildren();
    updateChrome();
  });
}

wire();
loadModel();
