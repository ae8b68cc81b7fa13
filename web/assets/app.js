// Gale dashboard: pages behind the URL's hash (#/ fleet, #/device/<id>, #/connections,
// #/mqtt/sessions|subscriptions|retained, #/keys, #/gateway), data from the REST API,
// kept current by the live feed (/ws/live, subscribed only to what the page shows).
// Charts are uPlot's. Secrets (a device's token, a new API key) are shown once.
// The API key is entered once and kept in localStorage ("gale.key"); it never stays
// in the address bar (a one-shot ?key= is moved to storage and stripped).
"use strict";
const PAGE_SIZES = [10, 25, 50, 100]; // fleet rows per page (each visible row costs two small queries)
const MAX_APPS = 100;          // applications listed under the fleet
const SPARK_MS = 3600000;      // sparklines show the last hour ...
const SPARK_INTERVAL_MS = 60000; // ... as one-minute averages
const CHART_POINTS = 300;      // history buckets per chart
const MAX_LIVE_POINTS = 5000;  // per chart: live points beyond this drop the oldest

const $ = (id) => document.getElementById(id);
const state = {
  key: localStorage.getItem("gale.key") || "",
  devices: new Map(),   // id -> device of the fleet page, the applications, the device page
  page: 0,
  // The fleet is paged by the server (GET /api/devices?limit=&cursor=&q=): cursors[i]
  // starts page i (null: the first), ids are the page's devices in order.
  fleet: { cursors: [null], ids: [], apps: [], total: 0, all: 0, online: 0, seq: 0 },
  pageSize: PAGE_SIZES.includes(+localStorage.getItem("gale.pageSize"))
    ? +localStorage.getItem("gale.pageSize") : 25,
  ws: null, wsOpen: false, sub: null, dropped: 0,
  route: null,          // {page, id}
  timers: [],           // intervals of the current page, cleared when it changes
};
// What the page shows, for tests and for the curious (the devtools console).
window.gale = { state, charts: new Map(), sparks: new Map() };

// ---- helpers -------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : "HTTP " + status);
    this.status = status;
    this.code = body && body.code;
  }
}

async function api(path, opts = {}) {
  const headers = { Authorization: "Bearer " + state.key };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method: opts.method || "GET", headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  if (r.status === 401) throw new HttpError(401, { error: "unauthorized" });
  const text = await r.text();
  let body = null;
  try { body = text && !opts.text ? JSON.parse(text) : text; } catch (e) { body = text; }
  if (!r.ok) throw new HttpError(r.status, body);
  return body;
}

const dev = (id) => "/api/devices/" + encodeURIComponent(id);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  e.append(...kids.filter((k) => k !== null && k !== undefined));
  return e;
}

function fmtAgo(ms) {
  if (!ms) return "never";
  const s = (Date.now() - ms) / 1000;
  if (s < 60) return Math.max(0, Math.round(s)) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return new Date(ms).toLocaleString();
}

function fmtValue(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(+v.toFixed(3));
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

function fmtBytes(n) {
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function statusCell(online) {
  return el("span", {}, el("span", { class: "dot" + (online ? " on" : "") }), online ? "online" : "offline");
}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function labelled(tr, labels) {
  [...tr.cells].forEach((td, i) => td.setAttribute("data-label", labels[i] || ""));
  return tr;
}

function every(ms, fn) {
  state.timers.push(setInterval(fn, ms));
}

// What a refused request says to the user: a 403 names the role the key lacks.
function errText(e) {
  if (e && e.status === 403)
    return "This API key may not do that" + (e.message && e.message !== "HTTP 403" ? ": " + e.message : "") + ".";
  return e && e.message ? e.message : String(e);
}

// A destructive button asks again on itself: the first click arms it ("Sure? …") for
// 5 s, the second does it. Returns true on the second click.
function confirmed(btn) {
  if (btn.dataset.armed) {
    clearTimeout(+btn.dataset.armed);
    delete btn.dataset.armed;
    btn.textContent = btn.dataset.label;
    btn.classList.remove("armed");
    return true;
  }
  btn.dataset.label = btn.textContent;
  btn.textContent = "Sure? " + btn.textContent;
  btn.classList.add("armed");
  btn.dataset.armed = String(setTimeout(() => {
    delete btn.dataset.armed;
    btn.textContent = btn.dataset.label;
    btn.classList.remove("armed");
  }, 5000));
  return false;
}

const anyArmed = (id) => !!$(id).querySelector("button.armed");

function actionButton(label, fn, cls) {
  const b = el("button", { type: "button", class: cls || "danger small", text: label });
  b.addEventListener("click", () => { if (confirmed(b)) fn(b); });
  return b;
}

// A line at the top of the page for what just happened; it goes after 8 s.
function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
  clearTimeout(state.noticeTimer);
  if (text) state.noticeTimer = setTimeout(() => notice(""), 8000);
}

// ---- roles ---------------------------------------------------------------------

// The key's role (GET /api/info answers it): admin (devices, tokens, MQTT state, keys),
// operator (commands, attributes, kicking connections) or read. Controls the role lacks
// are hidden; the server refuses them anyway (403, shown as a message).
const RANK = { read: 0, operator: 1, admin: 2 };
const can = (need) => (RANK[state.role] ?? 2) >= RANK[need];

function applyRole() {
  for (const e of document.querySelectorAll("[data-needs]")) e.hidden = !can(e.dataset.needs);
  $("role").textContent = (state.role && state.role !== "admin" ? state.role + " key" : "") +
    (state.allDevices === false ? " (some devices)" : "");
}

async function loadInfo() {
  try {
    state.info = await api("/api/info");
  } catch (e) {
    if (e.status === 401) throw e;
    state.info = { listeners: [] };
  }
  state.role = state.info.role || "admin";
  state.allDevices = state.info.all_devices !== false;
  applyRole();
}

// ---- secrets shown once --------------------------------------------------------

// Connect snippets for a device with its token: the host as this page reaches Gale,
// the MQTT and line ports as the gateway bound them (GET /api/info).
function snippets(id, token) {
  const host = location.hostname.replace(/^\[|\]$/g, "");
  const port = (n) => ((state.info && state.info.listeners) || []).find((l) => l.name === n);
  const web = location.host, wsProto = location.protocol === "https:" ? "wss:" : "ws:";
  const out = [];
  const mqtt = port("mqtt"), line = port("line"), mqtts = port("mqtts");
  if (mqtt) out.push(["MQTT (mosquitto_pub)", "mqtt", "mosquitto_pub -h " + host + " -p " + mqtt.port +
    " -u '" + id + "' -P '" + token + "' -q 1 -t 'devices/" + id + "/telemetry' -m '{\"temp\":21.5}'"]);
  if (mqtts) out.push(["MQTT over TLS", "mqtts", "mosquitto_pub -h " + host + " -p " + mqtts.port +
    " --capath /etc/ssl/certs -u '" + id + "' -P '" + token + "' -q 1 -t 'devices/" + id +
    "/telemetry' -m '{\"temp\":21.5}'"]);
  if (line) out.push(["Line protocol (nc)", "line", "(echo '{\"device\":\"" + id + "\",\"token\":\"" + token +
    "\"}'; echo '{\"temp\":21.5,\"seq\":1}'; sleep 1) | nc " + host + " " + line.port]);
  out.push(["WebSocket (/ws/device, e.g. in a browser's console)", "ws",
    "const ws = new WebSocket(\"" + wsProto + "//" + web + "/ws/device?device=" + encodeURIComponent(id) +
    "&token=" + encodeURIComponent(token) + "\");\n" +
    "ws.onopen = () => ws.send(JSON.stringify({ temp: 21.5, seq: 1 }));\n" +
    "ws.onmessage = (e) => console.log(e.data);"]);
  out.push(["HTTP (curl)", "http", "curl -X POST -H 'Authorization: Bearer " + token + "' -d '{\"temp\":21.5}' " +
    location.protocol + "//" + web + "/api/devices/" + encodeURIComponent(id) + "/telemetry"]);
  return out;
}

function showSecret(title, note, value, snips) {
  $("secret-title").textContent = title;
  $("secret-note").textContent = note;
  $("secret-value").textContent = value;
  $("snippets").replaceChildren(...(snips || []).map(([label, name, text]) =>
    el("div", { class: "snippet" }, el("h4", { text: label }),
      el("div", { class: "copyrow" }, el("pre", { id: "snip-" + name, text }),
        el("button", { type: "button", class: "secondary copy", "data-copy": "snip-" + name, text: "Copy" })))));
  $("secret").hidden = false;
  $("secret").scrollIntoView({ block: "nearest" });
}

function hideSecret() {
  $("secret").hidden = true;
  $("secret-value").textContent = "";
  $("snippets").replaceChildren();
}

// Copies the text of the element a .copy button names: the Clipboard API where the page
// is a secure context (https, localhost), else the selection and execCommand.
async function copyFrom(btn) {
  const src = $(btn.dataset.copy);
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(src.textContent); ok = true; }
  } catch (e) { /* fall back */ }
  if (!ok) {
    const r = document.createRange();
    r.selectNodeContents(src);
    const sel = getSelection();
    sel.removeAllRanges();
    sel.addRange(r);
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
  }
  btn.textContent = ok ? "Copied" : "Select and copy";
  setTimeout(() => { btn.textContent = "Copy"; }, 2000);
}

