// Gale dashboard: devices with presence and latest values from the REST API,
// kept current by the live feed (/ws/live). The API key stays in localStorage.
"use strict";
const state = { key: localStorage.getItem("gale.key") || "", devices: new Map(), ws: null, dropped: 0 };
const $ = (id) => document.getElementById(id);

function api(path) {
  return fetch(path, { headers: { Authorization: "Bearer " + state.key } }).then((r) => {
    if (r.status === 401) throw new Error("unauthorized");
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json();
  });
}

function fmtTime(ms) {
  if (!ms) return "never";
  const d = new Date(ms), s = (Date.now() - ms) / 1000;
  if (s < 60) return Math.max(0, Math.round(s)) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return d.toLocaleString();
}

function fmtValue(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3).replace(/0+$/, "");
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

function globToRegExp(g) {
  return new RegExp("^" + g.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") + "$");
}

function row(dev) {
  let tr = document.getElementById("dev-" + dev.id);
  if (!tr) {
    tr = document.createElement("tr");
    tr.id = "dev-" + dev.id;
    for (let i = 0; i < 5; i++) tr.appendChild(document.createElement("td"));
    const rows = [...$("devices").tBodies[0].rows];
    const after = rows.find((r) => r.id > tr.id);
    $("devices").tBodies[0].insertBefore(tr, after || null);
  }
  const c = tr.cells;
  c[0].textContent = dev.id;
  c[1].innerHTML = "";
  const dot = document.createElement("span");
  dot.className = "dot" + (dev.online ? " on" : "");
  c[1].append(dot, dev.online ? "online" : "offline");
  c[2].textContent = dev.protocol || "";
  c[3].textContent = fmtTime(dev.last_seen);
  c[3].title = dev.last_seen ? new Date(dev.last_seen).toISOString() : "";
  c[4].innerHTML = "";
  for (const k of Object.keys(dev.latest || {}).sort()) {
    const span = document.createElement("span");
    span.className = "kv";
    const b = document.createElement("b");
    b.textContent = k;
    span.append(b, fmtValue(dev.latest[k].value));
    span.title = new Date(dev.latest[k].ts).toISOString();
    c[4].appendChild(span);
  }
  return tr;
}

function render() {
  const f = $("filter").value.trim();
  const re = f ? globToRegExp(f) : null;
  let n = 0, online = 0;
  for (const dev of state.devices.values()) {
    const tr = row(dev);
    tr.hidden = re ? !re.test(dev.id) : false;
    n++;
    if (dev.online) online++;
  }
  $("empty").hidden = n > 0;
  $("summary").textContent = n + " devices, " + online + " online";
}

async function load() {
  const list = await api("/api/devices");
  for (const d of list.devices) {
    const prev = state.devices.get(d.id);
    d.latest = prev ? prev.latest : {};
    state.devices.set(d.id, d);
  }
  render();
  await Promise.all(list.devices.map(async (d) => {
    d.latest = await api("/api/devices/" + encodeURIComponent(d.id) + "/latest");
    row(d);
  }));
}

function connectLive() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(proto + "//" + location.host + "/ws/live");
  state.ws = ws;
  ws.onopen = () => {
    ws.send(JSON.stringify({ auth: state.key }));
    ws.send(JSON.stringify({ subscribe: { devices: ["*"], keys: ["*"], presence: true } }));
  };
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "subscribed" || m.type === "ready") {
      $("live").textContent = "live";
      $("live").className = "badge on";
    } else if (m.type === "telemetry") {
      let dev = state.devices.get(m.device);
      if (!dev) { load().catch(() => {}); return; }
      dev.latest = dev.latest || {};
      for (const p of m.points) {
        const cur = dev.latest[p.key];
        if (!cur || cur.ts <= p.ts) dev.latest[p.key] = { ts: p.ts, value: p.value };
      }
      dev.last_seen = Date.now();
      const tr = row(dev);
      tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash");
    } else if (m.type === "presence") {
      const dev = state.devices.get(m.device);
      if (dev) { dev.online = m.online; dev.last_seen = m.ts || Date.now(); render(); }
      else load().catch(() => {});
    } else if (m.type === "dropped") {
      state.dropped = m.total || (state.dropped + m.count);
      $("dropped").textContent = state.dropped + " live updates dropped (this browser fell behind)";
    } else if (m.type === "error") {
      $("live").textContent = m.error;
    }
  };
  ws.onclose = () => {
    $("live").textContent = "offline";
    $("live").className = "badge off";
    setTimeout(() => { if (state.key) connectLive(); }, 2000);
  };
}

async function start() {
  try {
    await load();
  } catch (e) {
    $("login").hidden = false;
    $("app").hidden = true;
    if (state.key) $("login-error").textContent = e.message === "unauthorized" ? "That key was refused." : e.message;
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  connectLive();
  setInterval(render, 10000); // refresh "x s ago"
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("key").value.trim();
  localStorage.setItem("gale.key", state.key);
  start();
});
$("logout").addEventListener("click", () => {
  localStorage.removeItem("gale.key");
  state.key = "";
  if (state.ws) state.ws.close();
  location.reload();
});
$("filter").addEventListener("input", render);
if (new URLSearchParams(location.search).get("key")) {
  state.key = new URLSearchParams(location.search).get("key");
  localStorage.setItem("gale.key", state.key);
}
start();
