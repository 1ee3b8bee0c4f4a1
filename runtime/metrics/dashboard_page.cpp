// The dashboard's single page: inline CSS and JS, nothing loaded from elsewhere.
//
// The script polls /api/metrics?since=N once a second, appends the new points to each
// series and redraws: one <svg class="plot" data-metric=NAME data-points=COUNT> per metric
// (a <polyline> of its finite points, scaled to the step and value ranges, with the range
// written at the edges), the status line (state, step, records, elapsed, last update), the
// latest texts and the config table. When the server goes away the status says so and the
// page keeps the last data.
#include "runtime/metrics/dashboard.hpp"

#include <string>

namespace anvil::metrics {
namespace {

const char* const kPage = R"html(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>@TITLE@ - anvil</title>
<style>
  body { font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; background: #fafafa; }
  h1 { font-size: 18px; margin: 0 0 8px 0; }
  #status { margin-bottom: 12px; padding: 6px 10px; background: #fff; border: 1px solid #ddd; }
  #status .state { font-weight: bold; }
  #status .state.running { color: #1a7f37; }
  #status .state.failed, #status .state.disconnected { color: #c62828; }
  #status .state.finished { color: #1565c0; }
  #plots { display: flex; flex-wrap: wrap; gap: 10px; }
  .card { background: #fff; border: 1px solid #ddd; padding: 6px; width: 320px; }
  .card .name { font-weight: bold; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .card .last { float: right; font-weight: normal; color: #555; }
  svg.plot { display: block; }
  svg.plot polyline { fill: none; stroke: #1565c0; stroke-width: 1.5; }
  svg.plot text { font-size: 10px; fill: #777; }
  svg.plot rect.frame { fill: none; stroke: #eee; }
  h2 { font-size: 14px; margin: 16px 0 6px 0; }
  pre.text { background: #fff; border: 1px solid #ddd; padding: 6px; white-space: pre-wrap; max-height: 160px; overflow: auto; }
  table.config td { padding: 1px 8px 1px 0; font-family: monospace; }
</style>
</head>
<body>
<h1>@TITLE@</h1>
<div id="status"><span class="state">connecting</span></div>
<div id="plots"></div>
<div id="texts"></div>
<h2>Config</h2>
<table class="config" id="config"></table>
<script>
"use strict";
const W = 320, H = 130, PAD_L = 44, PAD_R = 6, PAD_T = 6, PAD_B = 16;
const MAX_DRAWN = 1000;  // points per polyline; longer series are thinned evenly
const series = {};   // name -> [[step, value|null], ...]
let texts = {};      // name -> [step, text]
let next = 0;

function fmt(v) {
  if (v === null || v === undefined) return "-";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toPrecision(4)).toString();
}

function el(tag, attrs, text) {
  const ns = ["svg", "polyline", "text", "rect"].includes(tag) ? "http://www.w3.org/2000/svg" : null;
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function drawPlot(name, pts) {
  const finite = pts.filter(p => p[1] !== null);
  const svg = el("svg", {class: "plot", "data-metric": name, "data-points": finite.length,
                         width: W, height: H, viewBox: `0 0 ${W} ${H}`});
  svg.appendChild(el("rect", {class: "frame", x: PAD_L, y: PAD_T,
                              width: W - PAD_L - PAD_R, height: H - PAD_T - PAD_B}));
  if (finite.length > 0) {
    let x0 = finite[0][0], x1 = x0, y0 = finite[0][1], y1 = y0;
    for (const [x, y] of finite) {
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
    const sx = x1 > x0 ? (W - PAD_L - PAD_R) / (x1 - x0) : 0;
    const sy = y1 > y0 ? (H - PAD_T - PAD_B) / (y1 - y0) : 0;
    const px = x => PAD_L + (x1 > x0 ? (x - x0) * sx : (W - PAD_L - PAD_R) / 2);
    const py = y => H - PAD_B - (y1 > y0 ? (y - y0) * sy : (H - PAD_T - PAD_B) / 2);
    const stride = Math.ceil(finite.length / MAX_DRAWN);
    const drawn = finite.filter((p, i) => i % stride === 0 || i === finite.length - 1);
    const points = drawn.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
    svg.appendChild(el("polyline", {points: points}));
    svg.appendChild(el("text", {x: 2, y: PAD_T + 8}, fmt(y1)));
    svg.appendChild(el("text", {x: 2, y: H - PAD_B}, fmt(y0)));
    svg.appendChild(el("text", {x: PAD_L, y: H - 3}, String(x0)));
    svg.appendChild(el("text", {x: W - PAD_R, y: H - 3, "text-anchor": "end"}, String(x1)));
  }
  return svg;
}

function render(status, config) {
  const st = document.getElementById("status");
  st.textContent = "";
  st.appendChild(el("span", {class: "state " + status.state}, status.state));
  const elapsed = status.started ? Math.max(0, status.now - status.started) : 0;
  const parts = [];
  if (status.detail) parts.push(status.detail);
  if (status.step !== null && status.step !== undefined) parts.push("step " + status.step);
  parts.push(status.records + " records");
  parts.push("elapsed " + elapsed.toFixed(0) + " s");
  if (status.updated) parts.push("last update " + Math.max(0, status.now - status.updated).toFixed(0) + " s ago");
  st.appendChild(document.createTextNode("  " + parts.join("  |  ")));

  const plots = document.getElementById("plots");
  plots.textContent = "";
  for (const name of Object.keys(series).sort()) {
    const pts = series[name];
    const card = el("div", {class: "card", id: "card-" + name});
    const title = el("div", {class: "name", title: name}, name);
    title.appendChild(el("span", {class: "last"}, fmt(pts.length ? pts[pts.length - 1][1] : null)));
    card.appendChild(title);
    card.appendChild(drawPlot(name, pts));
    plots.appendChild(card);
  }

  const tx = document.getElementById("texts");
  tx.textContent = "";
  for (const name of Object.keys(texts).sort()) {
    tx.appendChild(el("h2", {}, name + " (step " + texts[name][0] + ")"));
    tx.appendChild(el("pre", {class: "text"}, texts[name][1]));
  }

  if (config) {
    const table = document.getElementById("config");
    table.textContent = "";
    for (const key of Object.keys(config).sort()) {
      const tr = el("tr", {});
      tr.appendChild(el("td", {}, key));
      tr.appendChild(el("td", {}, config[key]));
      table.appendChild(tr);
    }
  }
}

async function poll() {
  try {
    const r = await fetch("/api/metrics?since=" + next, {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const j = await r.json();
    for (const [name, pts] of Object.entries(j.series)) {
      (series[name] = series[name] || []).push(...pts);
    }
    Object.assign(texts, j.texts);
    next = j.next;
    render(j.status, j.config);
  } catch (e) {
    const st = document.getElementById("status");
    st.textContent = "";
    st.appendChild(el("span", {class: "state disconnected"}, "disconnected"));
    st.appendChild(document.createTextNode("  (" + e.message + "); showing the last data"));
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body>
</html>
)html";

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace

std::string dashboard_page(const std::string& title) {
  std::string page = kPage;
  const std::string marker = "@TITLE@";
  const std::string escaped = html_escape(title);
  for (size_t at = page.find(marker); at != std::string::npos;
       at = page.find(marker, at + escaped.size())) {
    page.replace(at, marker.size(), escaped);
  }
  return page;
}

}  // namespace anvil::metrics