// ---- devices: add, rotate, delete ----------------------------------------------

async function addDevice(ev) {
  ev.preventDefault();
  $("add-error").textContent = "";
  const body = { id: $("add-id").value.trim() };
  if ($("add-name").value.trim()) body.name = $("add-name").value.trim();
  if ($("add-role").value !== "device") body.role = $("add-role").value;
  try {
    const r = await api("/api/devices", { method: "POST", body });
    $("add-form").reset();
    $("add-form").hidden = true;
    showSecret("Device " + r.id + " added", "Its token is shown this once (Gale keeps only a hash of it): " +
      "copy it or a snippet now. Rotate the token to get a new one.", r.token, snippets(r.id, r.token));
    await loadDevices();
    renderFleet();
  } catch (e) {
    $("add-error").textContent = errText(e);
  }
}

async function rotateToken(btn) {
  const id = dv.id;
  $("dev-error").textContent = "";
  try {
    const r = await api(dev(id) + "/token", { method: "POST" });
    showSecret("New token for " + id, "Shown this once. The old token no longer works and the device's " +
      "connections with it were closed.", r.token, snippets(id, r.token));
  } catch (e) {
    $("dev-error").textContent = errText(e);
  }
  btn.blur();
}

async function deleteDevice() {
  const id = dv.id;
  $("dev-error").textContent = "";
  try {
    await api(dev(id), { method: "DELETE" });
    state.devices.delete(id);
    location.hash = "#/";
    notice("Device " + id + " deleted.");
  } catch (e) {
    $("dev-error").textContent = errText(e);
  }
}

// ---- charts --------------------------------------------------------------------

function axisStyle() {
  return { stroke: css("--muted"), grid: { stroke: css("--line"), width: 1 }, ticks: { stroke: css("--line") } };
}

// Where a series' area is filled to: zero when the y scale shows it, else the bottom of
// the chart, so that a negative series is never filled upward to a zero off the top.
function fillTo(u, i) {
  const sc = u.scales[u.series[i].scale || "y"];
  return sc.min > 0 || sc.max < 0 ? sc.min : 0;
}

// xrange() -> [from, to] in seconds: the time axis shows the chosen range, not just
// the span of the points (one point alone would stretch it over years).
function makeChart(target, label, data, xrange) {
  const width = Math.max(200, target.clientWidth || 400);
  return new uPlot({
    width, height: 220,
    series: [{}, { label, stroke: css("--series"), fill: css("--fill"), fillTo, width: 1.5, spanGaps: true }],
    axes: [axisStyle(), axisStyle()],
    scales: { x: { time: true, range: xrange } },
  }, data, target);
}

function makeSpark(target, data, from, to) {
  return new uPlot({
    width: 120, height: 32,
    cursor: { show: false }, legend: { show: false }, select: { show: false },
    series: [{}, { stroke: css("--series"), fill: css("--fill"), fillTo, width: 1, spanGaps: true }],
    axes: [{ show: false }, { show: false }],
    scales: { x: { time: true, range: () => [from / 1000, Math.max(to, Date.now()) / 1000] } },
  }, data, target);
}

// The points in the newest history bucket (starting at `newest` ms), from an agg=count
// answer over that bucket; 0 when the history's last bucket is another one.
function lastCount(data, counts, newest) {
  const xs = data[0];
  return counts && counts.length && counts[0].ts === newest && xs.length &&
    xs[xs.length - 1] === newest / 1000 ? counts[0].value : 0;
}

// Live points join averaged history at its resolution: each goes into the bucket of
// `interval` ms the server would put it in (aligned to the epoch) and the bucket shows
// the running average, never the raw point. agg = {interval, live: Map(bucket ms ->
// {sum, n}), lastCount: points already in the newest history bucket}.
function addToBucket(u, agg, ts, value) {
  const b = Math.floor(ts / agg.interval) * agg.interval, x = b / 1000;
  const [xs, ys] = u.data;
  let acc = agg.live.get(b);
  if (!acc) {
    const last = xs.length ? xs[xs.length - 1] : -Infinity;
    // a late point in a bucket of the history: it has it (or, without the bucket's count,
    // cannot take it in exactly)
    if (x < last || (x === last && !agg.lastCount)) return false;
    acc = x === last ? { sum: ys[ys.length - 1] * agg.lastCount, n: agg.lastCount } : { sum: 0, n: 0 };
    agg.live.set(b, acc);
  }
  acc.sum += value;
  acc.n++;
  let i = xs.length;
  while (i > 0 && xs[i - 1] > x) i--;
  if (i > 0 && xs[i - 1] === x) ys[i - 1] = acc.sum / acc.n;
  else { xs.splice(i, 0, x); ys.splice(i, 0, acc.sum / acc.n); }
  return true;
}

// Points as uPlot wants them: [[seconds...], [values...]], numbers only.
function toSeries(points) {
  const xs = [], ys = [];
  for (const p of points || []) {
    if (typeof p.value !== "number") continue;
    xs.push(p.ts / 1000);
    ys.push(p.value);
  }
  return [xs, ys];
}

