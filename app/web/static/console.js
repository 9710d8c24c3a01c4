// Depot's console. Plain JavaScript, no framework: it reads /console/state
// every two seconds and calls the repository API. Every name, reason and
// value from the server is written with textContent, never as markup.
"use strict";

const REFRESH_MS = 2000;
const WINDOW_S = 60;      // rates and percentiles over the last minute
const KEEP_S = 300;       // readings kept per model

const initial = JSON.parse(document.getElementById("initial").textContent);
const rows = new Map();     // model key -> {tr, cells, model}
const history = new Map();  // model key -> [{t, requests, failures, rows, buckets}]
let buckets = initial.buckets;
let keyRequired = initial.server.key_required;
let apiKey = sessionStorage.getItem("depot-key") || "";

const $ = (id) => document.getElementById(id);
const keyOf = (m) => m.name + "\u0000" + m.version;
const label = (m) => m.version ? `${m.name} version ${m.version}` : m.name;
const canAct = () => !keyRequired || apiKey !== "";

function text(node, value) {
  const s = value === null || value === undefined ? "" : String(value);
  if (node.textContent !== s) node.textContent = s;
}

function say(message, isError) {
  const status = $("status");
  status.className = isError ? "error" : "";
  text(status, message);
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
  const m = Math.floor(s % 3600 / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

function tensors(list) {
  return (list || []).map((t) => `${t.name} ${t.datatype} [${(t.shape || []).join(", ")}]`)
    .join("; ") || "—";
}

// -- traffic from cumulative counters -------------------------------------------

function remember(key, t, traffic) {
  const seen = history.get(key) || [];
  seen.push({t, ...traffic});
  while (seen.length && seen[0].t < t - KEEP_S) seen.shift();
  history.set(key, seen);
  return seen;
}

function quantile(q, counts) {
  const total = counts[counts.length - 1];
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] >= rank) {
      if (i === buckets.length) return buckets[buckets.length - 1];  // beyond the last bound
      const lower = i === 0 ? 0 : buckets[i - 1];
      const below = i === 0 ? 0 : counts[i - 1];
      const inside = counts[i] - below;
      return lower + (buckets[i] - lower) * (inside > 0 ? (rank - below) / inside : 1);
    }
  }
  return null;
}

function windowed(seen) {
  const last = seen[seen.length - 1];
  const first = seen.find((s) => s.t >= last.t - WINDOW_S) || seen[0];
  const dt = last.t - first.t;
  const diff = last.buckets.map((c, i) => c - first.buckets[i]);
  const requests = last.requests - first.requests;
  return {
    rate: dt > 0 ? requests / dt : 0,
    rows: dt > 0 ? (last.rows - first.rows) / dt : 0,
    failures: last.failures - first.failures,
    p50: requests > 0 ? quantile(0.5, diff) : null,
    p99: requests > 0 ? quantile(0.99, diff) : null,
  };
}

function sparkline(svg, seen) {
  // requests a second between readings, over the last minute, now on the right
  const now = seen[seen.length - 1].t;
  const points = [];
  for (let i = 1; i < seen.length; i++) {
    const dt = seen[i].t - seen[i - 1].t;
    if (seen[i].t >= now - WINDOW_S && dt > 0) {
      points.push([seen[i].t, (seen[i].requests - seen[i - 1].requests) / dt]);
    }
  }
  const top = Math.max(1, ...points.map((p) => p[1]));
  const x = (t) => (100 * (1 - (now - t) / WINDOW_S)).toFixed(1);
  const line = points.map(([t, v]) => `${x(t)},${(19 - 17 * v / top).toFixed(1)}`);
  svg.firstChild.setAttribute("points", line.join(" "));
}

// -- the table ------------------------------------------------------------------

const COLUMNS = ["Model", "State", "Reason", "Platform", "Inputs → outputs", "Source", "Loaded",
                 "Requests/s", "Failures", "p50 / p99 ms", "Rows/s", "Last minute", "Actions"];

