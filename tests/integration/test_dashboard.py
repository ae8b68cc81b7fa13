"""The dashboard in headless Chromium, driven over the DevTools protocol: served
by Gale, it logs in with the API key, lists devices with presence and latest
values, connects to /ws/live, and shows a value sent after the page loaded.
Then every page: the fleet's search, paging, sparklines and applications; a
device's uPlot chart from the aggregates with live points appended, its range
picker, attributes and a command sent from the form to an MQTT device whose
status moves to replied; connections; the gateway's figures from /metrics; a
phone-sized and a dark screenshot; the gateway's bridges panel (none configured);
a fleet of 123 devices paged 10 at a time by the server (limit and cursor). Screenshots of each page are saved under
build/test-artifacts/dashboard/. The embedded files' types, ETag/304 and gzip
are checked over plain HTTP. Every wait is on real time with a deadline (no
virtual-time budget)."""
import asyncio
import base64
import gzip
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

import paho.mqtt.client as paho
import websockets

from galetest import API_KEY, GALE_BIN, Check, Gale, LineClient, wait_for
from mosquitto import free_port

t = Check("test_dashboard")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Browser:
    def __init__(self, profile):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--window-size=1280,900", "--hide-scrollbars",
             "--disable-sync", "--user-data-dir=" + profile,
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=%d" % self.port,
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/json" % self.port, timeout=2) as r:
                    pages = [p for p in json.load(r) if p.get("type") == "page"]
                if pages:
                    self.ws_url = pages[0]["webSocketDebuggerUrl"]
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromium DevTools did not come up")
            time.sleep(0.1)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def cdp(ws, method, params=None, _id=[0]):
    _id[0] += 1
    await ws.send(json.dumps({"id": _id[0], "method": method, "params": params or {}}))
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if m.get("id") == _id[0]:
            return m.get("result", {})


async def evaluate(ws, expr):
    r = await cdp(ws, "Runtime.evaluate", {"expression": expr, "returnByValue": True})
    return r.get("result", {}).get("value")


async def wait_js(ws, expr, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = await evaluate(ws, expr)
        if v:
            return v
        await asyncio.sleep(0.1)
    return None


ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(GALE_BIN)), "test-artifacts", "dashboard")