function destroyCharts() {
  for (const u of window.gale.charts.values()) u.destroy();
  window.gale.charts.clear();
  for (const u of window.gale.sparks.values()) u.destroy();
  window.gale.sparks.clear();
}

window.addEventListener("resize", () => {
  for (const u of window.gale.charts.values()) {
    const w = u.root.parentElement.clientWidth;
    if (w && Math.abs(w - u.width) > 4) u.setSize({ width: w, height: u.height });
  }
});

// ---- live feed -----------------------------------------------------------------

// What the current page wants from /ws/live: {devices:[ids], presence} or null.
function liveSubscribe(sub) {
  state.sub = sub;
  if (!state.ws || !state.wsOpen) return;
  if (sub) state.ws.send(JSON.stringify({ subscribe: { devices: sub.devices, keys: ["*"], presence: true } }));
  else state.ws.send(JSON.stringify({ unsubscribe: true }));
}

function connectLive() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(proto + "//" + location.host + "/ws/live");
  state.ws = ws;
  ws.onopen = () => {
    state.wsOpen = true;
    ws.send(JSON.stringify({ auth: state.key }));
    liveSubscribe(state.sub);
  };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "ready" || m.type === "subscribed" || m.type === "unsubscribed") setLive(true);
    else if (m.type === "telemetry") onTelemetry(m);
    else if (m.type === "presence") onPresence(m);
    else if (m.type === "dropped") {
      state.dropped = m.total || state.dropped + m.count;
      $("dropped").textContent = state.dropped + " live updates dropped (this browser fell behind)";
    } else if (m.type === "error") $("live").textContent = m.error;
  };
  ws.onclose = () => {
    state.wsOpen = false;
    setLive(false);
    if (state.ws === ws) setTimeout(() => { if (state.key && state.ws === ws) connectLive(); }, 2000);
  };
}

function setLive(on) {
  $("live").textContent = on ? "live" : "offline";
  $("live").className = "badge " + (on ? "on" : "off");
}

function onTelemetry(m) {
  const d = state.devices.get(m.device);
  if (d) {
    d.latest = d.latest || {};
    for (const p of m.points) {
      const cur = d.latest[p.key];
      if (!cur || cur.ts <= p.ts) d.latest[p.key] = { ts: p.ts, value: p.value };
    }
    d.last_seen = Date.now();
  }
  const spark = window.gale.sparks.get(m.device);
  if (spark) { // every live point of its key into its minute, not only the newest
    let changed = false;
    for (const p of m.points) {
      if (p.key !== spark.gale_key || typeof p.value !== "number") continue;
      changed = addToBucket(spark, spark.gale_agg, p.ts, p.value) || changed;
    }
    if (changed) spark.setData(spark.data);
  }
  if (state.route.page === "fleet" && d) {
    const tr = fleetRow(d);
    tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash");
  } else if (state.route.page === "device" && state.route.id === m.device) {
    deviceLive(m.points);
  }
}

function onPresence(m) {
  const d = state.devices.get(m.device);
  refreshSoon(); // the counts, whichever device it was
  if (!d) return;
  d.online = m.online;
  d.last_seen = m.ts || Date.now();
  if (state.route.page === "fleet") renderFleet();
  else if (state.route.page === "device" && state.route.id === m.device) renderDeviceHead(d);
}

// ---- fleet ---------------------------------------------------------------------

// The registry's counts for the summary: devices (not applications) and how many are online.
async function loadCounts() {
  const [all, online] = await Promise.all([api("/api/devices?role=device&limit=1"),
    api("/api/devices?role=device&online=true&limit=1")]);
  state.fleet.all = all.total;
  state.fleet.online = online.total;
  renderSummary();
}

// One page of the fleet (the search applies on the server), the applications and the
// counts. A reply that a newer load overtook is dropped.
async function loadDevices() {
  const f = state.fleet, seq = ++f.seq;
  const q = $("filter").value.trim(), cur = f.cursors[state.page];
  const [page, apps] = await Promise.all([
    api("/api/devices?role=device&sort=id&limit=" + state.pageSize +
      (q ? "&q=" + encodeURIComponent(q) : "") + (cur ? "&cursor=" + encodeURIComponent(cur) : "")),
    api("/api/devices?role=app&sort=id&limit=" + MAX_APPS),
    loadCounts()]);
  if (seq !== f.seq) return;
  if (!page.devices.length && state.page > 0) { // the page emptied (devices deleted): restart
    state.page = 0;
    f.cursors = [null];
    return loadDevices();
  }
  const keep = state.route && state.route.page === "device" ? state.devices.get(state.route.id) : null;
  const prev = state.devices;
  state.devices = new Map();
  for (const d of page.devices.concat(apps.devices)) {
    const old = prev.get(d.id);
    d.latest = old ? old.latest : null;
    state.devices.set(d.id, d);
  }
  if (keep && !state.devices.has(keep.id)) state.devices.set(keep.id, keep);
  f.ids = page.devices.map((d) => d.id);
  f.apps = apps.devices.map((d) => d.id);
  f.total = page.total;
  f.cursors.length = state.page + 1;
  if (page._next) f.cursors.push(page._next);
}

// Presence changed somewhere: refresh the counts (and the fleet page) once, shortly.
function refreshSoon() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    const p = state.route && state.route.page === "fleet" ? loadDevices().then(renderFleet) : loadCounts();
    p.catch(showError);
  }, 500);
}

function renderSummary() {
  $("summary").textContent = state.fleet.all + " devices, " + state.fleet.online + " online";
}

const FLEET_LABELS = ["device", "status", "protocol", "last seen", "latest", "last hour"];

function fleetRow(d) {
  let tr = $("dev-" + d.id);
  if (!tr) {
    tr = el("tr", { id: "dev-" + d.id });
    for (let i = 0; i < 6; i++) tr.appendChild(el("td"));
    tr.cells[5].className = "spark";
    labelled(tr, FLEET_LABELS);
  }
  const c = tr.cells;
  c[0].replaceChildren(el("a", { href: "#/device/" + encodeURIComponent(d.id), text: d.id }));
  c[1].replaceChildren(statusCell(d.online));
  c[2].textContent = d.protocol || "";
  c[3].textContent = fmtAgo(d.last_seen);
  c[3].title = d.last_seen ? new Date(d.last_seen).toISOString() : "";
  c[4].replaceChildren(...Object.keys(d.latest || {}).sort().map((k) => {
    const span = el("span", { class: "kv", title: new Date(d.latest[k].ts).toISOString() },
      el("b", { text: k }), fmtValue(d.latest[k].value));
    return span;
  }));
  return tr;
}

// The key a device's sparkline follows: its most recently sent numeric key (of those
// sent last together, the first by name), not the first by name of all it ever sent.
function sparkKey(latest) {
  let best = null;
  for (const k of Object.keys(latest || {}).sort()) {
    const v = latest[k];
    if (typeof v.value === "number" && (!best || v.ts > latest[best].ts)) best = k;
  }
  return best;
}