function button(name, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  text(b, name);
  b.addEventListener("click", onClick);
  return b;
}

function makeRow(model) {
  const tr = document.createElement("tr");
  const cells = COLUMNS.map((name) => {
    const td = document.createElement("td");
    td.dataset.label = name;
    tr.appendChild(td);
    return td;
  });
  [7, 8, 9, 10].forEach((i) => cells[i].classList.add("number"));
  const state = document.createElement("span");
  cells[1].appendChild(state);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 100 20");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.appendChild(document.createElementNS("http://www.w3.org/2000/svg", "polyline"));
  cells[11].appendChild(svg);
  const actions = document.createElement("div");
  actions.className = "actions";
  const entry = {tr, cells, state, svg, model};
  entry.load = button("Load", "", () => control(entry, "load", "Load"));
  entry.reload = button("Reload", "secondary", () => control(entry, "load", "Reload"));
  entry.unload = button("Unload", "secondary", () => control(entry, "unload", "Unload"));
  entry.tryIt = button("Try", "secondary", () => openTry(entry.model));
  actions.append(entry.load, entry.reload, entry.unload, entry.tryIt);
  cells[12].appendChild(actions);
  return entry;
}

function update(entry, model, now) {
  entry.model = model;
  const c = entry.cells;
  const name = label(model);
  text(c[0], name);
  text(entry.state, model.state);
  entry.state.className = `state ${model.state}`;
  text(c[2], model.reason || "—");
  text(c[3], model.platform || "—");
  text(c[4], `${tensors(model.inputs)} → ${tensors(model.outputs)}`);
  text(c[5], model.source || "—");
  text(c[6], model.loaded_at ? `${duration(now - model.loaded_at)} ago` : "—");
  const seen = remember(keyOf(model), now, model.traffic);
  const w = windowed(seen);
  text(c[7], w.rate.toFixed(1));
  text(c[8], `${w.failures} (total ${model.traffic.failures})`);
  const ms = (v) => v === null ? "—" : (v * 1000).toFixed(v < 0.01 ? 2 : 1);
  text(c[9], `${ms(w.p50)} / ${ms(w.p99)}`);
  text(c[10], w.rows.toFixed(1));
  sparkline(entry.svg, seen);
  entry.svg.setAttribute("aria-label", `requests per second of ${name}, last minute`);
  const ready = model.state === "READY";
  entry.load.hidden = !canAct() || ready;
  entry.reload.hidden = !canAct() || !ready;
  entry.unload.hidden = !canAct() || !ready;
  entry.tryIt.hidden = !ready;
  entry.load.setAttribute("aria-label", `Load ${name}`);
  entry.reload.setAttribute("aria-label", `Reload ${name}`);
  entry.unload.setAttribute("aria-label", `Unload ${name}`);
  entry.tryIt.setAttribute("aria-label", `Try ${name}`);
}

function render(state) {
  buckets = state.buckets;
  keyRequired = state.server.key_required;
  const s = state.server;
  text($("ready"), s.ready ? "ready" : `not ready: ${s.unready_reason}`);
  $("ready").className = s.ready ? "state READY" : "state UNAVAILABLE";
  text($("workers"), s.workers);
  text($("watcher"), s.watcher_pid ? `process ${s.watcher_pid}` : "none");
  text($("store"), s.store);
  text($("uptime"), duration(s.uptime_seconds));
  text($("refreshed"), new Date(state.time * 1000).toLocaleTimeString());
  const body = $("models").tBodies[0];
  const present = new Set();
  state.models.forEach((model, i) => {
    const key = keyOf(model);
    present.add(key);
    let entry = rows.get(key);
    if (!entry) {
      entry = makeRow(model);
      rows.set(key, entry);
    }
    update(entry, model, state.time);
    if (body.children[i] !== entry.tr) body.insertBefore(entry.tr, body.children[i] || null);
  });
  for (const [key, entry] of rows) {
    if (!present.has(key)) { entry.tr.remove(); rows.delete(key); history.delete(key); }
  }
  applyFilter();
}