async def screenshot(ws, name):
    await asyncio.sleep(0.3)  # let the last frame paint (charts draw on the next frame)
    r = await cdp(ws, "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path = os.path.join(ARTIFACTS, name + ".png")
    with open(path, "wb") as f:
        f.write(base64.b64decode(r["data"]))
    print("screenshot:", path)
    t(os.path.getsize(path) > 1000, "screenshot %s saved" % name)


async def goto(ws, g, route):
    await cdp(ws, "Page.navigate", {"url": "http://127.0.0.1:%d/%s" % (g.ports["http"], route)})


def js_str(s):
    return json.dumps(s)


async def submit(ws, form, fields):
    sets = ";".join("document.getElementById(%s).value=%s" % (js_str(k), js_str(v))
                    for k, v in fields.items())
    await evaluate(ws, sets + ";document.getElementById(%s).requestSubmit();true" % js_str(form))


async def search(ws, text):
    await evaluate(ws, "{const f=document.getElementById('filter');f.value=%s;"
                       "f.dispatchEvent(new Event('input'))};true" % js_str(text))


async def chart_interval(ws):
    """The chart's bucket width in ms, as the range line states it ("· 12 s averages")."""
    info = await evaluate(ws, "document.getElementById('range-info').textContent")
    m = re.search(r"(\d+(?:\.\d+)?) s averages", info or "")
    return int(float(m.group(1)) * 1000) if m else 1000


def chart_len(key):
    return "(gale.charts.get(%s) ? gale.charts.get(%s).data[1].length : 0)" % (js_str(key),
                                                                            js_str(key))


async def drive(b, g, line):
    async with websockets.connect(b.ws_url, max_size=None) as ws:
        await cdp(ws, "Page.enable")
        await cdp(ws, "Page.navigate",
                  {"url": "http://127.0.0.1:%d/?key=%s" % (g.ports["http"], API_KEY)})
        t(await wait_js(ws, "!!document.getElementById('dev-sensor-1')"), "device row rendered")
        t(await wait_js(ws, "!!document.getElementById('dev-sensor-2')"),
          "second device row rendered")
        t(await wait_js(ws, "document.getElementById('dev-sensor-1').textContent"
                            ".includes('kitchen') && document.body.textContent.includes('21.5')"),
          "latest values shown")
        t(await wait_js(ws, "document.getElementById('summary').textContent == "
                            "'2 devices, 1 online'"), "summary counts presence")
        t(await wait_js(ws, "document.getElementById('live').className == 'badge on'"),
          "live feed connected")
        # a value sent now arrives through /ws/live without a reload
        line.send_line({"temp": 33.25, "seq": 2})
        line.read_line()
        t(await wait_js(ws, "document.getElementById('dev-sensor-1').textContent"
                            ".includes('33.25')"), "live update shown without a reload")
        await more_pages(ws, g, line)
        # a wrong key shows the login form with an error
        await cdp(ws, "Runtime.evaluate", {"expression": "localStorage.clear()"})
        await cdp(ws, "Page.navigate",
                  {"url": "http://127.0.0.1:%d/?key=wrong" % g.ports["http"]})
        t(await wait_js(ws, "document.getElementById('login-error').textContent"
                            ".includes('refused')"), "wrong key refused in the page")


class MqttDevice:
    """A device on MQTT that sends telemetry and answers every command it gets."""

    def __init__(self, g, dev_id, tok):
        self.dev_id = dev_id
        ready = queue.Queue()
        self.c = paho.Client(client_id=dev_id, protocol=paho.MQTTv311)
        self.c.username_pw_set(dev_id, tok)
        self.c.on_connect = lambda cl, u, flags, rc: ready.put(rc)
        self.c.on_message = self.on_message
        self.c.connect("127.0.0.1", g.ports["mqtt"], 60)
        self.c.loop_start()
        t.eq(ready.get(timeout=10), 0, "MQTT device connects")
        sub = self.c.subscribe("devices/%s/commands" % dev_id, 1)
        wait_for(lambda: sub[0] == 0, 5, "subscribed to commands")

    def on_message(self, cl, u, m):
        cmd = json.loads(m.payload)
        time.sleep(0.5)  # long enough for the page to see it delivered first
        cl.publish("devices/%s/commands/%s/reply" % (self.dev_id, cmd["id"]),
                   json.dumps({"ok": True, "did": cmd["name"]}), qos=1)

    def publish(self, values):
        self.c.publish("devices/%s/telemetry" % self.dev_id, json.dumps(values), qos=1).wait_for_publish(10)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


async def more_pages(ws, g, line):
    t(await evaluate(ws, "location.search === '' && localStorage.getItem('gale.key') === %s"
                         % js_str(API_KEY)), "?key= moved to localStorage and stripped from the URL")
    t(await wait_js(ws, "gale.sparks.has('sensor-1') && "
                        "gale.sparks.get('sensor-1').data[1].length >= 10"),
      "sparkline of the last hour from the aggregates")
    # search by substring: "sensor" matches both, "r-2" only the second
    await search(ws, "sensor")
    t(await wait_js(ws, "!!document.getElementById('dev-sensor-1') && "
                        "!!document.getElementById('dev-sensor-2')"), "search 'sensor' lists both")
    await search(ws, "r-2")
    t(await wait_js(ws, "!document.getElementById('dev-sensor-1') && "
                        "!!document.getElementById('dev-sensor-2')"), "search 'r-2' is a substring")
    await search(ws, "")
    await screenshot(ws, "fleet")

    # an MQTT device, an application and enough devices for a second page
    tok = g.create_device("mqtt-1")
    g.create_device("ops-console", role="app")
    for i in range(30):
        g.create_device("bulk-%02d" % i)
    dev = MqttDevice(g, "mqtt-1", tok)
    try:
        dev.publish({"hum": 41.5})
        wait_for(lambda: "hum" in g.http("GET", "/api/devices/mqtt-1/latest")[1], 10, "hum stored")
        await goto(ws, g, "#/")
        t(await wait_js(ws, "document.getElementById('summary').textContent == "
                            "'33 devices, 2 online'"), "summary counts devices, not applications")
        t(await wait_js(ws, "document.getElementById('page-info').textContent == '1–25 of 33'"),
          "first page of 25")
        t(await evaluate(ws, "document.getElementById('devices').tBodies[0].rows.length") == 25,
          "25 rows on the first page")
        await evaluate(ws, "document.getElementById('next').click();true")
        t(await wait_js(ws, "document.getElementById('page-info').textContent == '26–33 of 33'"),
          "second page")
        t(await wait_js(ws, "document.getElementById('dev-mqtt-1') && document.getElementById("
                            "'dev-mqtt-1').textContent.includes('41.5')"),
          "MQTT device listed with its latest value")
        t(await wait_js(ws, "document.getElementById('apps').textContent.includes('ops-console')"
                            " && !document.getElementById('dev-ops-console')"),
          "applications listed apart from the devices")

        # a device's page: history chart, live points, range picker, attributes
        await goto(ws, g, "#/device/sensor-1")
        t(await wait_js(ws, chart_len("temp") + " >= 10"), "device chart has history points")
        t(await evaluate(ws, "!!document.querySelector('#chart-temp canvas')"),
          "chart drawn on a canvas")
        interval = await chart_interval(ws)
        ts = int(time.time() * 1000)
        line.send_line({"ts": ts, "values": {"temp": 40.5}, "seq": 3})
        t.eq(line.read_line(), {"ack": 3}, "live value stored")
        b = ts // interval * interval
        want = g.http("GET", "/api/devices/sensor-1/telemetry?keys=temp&agg=avg&interval=%d&"
                      "from=%d&to=%d" % (interval, b, b + interval - 1))[1]["temp"][0]["value"]
        t(await wait_js(ws, "gale.charts.get('temp').data[0].at(-1) * 1000 == %d && "
                            "Math.abs(gale.charts.get('temp').data[1].at(-1) - %r) < 1e-6"
                            % (b, want)), "live point in the chart, in its bucket's average")
        t(await wait_js(ws, "document.getElementById('dev-latest').textContent.includes('40.5')"),
          "latest values follow the live feed")
        await screenshot(ws, "device")
        for label in ("15 min", "24 h", "7 d", "1 h"):
            await evaluate(ws, "[...document.querySelectorAll('#ranges button')].find(b => "
                               "b.textContent == %s).click();true" % js_str(label))
            t(await wait_js(ws, "document.querySelector('#ranges button.active').textContent == "
                                "%s && %s > 0" % (js_str(label), chart_len("temp"))),
              "range %s shows points" % label)
        # custom: the last 30 minutes as two local times; live points stop following
        await evaluate(ws, "[...document.querySelectorAll('#ranges button')].find(b => "
                           "b.textContent == 'custom').click();"
                           "{const loc = (ms) => new Date(ms - new Date(ms).getTimezoneOffset()"
                           " * 60000).toISOString().slice(0, 19);"
                           "document.getElementById('from').value = loc(Date.now() - 1800000);"
                           "document.getElementById('to').value = loc(Date.now() + 60000);"
                           "document.getElementById('apply').click()};true")
        t(await wait_js(ws, "!document.getElementById('custom').hidden && "
                            "!document.getElementById('range-info').textContent.includes('now') && "
                            "%s >= 10" % chart_len("temp")), "custom range shows points")
        await evaluate(ws, "[...document.querySelectorAll('#ranges button')].find(b => "
                           "b.textContent == '1 h').click();true")
        t(await wait_js(ws, "document.getElementById('custom').hidden && " + chart_len("temp")
                        + " > 0"), "back to the last hour")
        await submit(ws, "attr-form", {"attr-key": "location", "attr-value": '"lab 2"'})
        t(await wait_js(ws, "document.getElementById('attr-set').textContent.includes('lab 2')"),
          "attribute set from the page")
        attrs = g.http("GET", "/api/devices/sensor-1")[1]
        t(attrs.get("server_attributes", attrs.get("attributes", {})).get("location") == "lab 2",
          "attribute stored by PATCH")

        # a command from the form to the MQTT device, its status as it moves
        await goto(ws, g, "#/device/mqtt-1")
        t(await wait_js(ws, chart_len("hum") + " >= 1"), "MQTT device chart")
        await submit(ws, "cmd-form", {"cmd-name": "reboot", "cmd-params": '{"delay":1}'})
        seen = await wait_js(ws, "(() => { const s = document.querySelector('#cmds .status');"
                                 " return s && s.textContent != 'replied' && s.textContent; })()")
        t(seen in ("queued", "delivered"), "command shown %s before its reply" % seen)
        t(await wait_js(ws, "document.querySelector('#cmds .status') && document.querySelector("
                            "'#cmds .status').textContent == 'replied'"), "command status replied")
        t(await evaluate(ws, "document.getElementById('cmds').textContent.includes('reboot')"),
          "command listed by name")
        st, cmds = g.http("GET", "/api/devices/mqtt-1/commands")
        t(st == 200 and any(c["name"] == "reboot" and c["status"] == "replied"
                            for c in cmds["commands"]), "command sent over REST by the form")
        await screenshot(ws, "device-command")

        await goto(ws, g, "#/connections")
        t(await wait_js(ws, "document.getElementById('conns').textContent.includes('mqtt-1') && "
                            "document.getElementById('conns').textContent.includes('sensor-1')"),
          "connections listed")
        await screenshot(ws, "connections")

        await goto(ws, g, "#/gateway")
        t(await wait_js(ws, "document.getElementById('tiles').textContent.includes('hot points')"
                            " && !!document.getElementById('metric-gale_feed_dropped_total')"),
          "gateway figures from /metrics")
        t(await wait_js(ws, "gale.charts.get('gateway-backlog').data[0].length >= 1", 15),
          "gateway backlog chart samples")
        t(await wait_js(ws, "(() => { const x = gale.charts.get('gateway-rate').scales.x; "
                            "return x.max - x.min >= 59 && x.max - x.min < 3600 && "
                            "Math.abs(x.max - Date.now() / 1000) < 120; })()", 15),
          "the gateway charts span the last minute (not years) from the first sample on")
        t(await wait_js(ws, "!document.getElementById('no-bridges').hidden && "
                            "document.getElementById('bridges').hidden && document.getElementById("
                            "'no-bridges').textContent == 'No upstream bridge configured'"),
          "bridges panel: none configured")
        await screenshot(ws, "gateway")
        # a bridge as GET /api/bridges reports it (that route's answer stubbed in the page)
        bridge = {"name": "central", "connected": True, "address": "tcp://broker:1883",
                  "backlog": 12, "backlog_bytes": 2048, "oldest_age_s": 3, "sent_total": 40,
                  "acked_total": 28, "dropped_total": 1, "reconnects_total": 2}
        await evaluate(ws, "{const f=window.fetch;window.fetch=(u,o)=>String(u).endsWith("
                           "'/api/bridges')?Promise.resolve(new Response(JSON.stringify([%s]),"
                           "{status:200})):f(u,o)};loadBridges();true" % json.dumps(bridge))
        t(await wait_js(ws, "!document.getElementById('bridges').hidden && "
                            "document.getElementById('no-bridges').hidden && "
                            "document.getElementById('bridge-central').textContent.includes("
                            "'tcp://broker:1883')"), "bridges panel lists a bridge")
        row = await evaluate(ws, "document.getElementById('bridge-central').textContent")
        t(all(x in row for x in ("connected", "12 msg", "2.0 KiB", "3 s", "40 / 28")),
          "its state, backlog, age and counters: %r" % row)
        await screenshot(ws, "gateway-bridge")

        # a phone, and the dark theme from the toggle
        await cdp(ws, "Emulation.setDeviceMetricsOverride",
                  {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        await goto(ws, g, "#/")
        t(await wait_js(ws, "!!document.getElementById('dev-mqtt-1')"), "fleet on a phone")
        t(await evaluate(ws, "document.documentElement.scrollWidth <= 390 && innerWidth <= 390"),
          "no sideways scrolling on a phone")
        await screenshot(ws, "fleet-phone")
        await goto(ws, g, "#/device/sensor-1")
        t(await wait_js(ws, chart_len("temp") + " > 0"), "device page on a phone")
        await screenshot(ws, "device-phone")
        await cdp(ws, "Emulation.clearDeviceMetricsOverride")
        await evaluate(ws, "localStorage.setItem('gale.theme','light');"
                           "document.getElementById('theme').click();true")
        t(await wait_js(ws, "document.documentElement.dataset.theme == 'dark' && "
                            "getComputedStyle(document.body).backgroundColor == 'rgb(15, 20, 25)'"),
          "dark theme from the toggle")
        t(await wait_js(ws, chart_len("temp") + " > 0"), "charts redrawn in the dark theme")
        await screenshot(ws, "device-dark")
        await evaluate(ws, "localStorage.removeItem('gale.theme');true")
        await fleet_paging(ws, g)
    finally:
        dev.close()


async def fleet_paging(ws, g):
    """123 devices, 10 a page: the server pages (limit and cursor), the page shows them."""
    for i in range(90):
        g.create_device("fleet-%03d" % i)
    await goto(ws, g, "#/connections")
    await goto(ws, g, "#/")
    await evaluate(ws, "performance.clearResourceTimings();{const s=document.getElementById("
                       "'page-size');s.value='10';s.dispatchEvent(new Event('change'))};true")
    info = "document.getElementById('page-info').textContent"
    rows = "document.getElementById('devices').tBodies[0].rows.length"
    t(await wait_js(ws, info + " == '1–10 of 123'"), "10 a page of 123 devices")
    t.eq(await evaluate(ws, rows), 10, "10 rows")
    for i in range(12):
        await evaluate(ws, "document.getElementById('next').click();true")
        t(await wait_js(ws, "%s == '%d–%d of 123'" % (info, 10 * i + 11, min(10 * i + 20, 123))),
          "page %d" % (i + 2))
    t(await evaluate(ws, "document.getElementById('next').disabled && " + rows + " == 3"),
      "the last page: 3 rows, no next")
    t(await evaluate(ws, "!!document.getElementById('dev-sensor-2')"), "the last device on it")
    await evaluate(ws, "document.getElementById('prev').click();true")
    t(await wait_js(ws, info + " == '111–120 of 123'"), "back one page")
    lists = await evaluate(ws, "performance.getEntriesByType('resource').map(e => e.name)"
                               ".filter(n => /\\/api\\/devices(\\?|$)/.test(n))")
    t(lists and all("limit=" in n for n in lists), "every device list asked for is one page")
    t(any("limit=10&cursor=" in n for n in lists), "pages after the first by the server's cursor")
    t(await evaluate(ws, "gale.state.devices.size") <= 10 + 1 + 1,
      "the browser holds one page of devices (plus applications)")
    await search(ws, "FLEET-08")
    t(await wait_js(ws, info + " == '1–10 of 10' && !!document.getElementById('dev-fleet-089')"),
      "search (any case, on the server) restarts at the first page")
    await screenshot(ws, "fleet-paged")
    await search(ws, "")
    await evaluate(ws, "localStorage.removeItem('gale.pageSize');true")


def check_static(g):
    def get(path, headers=None):
        return g.http("GET", path, key=None, headers=headers, raw=True)

    for path, ctype in (("/", "text/html"), ("/app.js", "text/javascript"),
                        ("/style.css", "text/css"), ("/favicon.svg", "image/svg+xml"),
                        ("/vendor/uPlot.iife.min.js", "text/javascript"),
                        ("/vendor/uPlot.min.css", "text/css")):
        st, plain, h = get(path)
        t(st == 200 and h.get("Content-Type", "").startswith(ctype), "%s is %s" % (path, ctype))
        t(h.get("Cache-Control") == "no-cache" and h.get("ETag", "").startswith('"'),
          "%s has an ETag and revalidates" % path)
        t("Content-Encoding" not in h, "%s plain without Accept-Encoding" % path)
        st, z, hz = get(path, {"Accept-Encoding": "gzip, deflate"})
        if path != "/favicon.svg":
            t(hz.get("Content-Encoding") == "gzip" and gzip.decompress(z) == plain,
              "%s gzipped when accepted, same bytes" % path)
            t(hz.get("ETag") != h.get("ETag"), "%s: each form has its own ETag" % path)
        t(hz.get("Vary") == "Accept-Encoding", "%s varies by Accept-Encoding" % path)
        st, body, h304 = get(path, {"Accept-Encoding": "gzip", "If-None-Match": hz["ETag"]})
        t(st == 304 and body == b"", "%s: 304 for its ETag" % path)
        st, _, _ = get(path, {"If-None-Match": '"other"'})
        t(st == 200, "%s: 200 for another ETag" % path)
    st, _, h = get("/app.js", {"Accept-Encoding": "gzip;q=0"})
    t(st == 200 and "Content-Encoding" not in h, "gzip;q=0 refuses gzip")
    st, _, h = g.http("HEAD", "/", key=None, raw=True)
    t(st == 200 and h.get("ETag"), "HEAD answers with the headers")
    t(get("/nope.js")[0] == 404, "unknown file 404")


def main():
    if not os.path.exists(CHROMIUM):
        t(False, "chromium available (run .ci/setup.sh test-deps)")
        return
    profile = tempfile.mkdtemp(prefix="gale-chromium-")
    os.makedirs(ARTIFACTS, exist_ok=True)
    with Gale() as g:
        wait_for(lambda: "mqtt" in g.ports, 10, "MQTT listening")
        check_static(g)
        tok = g.create_device("sensor-1")
        g.create_device("sensor-2")
        # 40 minutes of history, one point a minute, older than the value below
        now = int(time.time() * 1000)
        hist = [{"ts": now - (40 - i) * 60000, "values": {"temp": 20 + (i % 7) * 0.5}}
                for i in range(40)]
        st, _ = g.http("POST", "/api/devices/sensor-1/telemetry", hist)
        t.eq(st, 200, "history stored")
        line = g.line("sensor-1", tok)
        line.send_line({"temp": 21.5, "label": "kitchen", "seq": 1})
        t.eq(line.read_line(), {"ack": 1}, "telemetry stored")
        b = Browser(profile)
        try:
            asyncio.run(drive(b, g, line))
        finally:
            b.close()
            # chromium's helper processes may still be writing their profile
            shutil.rmtree(profile, ignore_errors=True)


# ---- the operator console: a second gateway, fresh, with its own browser ----------

SHOTS = os.path.join(os.path.dirname(os.path.abspath(GALE_BIN)), "screenshots")


async def evaluate_async(ws, expr, timeout=20):
    r = await cdp(ws, "Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                            "awaitPromise": True, "timeout": timeout * 1000})
    return r.get("result", {}).get("value")


def text_of(id_):
    return "(document.getElementById(%s) ? document.getElementById(%s).textContent : '')" % (
        js_str(id_), js_str(id_))


async def click(ws, selector, times=1):
    """Clicks the element selector names (times clicks: the second confirms)."""
    for _ in range(times):
        ok = await evaluate(ws, "{const e=document.querySelector(%s); e ? (e.click(), true) : false}"
                            % js_str(selector))
        if not ok:
            return False
    return True


async def click_in_row(ws, table, text, label, times=2):
    """Clicks the button labelled label (twice: to arm and to confirm) in the row of
    table whose text holds text."""
    js = ("(() => { const tr = [...document.querySelectorAll('#%s tbody tr')].find(r => "
          "r.textContent.includes(%s)); if (!tr) return false; const b = [...tr.querySelectorAll("
          "'button')].find(b => b.textContent.endsWith(%s)); if (!b) return false; b.click(); "
          "return true; })()" % (table, js_str(text), js_str(label)))
    for _ in range(times):
        if not await evaluate(ws, js):
            return False
    return True


def row_with(table, text):
    return ("[...document.querySelectorAll('#%s tbody tr')].some(r => r.textContent.includes(%s))"
            % (table, js_str(text)))


def chart(key, expr):
    return "(() => { const u = gale.charts.get(%s); return !!u && (%s); })()" % (js_str(key), expr)


async def no_overflow(ws, what, width=375):
    # innerWidth too: a phone zooms out to show a page wider than the screen, which
    # widens innerWidth with it
    r = await evaluate(ws, "[document.documentElement.scrollWidth, window.innerWidth]")
    t(r and r[0] <= r[1] <= width, "%s: no horizontal overflow at %d px (scrollWidth, innerWidth"
      " = %r)" % (what, width, r))


async def shot(ws, name):
    await asyncio.sleep(0.3)
    r = await cdp(ws, "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path = os.path.join(SHOTS, name + ".png")
    with open(path, "wb") as f:
        f.write(base64.b64decode(r["data"]))
    print("screenshot:", path)
    t(os.path.getsize(path) > 1000, "screenshot %s saved" % name)


def post_points(g, dev, points):
    st, js = g.http("POST", "/api/devices/%s/telemetry" % dev, points)
    assert st == 200, (st, js)


async def add_device(ws, g):
    """Add a device from the fleet page: its token once, with snippets that work."""
    t(await wait_js(ws, "!!document.getElementById('add-device') && "
                        "!document.getElementById('add-device').hidden"), "an Add device button")
    await click(ws, "#add-device")
    await submit(ws, "add-form", {"add-id": "new-1", "add-name": "boiler"})
    t(await wait_js(ws, "!document.getElementById('secret').hidden && "
                        + text_of("secret-value") + ".length > 10"), "the new token shown")
    token = await evaluate(ws, text_of("secret-value"))
    snip = {}
    for name in ("mqtt", "line", "ws", "http"):
        snip[name] = await evaluate(ws, text_of("snip-" + name))
    h, m, l = g.ports["http"], g.ports["mqtt"], g.ports["line"]
    t("-p %d " % m in snip["mqtt"] and token in snip["mqtt"] and "-u 'new-1'" in snip["mqtt"],
      "the MQTT snippet names the real MQTT port %d: %r" % (m, snip["mqtt"]))
    t(snip["line"].endswith("nc 127.0.0.1 %d" % l) and token in snip["line"],
      "the line snippet names the real line port %d: %r" % (l, snip["line"]))
    t("ws://127.0.0.1:%d/ws/device?device=new-1&token=" % h in snip["ws"],
      "the WebSocket snippet: %r" % snip["ws"])
    t("http://127.0.0.1:%d/api/devices/new-1/telemetry" % h in snip["http"] and token in snip["http"],
      "the HTTP snippet: %r" % snip["http"])
    st, d = g.http("GET", "/api/devices/new-1")
    t(st == 200 and d.get("name") == "boiler" and token not in json.dumps(d),
      "device created by the form; the API does not show its token")
    t(await wait_js(ws, row_with("devices", "new-1")), "the new device listed at once")
    # the snippets, run as shown
    if shutil.which("mosquitto_pub"):
        r = subprocess.run(snip["mqtt"], shell=True, capture_output=True, timeout=30)
        t(r.returncode == 0, "the MQTT snippet runs: %r" % r.stderr)
        wait_for(lambda: "temp" in g.http("GET", "/api/devices/new-1/latest")[1], 10,
                 "MQTT snippet's value stored")
    if shutil.which("curl"):
        r = subprocess.run(snip["http"], shell=True, capture_output=True, timeout=30)
        t(r.returncode == 0 and b"error" not in r.stdout, "the curl snippet runs: %r" % r.stdout)
    reply = await evaluate_async(ws, "(() => { %s; return new Promise((res) => "
                                     "ws.addEventListener('message', (e) => { if (e.data.includes("
                                     "'ack')) { ws.close(); res(e.data); } })); })()" % snip["ws"])
    t(reply and json.loads(reply) == {"ack": 1}, "the WebSocket snippet runs: %r" % reply)
    await cdp(ws, "Browser.grantPermissions", {
        "origin": "http://127.0.0.1:%d" % h,
        "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    await cdp(ws, "Emulation.setFocusEmulationEnabled", {"enabled": True})
    await click(ws, "#secret .copy")
    t(await wait_js(ws, "document.querySelector('#secret .copy').textContent == 'Copied'"),
      "the Copy button says it copied: %r" % await evaluate(
          ws, "document.querySelector('#secret .copy').textContent"))
    t.eq(await evaluate_async(ws, "navigator.clipboard.readText()"), token,
         "the token is on the clipboard")
    await shot(ws, "fleet-token-light-desktop")
    # a device connecting with the line snippet's credentials shows online
    cred = json.loads(snip["line"].split("'")[1])
    line = g.line(cred["device"], cred["token"])
    t(await wait_js(ws, "(() => { const r = document.getElementById('dev-new-1'); return r && "
                        "r.cells[1].textContent == 'online'; })()"),
      "the device connected with the snippet's credentials shows online")
    await click(ws, "#secret-close")
    t(await wait_js(ws, "document.getElementById('secret').hidden && " + text_of("secret-value")
                    + " === ''"), "Done forgets the token")
    t(not await evaluate(ws, "document.documentElement.outerHTML.includes(%s)" % js_str(token)),
      "the token is nowhere in the page once dismissed")
    return token, line


async def rotate_delete(ws, g, token, line):
    await goto(ws, g, "#/device/new-1")
    t(await wait_js(ws, text_of("dev-title") + ".includes('new-1')"), "the device page")
    await click(ws, "#dev-rotate")
    t(await wait_js(ws, text_of("dev-rotate") + ".startsWith('Sure?')"),
      "rotate asks again first")
    t(g.line("new-1", token) is not None, "one click rotates nothing (the old token still works)")
    await click(ws, "#dev-rotate")
    t(await wait_js(ws, "!document.getElementById('secret').hidden && "
                        + text_of("secret-value") + ".length > 10 && " + text_of("secret-value")
                        + " != " + js_str(token)), "the new token shown once")
    new = await evaluate(ws, text_of("secret-value"))
    t(new in await evaluate(ws, text_of("snip-mqtt")), "snippets with the new token")
    t(line.closed(), "the connection with the old token was closed")
    c = LineClient(g.ports["line"])
    r = c.auth("new-1", token)
    t("error" in r, "the old token fails: %r" % r)
    c.close()
    keep = g.line("new-1", new)
    t(keep is not None, "the new token works")
    await shot(ws, "device-token-light-desktop")

    # kick the connection from the connections page; the client sees it closed
    await goto(ws, g, "#/connections")
    t(await wait_js(ws, row_with("conns", "new-1")), "the device's connection listed")
    t(await click_in_row(ws, "conns", "new-1", "Kick"), "a Kick button in its row")
    t(keep.closed(), "the kicked client sees its connection closed")
    t(await wait_js(ws, "!" + row_with("conns", "new-1")), "the connection gone from the list")
    t(await wait_js(ws, text_of("notice") + ".includes('closed')"), "a notice says so")

    await goto(ws, g, "#/device/new-1")
    t(await wait_js(ws, text_of("dev-title") + ".includes('new-1')"), "back on the device page")
    await click(ws, "#dev-delete", 2)
    t(await wait_js(ws, "location.hash == '#/' && " + text_of("notice") + ".includes('deleted')"),
      "deleted: back to the fleet with a notice")
    t.eq(g.http("GET", "/api/devices/new-1")[0], 404, "the device is gone")


async def http_presence(ws, g):
    """A device that talks HTTP shows online (protocol http) in the fleet, and offline
    once http.device_idle_s (2 here) passed without a request."""
    tok = g.create_device("h-1")
    await goto(ws, g, "#/")
    row = "document.getElementById('dev-h-1')"
    t(await wait_js(ws, "!!%s && %s.cells[1].textContent == 'offline'" % (row, row)),
      "an HTTP device listed offline before it posts")
    st, _ = g.http("POST", "/api/devices/h-1/telemetry", {"temp": 19.5}, key=tok)
    t.eq(st, 200, "the HTTP device posts with its token")
    t(await wait_js(ws, "%s.cells[1].textContent == 'online' && %s.cells[2].textContent == 'http'"
                        % (row, row)), "the HTTP device shows online, protocol http")
    t(await wait_js(ws, "%s.cells[1].textContent == 'offline'" % row, 15),
      "offline again after http.device_idle_s")


async def mqtt_pages(ws, g):
    tok = g.create_device("m-1")
    ready = queue.Queue()
    c = paho.Client(client_id="m-1", clean_session=False, protocol=paho.MQTTv311)
    c.username_pw_set("m-1", tok)
    c.on_connect = lambda cl, u, f, rc: ready.put(rc)
    c.connect("127.0.0.1", g.ports["mqtt"], 60)
    c.loop_start()
    try:
        t.eq(ready.get(timeout=10), 0, "persistent MQTT client connects")
        for f in ("devices/m-1/commands", "devices/m-1/alerts/#"):
            r = c.subscribe(f, 1)
            wait_for(lambda: g.http("GET", "/api/mqtt/subscriptions?client_id=m-1")[1]
                     .get("count", 0) >= (1 if f.startswith("devices") else 2), 5, "subscribed")
        for topic in ("status/m-1", "status/m-2"):
            st, _ = g.http("POST", "/api/publish", {"topic": topic, "payload": "up", "retain": True})
            t.eq(st, 200, "retained message on %s" % topic)
        await goto(ws, g, "#/mqtt/sessions")
        t(await wait_js(ws, row_with("mqtt-sessions", "m-1") + " && "
                            + row_with("mqtt-sessions", "persistent")),
          "sessions page lists the persistent session")
        await goto(ws, g, "#/mqtt/subscriptions")
        t(await wait_js(ws, row_with("mqtt-subscriptions", "devices/m-1/alerts/#") + " && "
                            + row_with("mqtt-subscriptions", "devices/m-1/commands")),
          "subscriptions page lists both")
        t(await click_in_row(ws, "mqtt-subscriptions", "devices/m-1/alerts/#", "Delete"),
          "a Delete button on the subscription")
        t(await wait_js(ws, "!" + row_with("mqtt-subscriptions", "devices/m-1/alerts/#")),
          "subscription gone from the page")
        subs = g.http("GET", "/api/mqtt/subscriptions?client_id=m-1")[1]["subscriptions"]
        t.eq([s["filter"] for s in subs], ["devices/m-1/commands"], "subscription deleted")
        await goto(ws, g, "#/mqtt/retained")
        t(await wait_js(ws, row_with("mqtt-retained", "status/m-1") + " && "
                            + row_with("mqtt-retained", "status/m-2")), "retained page lists both")
        t(await click_in_row(ws, "mqtt-retained", "status/m-2", "Delete"), "Delete on retained")
        t(await wait_js(ws, "!" + row_with("mqtt-retained", "status/m-2")),
          "retained message gone from the page")
        topics = [m["topic"] for m in g.http("GET", "/api/mqtt/retained")[1]["retained"]]
        t("status/m-2" not in topics and "status/m-1" in topics,
          "that retained message cleared, the other kept: %r" % topics)
    finally:
        c.disconnect()
        c.loop_stop()
    await goto(ws, g, "#/mqtt/sessions")
    t(await wait_js(ws, row_with("mqtt-sessions", "offline")), "the session kept while offline")
    t(await click_in_row(ws, "mqtt-sessions", "m-1", "Delete"), "Delete on the session")
    t(await wait_js(ws, "!" + row_with("mqtt-sessions", "m-1")), "session gone from the page")
    t.eq(g.http("GET", "/api/mqtt/sessions/m-1")[0], 404, "session discarded")


async def charts(ws, g):
    now = int(time.time() * 1000)
    # a new device: five minutes of data
    g.create_device("fresh-1")
    post_points(g, "fresh-1", [{"ts": now - 300000 + i * 10000, "values": {"temp": 20 + i % 5}}
                               for i in range(30)])
    # a device last heard of three days ago, over two hours
    g.create_device("old-1")
    old = now - 3 * 86400000
    post_points(g, "old-1", [{"ts": old + i * 240000, "values": {"temp": 10 + i % 3}}
                             for i in range(31)])
    # a negative series
    g.create_device("neg-1")
    post_points(g, "neg-1", [{"ts": now - 600000 + i * 20000, "values": {"t": -5 - i % 4}}
                             for i in range(30)])
    # "a" once, long ago; "temp" often and lately
    g.create_device("spark-1")
    post_points(g, "spark-1", [{"ts": now - 1800000, "values": {"a": 1}}] +
                [{"ts": now - 600000 + i * 30000, "values": {"temp": 30 + i % 3}} for i in range(20)] +
                [{"ts": now, "values": {"temp": 31}}])  # the latest: later in its minute than
                                                        # the live points sent below

    await goto(ws, g, "#/")
    t(await wait_js(ws, "gale.sparks.has('spark-1')"), "sparkline drawn")
    t.eq(await evaluate(ws, "gale.sparks.get('spark-1').gale_key"), "temp",
         "the sparkline follows the most recent key, not the first by name")
    # live points average into the sparkline's minute (two in one message)
    b = int(time.time() * 1000) // 60000 * 60000
    line = g.line("spark-1", g.http("POST", "/api/devices/spark-1/token")[1]["token"])
    line.send_line({"seq": 1, "batch": [{"ts": b + 1, "values": {"temp": 100}},
                                        {"ts": b + 2, "values": {"temp": 200}}]})
    t.eq(line.read_line(), {"ack": 1}, "two live points stored")
    line.close()
    want = g.http("GET", "/api/devices/spark-1/telemetry?keys=temp&agg=avg&interval=60000&"
                  "from=%d&to=%d" % (b, b + 59999))[1]["temp"][0]["value"]
    t(await wait_js(ws, "(() => { const u = gale.sparks.get('spark-1'); return u.data[0].at(-1) "
                        "* 1000 == %d && Math.abs(u.data[1].at(-1) - %r) < 1e-6; })()" % (b, want)),
      "the sparkline's current minute is the average %r of its points: %r" % (want, await evaluate(
          ws, "(() => { const u = gale.sparks.get('spark-1'); return [u.data[0].slice(-3), "
              "u.data[1].slice(-3), u.gale_seen, [...u.gale_agg.live]]; })()")))

    await goto(ws, g, "#/device/fresh-1")
    t(await wait_js(ws, chart("temp", "u.data[0].length >= 10")), "a new device's chart")
    span = await evaluate(ws, "(() => { const x = gale.charts.get('temp').scales.x; "
                              "return x.max - x.min; })()")
    t(span is not None and 300 <= span <= 600,
      "a new device's range fits its five minutes of data (x span %r s, not an hour)" % span)
    t(await evaluate(ws, "!location.hash.includes('range=')"), "a fitted range is not in the URL")

    # live points average into the history's buckets: one point per bucket, the bucket's mean
    interval = await chart_interval(ws)
    n0 = await evaluate(ws, "gale.charts.get('temp').data[0].length")
    tok = g.http("POST", "/api/devices/fresh-1/token")[1]["token"]
    line = g.line("fresh-1", tok)
    b = (int(time.time() * 1000) // interval) * interval
    for i, v in enumerate((50.0, 70.0)):
        line.send_line({"ts": b + 1 + i, "values": {"temp": v}, "seq": i + 1})
        line.read_line()
    want = g.http("GET", "/api/devices/fresh-1/telemetry?keys=temp&agg=avg&interval=%d&from=%d&to=%d"
                  % (interval, b, b + interval - 1))[1]["temp"][0]["value"]
    t(await wait_js(ws, chart("temp", "u.data[0].at(-1) * 1000 == %d && Math.abs(u.data[1].at(-1) - "
                                      "%r) < 1e-6" % (b, want))),
      "live points join their bucket at its average %r (not spliced in raw)" % want)
    got = await evaluate(ws, "(() => { const u = gale.charts.get('temp'); return [u.data[0], "
                             "u.data[1].at(-1)]; })()")
    xs = got[0]
    t(all(round(x * 1000) % interval == 0 for x in xs) and xs == sorted(set(xs)),
      "every chart point is one bucket of %d ms, in order, once" % interval)
    t(len(xs) <= n0 + 1, "two live points made at most one new point (%d -> %d)" % (n0, len(xs)))
    line.close()

    # the range in the URL: a reload keeps it, back returns to the one before
    await evaluate(ws, "[...document.querySelectorAll('#ranges button')].find(b => "
                       "b.textContent == '24 h').click();true")
    t(await wait_js(ws, "location.hash.endsWith('?range=24h') && "
                        "document.querySelector('#ranges button.active').textContent == '24 h'"),
      "24 h put in the URL")
    await cdp(ws, "Page.reload")
    t(await wait_js(ws, "document.querySelector('#ranges button.active') && document.querySelector("
                        "'#ranges button.active').textContent == '24 h' && gale.dv.range == 86400000"
                        " && " + chart("temp", "u.scales.x.max - u.scales.x.min > 86000")),
      "the reload keeps 24 h")
    await evaluate(ws, "[...document.querySelectorAll('#ranges button')].find(b => "
                       "b.textContent == '7 d').click();true")
    t(await wait_js(ws, "location.hash.endsWith('?range=7d') && gale.dv.range == 604800000"), "7 d")
    await evaluate(ws, "history.back();true")
    t(await wait_js(ws, "location.hash.endsWith('?range=24h') && gale.dv.range == 86400000 && "
                        "document.querySelector('#ranges button.active').textContent == '24 h'"),
      "back returns to 24 h")

    await goto(ws, g, "#/device/old-1")
    t(await wait_js(ws, chart("temp", "u.data[0].length >= 10")),
      "a device silent for days: its points shown")
    x = await evaluate(ws, "(() => { const u = gale.charts.get('temp'); return [u.scales.x.min, "
                           "u.scales.x.max, u.data[0][0], u.data[0].at(-1)]; })()")
    t(x and x[0] <= x[2] and x[3] <= x[1] and x[1] - x[0] < 3 * 3600,
      "its range fitted around its two hours of data: %r" % x)

    await goto(ws, g, "#/device/neg-1")
    t(await wait_js(ws, chart("t", "u.data[0].length >= 10")), "negative series charted")
    f = await evaluate(ws, "(() => { const u = gale.charts.get('t'); const s = u.series[1]; "
                           "return [s.fillTo(u, 1, s.min, s.max), Math.min(...u.data[1]), "
                           "u.scales.y.min]; })()")
    t(f and f[0] <= f[1], "a negative series is filled down, not up to zero: fill to %r, data min %r"
      % (f and f[0], f and f[1]))


async def keys_page(ws, g):
    await goto(ws, g, "#/keys")
    t(await wait_js(ws, "!document.getElementById('keys').hidden"), "keys page lists keys")
    await submit(ws, "key-form", {"key-name": "wall-display", "key-role": "read"})
    t(await wait_js(ws, "!document.getElementById('secret').hidden && "
                        + text_of("secret-value") + ".length > 10"), "the new key shown once")
    key = await evaluate(ws, text_of("secret-value"))
    t(await wait_js(ws, row_with("keys", "wall-display")), "the new key listed")
    listed = g.http("GET", "/api/keys")[1]
    t(key not in json.dumps(listed), "GET /api/keys shows no secret")
    t.eq(g.http("GET", "/api/devices", key=key)[0], 200, "the read key reads")
    t.eq(g.http("POST", "/api/devices", {"id": "nope"}, key=key)[0], 403, "the read key cannot add")
    await shot(ws, "keys-token-light-desktop")
    await click(ws, "#secret-close")
    # the dashboard under the read key: no actions it cannot do, a clear refusal
    await cdp(ws, "Page.navigate", {"url": "http://127.0.0.1:%d/?key=%s#/" % (g.ports["http"], key)})
    t(await wait_js(ws, "gale.state.role == 'read' && !!document.getElementById('dev-fresh-1')"),
      "the dashboard opens with the read key")
    t(await evaluate(ws, "document.getElementById('add-device').hidden"), "read: no Add device")
    await goto(ws, g, "#/device/fresh-1")
    t(await wait_js(ws, chart("temp", "true") + " && document.getElementById('cmd-form').hidden && "
                        "document.getElementById('dev-rotate').hidden && "
                        "document.getElementById('dev-delete').hidden"),
      "read: no command form, no rotate, no delete")
    await goto(ws, g, "#/connections")
    t(await wait_js(ws, "document.querySelectorAll('#conns tbody tr').length > 0 && "
                        "!document.querySelector('#conns button')"), "read: no Kick buttons")
    msg = await evaluate_async(ws, "api('/api/devices', {method: 'POST', body: {id: 'x'}})"
                                   ".then(() => 'done', errText)")
    t(msg and "may not" in msg, "a 403 explained: %r" % msg)
    # an operator key: kicks and commands, but adds and deletes nothing
    st, op = g.http("POST", "/api/keys", {"name": "ops-desk", "role": "operator"})
    t.eq(st, 201, "an operator key")
    await cdp(ws, "Page.navigate", {"url": "http://127.0.0.1:%d/?key=%s#/connections"
                                          % (g.ports["http"], op["key"])})
    t(await wait_js(ws, "gale.state.role == 'operator' && "
                        "!!document.querySelector('#conns button') && "
                        "document.getElementById('add-device').hidden"),
      "operator: Kick buttons, no Add device")
    await goto(ws, g, "#/device/fresh-1")
    t(await wait_js(ws, chart("temp", "true") + " && !document.getElementById('cmd-form').hidden &&"
                        " !document.getElementById('attr-form').hidden && "
                        "document.getElementById('dev-delete').hidden"),
      "operator: commands and attributes, no delete")
    await submit(ws, "attr-form", {"attr-key": "shift", "attr-value": '"night"'})
    t(await wait_js(ws, "document.getElementById('attr-set').textContent.includes('night')"),
      "operator sets an attribute from the page")
    await cdp(ws, "Page.navigate", {"url": "http://127.0.0.1:%d/?key=%s#/keys"
                                          % (g.ports["http"], API_KEY)})
    t(await wait_js(ws, row_with("keys", "wall-display")), "back as admin")
    t(await click_in_row(ws, "keys", "wall-display", "Revoke"), "a Revoke button")
    t(await wait_js(ws, "!" + row_with("keys", "wall-display")), "revoked key gone from the list")
    t.eq(g.http("GET", "/api/devices", key=key)[0], 401, "the revoked key is refused")


PAGES = [("fleet", "#/", "!!document.getElementById('dev-fresh-1')"),
         ("device", "#/device/fresh-1", chart("temp", "u.data[0].length > 0")),
         ("connections", "#/connections", "document.querySelectorAll('#conns tbody tr').length > 0"),
         ("mqtt-sessions", "#/mqtt/sessions", row_with("mqtt-sessions", "m-2")),
         ("mqtt-subscriptions", "#/mqtt/subscriptions", row_with("mqtt-subscriptions", "config/#")),
         ("mqtt-retained", "#/mqtt/retained", row_with("mqtt-retained", "status/m-1")),
         ("keys", "#/keys", "document.getElementById('keys-error').textContent != '' || "
                            "document.querySelectorAll('#keys tbody tr').length > 0"),
         ("gateway", "#/gateway", "document.getElementById('tiles').textContent.includes('uptime')")]


async def every_page(ws, g):
    """Every page in both themes on a desktop and a phone: screenshots, and at 375 px no
    horizontal overflow."""
    base = "http://127.0.0.1:%d/" % g.ports["http"]
    # something on each page: a live connection, a retained message, a session
    tok = g.http("POST", "/api/devices/fresh-1/token")[1]["token"]
    line = g.line("fresh-1", tok)
    g.http("POST", "/api/publish", {"topic": "status/m-1", "payload": '{"up":true}', "retain": True})
    mq = paho.Client(client_id="m-2", clean_session=False, protocol=paho.MQTTv311)
    mq.username_pw_set("m-2", g.create_device("m-2"))
    mq.connect("127.0.0.1", g.ports["mqtt"], 60)
    mq.loop_start()
    mq.subscribe([("devices/m-2/commands", 1), ("devices/m-2/config/#", 0)])
    wait_for(lambda: g.http("GET", "/api/mqtt/subscriptions?client_id=m-2")[0] == 200 and
             g.http("GET", "/api/mqtt/subscriptions?client_id=m-2")[1]["count"] == 2, 10,
             "m-2 subscribed")
    long_id = "greenhouse-north-wing-row-07-soil-moisture-probe-0123456789abcdef"[:64]
    g.create_device(long_id)
    post_points(g, long_id, [{"ts": int(time.time() * 1000), "values": {
        "firmware": "build-2026.12.07-rc3+sha.9f3c2e1a7b5d4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "moisture": 0.42}}])
    try:
        for size, metrics in (("desktop", None),
                              ("phone", {"width": 375, "height": 812, "deviceScaleFactor": 2,
                                         "mobile": True})):
            if metrics:
                await cdp(ws, "Emulation.setDeviceMetricsOverride", metrics)
            else:
                await cdp(ws, "Emulation.clearDeviceMetricsOverride")
            for theme, bg in (("light", "rgb(255, 255, 255)"), ("dark", "rgb(15, 20, 25)")):
                await evaluate(ws, "localStorage.setItem('gale.theme', %s);true" % js_str(theme))
                for name, route, ready in PAGES:
                    await cdp(ws, "Page.navigate", {"url": base + "?" + theme + size + route})
                    t(await wait_js(ws, ready), "%s page ready (%s, %s)" % (name, theme, size))
                    t(await evaluate(ws, "getComputedStyle(document.body).backgroundColor") == bg,
                      "%s page in the %s theme" % (name, theme))
                    if metrics:
                        await no_overflow(ws, "%s (%s)" % (name, theme))
                    await shot(ws, "%s-%s-%s" % (name, theme, size))
                if metrics:  # a long id and value, the custom range's inputs
                    await goto(ws, g, "#/device/" + long_id)
                    t(await wait_js(ws, chart("moisture", "true")), "long id's device page")
                    await evaluate(ws, "[...document.querySelectorAll('#ranges button')].find(b => "
                                       "b.textContent == 'custom').click();true")
                    await asyncio.sleep(0.2)
                    await no_overflow(ws, "a long id and value, custom range open (%s)" % theme)
                    await goto(ws, g, "#/?q")
                    await search(ws, "greenhouse")
                    t(await wait_js(ws, "!!document.getElementById('dev-%s')" % long_id),
                      "long id in the fleet")
                    await no_overflow(ws, "fleet with a long id and value (%s)" % theme)
                    await search(ws, "")
        # the add-device panel with its snippets on a phone
        await cdp(ws, "Emulation.setDeviceMetricsOverride",
                  {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True})
        await cdp(ws, "Page.navigate", {"url": base + "?phone#/"})
        t(await wait_js(ws, "!!document.getElementById('dev-fresh-1')"), "fleet on a phone")
        await click(ws, "#add-device")
        await submit(ws, "add-form", {"add-id": "phone-1"})
        t(await wait_js(ws, "!document.getElementById('secret').hidden"), "token panel on a phone")
        await no_overflow(ws, "the token panel with its snippets")
        await shot(ws, "fleet-token-dark-phone")
        await cdp(ws, "Emulation.clearDeviceMetricsOverride")
        await evaluate(ws, "localStorage.removeItem('gale.theme');true")
    finally:
        line.close()
        mq.disconnect()
        mq.loop_stop()


async def console(b, g):
    async with websockets.connect(b.ws_url, max_size=None) as ws:
        await cdp(ws, "Page.enable")
        await cdp(ws, "Page.navigate",
                  {"url": "http://127.0.0.1:%d/?key=%s" % (g.ports["http"], API_KEY)})
        t(await wait_js(ws, "document.getElementById('live').className == 'badge on'"),
          "console: the dashboard is up")
        token, line = await add_device(ws, g)
        await rotate_delete(ws, g, token, line)
        line.close()
        await http_presence(ws, g)
        await mqtt_pages(ws, g)
        await charts(ws, g)
        if g.http("GET", "/api/keys")[0] != 404:
            await keys_page(ws, g)
        else:
            print("note: no /api/keys on this gateway; the keys page is checked for its message")
            await goto(ws, g, "#/keys")
            t(await wait_js(ws, text_of("keys-error") + ".includes('one API key')"),
              "keys page explains a gateway without keys")
        await every_page(ws, g)


def console_main():
    os.makedirs(SHOTS, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="gale-chromium-")
    with Gale(args=("--set", "http.device_idle_s=2")) as g:
        wait_for(lambda: "mqtt" in g.ports, 10, "MQTT listening")
        st, info = g.http("GET", "/api/info")
        t(st == 200 and {(l["name"], l["port"]) for l in info["listeners"]} >=
          {("http", g.ports["http"]), ("line", g.ports["line"]), ("mqtt", g.ports["mqtt"])},
          "GET /api/info names the bound ports: %r" % info)
        t(info.get("role") == "admin" and info.get("all_devices") is True,
          "GET /api/info names the caller's role: %r" % info)
        t.eq(g.http("GET", "/api/info", key=None)[0], 401, "GET /api/info needs the key")
        b = Browser(profile)
        try:
            asyncio.run(console(b, g))
        finally:
            b.close()
            shutil.rmtree(profile, ignore_errors=True)


def all_main():
    main()
    console_main()


if __name__ == "__main__":
    t.run(all_main)