function renderFleet() {
  const f = state.fleet, first = state.page * state.pageSize;
  const visible = f.ids.map((id) => state.devices.get(id)).filter(Boolean);
  fill($("devices").tBodies[0], visible.map(fleetRow));
  $("empty").hidden = f.all > 0 || f.apps.length > 0;
  $("page-info").textContent = f.total ? (first + 1) + "–" + (first + visible.length) + " of " +
    f.total : "0 of 0";
  $("prev").disabled = state.page === 0;
  $("next").disabled = !f.cursors[state.page + 1];
  const apps = f.apps.map((id) => state.devices.get(id)).filter(Boolean);
  $("apps").hidden = $("apps-title").hidden = apps.length === 0;
  fill($("apps").tBodies[0], apps.map((a) => labelled(el("tr", {},
    el("td", { text: a.id }), el("td", {}, statusCell(a.online)), el("td", { text: a.protocol || "" }),
    el("td", { text: fmtAgo(a.last_seen) })), ["application", "status", "protocol", "last seen"])));
  const ids = visible.map((d) => d.id);
  const key = ids.join("\n");
  if (state.fleetIds !== key) { // the page changed: fetch what it shows, follow only it live
    state.fleetIds = key;
    liveSubscribe(ids.length ? { devices: ids } : null);
    for (const [id, u] of window.gale.sparks) if (!ids.includes(id)) { u.destroy(); window.gale.sparks.delete(id); }
    visible.forEach(loadRowDetail);
  }
}

async function loadRowDetail(d) {
  try {
    if (!d.latest) {
      d.latest = await api(dev(d.id) + "/latest");
      fleetRow(d);
    }
    const key = sparkKey(d.latest);
    if (!key || window.gale.sparks.has(d.id)) return;
    // the last hour's minutes, and how many points the current one holds so far: live
    // points average into it exactly
    const now = Date.now(), cur = Math.floor(now / SPARK_INTERVAL_MS) * SPARK_INTERVAL_MS;
    const q = dev(d.id) + "/telemetry?keys=" + encodeURIComponent(key) + "&interval=" + SPARK_INTERVAL_MS;
    const [r, c] = await Promise.all([api(q + "&agg=avg&from=" + (now - SPARK_MS) + "&to=" + now),
      api(q + "&agg=count&from=" + cur + "&to=" + now)]);
    const tr = $("dev-" + d.id);
    if (!tr || !tr.isConnected || window.gale.sparks.has(d.id)) return;
    const cell = tr.cells[5];
    const box = el("div");
    cell.replaceChildren(box, el("div", { class: "key muted", text: key }));
    const data = toSeries(r[key]);
    const u = makeSpark(box, data, now - SPARK_MS, now);
    u.gale_key = key;
    u.gale_agg = { interval: SPARK_INTERVAL_MS, live: new Map(), lastCount: lastCount(data, c && c[key], cur) };
    window.gale.sparks.set(d.id, u);
  } catch (e) {
    if (e.status === 401) logout(true);
  }
}

async function showFleet() {
  state.fleetIds = null;
  await loadDevices();
  renderFleet();
  every(10000, () => loadDevices().then(renderFleet).catch(showError));
}

// ---- device page ---------------------------------------------------------------

const RANGES = { "15m": 900000, "1h": 3600000, "24h": 86400000, "7d": 604800000 };
// mode: "auto" (fitted to the data), "relative" (the last 15m/1h/24h/7d) or "custom"
const dv = { id: null, mode: "auto", range: 3600000, from: 0, to: 0, live: true, latest: {},
  interval: 1000, fitted: false };
window.gale.dv = dv;

function renderDeviceHead(d) {
  $("dev-title").textContent = d.name ? d.name + " (" + d.id + ")" : d.id;
  $("dev-state").replaceChildren(statusCell(d.online), el("span", { class: "muted",
    text: " · " + (d.protocol || "no protocol yet") + " · last seen " + fmtAgo(d.last_seen) +
      (d.role ? " · " + d.role : "") }));
}

function kvRows(tbody, obj, labelKey) {
  const keys = Object.keys(obj || {}).sort();
  fill(tbody, keys.length ? keys.map((k) => el("tr", {}, el("td", { text: k }),
    el("td", { text: fmtValue(labelKey ? obj[k].value : obj[k]),
      title: labelKey ? new Date(obj[k].ts).toISOString() : "" })))
    : [el("tr", {}, el("td", { class: "muted", text: "none" }))]);
}

// The scopes as the API names them: reported_attributes (what the device published) and
// server_attributes (set here); a server without scopes has only attributes (set here).
function renderAttributes(d) {
  kvRows($("attr-reported").tBodies[0], d.reported_attributes || {});
  kvRows($("attr-set").tBodies[0], serverAttributes(d));
}
const serverAttributes = (d) => d.server_attributes || (d.reported_attributes ? {} : d.attributes) || {};

function chooseInterval(span) {
  return Math.max(1000, Math.ceil(span / CHART_POINTS / 1000) * 1000);
}

const numericKeys = () => Object.keys(dv.latest).filter((k) => typeof dv.latest[k].value === "number").sort();
const localTime = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60000).toISOString().slice(0, 19);

// The range the route asks for (?range= or ?from=&to=), else one fitted to the device's
// data: from its first point (of the week before its last) to now while it sent in the
// last hour (at least a minute, at most an hour, following live), else a fixed range
// around its points, so that a new device's chart is not mostly empty axes.
async function chooseRange(r) {
  dv.fitted = false;
  if (r.range && RANGES[r.range]) {
    Object.assign(dv, { mode: "relative", live: true, range: RANGES[r.range] });
    return;
  }
  if (r.from && r.to && r.from < r.to) {
    Object.assign(dv, { mode: "custom", live: false, from: r.from, to: r.to });
    return;
  }
  Object.assign(dv, { mode: "auto", live: true, range: RANGES["1h"] });
  const keys = numericKeys();
  if (!keys.length) return;
  const last = Math.max(...keys.map((k) => dv.latest[k].ts));
  const r1 = await api(dev(dv.id) + "/telemetry?keys=" + keys.map(encodeURIComponent).join(",") +
    "&order=asc&limit=1&from=" + (last - RANGES["7d"]) + "&to=" + last);
  let first = last;
  for (const k of keys) if (r1[k] && r1[k].length) first = Math.min(first, r1[k][0].ts);
  const now = Date.now();
  dv.fitted = true;
  if (now - last < RANGES["1h"]) {
    dv.range = Math.min(RANGES["1h"], Math.max(60000, Math.ceil((now - first) * 1.05)));
  } else {
    const pad = Math.max(1000, Math.ceil((last - first) * 0.05));
    Object.assign(dv, { live: false, from: first - pad, to: last + pad });
  }
}

async function showRange() {
  await chooseRange(state.route);
  const name = dv.mode === "relative" ? state.route.range : dv.mode;
  for (const b of $("ranges").querySelectorAll("button[data-range]"))
    b.classList.toggle("active", b.dataset.range === name);
  $("custom").hidden = dv.mode !== "custom";
  if (dv.mode === "custom") {
    $("from").value = localTime(dv.from);
    $("to").value = localTime(dv.to);
  }
  await loadHistory();
}

