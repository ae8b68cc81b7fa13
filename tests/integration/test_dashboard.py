"""The dashboard in headless Chromium: served by Gale, it logs in with the API
key, lists devices with presence and latest values, and takes live updates from
/ws/live (a value sent after the page loaded shows up)."""
import os
import shutil
import subprocess
import tempfile
import time
import traceback

from galetest import API_KEY, Check, Gale

t = Check("test_dashboard")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def dump_dom(url, budget_ms, profile):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--user-data-dir=" + profile,
           "--virtual-time-budget=%d" % budget_ms, "--dump-dom", url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    return p.stdout


def main():
    if not os.path.exists(CHROMIUM):
        print("chromium not installed")
        t(False, "chromium available (run .ci/setup.sh test-deps)")
        return
    with Gale() as g, tempfile.TemporaryDirectory() as profile:
        tok = g.create_device("sensor-1")
        g.create_device("sensor-2")
        c = g.line("sensor-1", tok)
        c.send_line({"temp": 21.5, "label": "kitchen", "seq": 1})
        t.eq(c.read_line(), {"ack": 1}, "telemetry stored")
        url = "http://127.0.0.1:%d/?key=%s" % (g.ports["http"], API_KEY)
        # virtual time runs ahead of real sockets on a loaded machine: allow a retry
        for _ in range(3):
            dom = dump_dom(url, 5000, profile)
            if 'class="badge on"' in dom and "21.5" in dom:
                break
        t('id="dev-sensor-1"' in dom, "device row rendered")
        t('id="dev-sensor-2"' in dom, "second device row rendered")
        t("kitchen" in dom and "21.5" in dom, "latest values shown")
        t("2 devices, 1 online" in dom, "summary counts presence")
        t('class="badge on"' in dom, "live feed connected")
        # a wrong key shows the login form with an error
        dom = dump_dom("http://127.0.0.1:%d/?key=wrong" % g.ports["http"], 3000, profile)
        t("That key was refused" in dom, "wrong key refused in the page")


try:
    main()
except Exception:
    traceback.print_exc()
    t(False, "exception")
t.done()
