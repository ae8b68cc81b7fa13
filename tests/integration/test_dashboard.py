"""The dashboard in headless Chromium, driven over the DevTools protocol: served
by Gale, it logs in with the API key, lists devices with presence and latest
values, connects to /ws/live, and shows a value sent after the page loaded.
Every wait is on real time with a deadline (no virtual-time budget)."""
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import websockets

from galetest import API_KEY, Check, Gale
from mosquitto import free_port

t = Check("test_dashboard")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Browser:
    def __init__(self, profile):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
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
        # a wrong key shows the login form with an error
        await cdp(ws, "Runtime.evaluate", {"expression": "localStorage.clear()"})
        await cdp(ws, "Page.navigate",
                  {"url": "http://127.0.0.1:%d/?key=wrong" % g.ports["http"]})
        t(await wait_js(ws, "document.getElementById('login-error').textContent"
                            ".includes('refused')"), "wrong key refused in the page")


def main():
    if not os.path.exists(CHROMIUM):
        t(False, "chromium available (run .ci/setup.sh test-deps)")
        return
    profile = tempfile.mkdtemp(prefix="gale-chromium-")
    with Gale() as g:
        tok = g.create_device("sensor-1")
        g.create_device("sensor-2")
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


t.run(main)