// History as averages of `interval` ms; while the range follows live, also the count of
// points in the newest bucket so that live points average into it exactly.
async function loadHistory() {
  if (dv.live) { dv.to = Date.now(); dv.from = dv.to - dv.range; }
  const interval = chooseInterval(dv.to - dv.from);
  dv.interval = interval;
  $("range-info").textContent = new Date(dv.from).toLocaleString() + " – " +
    (dv.live ? "now" : new Date(dv.to).toLocaleString()) + " · " + (interval / 1000) + " s averages" +
    (dv.fitted ? " · fitted to its data" : "");
  const keys = numericKeys();
  for (const u of window.gale.charts.values()) u.destroy();
  window.gale.charts.clear();
  $("charts").replaceChildren();
  $("no-charts").hidden = keys.length > 0;
  if (!keys.length) return;
  const q = dev(dv.id) + "/telemetry?keys=" + keys.map(encodeURIComponent).join(",") +
    "&interval=" + interval;
  const newest = Math.floor(dv.to / interval) * interval;
  const [r, c] = await Promise.all([
    api(q + "&agg=avg&from=" + dv.from + "&to=" + dv.to + "&limit=" + (CHART_POINTS * 2)),
    dv.live ? api(q + "&agg=count&from=" + newest + "&to=" + dv.to) : null]);
  for (const k of keys) {
    const data = toSeries(r[k]);
    addChart(k, data, lastCount(data, c && c[k], newest));
  }
}

function addChart(key, data, lastCount) {
  const box = el("div");
  const card = el("div", { class: "chart", id: "chart-" + key }, el("h3", { text: key }), box);
  $("charts").appendChild(card);
  $("no-charts").hidden = true;
  const u = makeChart(box, key, data, () => dv.live
    ? [(Date.now() - dv.range) / 1000, Date.now() / 1000] : [dv.from / 1000, dv.to / 1000]);
  u.gale_agg = { interval: dv.interval, live: new Map(), lastCount: lastCount || 0 };
  window.gale.charts.set(key, u);
  return u;
}

function deviceLive(points) {
  for (const p of points) {
    const cur = dv.latest[p.key];
    if (!cur || cur.ts <= p.ts) dv.latest[p.key] = { ts: p.ts, value: p.value };
    if (!dv.live || typeof p.value !== "number") continue;
    const u = window.gale.charts.get(p.key) || addChart(p.key, [[], []], 0);
    if (!addToBucket(u, u.gale_agg, p.ts, p.value)) continue;
    const [xs, ys] = u.data;
    const cut = (Date.now() - dv.range) / 1000;
    let drop = 0;
    while (drop < xs.length && (xs[drop] < cut || xs.length - drop > MAX_LIVE_POINTS)) drop++;
    if (drop) { xs.splice(0, drop); ys.splice(0, drop); }
    u.setData([xs, ys]);
  }
  kvRows($("dev-latest").tBodies[0], dv.latest, true);
}

// The range goes into the address (#/device/<id>?range=1h or ?from=&to=): a reload keeps
// it, the back button returns to the one before.
const deviceHash = (id, q) => "#/device/" + encodeURIComponent(id) + (q ? "?" + q : "");

function setRange(btn) {
  if (btn.dataset.range === "custom") {
    for (const b of $("ranges").querySelectorAll("button[data-range]")) b.classList.toggle("active", b === btn);
    $("custom").hidden = false;
    if (!$("from").value) $("from").value = localTime(dv.from || Date.now() - RANGES["1h"]);
    if (!$("to").value) $("to").value = localTime(dv.live ? Date.now() : dv.to);
    return;
  }
  location.hash = deviceHash(dv.id, "range=" + btn.dataset.range);
}

function applyCustom() {
  const from = new Date($("from").value).getTime(), to = new Date($("to").value).getTime();
  if (!(from < to)) { $("range-info").textContent = "the range's start must be before its end"; return; }
  location.hash = deviceHash(dv.id, "from=" + from + "&to=" + to);
}

function cmdRow(c) {
  let tr = $("cmd-" + c.id);
  if (!tr) {
    tr = labelled(el("tr", { id: "cmd-" + c.id }, el("td"), el("td"), el("td")), ["command", "status", "reply"]);
    $("cmds").tBodies[0].prepend(tr);
  }
  tr.cells[0].textContent = c.name + (c.params ? " " + JSON.stringify(c.params) : "");
  tr.cells[0].title = c.id;
  tr.cells[1].replaceChildren(el("span", { class: "status status-" + c.status, text: c.status }));
  tr.cells[2].textContent = c.reply === undefined ? "" : fmtValue(c.reply);
  return tr;
}

// Polls a command until it is replied or expired (or the page changes).
function followCommand(id) {
  const device = dv.id;
  const tick = async () => {
    if (dv.id !== device || state.route.page !== "device") return;
    try {
      const c = await api(dev(device) + "/commands/" + encodeURIComponent(id));
      cmdRow(c);
      if (c.status === "replied" || c.status === "expired") return;
    } catch (e) {
      if (e.status === 404) return;
    }
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 500);
}

async function sendCommand(ev) {
  ev.preventDefault();
  $("cmd-error").textContent = "";
  const body = { name: $("cmd-name").value.trim() };
  const raw = $("cmd-params").value.trim();
  if (raw) {
    try { body.params = JSON.parse(raw); } catch (e) {
      $("cmd-error").textContent = "params must be JSON, e.g. {\"delay\":5}";
      return;
    }
  }
  try {
    const r = await api(dev(dv.id) + "/commands", { method: "POST", body });
    cmdRow(Object.assign({ name: body.name, params: body.params }, r));
    followCommand(r.id);
  } catch (e) {
    $("cmd-error").textContent = errText(e);
  }
}

async function setAttribute(ev) {
  ev.preventDefault();
  $("attr-error").textContent = "";
  const k = $("attr-key").value.trim();
  const raw = $("attr-value").value.trim();
  let v = raw;
  if (raw === "") v = null; // an empty value deletes the key
  else try { v = JSON.parse(raw); } catch (e) { v = raw; }
  const d = state.devices.get(dv.id);
  try {
    // merges into the server scope (null deletes the key): an operator key may
    const r = await api(dev(dv.id) + "/attributes", { method: "PATCH", body: { [k]: v } });
    d.server_attributes = r.server || {};
    d.reported_attributes = r.reported || d.reported_attributes || {};
    renderAttributes(d);
    $("attr-key").value = $("attr-value").value = "";
  } catch (e) {
    $("attr-error").textContent = errText(e);
  }
}

async function showDevice(id) {
  dv.id = id;
  $("cmd-form").reset();
  $("attr-form").reset();
  $("cmd-error").textContent = $("attr-error").textContent = "";
  let d;
  try { d = await api(dev(id)); } catch (e) {
    if (e.status === 404) { $("dev-title").textContent = "no device " + id; $("charts").replaceChildren(); return; }
    throw e;
  }
  state.devices.set(id, Object.assign(state.devices.get(id) || {}, d));
  renderDeviceHead(d);
  renderAttributes(d);
  dv.latest = await api(dev(id) + "/latest");
  kvRows($("dev-latest").tBodies[0], dv.latest, true);
  liveSubscribe({ devices: [id] });
  fill($("cmds").tBodies[0], []);
  api(dev(id) + "/commands").then((r) => {
    const list = r.commands.slice(-20);
    for (const c of list) cmdRow(c);
  }).catch(() => {});
  await showRange();
  every(10000, () => {
    const cur = state.devices.get(id);
    if (cur) renderDeviceHead(cur);
  });
}

