// chexcurate explorer: live run figures and the embedding map. Plain DOM and SVG, no library, no inline code
// (the pages' Content-Security-Policy allows scripts from this service only).
"use strict";

const BANDS = ["outlier", "support", "central_kept", "central_dropped"];
const COLOURS = { outlier: "#d62728", support: "#ff7f0e", central_kept: "#2ca02c", central_dropped: "#7f7f7f" };
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];
const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 2000;

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;  // text, never markup
  return node;
}
function pct(x) { return (100 * x).toFixed(1) + " %"; }
function num(x, digits) { return x === null || x === undefined ? "-" : Number(x).toFixed(digits); }
function setText(id, text) { const node = document.getElementById(id); if (node) node.textContent = text; }

function drawTimeline(svg, points) {
  svg.replaceChildren();
  const W = 800, H = 240, L = 50, B = 25, T = 10, R = 40;
  if (!points.length) { svg.append(el("svg:text", { x: L, y: H / 2 }, "no curation decisions yet")); return; }
  const top = Math.max(1, ...points.map(p => Math.max(...BANDS.map(b => p[b]))));
  const x = i => L + (points.length === 1 ? (W - L - R) / 2 : i * (W - L - R) / (points.length - 1));
  const y = v => H - B - v / top * (H - B - T);
  svg.append(el("svg:line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" }));
  svg.append(el("svg:text", { x: 4, y: T + 10, "font-size": 11 }, String(top)));
  svg.append(el("svg:text", { x: L, y: H - 6, "font-size": 11 }, "epoch " + points[0].epoch + ", step " + points[0].step));
  const last = points[points.length - 1];
  svg.append(el("svg:text", { x: W - R - 140, y: H - 6, "font-size": 11 }, "epoch " + last.epoch + ", step " + last.step));
  for (const band of BANDS) {
    const d = points.map((p, i) => (i ? "L" : "M") + x(i).toFixed(1) + "," + y(p[band]).toFixed(1)).join(" ");
    svg.append(el("svg:path", { d, fill: "none", stroke: COLOURS[band], "stroke-width": 2, "data-band": band }));
  }
  const r = v => H - B - v * (H - B - T);
  const d = points.map((p, i) => (i ? "L" : "M") + x(i).toFixed(1) + "," + r(p.subset_ratio).toFixed(1)).join(" ");
  svg.append(el("svg:path", { d, fill: "none", stroke: "#1f77b4", "stroke-dasharray": "4 3", "stroke-width": 1.5 }));
  svg.append(el("svg:text", { x: W - R + 4, y: T + 10, "font-size": 11, fill: "#1f77b4" }, "100 %"));
}

function bar(value, max, colour) {
  const svg = el("svg:svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none" });
  svg.append(el("svg:rect", { x: 0, y: 0, width: Math.max(0, Math.min(100, 100 * value / max)), height: 10, fill: colour }));
  return svg;
}

function renderRun(f) {
  setText("phase", f.phase);
  setText("epoch", f.epoch);
  setText("step", f.step);
  setText("subset-ratio", pct(f.subset_ratio));
  setText("subset-size", f.subset_size);
  setText("samples-total", f.samples_total);
  setText("compute-fraction", pct(f.compute_fraction));
  const progress = document.getElementById("epoch-progress");
  progress.max = Math.max(1, f.epoch_size);
  progress.value = f.epoch_done;
  setText("epoch-steps", f.epoch_size ? f.epoch_done + " / " + f.epoch_size + " samples" : "");
  const error = document.getElementById("run-error");
  error.hidden = !f.error;
  error.textContent = f.error ? "error: " + (f.error.error || "") + ": " + (f.error.detail || "") : "";
  const stage = f.progress && f.progress.stage ? f.progress.stage + " " + (f.progress.done ?? "") + " / " + (f.progress.total ?? "") : "";
  setText("run-progress", stage);
  for (const band of BANDS) {
    const cell = document.querySelector('#band-counts td[data-band="' + band + '"]');
    if (cell) cell.textContent = f.band_counts[band];
  }
  drawTimeline(document.getElementById("timeline"), f.timeline);
  const protos = document.querySelector("#prototypes tbody");
  const topUsage = Math.max(1, ...f.prototypes.map(p => p.usage || 0));
  protos.replaceChildren(...f.prototypes.map(p => {
    const row = el("tr", { "data-prototype": p.id });
    row.append(el("td", {}, p.id), el("td", {}, p.usage ?? "-"), el("td", {}, p.decisions),
      el("td", {}, num(p.mean_distance, 4)), el("td", {}, num(p.drift, 4)));
    const cell = el("td", { class: "bars" });
    cell.append(bar(p.usage || 0, topUsage, "#1f77b4"));
    row.append(cell);
    return row;
  }));
  const labels = document.getElementById("labels");
  const topRatio = Math.max(2, ...f.labels.map(l => l.ratio || 0));
  labels.replaceChildren(...f.labels.map(l => {
    const row = el("div", { class: "row", "data-label": l.name });
    row.append(el("span", { class: l.rare ? "name rare" : "name" }, l.name));
    row.append(bar(l.ratio || 0, topRatio, (l.ratio || 0) >= 1 ? "#2ca02c" : "#d62728"));
    row.append(el("span", {}, l.ratio === null ? "-" : "× " + l.ratio.toFixed(2)));
    return row;
  }));
  const flags = document.querySelector("#flags tbody");
  flags.replaceChildren(...Object.entries(f.flags).map(([name, s]) => {
    const row = el("tr", { "data-flag": name });
    row.append(el("th", {}, name.replace("_", " ")), el("td", {}, pct(s.dataset_share)),
      el("td", {}, pct(s.subset_share)), el("td", {}, s.ratio === null ? "-" : s.ratio.toFixed(2)));
    return row;
  }));
  document.body.dataset.updated = String(Date.now());
}

