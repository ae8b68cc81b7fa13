"""The scale-out topology of README "Scaling out", run from its own files
(docker/scale-out/haproxy.cfg, gale-1.json, gale-2.json; the README quotes them, and this
test fails when the README's copies differ): HAProxy (send-proxy-v2) in front of two Gale
instances, each bridging to one upstream Mosquitto, all on loopback with free ports.

A device (paho, QoS 1, from its own source address 127.0.0.2 so it is clearly not
HAProxy's) connects through HAProxy with a fleet token issued offline by
`gale --issue-token`; the instance it lands on registers it and shows its real address
(log line and GET /api/connections). Its values flow upstream. The instance is killed
(SIGKILL); the device reconnects through HAProxy to the other instance and keeps
publishing. The killed instance is started again on its data (its outbox sends what it
acked and had not forwarded yet), and a persistent upstream subscriber must have
received every value either instance acknowledged. Prints the reconnect time after the
kill, the values acked and the values received upstream.

Every process is this test's own and stopped by its PID; loopback only; bounded in time
(RATE values a second for about SECONDS_BEFORE + SECONDS_AFTER seconds)."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error

import paho.mqtt.client as mqtt

from galetest import GALE_BIN, Check, Gale, wait_for
from upstreams import Collector, MosquittoUpstream, check_delivery, free_port

t = Check("test_scale_out")
HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.join(HERE, "..", "..", "docker", "scale-out")
README = os.path.join(HERE, "..", "..", "README.md")
HAPROXY = "/usr/sbin/haproxy"
RATE = 50
SECONDS_BEFORE, SECONDS_AFTER = 3.0, 3.0
DEVICE = "dev-1"
SOURCE = "127.0.0.2"  # the device's own loopback address


def read(name):
    with open(os.path.join(FILES, name)) as f:
        return f.read()


def swap(text, mapping):
    """text with each key (a port number or a path) replaced by its value, whole words."""
    for old, new in mapping.items():
        text = re.sub(r"(?<![\w/.])%s(?![\w.])" % re.escape(str(old)), str(new), text)
    return text


def readme_blocks():
    """The fenced blocks that follow a <!-- scale-out: NAME --> marker in the README."""
    with open(README) as f:
        text = f.read()
    return dict(re.findall(r"<!-- scale-out: ([\w.-]+) -->\n```[a-z]*\n(.*?)```", text, re.S))


def api(g, path):
    try:
        st, js = g.http("GET", path)
    except (OSError, urllib.error.URLError):
        return None
    return js if st == 200 else None


def device_conns(g):
    js = api(g, "/api/connections?device=" + DEVICE)
    return js["connections"] if js else []


class Device:
    """paho, QoS 1, from SOURCE, reconnecting by itself (50 ms to 0.5 s apart)."""

    def __init__(self, port, token):
        self.lock = threading.Lock()
        self.acked, self.k_of_mid, self.connects = set(), {}, []
        self.c = mqtt.Client("fleet-dev-1", clean_session=False)
        self.c.username_pw_set(DEVICE, token)
        self.c.max_inflight_messages_set(20)
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.on_connect = self.on_connect
        self.c.on_publish = self.on_publish
        self.c.connect("127.0.0.1", port, 10, bind_address=SOURCE)
        self.c.loop_start()

    def on_connect(self, _c, _u, _f, rc):
        if rc == 0:
            with self.lock:
                self.connects.append(time.monotonic())

    def on_publish(self, _c, _u, mid):
        with self.lock:
            self.acked.add(mid)

    def publish(self, k):
        mid = self.c.publish("devices/%s/telemetry" % DEVICE, '{"n":%d,"t":21.5}' % k, 1).mid
        with self.lock:
            self.k_of_mid[mid] = k

    def acked_ks(self):
        with self.lock:
            return sorted(self.k_of_mid[m] for m in self.acked if m in self.k_of_mid)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def main():
    if not os.path.exists(HAPROXY):
        t(False, "haproxy is not installed (.ci/setup.sh test-deps installs it)")
        return
    # the README quotes the files this test runs
    blocks = readme_blocks()
    for name in ("haproxy.cfg", "gale-1.json", "gale-2.json"):
        t.eq(blocks.get(name), read(name), "README \"Scaling out\" quotes %s as it is" % name)

    d = tempfile.mkdtemp(prefix="gale-scale-")
    procs = []
    up = MosquittoUpstream()
    up.start()
    collector = Collector(up)
    key = os.path.join(d, "fleet.key")
    with open(key, "w") as f:
        f.write("a-fleet-secret-shared-by-every-instance-0123456789\n")
    cfg = {}
    for n in (1, 2):
        cfg[n] = os.path.join(d, "gale-%d.json" % n)
        with open(cfg[n], "w") as f:
            f.write(swap(read("gale-%d.json" % n), {1884: up.port, "/etc/gale/fleet.key": key}))
    gales, dirs = {}, {}
    lb = None
    try:
        for n in (1, 2):
            dirs[n] = os.path.join(d, "data-%d" % n)
            gales[n] = Gale(data_dir=dirs[n], args=["--config", cfg[n]]).start(("http", "mqtt"))
            gales[n].wait_log(r"listening protocol=mqtt port=\d+ bind=127\.0\.0\.1 "
                              r"proxy_protocol=v2")
            wait_for(lambda: (api(gales[n], "/api/bridges") or [{}])[0].get("connected"), 20,
                     "gale-%d bridged" % n)
        lb_port = free_port()
        hcfg = os.path.join(d, "haproxy.cfg")
        with open(hcfg, "w") as f:
            f.write(swap(read("haproxy.cfg"), {
                1883: lb_port, 11883: gales[1].ports["mqtt"], 18080: gales[1].ports["http"],
                21883: gales[2].ports["mqtt"], 28080: gales[2].ports["http"]}))
        lb = subprocess.Popen([HAPROXY, "-f", hcfg, "-db"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        procs.append(lb)
        wait_for(lambda: lb.poll() is not None or _accepts(lb_port), 10, "haproxy listening")
        t(lb.poll() is None, "haproxy runs")

        # the fleet token, issued offline from the same config
        r = subprocess.run([GALE_BIN, "--config", cfg[1], "--issue-token", DEVICE,
                            "--expires", "1d"], capture_output=True, text=True, timeout=20)
        t.eq(r.returncode, 0, "gale --issue-token: %s" % r.stderr)
        token = r.stdout.strip()
        t(token.startswith("gft1.%s." % DEVICE), "a fleet token: %r" % token)

        dev = Device(lb_port, token)
        procs.append(dev)
        wait_for(lambda: dev.connects, 10, "device connected through haproxy")
        first = wait_for(lambda: next((n for n in (1, 2) if device_conns(gales[n])), None), 10,
                         "the device's instance")
        other = 3 - first
        g = gales[first]
        peer = device_conns(g)[0]["peer"]
        t(peer.startswith(SOURCE + ":"), "REST shows the device's own address: %r" % peer)
        g.wait_log(r"peer=%s proto=mqtt device=%s online" % (re.escape(peer), DEVICE))
        g.wait_log(r"device=%s registered by its fleet token" % DEVICE)
        t(api(g, "/api/devices/" + DEVICE) is not None, "the instance registered the device")
        t(not device_conns(gales[other]), "the device is on one instance only")

        k, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < SECONDS_BEFORE:
            dev.publish(k)
            k += 1
            time.sleep(max(0.0, t0 + k / RATE - time.monotonic()))
        acked_before = len(dev.acked_ks())
        t_kill = time.monotonic()
        g.kill9()
        connects_before = len(dev.connects)
        t1, k1 = time.monotonic(), k
        while time.monotonic() - t1 < SECONDS_AFTER:
            dev.publish(k)
            k += 1
            time.sleep(max(0.0, t1 + (k - k1) / RATE - time.monotonic()))
        wait_for(lambda: len(dev.connects) > connects_before, 15, "device reconnected")
        reconnect_s = dev.connects[connects_before] - t_kill
        wait_for(lambda: len(dev.acked_ks()) == k, 30, "every value acked")
        peer2 = wait_for(lambda: device_conns(gales[other]), 10, "device on the other")[0]["peer"]
        t(peer2.startswith(SOURCE + ":"), "the other instance shows the device's address too")
        gales[other].wait_log(r"device=%s registered by its fleet token" % DEVICE)

        # the killed instance comes back on its data: its outbox sends what it acked and had
        # not forwarded before the kill (counted: acked values not upstream by now)
        acked = {DEVICE: dev.acked_ks()}
        time.sleep(1.0)  # what the surviving instance forwards arrives first
        waiting = len(check_delivery(acked, collector.arrivals())[0])
        gales[first] = Gale(data_dir=dirs[first], args=["--config", cfg[first]]).start(
            ("http", "mqtt"))
        wait_for(lambda: not check_delivery(acked, collector.arrivals())[0], 30,
                 "every acked value upstream")
        missing, _, dups = check_delivery(acked, collector.arrivals())
        received = len({kk for dd, kk in collector.arrivals() if dd == DEVICE})
        t.eq(missing, [], "every value acked by either instance arrived upstream")
        t.eq(len(acked[DEVICE]), k, "every value published was acked")
        t(reconnect_s < 10, "reconnected through haproxy within 10 s (%.2f s)" % reconnect_s)
        print("scale-out: reconnect after kill -9 %.2f s; values acked %d (%d before the kill); "
              "received upstream %d distinct, %d duplicates; missing %d; waiting in the killed "
              "instance's outbox until its restart %d"
              % (reconnect_s, len(acked[DEVICE]), acked_before, received, dups, len(missing),
                 waiting), flush=True)
        dev.close()
        procs.remove(dev)
    finally:
        for p in procs:
            if isinstance(p, Device):
                p.close()
            elif p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for n, gg in gales.items():
            if gg.proc and gg.proc.poll() is None:
                rc = gg.stop()
                t.eq(rc, 0, "gale-%d stops cleanly" % n)
        collector.close()
        up.close()
        shutil.rmtree(d, ignore_errors=True)


def _accepts(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


t.run(main)