// ---- connections ---------------------------------------------------------------

async function loadConnections() {
  if (anyArmed("conns")) return; // a kick waits for its second click
  const r = await api("/api/connections");
  const q = $("conn-filter").value.trim().toLowerCase();
  const rows = (r.connections || []).filter((c) => !q ||
    [c.device, c.peer, c.protocol, c.transport, c.listener].some((s) => s && String(s).toLowerCase().includes(q)));
  $("conn-count").textContent = rows.length + " of " + (r.count ?? rows.length) + " connections";
  fill($("conns").tBodies[0], rows.map((c) => labelled(el("tr", {},
    el("td", { text: String(c.id) }),
    el("td", {}, c.device ? el("a", { href: "#/device/" + encodeURIComponent(c.device), text: c.device }) : "—"),
    el("td", { text: c.protocol + (c.transport ? " / " + c.transport : "") }),
    el("td", { text: c.peer }),
    el("td", { text: fmtAgo(c.connected), title: new Date(c.connected).toISOString() }),
    el("td", { text: fmtBytes(c.bytes_in) + " · " + c.messages_in + " msg" }),
    el("td", { text: fmtBytes(c.bytes_out) + " · " + c.messages_out + " msg" }),
    el("td", {}, can("operator") ? actionButton("Kick", () => kick(c.id)) : null)),
    ["id", "device", "protocol", "peer", "connected", "in", "out", ""])));
}

// Closes a connection (the device may reconnect; rotate its token or delete it to keep it out).
async function kick(id) {
  $("conn-error").textContent = "";
  try {
    await api("/api/connections/" + id, { method: "DELETE" });
    notice("Connection " + id + " closed.");
  } catch (e) {
    $("conn-error").textContent = errText(e);
  }
  await loadConnections().catch(showError);
}

async function showConnections() {
  liveSubscribe(null);
  await loadConnections();
  every(5000, () => loadConnections().catch(() => {}));
}

// ---- MQTT sessions, subscriptions, retained messages ---------------------------

const MQTT_TABS = ["sessions", "subscriptions", "retained"];
const MQTT_LIMIT = 1000;

function mqttRows(tab, r, q) {
  const has = (...xs) => !q || xs.some((s) => s && String(s).toLowerCase().includes(q));
  const del = (path, what) => can("admin") ? actionButton("Delete", () => mqttDelete(path, what)) : null;
  if (tab === "sessions") {
    return (r.sessions || []).filter((s) => has(s.client_id, s.device, s.username)).map((s) => labelled(
      el("tr", { "data-key": s.client_id },
        el("td", { text: s.client_id }),
        el("td", {}, s.device ? el("a", { href: "#/device/" + encodeURIComponent(s.device), text: s.device }) : "—"),
        el("td", {}, statusCell(s.connected), s.clean ? " · clean" : " · persistent"),
        el("td", { text: String(s.subscriptions) }),
        el("td", { text: s.queued + " / " + s.inflight }),
        el("td", { text: String(s.dropped) }),
        el("td", {}, del("/api/mqtt/sessions/" + encodeURIComponent(s.client_id), "session " + s.client_id))),
      ["client id", "device", "state", "subscriptions", "queued / in flight", "dropped", ""]));
  }
  if (tab === "subscriptions") {
    return (r.subscriptions || []).filter((s) => has(s.client_id, s.filter)).map((s) => labelled(
      el("tr", { "data-key": s.client_id + " " + s.filter },
        el("td", { text: s.client_id }), el("td", {}, el("code", { text: s.filter })),
        el("td", { text: String(s.qos) }),
        el("td", {}, del("/api/mqtt/subscriptions?client_id=" + encodeURIComponent(s.client_id) +
          "&filter=" + encodeURIComponent(s.filter), "subscription " + s.filter))),
      ["client id", "filter", "QoS", ""]));
  }
  return (r.retained || []).filter((m) => has(m.topic, m.payload)).map((m) => labelled(
    el("tr", { "data-key": m.topic },
      el("td", {}, el("code", { text: m.topic })),
      el("td", { class: "payload", text: (m.payload_encoding === "base64" ? "base64: " : "") +
        (m.payload.length > 200 ? m.payload.slice(0, 200) + "…" : m.payload) }),
      el("td", { text: String(m.qos) }), el("td", { text: fmtBytes(m.bytes) }),
      el("td", { text: fmtAgo(m.ts), title: m.ts ? new Date(m.ts).toISOString() : "" }),
      el("td", {}, del("/api/mqtt/retained?topic=" + encodeURIComponent(m.topic), "retained " + m.topic))),
    ["topic", "payload", "QoS", "size", "stored", ""]));
}

async function loadMqtt() {
  const tab = state.route.tab, table = $("mqtt-" + tab);
  if (anyArmed("mqtt-" + tab)) return; // a delete waits for its second click
  const path = { sessions: "/api/mqtt/sessions?limit=" + MQTT_LIMIT, subscriptions: "/api/mqtt/subscriptions",
    retained: "/api/mqtt/retained?limit=" + MQTT_LIMIT }[tab];
  let r;
  try {
    r = await api(path);
  } catch (e) {
    if (e.status === 401) throw e;
    $("mqtt-error").textContent = e.status === 404 ? "MQTT is not enabled on this gateway." : errText(e);
    fill(table.tBodies[0], []);
    return;
  }
  if (state.route.tab !== tab) return;
  $("mqtt-error").textContent = "";
  const q = $("mqtt-filter").value.trim().toLowerCase();
  const rows = mqttRows(tab, r, q);
  const all = (r[tab] || []).length;
  $("mqtt-count").textContent = rows.length + " of " + all + (r._next ? "+" : "") + " " + tab;
  $("mqtt-empty").hidden = rows.length > 0;
  $("mqtt-empty").textContent = all ? "Nothing matches the filter." : {
    sessions: "No MQTT sessions.", subscriptions: "No subscriptions.", retained: "No retained messages." }[tab];
  table.hidden = rows.length === 0;
  fill(table.tBodies[0], rows);
}

async function mqttDelete(path, what) {
  try {
    await api(path, { method: "DELETE" });
    notice("Deleted " + what + ".");
  } catch (e) {
    $("mqtt-error").textContent = errText(e);
  }
  await loadMqtt().catch(showError);
}

async function showMqtt() {
  liveSubscribe(null);
  const tab = state.route.tab;
  for (const a of $("mqtt-tabs").querySelectorAll("a")) a.classList.toggle("active", a.dataset.tab === tab);
  for (const t of MQTT_TABS) $("mqtt-" + t).hidden = t !== tab;
  $("mqtt-filter").placeholder = { sessions: "filter (client id, device)", subscriptions: "filter (client id, topic filter)",
    retained: "filter (topic, payload)" }[tab];
  await loadMqtt();
  every(5000, () => loadMqtt().catch(() => {}));
}

// ---- API keys ------------------------------------------------------------------