async function pollRun(runId) {
  try {
    const answer = await fetch("/ui/runs/" + runId + "/live.json", { credentials: "same-origin" });
    if (answer.status === 401) { window.location = "/ui/login?next=" + encodeURIComponent(location.pathname); return; }
    if (answer.ok) renderRun(await answer.json());
  } catch (e) { setText("run-progress", "connection lost; retrying"); }
  setTimeout(() => pollRun(runId), POLL_MS);
}

function colourOf(point, by, keys) {
  if (by === "band") return COLOURS[point.band] || "#cccccc";
  const value = point[by];
  if (value === null || value === undefined) return "#cccccc";
  return PALETTE[keys.indexOf(String(value)) % PALETTE.length];
}

function drawMap(data) {
  const canvas = document.getElementById("map");
  const by = document.getElementById("colour-by").value;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const all = data.points.concat(data.prototypes);
  const xs = all.map(p => p.x), ys = all.map(p => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = v => 20 + (v - x0) / Math.max(1e-9, x1 - x0) * (canvas.width - 40);
  const sy = v => canvas.height - 20 - (v - y0) / Math.max(1e-9, y1 - y0) * (canvas.height - 40);
  const keys = [...new Set(data.points.map(p => p[by]).filter(v => v !== null).map(String))].sort();
  for (const p of data.points) {
    ctx.fillStyle = colourOf(p, by, keys);
    ctx.fillRect(sx(p.x) - 1.5, sy(p.y) - 1.5, 3, 3);
  }
  ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.font = "12px sans-serif"; ctx.fillStyle = "#000";
  for (const p of data.prototypes) {
    const [cx, cy] = [sx(p.x), sy(p.y)];
    ctx.beginPath(); ctx.moveTo(cx - 6, cy - 6); ctx.lineTo(cx + 6, cy + 6); ctx.moveTo(cx + 6, cy - 6); ctx.lineTo(cx - 6, cy + 6); ctx.stroke();
    ctx.fillText("p" + p.id, cx + 7, cy - 7);
  }
  const legend = document.getElementById("map-legend");
  const entries = by === "band" ? BANDS : keys.slice(0, PALETTE.length);
  legend.replaceChildren(...entries.map(k => {
    const span = el("span", {}, " " + k + " ");
    const swatch = el("svg:svg", { width: 12, height: 12 });
    swatch.append(el("svg:rect", { width: 12, height: 12, fill: colourOf({ [by]: k, band: k }, by, keys) }));
    span.prepend(swatch);
    return span;
  }));
  canvas.dataset.points = String(data.points.length);
  canvas.dataset.prototypes = String(data.prototypes.length);
}

async function pollMap(runId) {
  const answer = await fetch("/ui/runs/" + runId + "/map.json", { credentials: "same-origin" });
  if (answer.status === 200) {
    const data = await answer.json();
    setText("map-state", "PCA of " + data.rows + " stored embeddings" +
      (data.sampled ? ", " + data.shown + " of them drawn (a random sample)" : "") + "; crosses: prototypes.");
    document.getElementById("make-map").hidden = true;
    drawMap(data);
    document.getElementById("colour-by").onchange = () => drawMap(data);
    return;
  }
  if (answer.status === 202) {
    setText("map-state", "The map is not made yet (or a worker is making it).");
    document.getElementById("make-map").hidden = false;
    setTimeout(() => pollMap(runId), POLL_MS);
    return;
  }
  setText("map-state", "The map cannot be shown (" + answer.status + ").");
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page, run = document.body.dataset.run;
  if (page === "run") pollRun(run);
  if (page === "map") pollMap(run);
});