function applyFilter() {
  const wanted = $("filter").value.trim().toLowerCase();
  for (const entry of rows.values()) {
    const m = entry.model;
    const haystack = [m.name, m.version, m.state, m.platform, m.reason].join(" ").toLowerCase();
    entry.tr.hidden = wanted !== "" && !haystack.includes(wanted);
  }
}

async function refresh() {
  try {
    const reply = await fetch(`${base()}console/state`, {cache: "no-store"});
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    render(await reply.json());
  } catch (e) {
    text($("refreshed"), `server unreachable (${e.message}); retrying`);
  }
}

function base() {  // the console is served at / and at /console
  return location.pathname.replace(/console\/?$/, "");
}

// -- calls to the server --------------------------------------------------------

function headers() {
  const h = {"Content-Type": "application/json"};
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function answer(reply) {
  const body = await reply.text();
  try { return JSON.parse(body); } catch { return {error: body}; }
}

async function control(entry, action, verb) {
  const model = entry.model;
  const path = `${base()}v2/repository/models/${encodeURIComponent(model.name)}/${action}`;
  const buttons = [entry.load, entry.reload, entry.unload];
  buttons.forEach((b) => { b.disabled = true; });
  say(`${verb} ${label(model)}…`, false);
  try {
    const reply = await fetch(path, {method: "POST", headers: headers(), body: "{}"});
    const result = await answer(reply);
    if (reply.ok) say(`${verb} ${label(model)}: done`, false);
    else say(`${verb} ${label(model)} failed (${reply.status}): ${result.error}`, true);
  } catch (e) {
    say(`${verb} ${label(model)} failed: ${e.message}`, true);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    await refresh();
  }
}

function example(model) {
  const inputs = (model.inputs || []).map((t) => {
    const shape = (t.shape || [1]).map((d) => (d < 0 ? 1 : d));
    const size = shape.reduce((a, b) => a * b, 1);
    const zero = t.datatype === "BYTES" ? "" : t.datatype === "BOOL" ? false : 0;
    return {name: t.name, shape, datatype: t.datatype, data: new Array(size).fill(zero)};
  });
  return JSON.stringify({inputs}, null, 1);
}

let trying = null;

function openTry(model) {
  trying = model;
  $("try").hidden = false;
  text($("try-model"), label(model));
  $("try-body").value = example(model);
  text($("try-answer"), "");
  $("try-body").focus();
}

async function sendTry(event) {
  event.preventDefault();
  if (!trying) return;
  const version = trying.version ? `/versions/${encodeURIComponent(trying.version)}` : "";
  const path = `${base()}v2/models/${encodeURIComponent(trying.name)}${version}/infer`;
  text($("try-answer"), "…");
  try {
    const reply = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: $("try-body").value});
    const result = await answer(reply);
    text($("try-answer"), `${reply.status}\n${JSON.stringify(result, null, 1)}`);
  } catch (e) {
    text($("try-answer"), `failed: ${e.message}`);
  }
}

async function useKey(event) {
  event.preventDefault();
  const given = $("key").value;
  const reply = await fetch(`${base()}v2/repository/index`, {
    method: "POST", headers: {"Content-Type": "application/json",
                              Authorization: `Bearer ${given}`}, body: "{}"});
  if (reply.ok) {
    apiKey = given;
    sessionStorage.setItem("depot-key", given);
    say("key accepted: the repository calls are yours", false);
  } else {
    say(`the key was refused (${reply.status}): ${(await answer(reply)).error}`, true);
  }
  await refresh();
}

$("filter").addEventListener("input", applyFilter);
$("try-form").addEventListener("submit", sendTry);
$("try-close").addEventListener("click", () => { $("try").hidden = true; trying = null; });
if ($("key-form")) $("key-form").addEventListener("submit", useKey);
render(initial);
setInterval(refresh, REFRESH_MS);