async function loadKeys() {
  if (anyArmed("keys")) return;
  let r;
  try {
    r = await api("/api/keys");
  } catch (e) {
    if (e.status === 401) throw e;
    $("keys").hidden = true;
    $("keys-error").textContent = e.status === 404 ? "This gateway has one API key (data/api_key) and no others to manage."
      : e.status === 403 ? "Listing and creating keys needs an admin key; this one is " + (state.role || "not admin") + "."
      : errText(e);
    return;
  }
  const list = Array.isArray(r) ? r : r.keys || [];
  $("keys").hidden = false;
  $("keys-error").textContent = "";
  const self = state.info && state.info.key;
  fill($("keys").tBodies[0], list.map((k) => labelled(el("tr", { "data-key": String(k.id) },
    el("td", { text: (k.name || "") + (k.name === self ? " (this browser)" : "") +
      (k.configured ? " · configured" : "") }),
    el("td", { text: k.role }),
    el("td", { text: k.devices && k.devices.length ? k.devices.join(", ") : "all" }),
    el("td", { text: k.created ? fmtAgo(k.created) : "", title: k.created ? new Date(k.created).toISOString() : "" }),
    el("td", { text: k.last_used ? fmtAgo(k.last_used) : "—" }),
    el("td", {}, el("code", { text: String(k.id) })),
    el("td", {}, can("admin") ? actionButton("Revoke", () => revokeKey(k)) : null)),
  ["name", "role", "devices", "created", "last used", "id", ""])));
}

async function createKey(ev) {
  ev.preventDefault();
  $("keys-error").textContent = "";
  const body = { name: $("key-name").value.trim(), role: $("key-role").value };
  const devs = $("key-devices").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (devs.length) body.devices = devs;
  try {
    const r = await api("/api/keys", { method: "POST", body });
    $("key-form").reset();
    showSecret("API key " + (r.name || body.name) + " (" + r.role + ")", "Shown this once (Gale keeps only a " +
      "hash of it): copy it now. Use it as Authorization: Bearer <key>, or paste it into this dashboard's login.",
      r.key, []);
  } catch (e) {
    $("keys-error").textContent = errText(e);
  }
  await loadKeys().catch(showError);
}

async function revokeKey(k) {
  try {
    await api("/api/keys/" + encodeURIComponent(k.id), { method: "DELETE" });
    notice("Key " + (k.name || k.id) + " revoked.");
  } catch (e) {
    $("keys-error").textContent = errText(e);
  }
  await loadKeys().catch(showError);
}

async function showKeys() {
  liveSubscribe(null);
  await loadKeys();
}

// ---- gateway -------------------------------------------------------------------

// Prometheus text -> {"name": value, "name{labels}": value}; a label-less total is
// also summed over its labelled samples (name + ":sum").
function parseMetrics(text) {
  const m = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const sp = line.lastIndexOf(" ");
    const name = line.slice(0, sp).trim(), v = parseFloat(line.slice(sp + 1));
    if (!isFinite(v)) continue;
    m[name] = v;
    const base = name.split("{")[0];
    m[base + ":sum"] = (m[base + ":sum"] || 0) + v;
  }
  return m;
}

const gw = { prev: null, rate: null, backlog: null, data: { rate: [[], [], []], backlog: [[], [], []] } };
const GW_WINDOW = 300; // samples kept (10 min at one per 2 s)

function tile(label, value) {
  return el("div", { class: "tile" }, el("span", { class: "muted", text: label }), el("b", { text: value }));
}

async function pollGateway() {
  const m = parseMetrics(await api("/metrics", { text: true }));
  const now = Date.now() / 1000;
  const g = (k) => m[k + ":sum"] || 0;
  let pts = 0, msgs = 0;
  if (gw.prev) {
    const dt = now - gw.prev.t;
    pts = Math.max(0, (g("gale_points_received_total") - gw.prev.points) / dt);
    msgs = Math.max(0, (g("gale_messages_received_total") - gw.prev.msgs) / dt);
    const push = (d, a, b) => {
      d[0].push(now); d[1].push(a); d[2].push(b);
      if (d[0].length > GW_WINDOW) d.forEach((s) => s.shift());
    };
    push(gw.data.rate, pts, msgs);
    push(gw.data.backlog, g("gale_storage_hot_points"), g("gale_storage_queued_rows"));
    // the x range set here: at least the last minute, also while there is one sample
    const x0 = Math.min(gw.data.rate[0][0], now - 60);
    for (const [u, d] of [[gw.rate, gw.data.rate], [gw.backlog, gw.data.backlog]]) {
      u.setData(d, false);
      u.setScale("x", { min: x0, max: now });
    }
  }
  gw.prev = { t: now, points: g("gale_points_received_total"), msgs: g("gale_messages_received_total") };
  $("tiles").replaceChildren(
    tile("uptime", fmtAgo(Date.now() - g("gale_uptime_seconds") * 1000).replace(" ago", "")),
    tile("connections", String(g("gale_connections"))),
    tile("online / registered", g("gale_devices_online") + " / " + g("gale_devices")),
    tile("points/s", pts.toFixed(1)),
    tile("messages/s", msgs.toFixed(1)),
    tile("hot points", String(g("gale_storage_hot_points"))),
    tile("queued rows", String(g("gale_storage_queued_rows"))),
    tile("ingest", g("gale_storage_full") ? "refused: disk full"
      : g("gale_storage_ingest_paused") ? "paused" : "flowing"));
  const drops = [
    ["live updates dropped", "gale_feed_dropped_total"],
    ["MQTT messages dropped", "gale_mqtt_dropped_total"],
    ["telemetry rejected", "gale_telemetry_rejected_total"],
    ["storage failures", "gale_storage_failures_total"],
    ["writes refused (disk full)", "gale_storage_writes_refused_total"],
    ["ingest pauses", "gale_storage_ingest_pauses_total"],
    ["auth failures", "gale_auth_failures_total"],
    ["timeouts", "gale_timeouts_total"],
    ["connections refused", "gale_connections_refused_total"],
  ];
  fill($("drops").tBodies[0], drops.map(([label, k]) =>
    el("tr", {}, el("td", { text: label }), el("td", { id: "metric-" + k, text: String(g(k)) }))));
}

// GET /api/bridges: [{name, connected, address, backlog, backlog_bytes, oldest_age_s,
// sent_total, acked_total, dropped_total, reconnects_total}]; 404 (a gateway without the
// route) or [] is "no bridge".
async function loadBridges() {
  let list = [];
  try {
    const r = await api("/api/bridges");
    list = Array.isArray(r) ? r : (r && r.bridges) || [];
  } catch (e) {
    if (e.status !== 404) throw e;
  }
  $("bridges").hidden = list.length === 0;
  $("no-bridges").hidden = list.length > 0;
  fill($("bridges").tBodies[0], list.map((b) => labelled(el("tr", { id: "bridge-" + b.name },
    el("td", { text: b.name }),
    el("td", {}, el("span", {}, el("span", { class: "dot" + (b.connected ? " on" : "") }),
      b.connected ? "connected" : "disconnected")),
    el("td", { text: b.address || "" }),
    el("td", { text: b.backlog + " msg · " + fmtBytes(b.backlog_bytes || 0) }),
    el("td", { text: b.backlog && b.oldest_age_s != null ? b.oldest_age_s + " s" : "—" }),
    el("td", { text: b.sent_total + " / " + b.acked_total }),
    el("td", { text: String(b.dropped_total) }),
    el("td", { text: String(b.reconnects_total) })),
    ["bridge", "status", "address", "backlog", "oldest", "sent / acked", "dropped", "reconnects"])));
}

