"""Disk full: Gale's data dir on a small tmpfs this test mounts, a filler file takes
the rest of the space. Then
- new data is refused per protocol, never acked: line and /ws/device answer error lines
  with their seq and code storage_full, HTTP ingest 507 storage_full, an MQTT QoS 1
  publish a disconnect without PUBACK; refusals are cheap (no retries with back-off);
- REST queries, latest, the dashboard and the live feed keep working;
- one warn line, /api/health storage.state "full", gale_storage_full 1 and
  gale_storage_writes_refused_total count it;
- once the filler is deleted, new data is acked again (one info line, state "ok");
- every value acked is there and no value refused is, through REST, and again after a
  restart on the same data dir.
Needs root (mount): exits 77 saying why when not root or mount is refused, but fails
when the CI variable is set."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import mqttraw
from galetest import API_KEY, Check, Gale, RawWS, wait_for

t = Check("test_disk_full")
BASE = 1700000000000
KEY = "a"


def skip(why):
    if os.environ.get("CI"):
        print("FAIL: test_disk_full: cannot run under CI: %s" % why)
        sys.exit(1)
    print("test_disk_full: 0 passed, 0 failed, 1 skipped (%s)" % why)
    sys.exit(77)


def metric(g, name):
    st, text = g.http("GET", "/metrics")
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else None


def health_state(g):
    st, js = g.http("GET", "/api/health")
    return js.get("storage", {}).get("state")


def fill(path):
    """Writes path until the file system has no block left for it."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 65536, 4096, 512):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


class Ledger:
    """Which ts of KEY each protocol got acked or refused."""

    def __init__(self):
        self.next_ts = BASE
        self.acked = set()
        self.refused = set()

    def ts(self):
        self.next_ts += 1
        return self.next_ts


def line_send(c, led, seq, pad=""):
    ts = led.ts()
    msg = {"ts": ts, "values": {KEY: seq}, "seq": seq}
    if pad:
        msg["values"]["pad"] = pad
    c.send((json.dumps(msg) + "\n").encode())
    r = c.read_line(timeout=10)
    if r == {"ack": seq}:
        led.acked.add(ts)
    else:
        led.refused.add(ts)
    return r


def mqtt_connect(g, dev, tok):
    m = mqttraw.Raw(g.ports["mqtt"])
    m.send(mqttraw.connect("df-mqtt", username=dev, password=tok))
    p = m.recv()
    assert p.type == mqttraw.CONNACK and p.rc == 0, p
    return m


def mqtt_publish(m, led, pid):
    """PUBACK -> True; connection closed without it -> False."""
    ts = led.ts()
    m.send(mqttraw.publish("devices/df/telemetry",
                           json.dumps({"ts": ts, "values": {KEY: -pid}}), qos=1, pid=pid))
    try:
        p = m.recv(timeout=10)
    except (ConnectionError, OSError):
        led.refused.add(ts)
        return False
    assert p.type == mqttraw.PUBACK and p.pid == pid, p
    led.acked.add(ts)
    return True


def http_post(g, tok, led):
    ts = led.ts()
    st, js = g.http("POST", "/api/devices/df/telemetry", {"ts": ts, "values": {KEY: 0.5}},
                    key=tok)
    (led.acked if st == 200 else led.refused).add(ts)
    return st, js


def stored_ts(g):
    st, js = g.http("GET", "/api/devices/df/telemetry?keys=%s&from=0&limit=100000" % KEY)
    assert st == 200, (st, js)
    return {p["ts"] for p in js.get(KEY, [])}


def check_stored(g, led, when):
    got = stored_ts(g)
    missing = led.acked - got
    extra = got & led.refused
    t(not missing, "%s: every acked value is stored (%d acked, missing %r)"
      % (when, len(led.acked), sorted(missing)[:5]))
    t(not extra, "%s: no refused value is stored (%d refused, found %r)"
      % (when, len(led.refused), sorted(extra)[:5]))
    t.eq(len(got), len(led.acked), "%s: stored values = acked values" % when)


def logged(g, pattern, timeout=5):
    try:
        g.wait_log(pattern, timeout)
        return True
    except AssertionError:
        return False


def count_log(g, pattern):
    rx = re.compile(pattern)
    return sum(1 for l in list(g.log_lines) if rx.search(l))


