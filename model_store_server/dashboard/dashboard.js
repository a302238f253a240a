// The store's dashboard: polls /status, /activity and /v1/models once a second and
// draws them; the buttons call the /models/... endpoints. No dependencies.
"use strict";

const POLL_MS = 1000;
const HISTORY = 120; // points kept for the charts
const history = []; // {t, hits, decided, pushed}
let lastRequestTs = null;

const $ = (selector) => document.querySelector(selector);

function headers() {
  const key = localStorage.getItem("model-swap-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function call(method, path) {
  const response = await fetch(path, { method, headers: headers() });
  if (response.status === 401) {
    $("#auth").hidden = false;
    throw new Error("unauthorized");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function ago(ts) {
  if (!ts) return "–";
  return `${seconds(Math.max(0, (Date.now() - Date.parse(ts)) / 1000))} ago`;
}

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    td.appendChild(span);
  } else {
    td.textContent = text;
  }
  return td;
}

function bar(label, used, max, format) {
  const pct = max ? Math.min(100, (100 * used) / max) : 0;
  const div = document.createElement("div");
  div.className = "bar";
  div.innerHTML =
    `<div class="label"><span></span><span></span></div>` +
    `<div class="track"><div class="fill"></div></div>`;
  div.querySelector(".label span").textContent = label;
  div.querySelector(".label span:last-child").textContent =
    max ? `${format(used)} / ${format(max)}` : `${format(used)} (no budget)`;
  const fill = div.querySelector(".fill");
  fill.style.width = `${max ? pct : 0}%`;
  if (pct >= 100) fill.classList.add("full");
  return div;
}

function drawBudgets(status) {
  const box = $("#budgets");
  box.replaceChildren();
  for (const [tier, title] of [["cache", "Worker disk cache"], ["resident", "Resident in memory"]]) {
    const b = status.budgets[tier];
    const models = bar(`${title}: models`, b.models, b.max_models, (n) => String(n));
    models.dataset.tier = tier;
    models.classList.add("models");
    box.appendChild(models);
    const size = bar(`${title}: bytes`, b.bytes, b.max_bytes, bytes);
    size.dataset.tier = tier;
    box.appendChild(size);
  }
  const pushes = $("#pushes");
  pushes.replaceChildren();
  for (const push of status.pushes || []) {
    const b = bar(`pushing ${push.model} (${push.mb_per_s} MB/s)`, push.bytes_done,
      push.bytes_total, bytes);
    b.classList.add("push");
    pushes.appendChild(b);
  }
}

// Kept prompts of a resident model as the worker reports them (GET /activity?probe=worker).
function kept(kv, name) {
  const k = kv && kv.resident ? kv.resident[name] : null;
  if (!k) return "–";
  return `${k.kept_prompts} (${bytes(k.kept_bytes)}), ${k.reused_tokens} reused`;
}

function drawModels(models, status, activity, kv) {
  const resident = new Map(status.resident.map((m) => [m.name, m]));
  const cached = new Map(status.cached.map((m) => [m.name, m]));
  const tbody = $("#models tbody");
  tbody.replaceChildren();
  for (const model of models) {
    const name = model.id;
    const entry = resident.get(name) || cached.get(name);
    const state = resident.has(name) ? "resident" : cached.has(name) ? "cached" : "available";
    const seen = activity.models[name] || {};
    const tr = document.createElement("tr");
    tr.dataset.model = name;
    tr.dataset.state = state;
    tr.append(
      cell(name),
      cell(state + (entry && entry.generating ? " ▶" : ""), `state ${state}`),
      cell(bytes(model.size_bytes)),
      cell(entry ? seconds(entry.idle_seconds) : "–"),
      cell(entry && entry.pinned ? "pinned" : ""),
      cell(String(seen.requests_served || 0)),
      cell(ago(seen.last_swap)),
      cell(kept(kv, name)),
    );
    const actions = document.createElement("td");
    // Only what applies to the model's state: a model that is only available has nothing
    // to unload or evict, a resident one nothing to load.
    const buttons = [];
    if (state !== "resident") buttons.push(["load", "POST", "/load"]);
    if (state === "resident") buttons.push(["unload", "POST", "/unload"]);
    buttons.push(entry && entry.pinned ? ["unpin", "DELETE", "/pin"] : ["pin", "PUT", "/pin"]);
    if (state !== "available") buttons.push(["evict", "DELETE", ""]);
    for (const [label, method, suffix] of buttons) {
      const button = document.createElement("button");
      button.textContent = label;
      button.dataset.op = label;
      button.onclick = () => control(name, label, method, suffix);
      actions.appendChild(button);
    }
    tr.appendChild(actions);
    tbody.appendChild(tr);
  }
}

async function control(name, label, method, suffix) {
  const out = $("#control-result");
  out.textContent = `${label} ${name}…`;
  try {
    const result = await call(method, `/models/${encodeURIComponent(name)}${suffix}`);
    out.textContent = `${label} ${name}: ${result.action || "done"}`;
  } catch (err) {
    out.textContent = `${label} ${name} failed: ${err.message}`;
  }
  refresh();
}

function drawRequests(activity) {
  const tbody = $("#requests tbody");
  tbody.replaceChildren();
  const newest = activity.requests.length ? activity.requests.at(-1).ts : null;
  for (const r of [...activity.requests].reverse().slice(0, 20)) {
    const tr = document.createElement("tr");
    tr.dataset.model = r.model;
    tr.dataset.action = r.action;
    if (lastRequestTs && r.ts > lastRequestTs) tr.classList.add("fresh");
    const removed = [...r.evicted.map((n) => `−${n}`), ...r.unloaded.map((n) => `↓${n}`)];
    tr.append(
      cell(new Date(r.ts).toLocaleTimeString([], { hour12: false })),
      cell(r.route),
      cell(r.model),
      cell(r.action, `action ${r.action}`),
      cell(String(r.status)),
      cell(r.wait_ms === null ? "–" : r.wait_ms.toFixed(1)),
      cell(r.worker_ms.toFixed(1)),
      cell(r.ttfb_ms === null ? "–" : r.ttfb_ms.toFixed(1)),
      cell(removed.join(" ")),
    );
    tbody.appendChild(tr);
  }
  lastRequestTs = newest;
}

function polyline(svg, values, max) {
  const n = values.length;
  if (n < 2) { svg.replaceChildren(); return; }
  const top = max || Math.max(...values, 1e-9);
  const points = values.map((v, i) => `${(300 * i) / (n - 1)},${78 - (76 * v) / top}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  svg.replaceChildren(line);
}

function drawCharts(activity) {
  const now = Date.now() / 1000;
  history.push({ t: now, hits: activity.hits, decided: activity.decided,
    pushed: activity.pushed_bytes });
  if (history.length > HISTORY) history.shift();
  const ratio = activity.decided ? activity.hits / activity.decided : null;
  $("#hit-ratio").textContent = ratio === null ? "–" : `${Math.round(100 * ratio)}%`;
  polyline($("#hit-chart"), history.map((h) => (h.decided ? h.hits / h.decided : 0)), 1);
  const rates = history.map((h, i) => {
    if (i === 0) return 0;
    const prev = history[i - 1];
    return (h.pushed - prev.pushed) / Math.max(1e-3, h.t - prev.t);
  });
  const swaps = activity.swaps.filter((s) => s.mb_per_s);
  $("#push-rate").textContent = swaps.length ? `${swaps.at(-1).mb_per_s} MB/s (last)` : "–";
  polyline($("#push-chart"), rates, 0);
}

function drawWorkers(status) {
  // Only with several workers: one row each, with its drain / undrain button.
  const workers = status.workers || [];
  $("#workers-card").hidden = workers.length < 2;
  const body = $("#workers tbody");
  body.replaceChildren();
  for (const w of workers) {
    const tr = document.createElement("tr");
    tr.dataset.worker = w.id;
    const state = w.state === "down" && w.last_error ? `down (${w.last_error})` : w.state;
    tr.append(
      cell(w.id),
      cell(state, `pill ${w.state === "healthy" ? "up" : "down"}`),
      cell(w.resident.join(", ") || "–"),
      cell(w.cached.join(", ") || "–"),
      cell(String(w.queue.generating)),
      cell(String(w.queue.waiting)),
    );
    const td = document.createElement("td");
    const button = document.createElement("button");
    const draining = w.state === "draining";
    button.textContent = draining ? "undrain" : "drain";
    button.disabled = w.state === "down";
    button.onclick = async () => {
      const suffix = draining ? "undrain" : "drain?timeout=0";
      try {
        await call("POST", `/workers/${encodeURIComponent(w.id)}/${suffix}`);
      } finally {
        refresh();
      }
    };
    td.appendChild(button);
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

function draw(status, activity, models, kv = null) {
  $("#auth").hidden = true;
  $("#summary").textContent =
    `policy ${status.policy} · transport ${status.transport} · ` +
    `${status.generating} generating · swap ${status.swapping ? "running" : "idle"} · ` +
    `${bytes(activity.pushed_bytes)} pushed`;
  const worker = $("#worker");
  const fleet = status.workers || [];
  if (fleet.length > 1) {
    const healthy = fleet.filter((w) => w.state === "healthy").length;
    worker.textContent = `${healthy} of ${fleet.length} workers healthy`;
    worker.className = `pill ${healthy === fleet.length ? "up" : "down"}`;
  } else {
    worker.textContent = status.synced ? "worker in sync" : "worker not synced";
    worker.className = `pill ${status.synced ? "up" : "down"}`;
  }
  drawBudgets(status);
  drawWorkers(status);
  drawModels(models.data, status, activity, kv);
  drawRequests(activity);
  drawCharts(activity);
  document.body.dataset.updated = String(Date.now());
}

async function refresh() {
  try {
    const [status, activity, models, probe] = await Promise.all([
      call("GET", "/status"), call("GET", "/activity"), call("GET", "/v1/models"),
      call("GET", "/activity?probe=worker").catch(() => null),
    ]);
    draw(status, activity, models, probe && probe.worker ? probe.worker.kv : null);
  } catch (err) {
    $("#summary").textContent = `cannot read the store: ${err.message}`;
  }
}

$("#save-key").onclick = () => {
  localStorage.setItem("model-swap-key", $("#key").value);
  refresh();
};

// The page may carry the data of the first poll (a store without API keys): drawn at once.
const initial = document.getElementById("initial-data");
if (initial) {
  const data = JSON.parse(initial.textContent);
  draw(data.status, data.activity, data.models);
}
refresh();
setInterval(refresh, POLL_MS);
