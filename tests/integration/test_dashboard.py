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
import shutil
import subprocess
import tempfile
import time
import urllib.request

import paho.mqtt.client as paho
import websockets

from galetest import API_KEY, GALE_BIN, Check, Gale, wait_for
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
        n = await evaluate(ws, chart_len("temp"))
        line.send_line({"temp": 40.5, "seq": 3})
        t.eq(line.read_line(), {"ack": 3}, "live value stored")
        t(await wait_js(ws, "%s > %d && gale.charts.get('temp').data[1].at(-1) == 40.5"
                            % (chart_len("temp"), n)), "live point appended to the chart")
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
        t(await evaluate(ws, "document.documentElement.scrollWidth <= 400"),
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

if __name__ == "__main__":
    t.run(main)