def run(mnt):
    data = os.path.join(mnt, "data")
    filler = os.path.join(mnt, "filler")
    led = Ledger()
    g = Gale(data_dir=data).start(wait_ports=("http", "line", "mqtt"))
    try:
        tok = g.create_device("df")
        c = g.line("df", tok)
        t.eq(line_send(c, led, 1), {"ack": 1}, "acked while there is space")
        t.eq(health_state(g), "ok", "health: storage ok")
        t.eq(metric(g, "gale_storage_full"), 0.0, "gale_storage_full 0")
        live = RawWS(g.ports["http"], "/ws/live?api_key=" + API_KEY)
        t.eq(live.recv_json(), {"type": "ready"}, "live viewer ready")
        live.send_json({"subscribe": {"devices": ["df"], "keys": ["live"], "presence": False}})
        t.eq(live.recv_json()["type"], "subscribed", "live viewer subscribed")

        fill(filler)
        # what SQLite had allocated still takes a few writes: send until one is refused
        seq, r = 1, None
        while seq < 5000:
            seq += 1
            r = line_send(c, led, seq, pad="x" * 400)
            if "error" in r:
                break
        t.eq(r, {"error": "storage full: not stored, send again later", "code": "storage_full",
                 "seq": seq}, "line: the first refusal is an error line with its seq")
        logged(g, r"level=warn store: disk full")  # the log pipe may lag the socket
        t.eq(count_log(g, r"level=warn store: disk full"), 1, "one warn line when it fills")
        t(re.search(r'disk full.*error="database or disk is full"', g.log()) is not None,
          "the warn line carries SQLite's error")

        # refusals are cheap: no retries, no back-off (before: 4 tries, 350 ms each)
        t0 = time.monotonic()
        refused = []
        for i in range(20):
            seq += 1
            refused.append(line_send(c, led, seq))
        took = time.monotonic() - t0
        t(all(x.get("code") == "storage_full" and x.get("seq") == s
              for x, s in zip(refused, range(seq - 19, seq + 1))),
          "line: 20 more refused with code storage_full and their seq, no ack: %r" % refused[:3])
        t(took < 4.0, "20 refusals took %.2f s (< 4 s)" % took)

        w = RawWS(g.ports["http"], "/ws/device?device=df&token=" + tok)
        t.eq(w.status, 101, "ws-device connects while full")
        ts = led.ts()
        w.send_json({"ts": ts, "values": {KEY: 7}, "seq": 77})
        r = w.recv_json()
        (led.acked if r == {"ack": 77} else led.refused).add(ts)
        t.eq((r.get("code"), r.get("seq")), ("storage_full", 77),
             "ws-device: error with code storage_full and its seq: %r" % r)

        st, js = http_post(g, tok, led)
        t.eq(st, 507, "HTTP ingest: 507 Insufficient Storage")
        t.eq(js, {"error": "storage full: nothing was stored", "code": "storage_full"},
             "HTTP ingest: JSON error body")

        st, js = g.http("POST", "/api/devices", {"id": "df-new"})
        t.eq((st, js.get("code")), (507, "storage_full"), "device creation: 507 storage_full")
        t.eq(g.http("GET", "/api/devices/df-new")[0], 404, "the refused device does not exist")

        m = mqtt_connect(g, "df", tok)
        t(not mqtt_publish(m, led, 5), "MQTT QoS 1: disconnected without PUBACK")
        t(logged(g, r"proto=mqtt.*storage full: message not acknowledged"),
          "MQTT: the close is logged with its reason")

        # reads, the dashboard and the live feed keep working
        t.eq(health_state(g), "full", "health: storage full")
        t.eq(metric(g, "gale_storage_full"), 1.0, "gale_storage_full 1")
        n = metric(g, "gale_storage_writes_refused_total") or 0
        t(n >= 23, "gale_storage_writes_refused_total counts the refusals (%r)" % n)
        st, js = g.http("GET", "/api/devices/df/latest")
        t.eq((st, js.get(KEY, {}).get("ts")), (200, max(led.acked)),
             "latest: the last acked value")
        check_stored(g, led, "while full")
        st, page, _ = g.http("GET", "/", key=None, raw=True)
        t(st == 200 and b"<html" in page.lower(), "dashboard served")
        c.send_line({"values": {"live": 99}})  # streamed as it arrives, stored or not
        u = live.recv_json()
        t.eq((u.get("type"), u.get("device"), [p["value"] for p in u.get("points", [])]),
             ("telemetry", "df", [99]), "live feed streams")
        t.eq(count_log(g, r"level=warn store: disk full"), 1, "still one warn line")

        # space returns: new data is acked again, by itself
        os.unlink(filler)
        deadline = time.monotonic() + 10
        r = None
        while time.monotonic() < deadline:
            seq += 1
            r = line_send(c, led, seq)
            if r == {"ack": seq}:
                break
            time.sleep(0.05)
        t.eq(r, {"ack": seq}, "line: acked again once space is back")
        for _ in range(5):
            seq += 1
            t.eq(line_send(c, led, seq), {"ack": seq}, "line: acked")
        t.eq(http_post(g, tok, led)[0], 200, "HTTP ingest: 200 again")
        m = mqtt_connect(g, "df", tok)
        t(mqtt_publish(m, led, 6), "MQTT QoS 1: PUBACK again")
        w = RawWS(g.ports["http"], "/ws/device?device=df&token=" + tok)
        ts = led.ts()
        w.send_json({"ts": ts, "values": {KEY: 8}, "seq": 78})
        r = w.recv_json()
        (led.acked if r == {"ack": 78} else led.refused).add(ts)
        t.eq(r, {"ack": 78}, "ws-device: acked again")
        t.eq(health_state(g), "ok", "health: storage ok again")
        t.eq(metric(g, "gale_storage_full"), 0.0, "gale_storage_full 0 again")
        logged(g, r"level=info store: disk space is back")
        t.eq(count_log(g, r"level=info store: disk space is back"), 1,
             "one info line when it recovers")
        check_stored(g, led, "after recovery")
        st, js = g.http("GET", "/api/devices/df/latest")
        t.eq(js.get(KEY, {}).get("ts"), max(led.acked), "latest: the last acked value")
        rc = g.stop()
        t.eq(rc, 0, "clean stop")
    finally:
        if g.alive():
            g.kill9()

    g2 = Gale(data_dir=data).start()
    try:
        check_stored(g2, led, "after a restart")
        st, js = g2.http("GET", "/api/devices/df/latest")
        t.eq(js.get(KEY, {}).get("ts"), max(led.acked), "latest after a restart")
    finally:
        g2.stop()


def main():
    if os.geteuid() != 0:
        skip("not root: mounting a tmpfs needs root")
    mnt = tempfile.mkdtemp(prefix="gale-diskfull-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(mnt)
        skip("mount -t tmpfs failed: %s" % (r.stderr.strip() or r.returncode))
    try:
        run(mnt)
    finally:
        if subprocess.run(["umount", mnt]).returncode != 0:
            subprocess.run(["umount", "-l", mnt])
        shutil.rmtree(mnt, ignore_errors=True)


t.run(main)