function gatewayChart(id, a, b) {
  const box = $(id);
  box.replaceChildren();
  const s = (label, color) => ({ label, stroke: color, width: 1.5 });
  return new uPlot({
    width: Math.max(200, box.clientWidth || 400), height: 200,
    series: [{}, s(a, css("--series")), s(b, css("--accent"))],
    axes: [axisStyle(), axisStyle()],
    scales: { x: { time: true } },
  }, id === "gw-rate" ? gw.data.rate : gw.data.backlog, box);
}

async function showGateway() {
  liveSubscribe(null);
  gw.rate = gatewayChart("gw-rate", "points/s", "messages/s");
  gw.backlog = gatewayChart("gw-backlog", "hot points", "queued rows");
  window.gale.charts.set("gateway-rate", gw.rate);
  window.gale.charts.set("gateway-backlog", gw.backlog);
  await Promise.all([pollGateway(), loadBridges().catch(showError)]);
  every(2000, () => pollGateway().catch(() => {}));
  every(5000, () => loadBridges().catch(() => {}));
}

// ---- routing, login, theme -----------------------------------------------------

// #/, #/device/<id>[?range=1h | ?from=<ms>&to=<ms>], #/connections, #/mqtt/<tab>, #/keys, #/gateway
function parseRoute() {
  const h = location.hash.replace(/^#\/?/, "");
  const qi = h.indexOf("?");
  const path = qi < 0 ? h : h.slice(0, qi), q = new URLSearchParams(qi < 0 ? "" : h.slice(qi + 1));
  if (path.startsWith("device/")) {
    return { page: "device", id: decodeURIComponent(path.slice(7)), range: q.get("range"),
      from: +q.get("from") || 0, to: +q.get("to") || 0 };
  }
  if (path === "mqtt" || path.startsWith("mqtt/"))
    return { page: "mqtt", tab: MQTT_TABS.includes(path.slice(5)) ? path.slice(5) : "sessions" };
  if (path === "connections" || path === "gateway" || path === "keys") return { page: path };
  return { page: "fleet" };
}

function showError(e) {
  if (e && e.status === 401) { logout(true); return; }
  if (e && e.status === 403) notice(errText(e));
  console.error(e);
}

async function route() {
  const next = parseRoute(), cur = state.route;
  if (cur && cur.page === "device" && next.page === "device" && next.id === cur.id) {
    state.route = next; // only the range changed: the rest of the page stays
    await showRange();
    return;
  }
  hideSecret();
  state.timers.forEach(clearInterval);
  state.timers = [];
  destroyCharts();
  state.route = parseRoute();
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + state.route.page;
  for (const a of $("nav").querySelectorAll("a"))
    a.classList.toggle("active", a.dataset.page === state.route.page);
  const show = { fleet: showFleet, device: () => showDevice(state.route.id),
    connections: showConnections, mqtt: showMqtt, keys: showKeys, gateway: showGateway }[state.route.page];
  await show();
}

async function start() {
  try {
    await loadDevices();
    await loadInfo();
  } catch (e) {
    $("login").hidden = false;
    $("app").hidden = true;
    $("logout").hidden = true;
    if (state.key) $("login-error").textContent = e.status === 401 ? "That key was refused." : e.message;
    $("key").focus();
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  if (!state.ws) connectLive();
  window.addEventListener("hashchange", () => route().catch(showError));
  await route().catch(showError);
  setInterval(() => { if (state.route.page === "fleet") renderFleet(); }, 10000); // "x s ago"
}

function logout(refused) {
  if (refused) { // the key stopped working (rotated): ask again
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close();
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = "That key was refused.";
    return;
  }
  localStorage.removeItem("gale.key");
  state.key = "";
  location.reload();
}

const THEMES = ["auto", "light", "dark"];
function applyTheme(t) {
  if (t === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  $("theme").title = "theme: " + (t === "auto" ? "follows the system" : t);
  $("theme").textContent = { auto: "◐", light: "☀", dark: "☾" }[t];
}
applyTheme(localStorage.getItem("gale.theme") || "auto");
$("theme").addEventListener("click", () => {
  const t = THEMES[(THEMES.indexOf(localStorage.getItem("gale.theme") || "auto") + 1) % THEMES.length];
  localStorage.setItem("gale.theme", t);
  applyTheme(t);
  if (state.route) route().catch(showError); // charts take their colours when made
});

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("key").value.trim();
  localStorage.setItem("gale.key", state.key);
  $("key").value = "";
  if (state.route) location.reload(); // a key asked for again after a refusal
  else start();
});
$("logout").addEventListener("click", () => logout(false));
function turnPage(page) {
  if (page === 0) state.fleet.cursors = [null];
  state.page = page;
  loadDevices().then(renderFleet).catch(showError);
}
$("filter").addEventListener("input", () => turnPage(0));
$("prev").addEventListener("click", () => turnPage(state.page - 1));
$("next").addEventListener("click", () => turnPage(state.page + 1));
$("page-size").value = String(state.pageSize);
$("page-size").addEventListener("change", () => {
  state.pageSize = +$("page-size").value;
  localStorage.setItem("gale.pageSize", String(state.pageSize));
  turnPage(0);
});
$("conn-filter").addEventListener("input", () => loadConnections().catch(showError));
for (const b of $("ranges").querySelectorAll("button[data-range]")) b.addEventListener("click", () => setRange(b));
$("apply").addEventListener("click", applyCustom);
$("cmd-form").addEventListener("submit", sendCommand);
$("add-device").addEventListener("click", () => {
  $("add-form").hidden = !$("add-form").hidden;
  if (!$("add-form").hidden) $("add-id").focus();
});
$("add-cancel").addEventListener("click", () => { $("add-form").reset(); $("add-form").hidden = true; });
$("add-form").addEventListener("submit", addDevice);
$("dev-rotate").addEventListener("click", (e) => { if (confirmed(e.target)) rotateToken(e.target); });
$("dev-delete").addEventListener("click", (e) => { if (confirmed(e.target)) deleteDevice(); });
$("secret-close").addEventListener("click", hideSecret);
document.addEventListener("click", (e) => {
  const b = e.target.closest && e.target.closest("button.copy");
  if (b) copyFrom(b);
});
$("mqtt-filter").addEventListener("input", () => loadMqtt().catch(showError));
$("key-form").addEventListener("submit", createKey);
$("attr-form").addEventListener("submit", setAttribute);

// A link with ?key= (e.g. from a provisioning script) is a one-shot: the key moves
// to localStorage and leaves the address bar and the history at once.
{
  const params = new URLSearchParams(location.search);
  if (params.has("key")) {
    state.key = params.get("key");
    localStorage.setItem("gale.key", state.key);
    params.delete("key");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
}
if (typeof uPlot === "undefined") { // built without uPlot (make setup was not run)
  window.uPlot = function () {
    return { data: [[], []], setData() {}, setSize() {}, destroy() {}, root: document.createElement("div") };
  };
}
start();
