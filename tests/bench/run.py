#!/usr/bin/python3
"""tests/bench/run.py: every Gale benchmark against its reference, interleaved, one table.

    /usr/bin/python3 tests/bench/run.py [--build DIR] [--cases LIST] [--rounds N] [--smoke]
        [--gale-bin BIN [--gale-bin BASELINE]] [--out FILE.md] [--list]

`make bench` runs it with the defaults (all cases, 3 rounds, about 8 minutes on two
cores with both storage.sync modes, 3 of them in bench_storage). Each round runs every case once against Gale
and once against its reference, each run on a freshly started server (Gale, then the
reference), so a slow drift of the machine hits both sides alike. The table gives, per case and metric, the median of
the Gale runs, the median of the reference runs, the median of the per-round ratios
Gale / reference, and the per-round ratios; it is printed and written as Markdown to
--out (default <build>/bench/last.md, last-compare.md for two binaries), the raw runs
as JSON beside it.

References, all on loopback on free ports, started and stopped by PID here:
  MQTT cases   Debian's mosquitto, persistence off, anonymous, no logging
  MQTT 5       (group mqtt5) the same cases spoken in 5.0 (bench_mqtt --mqtt-version 5) to
               Gale and to Mosquitto (max_inflight_messages 1024, so its Receive Maximum
               is Gale's), and one more side: the same Gale spoken to in 3.1.1, in the
               same round (Gale 5.0, Gale 3.1.1, Mosquitto 5.0); the reference column
               names which; besides the rates, the server's CPU time per message
               (/proc/PID/stat over the run), which other load on the machine moves
               less than it moves the rates
  REST latest  nginx (one worker, access log off) serving the same bytes as a static file
  live feed    Tornado broadcasting the same JSON (tornado_feed.py, via bench_feed.py)
  TLS          `openssl s_server -www` with the same certificate (handshakes/s), and Gale's
               own plain MQTT port (QoS 0 ingest over TLS vs plain TCP)
  bridge       Debian's mosquitto as the upstream (tests/integration/upstreams.py,
               persistence on): the drain against one paho-mqtt-c MQTTAsync client
               publishing QoS 1 with the bridge's window (paho_pub), the bridged latency
               against publishing straight to Mosquitto, live acks during a drain
               against the same Gale with no backlog
  storage      raw SQLite in the same process (bench_storage): today's row layout (log +
               sorted moves into a (series, ts) table) and the raw row-append ceiling for
               end to end ingest; today's row layout for bytes per point and query times
Gale runs with mqtt.allow_anonymous=true (the publishers' telemetry is decoded and every
value stored) and log.level=warn (the reference logs nothing either).

QoS 1 cases run in both storage.sync modes when `gale --config-reference` lists the key,
else once with mode "n/a". The disk's own latency (4 KiB write + fdatasync, in the
filesystem of the data directories) is measured in each round and printed below the table.

Two binaries: `--gale-bin NEW --gale-bin OLD` (MQTT cases only make sense then, e.g.
`--cases mqtt`) runs NEW and OLD interleaved instead of Gale and its references; the
ratio is NEW / OLD. When only one of them knows storage.sync, both run on their defaults
(mode "n/a"). tests/bench/run_mqtt.py is this with --cases mqtt.

Every case is bounded in messages and seconds and stops by itself; --smoke runs each
once with tiny counts (under a minute) to check the harness."""
import argparse
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)
import galetest  # noqa: E402  (wait_for)
from mosquitto import Mosquitto, free_port  # noqa: E402
from upstreams import MosquittoUpstream  # noqa: E402
from tlscerts import CA  # noqa: E402

API_KEY = "bench-api-key-0123456789"
REST_DEVICE = "bench-rest"
CONNECT_INFLIGHT = 512

# parameter: (full run, --smoke); counts are caps, the seconds bound every run
PARAMS = {
    "mqtt_s": (3.0, 0.3),            # seconds of publishing per MQTT run
    "c1": (1, 1), "c100": (100, 100), "c1000": (1000, 200),  # publishers, QoS 0 cases
    "qos0_1": (400000, 5000),        # messages per publisher, QoS 0, 1 publisher
    "qos0_100": (4000, 50),          # ... 100 publishers
    "qos0_1000": (400, 5),           # ... 1000 publishers
    "qos1_w1": (100000, 2000),       # QoS 1, 1 publisher, window 1
    "qos1_w32": (200000, 5000),      # QoS 1, 1 publisher, window 32
    "qos1_100": (5000, 50),          # QoS 1, 100 publishers, window 1
    "route": (20000, 1000),          # per publisher (10) to the # subscriber
    "shared": (20000, 1000),         # per publisher (10) to 3 members of a shared subscription
    "lat_s": (3, 1),                 # seconds at 10k msg/s for the latency case
    "fleet_s": (30, 2),              # seconds of the QoS 1 fleet case (--fleet-seconds)
    "idle": (19000, 500),            # idle connections (the fd limit here is 20,000)
    "flood_n": (10000, 400),         # unauthenticated connections of the pre-auth cases
    "flood_s": (15, 4),              # seconds they are held
    "pubrss_s": (10, 1),             # seconds of the 1000 publishers at 10k msg/s, RSS sampled
    "wrk_s": (3, 1),                 # seconds of wrk
    "feed_viewers": (1000, 20), "feed_rate": (1000, 100), "feed_s": (5, 1),
    "feed_grace": (3, 2),
    "storage_points": (2000000, 100000),
    "storage_disk_devices": (200, 20),   # 1 Hz fleet for bytes per point: devices x 5 keys
    "storage_disk_hours": (6, 0.25),     # ... for this long
    "storage_query_days": (30, 2),       # one 1 Hz series for the query times
    "storage_query_reps": (3, 2),        # repetitions of each query per round
    "fsync_n": (200, 20),            # write + fdatasync samples per round
    "tls_s": (3.0, 0.5),             # seconds of TLS handshakes per run
    "tls_inflight": (8, 4),          # handshakes in flight
    "tls_qos0": (40000, 500),        # messages per publisher (10), QoS 0 over TLS and plain
    "drain_n": (1000000, 20000),     # bridge-drain: backlog messages (10 publishers, QoS 0)
    "bridge_window": (100, 100),     # bridge max_inflight = paho_pub's window
    "bridge_lat_s": (5, 1),          # bridge-latency: seconds at 10k msg/s (100 x 100 msg/s)
    "live_backlog": (120000, 3000),  # bridge-live-ack: backlog draining during the live run
    "live_drain_rate": (5000, 5000), # ... its drain_rate (the default): the backlog outlasts
    "live_s": (10, 0.5),             # ... the live run: 100 devices x 10 msg/s, QoS 1, window 1
}
SCALE = {name: {k: v[i] for k, v in PARAMS.items()} for i, name in enumerate(("full", "smoke"))}


class Failed(Exception):
    """A run that did not produce its figures; the round is left out of its row."""


# what else a failed run raises (bench_feed.py, galetest and the socket helpers)
RUN_ERRORS = (Failed, AssertionError, OSError, RuntimeError, ValueError, KeyError,
              subprocess.SubprocessError)


# ---- processes ----

def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Failed("no VmRSS for pid %d" % pid)


def kv_line(out, prefix):
    """The key=value fields of the first line of out starting with prefix."""
    for line in out.splitlines():
        if line.startswith(prefix + " "):
            return {k: float(v) for k, v in (t.split("=", 1) for t in line.split()[1:])}
    raise Failed("no %r line in %r" % (prefix, out[-500:]))


def run_tool(cmd, timeout):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed("%s: no result within %d s" % (os.path.basename(cmd[0]), timeout))
    if r.returncode != 0:
        raise Failed("%s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr.strip()[-500:]))
    return r.stdout


class GaleServer:
    """One Gale process on free loopback ports, its data in a fresh directory. Ports are
    picked here rather than with port 0: at log.level=warn Gale does not log them."""

    def __init__(self, ctx, binary, mode, tls=None, extra=()):
        self.data_dir = tempfile.mkdtemp(prefix="gale-", dir=ctx.work)
        self.mqtt_port, self.http_port = free_port(), free_port()
        self.mqtts_port = free_port() if tls else None
        self.cmd = [binary, "--data-dir", self.data_dir,
                    "--set", "mqtt.bind=127.0.0.1", "--set", "mqtt.port=%d" % self.mqtt_port,
                    "--set", "http.bind=127.0.0.1", "--set", "http.port=%d" % self.http_port,
                    "--set", "line.enabled=false", "--set", "mqtt.allow_anonymous=true",
                    "--set", "log.level=warn"]
        if mode in ("normal", "full"):
            self.cmd += ["--set", "storage.sync=" + mode]
        if tls:  # (cert, key): the MQTT TLS port only
            self.cmd += ["--set", "tls.cert_file=" + tls[0], "--set", "tls.key_file=" + tls[1],
                         "--set", "mqtt.tls_port=%d" % self.mqtts_port, "--set", "http.tls_port=0"]
        self.cmd += list(extra)
        self.proc = None

    def __enter__(self):
        env = dict(os.environ, GALE_HTTP_API_KEY=API_KEY)
        self.log = open(os.path.join(self.data_dir, "gale.log"), "w+")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 15
        while not (port_open(self.mqtt_port) and port_open(self.http_port) and
                   (not self.mqtts_port or port_open(self.mqtts_port))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise Failed("gale did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        try:
            died = self.proc.poll() is not None
            if not died:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise Failed("gale did not stop within 30 s after SIGTERM")
            if died or self.proc.returncode != 0:
                self.log.seek(0)
                raise Failed("gale exited %d: %s" % (self.proc.returncode,
                                                     self.log.read()[-1500:]))
        finally:
            self.log.close()
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return False


class MosquittoServer:
    def __init__(self, extra_conf=""):
        self.extra_conf = extra_conf

    def __enter__(self):
        self.m = Mosquitto(self.extra_conf).__enter__()
        self.pid = self.m.proc.pid
        self.mqtt_port = self.m.port
        return self

    def __exit__(self, *exc):
        return self.m.__exit__(*exc)


class SServer:
    """`openssl s_server -www` on a free loopback port with cert and key (the handshake
    reference: one process, one thread, like Gale's loop)."""

    def __init__(self, cert, key):
        self.port = free_port()
        self.cmd = ["openssl", "s_server", "-quiet", "-www", "-accept", "127.0.0.1:%d" % self.port,
                    "-cert", cert, "-key", key]

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise Failed("openssl s_server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return False


def tls_certs(ctx, rsa):
    """(CA file, server cert, key) for localhost/127.0.0.1, made once per run."""
    key = "rsa" if rsa else "ecdsa"
    if key not in ctx.certs:
        d = os.path.join(ctx.work, "certs-" + key)
        os.makedirs(d)
        ca = CA(d, "ca", rsa=rsa)
        ctx.certs[key] = (ca.pem,) + ca.issue("server", "localhost", server=True, rsa=rsa)
    return ctx.certs[key]


# ---- sides: what a case runs against ----

# Mosquitto in the MQTT 5 cases: its Receive Maximum is max_inflight_messages (20 by
# default), which would hold a 5.0 client at window 20 in a window 32 case; set to Gale's
# mqtt.receive_maximum default, both sides grant the same window.
MOSQUITTO_V5_CONF = "max_inflight_messages 1024\n"


class Side:
    """One contender of a case: Gale (a binary, a sync mode) or a reference, spoken to
    in MQTT 3.1.1 (version 4) or 5.0 (version 5) by bench_mqtt."""

    def __init__(self, kind, label, binary=None, mode="-", version=4):
        self.kind, self.label, self.binary, self.mode = kind, label, binary, mode
        self.version = version

    def mqtt(self, ctx):
        if self.kind == "gale":
            return GaleServer(ctx, self.binary, self.mode)
        return MosquittoServer(MOSQUITTO_V5_CONF if self.version == 5 else "")


# ---- MQTT cases ----

def cpu_s(pid):
    """CPU time (user + system, every thread) process pid has used, seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_mqtt(ctx, side, clients, per, qos, window=100, extra=()):
    """bench_mqtt's figures, and cpu_us: the server's CPU time per message during the run
    (connects included), which the machine's other load changes less than the rates."""
    with side.mqtt(ctx) as srv:
        cmd = [ctx.tool("bench_mqtt"), str(srv.mqtt_port), str(clients), str(per), str(qos),
               str(window), "--seconds", str(ctx.p["mqtt_s"])] + list(extra)
        if side.version == 5:
            cmd += ["--mqtt-version", "5"]
        c0 = cpu_s(srv.pid)
        f = kv_line(run_tool(cmd, ctx.p["mqtt_s"] + 90), "mqtt")
        f["cpu_us"] = (cpu_s(srv.pid) - c0) * 1e6 / max(f["messages"], 1)
        return f


def case_qos0(clients_key, per_key):
    def run(ctx, side):
        f = bench_mqtt(ctx, side, ctx.p[clients_key], ctx.p[per_key], 0)
        return {"rate": f["msgs_per_s"], "cpu": f["cpu_us"]}
    return run


def case_qos1(clients, window, per_key):
    def run(ctx, side):
        f = bench_mqtt(ctx, side, clients, ctx.p[per_key], 1, window)
        return {"rate": f["msgs_per_s"], "p50": f["ack_p50_ms"], "p99": f["ack_p99_ms"],
                "cpu": f["cpu_us"]}
    return run


def run_fleet(ctx, side):
    """1000 devices publishing QoS 1 (window 1) at 10k msg/s in total, Gale with
    storage.sync=normal: PUBACK p99 over the whole run and the worst 10 s window."""
    n = ctx.p["c1000"]
    secs = ctx.p["fleet_s"]
    if side.kind == "gale":
        side = Side(side.kind, side.label, side.binary, "normal")
    with side.mqtt(ctx) as srv:
        cmd = [ctx.tool("bench_mqtt"), str(srv.mqtt_port), str(n),
               str(int(secs * 10000 / n) + 1), "1", "1", "--seconds", str(secs),
               "--rate", "10000"]
        f = kv_line(run_tool(cmd, secs + 90), "mqtt")
    return {"rate": f["msgs_per_s"], "p99": f["ack_p99_ms"],
            "worst": f["ack_p99_worst_10s_ms"]}


def run_route(ctx, side):
    f = bench_mqtt(ctx, side, 10, ctx.p["route"], 0, extra=["--subscribe", "#"])
    return {"rate": f["delivered_per_s"], "fraction": f["delivered"] / max(f["messages"], 1)}


def run_shared(ctx, side):
    """10 publishers (QoS 0) to a shared subscription $share/bench/devices/+/telemetry of 3
    consumers (QoS 0): messages delivered per second, all consumers together; each message
    to one of them (the delivered fraction over 1 would show copies)."""
    f = bench_mqtt(ctx, side, 10, ctx.p["shared"], 0,
                   extra=["--subscribe", "$share/bench/devices/+/telemetry",
                          "--subscribers", "3"])
    return {"rate": f["delivered_per_s"], "fraction": f["delivered"] / max(f["messages"], 1),
            "even": f["sub_min"] / max(f["sub_max"], 1)}


def run_latency(ctx, side):
    per = int(ctx.p["lat_s"] * 1000)  # 10 publishers x 1000 msg/s
    with side.mqtt(ctx) as srv:
        cmd = [ctx.tool("bench_mqtt"), str(srv.mqtt_port), "10", str(per), "0", "100",
               "--seconds", str(ctx.p["lat_s"] + 2), "--rate", "10000", "--subscribe", "#"]
        f = kv_line(run_tool(cmd, ctx.p["lat_s"] + 90), "mqtt")
    if f["delivered"] < 0.99 * f["messages"]:
        raise Failed("only %d of %d messages delivered" % (f["delivered"], f["messages"]))
    return {"p50": f["e2e_p50_ms"], "p99": f["e2e_p99_ms"]}


# ---- TLS cases ----

def case_handshakes(rsa):
    """Full handshakes/s on Gale's MQTT TLS port vs openssl s_server, same certificate."""
    def run(ctx, side):
        ca, cert, key = tls_certs(ctx, rsa)
        srv = (GaleServer(ctx, side.binary, side.mode, tls=(cert, key)) if side.kind == "gale"
               else SServer(cert, key))
        with srv:
            port = srv.mqtts_port if side.kind == "gale" else srv.port
            cmd = [ctx.tool("bench_tls"), str(port), ca, "--inflight", str(ctx.p["tls_inflight"]),
                   "--seconds", str(ctx.p["tls_s"])]
            f = kv_line(run_tool(cmd, ctx.p["tls_s"] + 60), "tls")
        return {"rate": f["handshakes_per_s"]}
    return run


def run_tls_qos0(ctx, side):
    """MQTT QoS 0 ingest, 10 publishers, over TLS (ECDSA) on Gale vs Gale's plain port."""
    ca, cert, key = tls_certs(ctx, False)
    binary = side.binary or ctx.gale_bin
    with GaleServer(ctx, binary, side.mode, tls=(cert, key)) as srv:
        tls = side.kind == "gale"
        cmd = [ctx.tool("bench_mqtt"), str(srv.mqtts_port if tls else srv.mqtt_port), "10",
               str(ctx.p["tls_qos0"]), "0", "--seconds", str(ctx.p["mqtt_s"])]
        f = kv_line(run_tool(cmd + (["--tls", ca] if tls else []), ctx.p["mqtt_s"] + 90), "mqtt")
    return {"rate": f["msgs_per_s"]}


def device_served(port, timeout=5.0):
    """One more MQTT client (CONNECT, a QoS 1 PUBLISH) gets its CONNACK and PUBACK in time."""
    cid = b"bench-probe"
    var = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    body = b"\x00\x0bprobe/topic\x00\x01" + b"{}"
    want = b"\x20\x02\x00\x00\x40\x02\x00\x01"
    got = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(bytes([0x10, len(var)]) + var + bytes([0x32, len(body)]) + body)
            deadline = time.monotonic() + timeout
            while len(got) < len(want) and time.monotonic() < deadline:
                chunk = s.recv(64)
                if not chunk:
                    break
                got += chunk
    except OSError:
        return False
    return got[:len(want)] == want


def run_idle(ctx, side):
    n = ctx.p["idle"]
    with side.mqtt(ctx) as srv:
        time.sleep(0.5)
        before = rss_kb(srv.pid)
        p = subprocess.Popen([ctx.tool("bench_conn"), str(srv.mqtt_port), str(n),
                              str(CONNECT_INFLIGHT), "--hold-seconds", "60"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            first = p.stdout.readline()  # bench_conn gives up by itself after 60 s
            if not first.startswith("conn "):
                raise Failed("bench_conn: %s" % p.stderr.read()[-500:])
            conn = kv_line(first, "conn")
            time.sleep(1.0)  # let the server finish its per-connection setup
            after = rss_kb(srv.pid)
            if not device_served(srv.mqtt_port):
                raise Failed("a device was not served while %d connections were held" % n)
            p.stdin.write("\n")
            p.stdin.flush()
            held = kv_line(p.stdout.readline(), "held")
            p.wait(30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    if held["closed_by_server"]:
        raise Failed("the server closed %d idle connections" % held["closed_by_server"])
    return {"bytes": (after - before) * 1024.0 / n, "rate": conn["connects_per_s"]}


def run_preauth(kind):
    """10,000 unauthenticated connections (two flood.py processes of 5,000) that drip a
    byte a second from one address (slow) or each try to send a 1 MB CONNECT from twenty
    (big), while a device from 127.0.0.2 connects and publishes QoS 1 every 0.2 s: the
    worst connect + PUBACK time, the round trips that failed, and the server's RSS growth
    (peak during the flood minus before)."""
    def run(ctx, side):
        import mqttraw  # tests/integration
        n, secs = ctx.p["flood_n"], ctx.p["flood_s"]
        addrs = "127.0.0.1" if kind == "slow" else ",".join(
            "127.0.1.%d" % i for i in range(10, 30))
        with side.mqtt(ctx) as srv:
            time.sleep(0.5)
            before = peak = rss_kb(srv.pid)
            floods = [subprocess.Popen([sys.executable, os.path.join(HERE, "flood.py"),
                                        str(srv.mqtt_port), str(n // 2), kind, str(secs),
                                        addrs], stdout=subprocess.PIPE, text=True)
                      for _ in range(2)]
            worst, fails, trips, i = 0.0, 0, 0, 0
            end = time.monotonic() + secs - 1
            time.sleep(1.0)
            while time.monotonic() < end:
                i += 1
                t0 = time.monotonic()
                try:
                    s = socket.socket()
                    s.bind(("127.0.0.2", 0))
                    s.settimeout(10)
                    s.connect(("127.0.0.1", srv.mqtt_port))
                    c = mqttraw.Raw.__new__(mqttraw.Raw)
                    c.sock, c.buf = s, b""
                    if c.connect("bench-dev-%d" % i).rc != 0:
                        raise OSError("refused")
                    c.send(mqttraw.publish("devices/bench-dev/telemetry", '{"v":1}', qos=1))
                    c.recv_type(mqttraw.PUBACK)
                    c.close()
                    trips += 1
                    worst = max(worst, time.monotonic() - t0)
                except (OSError, ConnectionError):
                    fails += 1
                peak = max(peak, rss_kb(srv.pid))
                time.sleep(0.2)
            for f in floods:
                f.wait(secs + 30)
        if trips == 0:
            raise Failed("the device was never served")
        return {"worst": worst * 1000, "failed": fails, "rss": (peak - before) / 1024.0}
    return run


def run_publish_rss(ctx, side):
    """1000 publishers (QoS 0, telemetry JSON) at 10k msg/s in total: the server's RSS,
    sampled from /proc every 0.2 s while they publish; the peak, and per publisher."""
    n = ctx.p["c1000"]
    secs = ctx.p["pubrss_s"]
    with side.mqtt(ctx) as srv:
        time.sleep(0.5)
        base = rss_kb(srv.pid)
        cmd = [ctx.tool("bench_mqtt"), str(srv.mqtt_port), str(n), str(int(secs * 10000 / n) + 1),
               "0", "1", "--seconds", str(secs), "--rate", "10000"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = base
        deadline = time.monotonic() + secs + 90
        while p.poll() is None:
            if time.monotonic() > deadline:
                p.kill()
                p.wait()
                raise Failed("bench_mqtt: no result within %d s" % (secs + 90))
            peak = max(peak, rss_kb(srv.pid))
            time.sleep(0.2)
        out, err = p.communicate()
        if p.returncode != 0:
            raise Failed("bench_mqtt failed (%d): %s" % (p.returncode, err.strip()[-500:]))
    f = kv_line(out, "mqtt")
    return {"peak": peak / 1024.0, "per": (peak - base) * 1024.0 / n, "rate": f["msgs_per_s"]}


# ---- REST latest vs nginx ----

NGINX_CONF = """worker_processes 1;
daemon off;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(dir)s/tmp;
    proxy_temp_path %(dir)s/tmp;
    fastcgi_temp_path %(dir)s/tmp;
    uwsgi_temp_path %(dir)s/tmp;
    scgi_temp_path %(dir)s/tmp;
    default_type application/json;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:%(port)d;
        root %(dir)s/root;
    }
}
"""


def wrk(ctx, url):
    cmd = ["wrk", "-t1", "-c64", "-d%ds" % ctx.p["wrk_s"], "--latency",
           "-H", "Authorization: Bearer " + API_KEY, url]
    out = run_tool(cmd, ctx.p["wrk_s"] + 30)
    if "Non-2xx" in out or "Socket errors" in out:
        raise Failed("wrk saw errors:\n" + out)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m or not p99:
        raise Failed("wrk output not understood:\n" + out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    return {"rate": float(m.group(1)), "p99": float(p99.group(1)) * scale}


def gale_latest_body(srv):
    """Stores one 4-key message for REST_DEVICE and returns GET .../latest's body."""
    base = "http://127.0.0.1:%d/api/devices" % srv.http_port
    hdr = {"Authorization": "Bearer " + API_KEY, "Content-Type": "application/json"}

    def call(method, url, body=None):
        req = urllib.request.Request(url, data=body, method=method, headers=hdr)
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()
    call("POST", base, json.dumps({"id": REST_DEVICE}).encode())
    call("POST", "%s/%s/telemetry" % (base, REST_DEVICE),
         b'{"temperature":21.50,"humidity":43.0,"battery":3.300,"count":1}')
    body = call("GET", "%s/%s/latest" % (base, REST_DEVICE))
    if len(json.loads(body)) != 4:
        raise Failed("latest has not the 4 keys: %r" % body)
    return body


def run_rest(ctx, side):
    path = "/api/devices/%s/latest" % REST_DEVICE
    if side.kind == "gale":
        with GaleServer(ctx, side.binary, side.mode) as srv:
            ctx.rest_body = gale_latest_body(srv)
            return wrk(ctx, "http://127.0.0.1:%d%s" % (srv.http_port, path))
    if ctx.rest_body is None:
        raise Failed("no Gale reply to serve (the Gale run failed)")
    d = tempfile.mkdtemp(prefix="nginx-", dir=ctx.work)
    # started as root, the worker runs as nobody: let it reach the file
    os.chmod(ctx.work, 0o711)
    os.chmod(d, 0o755)
    os.makedirs(os.path.join(d, "root", os.path.dirname(path[1:])))
    os.makedirs(os.path.join(d, "tmp"))
    with open(os.path.join(d, "root", path[1:]), "wb") as f:
        f.write(ctx.rest_body)
    for sub in ("root", "root/api", "root/api/devices", "root/api/devices/" + REST_DEVICE):
        os.chmod(os.path.join(d, sub), 0o755)
    port = free_port()
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF % {"dir": d, "port": port})
    p = subprocess.Popen(["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        galetest.wait_for(lambda: port_open(port) or p.poll() is not None, 10, "nginx")
        if p.poll() is not None:
            raise Failed("nginx did not start: %s" % p.stderr.read().decode()[-500:])
        got = urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10).read()
        if got != ctx.rest_body:
            raise Failed("nginx serves other bytes than Gale")
        return wrk(ctx, "http://127.0.0.1:%d%s" % (port, path))
    finally:
        p.send_signal(signal.SIGTERM)  # the master stops its worker
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# ---- bridge to an upstream Mosquitto ----

BRIDGE = "bench"


def bridge_args(up, **kw):
    """--set bridge.upstreams for one upstream named BRIDGE at up's address."""
    conf = dict({"name": BRIDGE, "addresses": [up.uri], "keepalive_s": 10}, **kw)
    return ["--set", "bridge.upstreams=" + json.dumps([conf])]


def bridge_stats(srv):
    req = urllib.request.Request("http://127.0.0.1:%d/api/bridges" % srv.http_port,
                                 headers={"Authorization": "Bearer " + API_KEY})
    with urllib.request.urlopen(req, timeout=10) as r:
        for b in json.loads(r.read()):
            if b["name"] == BRIDGE:
                return b
    raise Failed("GET /api/bridges has no upstream %r" % BRIDGE)


def wait_stats(srv, cond, timeout, what, interval=0.02):
    """Polls GET /api/bridges until cond(stats); returns (stats, monotonic time seen)."""
    deadline = time.monotonic() + timeout
    while True:
        b = bridge_stats(srv)
        if cond(b):
            return b, time.monotonic()
        if time.monotonic() > deadline:
            raise Failed("%s: not within %d s (bridge: %s)" % (what, timeout, json.dumps(b)))
        time.sleep(interval)


def fill_backlog(ctx, srv, n):
    """n QoS 0 telemetry messages (10 publishers) into Gale while its upstream is down;
    returns once GET /api/bridges counts all n in the backlog (committed)."""
    cmd = [ctx.tool("bench_mqtt"), str(srv.mqtt_port), "10", str(n // 10), "0",
           "--seconds", "600"]
    run_tool(cmd, 700)
    b, _ = wait_stats(srv, lambda b: b["backlog"] >= n // 10 * 10, 300, "backlog filled")
    if b["backlog"] != n // 10 * 10 or b["dropped_total"]:
        raise Failed("backlog %d, dropped %d: want %d, none dropped" % (
            b["backlog"], b["dropped_total"], n // 10 * 10))
    return b["backlog"]


def run_bridge_drain(ctx, side):
    """A backlog of drain_n messages drains to a freshly started Mosquitto (drain_rate 0,
    max_inflight W): messages/s from the moment the bridge is connected until the backlog
    is 0. Reference: paho_pub, QoS 1, window W, as many messages straight to Mosquitto."""
    n, w = ctx.p["drain_n"], ctx.p["bridge_window"]
    with contextlib.closing(MosquittoUpstream()) as up:  # not started yet
        if side.kind != "gale":
            up.start()
            f = kv_line(run_tool([ctx.tool("paho_pub"), up.uri, str(n), str(w)], 600), "paho")
            return {"rate": f["msgs_per_s"]}
        with GaleServer(ctx, side.binary, side.mode,
                        extra=bridge_args(up, drain_rate=0, max_inflight=w,
                                          max_backlog_messages=2 * n)) as srv:
            n = fill_backlog(ctx, srv, n)
            up.start()
            _, t_conn = wait_stats(srv, lambda b: b["connected"], 60, "bridge connected",
                                   interval=0.005)
            b, t_done = wait_stats(srv, lambda b: b["backlog"] == 0, 900, "backlog drained",
                                   interval=0.01)
            if b["acked_total"] < n or b["dropped_total"]:
                raise Failed("drained with acked %d of %d, dropped %d" % (
                    b["acked_total"], n, b["dropped_total"]))
    return {"rate": n / max(t_done - t_conn, 1e-3)}


def run_bridge_latency(ctx, side):
    """100 devices x 100 msg/s, QoS 1, into Gale bridged to Mosquitto; a subscriber on
    Mosquitto (devices/+/telemetry, same process and clock) measures device -> subscriber
    latency. Reference: the same publishers straight to Mosquitto."""
    secs = ctx.p["bridge_lat_s"]
    per = int(secs * 100)
    with MosquittoUpstream() as up:

        def load(port):
            cmd = [ctx.tool("bench_mqtt"), str(port), "100", str(per), "1", "100",
                   "--seconds", str(secs + 2), "--rate", "10000",
                   "--subscribe", "devices/+/telemetry", "--sub-port", str(up.port)]
            return kv_line(run_tool(cmd, secs + 90), "mqtt")
        if side.kind == "gale":
            with GaleServer(ctx, side.binary, side.mode, extra=bridge_args(up)) as srv:
                wait_stats(srv, lambda b: b["connected"], 30, "bridge connected")
                f = load(srv.mqtt_port)
        else:
            f = load(up.port)
    if f["delivered"] < f["messages"]:
        raise Failed("only %d of %d messages delivered" % (f["delivered"], f["messages"]))
    return {"p50": f["e2e_p50_ms"], "p99": f["e2e_p99_ms"]}


def run_bridge_live_ack(ctx, side):
    """PUBACK latency of live QoS 1 telemetry (100 devices x 10 msg/s, window 1) into Gale
    while a backlog of live_backlog messages drains at drain_rate (Gale side) vs the same
    Gale and upstream with no backlog (reference)."""
    secs = ctx.p["live_s"]
    with contextlib.closing(MosquittoUpstream()) as up:  # not started yet
        conf = bridge_args(up, drain_rate=ctx.p["live_drain_rate"])
        with GaleServer(ctx, side.binary or ctx.gale_bin, side.mode, extra=conf) as srv:
            if side.kind == "gale":
                fill_backlog(ctx, srv, ctx.p["live_backlog"])
            up.start()
            wait_stats(srv, lambda b: b["connected"], 60, "bridge connected")
            cmd = [ctx.tool("bench_mqtt"), str(srv.mqtt_port), "100", str(int(secs * 10) + 1),
                   "1", "1", "--seconds", str(secs), "--rate", "1000"]
            f = kv_line(run_tool(cmd, secs + 90), "mqtt")
            left = bridge_stats(srv)["backlog"]
    if side.kind == "gale" and left == 0 and not ctx.smoke:
        raise Failed("the backlog was drained before the live run ended")
    return {"p50": f["ack_p50_ms"], "p99": f["ack_p99_ms"]}


# ---- live feed vs Tornado ----

def run_feed(ctx, side):
    import bench_feed
    a = types.SimpleNamespace(build=ctx.build, gale_bin=side.binary, viewers=ctx.p["feed_viewers"],
                              rate=ctx.p["feed_rate"], seconds=ctx.p["feed_s"],
                              grace=ctx.p["feed_grace"])
    res = bench_feed.run_gale(a) if side.kind == "gale" else bench_feed.run_tornado(a)
    return {"rate": res["delivered_per_s"], "fraction": res["fraction"], "p99": res["p99_ms"]}


# ---- storage vs raw SQLite ----

STORAGE_ROUND = re.compile(
    r"^round (\d+): ours acked ([\d.]+)s chunked ([\d.]+)s \| today's row layout ([\d.]+)s \|"
    r" raw row append ([\d.]+)s$", re.M)
STORAGE_DISK = re.compile(
    r"^disk: ([\d.]+) points: ours ([\d.]+) bytes/point .* today's row layout ([\d.]+)"
    r" bytes/point", re.M)
STORAGE_QUERY = re.compile(
    r"^query round (\d+): day ours ([\d.]+) ms today ([\d.]+) ms \| hourly ours ([\d.]+) ms"
    r" today ([\d.]+) ms$", re.M)
# case id -> bench_storage --parts name
STORAGE_PARTS = {"storage": "e2e", "storage-disk": "disk", "storage-query": "query"}


def run_storage(ctx, ids):
    """One bench_storage run for the storage cases in ids; it interleaves its own runs
    round by round. Returns {case id: {metric: [(gale, reference) per round]}}."""
    p = ctx.p
    pts = p["storage_points"]
    parts = [STORAGE_PARTS[i] for i in ids]
    out = run_tool([ctx.tool("bench_storage"), "--points", str(pts), "--rounds", str(ctx.rounds),
                    "--parts", ",".join(parts), "--dir", ctx.work,
                    "--disk-devices", str(p["storage_disk_devices"]),
                    "--disk-hours", str(p["storage_disk_hours"]),
                    "--query-days", str(p["storage_query_days"]),
                    "--query-reps", str(p["storage_query_reps"])], 900 + ctx.rounds * 300)
    res = {}
    if "e2e" in parts:
        rounds = [tuple(float(x) for x in m.groups()[1:]) for m in STORAGE_ROUND.finditer(out)]
        if len(rounds) != ctx.rounds or any(t < 0.001 for r in rounds for t in r):
            raise Failed("bench_storage e2e output not understood:\n" + out[-1000:])
        pps = [tuple(pts / t for t in r) for r in rounds]  # acked, chunked, today, append
        res["storage"] = {
            "ack": [(r[0], r[3]) for r in pps],    # ours acked vs raw row append
            "e2e": [(r[1], r[3]) for r in pps],    # ours chunked vs raw row append (ceiling)
            "today": [(r[1], r[2]) for r in pps],  # ours chunked vs today's row layout
        }
    if "disk" in parts:
        m = STORAGE_DISK.search(out)
        if not m:
            raise Failed("bench_storage disk output not understood:\n" + out[-1000:])
        res["storage-disk"] = {"bytes": [(float(m.group(2)), float(m.group(3)))]}
    if "query" in parts:
        rounds = [tuple(float(x) for x in m.groups()[1:]) for m in STORAGE_QUERY.finditer(out)]
        if len(rounds) != ctx.rounds or any(t <= 0 for r in rounds for t in r):
            raise Failed("bench_storage query output not understood:\n" + out[-1000:])
        qps = [tuple(1000.0 / t for t in r) for r in rounds]  # day ours, today, hourly ...
        res["storage-query"] = {
            "day": [(r[0], r[1]) for r in qps],
            "hourly": [(r[2], r[3]) for r in qps],
        }
    return res


# ---- disk ----

def fsync_probe(directory, n):
    """p50 and p99 of a 4 KiB write + fdatasync in directory's filesystem, ms."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = os.urandom(4096)
    lat = []
    try:
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, block, (i % 256) * 4096)
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


# ---- the case table ----

# metric: (key, label, higher_is_better)
RATE = ("rate", "msg/s", True)
ACKED = ("rate", "acked msg/s", True)
P50 = ("p50", "PUBACK p50 ms", False)
P99 = ("p99", "PUBACK p99 ms", False)
CPU = ("cpu", "server CPU µs/msg", False)


# group: mqtt | mqtt5 | rest | feed | storage | tls | tlsplain | bridge; synced: runs once
# per storage.sync mode; metrics: [(key, label, higher is better)]; run(ctx, side) ->
# {key: value}, or None for storage, which bench_storage interleaves by itself
Case = collections.namedtuple("Case", "id group title synced metrics run")


def cases(p):
    n1000 = p["c1000"]
    return [Case(*c) for c in [
        ("qos0-1", "mqtt", "MQTT QoS 0 ingest, 1 publisher", False, [RATE],
         case_qos0("c1", "qos0_1")),
        ("qos0-100", "mqtt", "MQTT QoS 0 ingest, 100 publishers", False, [RATE],
         case_qos0("c100", "qos0_100")),
        ("qos0-1000", "mqtt", "MQTT QoS 0 ingest, %d publishers" % n1000, False, [RATE],
         case_qos0("c1000", "qos0_1000")),
        ("qos1-w1", "mqtt", "MQTT QoS 1, 1 publisher, window 1", True, [ACKED, P50, P99],
         case_qos1(1, 1, "qos1_w1")),
        ("qos1-w32", "mqtt", "MQTT QoS 1, 1 publisher, window 32", True, [ACKED, P50, P99],
         case_qos1(1, 32, "qos1_w32")),
        ("qos1-100w1", "mqtt", "MQTT QoS 1, 100 publishers, window 1", True, [ACKED, P50, P99],
         case_qos1(100, 1, "qos1_100")),
        ("fleet", "mqtt", "MQTT QoS 1, %d devices at 10k msg/s for %g s, sync=normal"
         % (n1000, p["fleet_s"]), False,
         [("rate", "acked msg/s", True), ("p99", "PUBACK p99 ms", False),
          ("worst", "PUBACK p99 of the worst 10 s, ms", False)], run_fleet),
        ("route", "mqtt", "MQTT routing, 10 publishers to one # subscriber", False,
         [("rate", "delivered msg/s", True), ("fraction", "delivered fraction", True)],
         run_route),
        ("shared", "mqtt", "MQTT shared subscription, 10 publishers to 3 consumers of "
         "$share/bench/devices/+/telemetry", False,
         [("rate", "delivered msg/s", True), ("fraction", "delivered fraction", True),
          ("even", "least / most served consumer", True)], run_shared),
        ("latency", "mqtt", "MQTT publish-to-receive latency at 10k msg/s", False,
         [("p50", "p50 ms", False), ("p99", "p99 ms", False)], run_latency),
        ("qos0-1-v5", "mqtt5", "MQTT 5 QoS 0 ingest, 1 publisher", False, [RATE, CPU],
         case_qos0("c1", "qos0_1")),
        ("qos0-100-v5", "mqtt5", "MQTT 5 QoS 0 ingest, 100 publishers", False, [RATE, CPU],
         case_qos0("c100", "qos0_100")),
        ("qos1-w1-v5", "mqtt5", "MQTT 5 QoS 1, 1 publisher, window 1", True,
         [ACKED, P50, P99, CPU], case_qos1(1, 1, "qos1_w1")),
        ("qos1-w32-v5", "mqtt5", "MQTT 5 QoS 1, 1 publisher, window 32", True,
         [ACKED, P50, P99, CPU], case_qos1(1, 32, "qos1_w32")),
        ("idle", "mqtt", "MQTT %d idle connections, %d handshakes in flight"
         % (p["idle"], CONNECT_INFLIGHT), False,
         [("bytes", "RSS bytes/connection", False), ("rate", "connects/s", True)], run_idle),
        ("tls-rsa", "tls", "TLS handshakes/s, RSA-2048, %d in flight (MQTT TLS port)"
         % p["tls_inflight"], False, [("rate", "handshakes/s", True)], case_handshakes(True)),
        ("tls-ecdsa", "tls", "TLS handshakes/s, ECDSA P-256, %d in flight (MQTT TLS port)"
         % p["tls_inflight"], False, [("rate", "handshakes/s", True)], case_handshakes(False)),
        ("tls-qos0", "tlsplain", "MQTT QoS 0 ingest over TLS, 10 publishers (ref: plain TCP)",
         False, [RATE], run_tls_qos0),
        ("preauth-slow", "mqtt", "%d slow unauthenticated connections from one address, a "
         "device from 127.0.0.2 served" % p["flood_n"], False,
         [("worst", "worst connect+PUBACK ms", False), ("failed", "device round trips failed",
                                                         False),
          ("rss", "RSS growth MB", False)], run_preauth("slow")),
        ("preauth-1mb", "mqtt", "%d unauthenticated connections each sending a 1 MB CONNECT, a "
         "device served" % p["flood_n"], False,
         [("worst", "worst connect+PUBACK ms", False), ("failed", "device round trips failed",
                                                         False),
          ("rss", "RSS growth MB (target < 64)", False)], run_preauth("big")),
        ("publish-rss", "mqtt", "MQTT %d publishers at 10k msg/s (QoS 0) for %g s: RSS"
         % (n1000, p["pubrss_s"]), False,
         [("peak", "peak RSS MB", False), ("per", "RSS bytes/publisher above idle", False),
          ("rate", "msg/s", True)], run_publish_rss),
        ("rest", "rest", "REST latest, wrk -t1 -c64", False,
         [("rate", "requests/s", True), ("p99", "p99 ms", False)], run_rest),
        ("feed", "feed", "live feed, %d dashboards x %d msg/s" % (p["feed_viewers"],
                                                                p["feed_rate"]), False,
         [("rate", "delivered msg/s", True), ("fraction", "delivered fraction", True),
          ("p99", "p99 ms", False)], run_feed),
        ("storage", "storage", "storage, 1000 devices x 4 keys, %d points"
         % p["storage_points"], False,
         [("ack", "acked points/s (vs raw row append)", True),
          ("e2e", "end to end points/s (vs raw row append)", True),
          ("today", "end to end points/s (vs today's row layout)", True)], None),
        ("storage-disk", "storage", "storage on disk, 1 Hz fleet, %d devices x 5 keys, %g h"
         % (p["storage_disk_devices"], p["storage_disk_hours"]), False,
         [("bytes", "bytes per point, files (vs today's row layout)", False)], None),
        ("storage-query", "storage", "storage query, one series at 1 Hz", False,
         [("day", "a day raw (86,400 points), queries/s (vs today's row layout)", True),
          ("hourly", "hourly avg over %d days, queries/s (vs today's row layout)"
           % p["storage_query_days"], True)], None),
        ("bridge-drain", "bridge", "bridge: %s-message backlog drained to Mosquitto, "
         "max_inflight %d (ref: paho-mqtt-c QoS 1, same window)"
         % ("{:,}".format(p["drain_n"]), p["bridge_window"]), False,
         [("rate", "msg/s", True)], run_bridge_drain),
        ("bridge-latency", "bridge", "bridge: device -> Gale -> Mosquitto subscriber at "
         "10k msg/s, QoS 1 (ref: straight to Mosquitto)", False,
         [("p50", "p50 ms", False), ("p99", "p99 ms", False)], run_bridge_latency),
        ("bridge-live-ack", "bridge", "bridge: live QoS 1 PUBACK while a %s-message backlog "
         "drains at %d/s (ref: no backlog)" % ("{:,}".format(p["live_backlog"]),
                                               p["live_drain_rate"]), False,
         [P50, P99], run_bridge_live_ack),
    ]]


# the reference of a case when its group's is not it
CASE_REF_NAME = {"bridge-drain": "paho_pub",
                 "bridge-live-ack": "no backlog"}
REF_NAME = {"mqtt": "mosquitto", "mqtt5": "mosquitto 5.0", "rest": "nginx", "feed": "tornado",
            "storage": "raw SQLite", "tls": "s_server", "tlsplain": "Gale plain",
            "bridge": "mosquitto"}


def ref_name(cid, group):
    return CASE_REF_NAME.get(cid, REF_NAME[group])


def sync_modes(binary):
    try:
        out = subprocess.run([binary, "--config-reference"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ["n/a"]
    return ["normal", "full"] if "storage.sync" in out else ["n/a"]


def select(all_cases, spec):
    want = [w.strip() for w in spec.split(",") if w.strip()]
    known = {c.id for c in all_cases} | {c.group for c in all_cases} | {"all"}
    bad = [w for w in want if w not in known]
    if bad:
        raise SystemExit("unknown case(s) %s; known: %s" % (", ".join(bad),
                                                            ", ".join(sorted(known))))
    return [c for c in all_cases if "all" in want or c.id in want or c.group in want]


def median_or_none(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, label=""):
    if v is None:
        return "failed"
    if "fraction" in label:
        return "%.3f" % v
    if abs(v) >= 100:
        return "{:,.0f}".format(v)
    return "%.3g" % v if abs(v) < 10 else "%.1f" % v


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return "%s, %d cores, %.0f GB RAM, Linux %s" % (cpu, os.cpu_count(), mem_gb,
                                                   platform.release())


def build_type(build):
    """CMAKE_BUILD_TYPE of the build, with the sanitizers that make timings meaningless."""
    cache = {}
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            for line in f:
                m = re.match(r"(\w+):\w+=(.*)", line.strip())
                if m:
                    cache[m.group(1)] = m.group(2)
    except OSError:
        return "unknown"
    san = [k for k in ("GALE_SANITIZE", "GALE_TSAN", "GALE_FUZZ")
           if cache.get(k, "OFF").upper() in ("ON", "1", "TRUE", "YES")]
    return (cache.get("CMAKE_BUILD_TYPE") or "no build type") + "".join(" +" + k for k in san)


def versions():
    def first_line(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    import sqlite3
    try:
        import tornado
        tv = tornado.version
    except ImportError:
        tv = "?"
    return "%s; %s; Tornado %s; SQLite %s" % (first_line(["/usr/sbin/mosquitto", "-h"]),
                                             first_line(["nginx", "-v"]), tv,
                                             sqlite3.sqlite_version)


class Context:
    def __init__(self, a):
        self.build = os.path.abspath(a.build)
        self.p = dict(SCALE["smoke" if a.smoke else "full"])
        if a.fleet_seconds:
            self.p["fleet_s"] = a.fleet_seconds
        self.rounds = a.rounds
        self.smoke = a.smoke
        self.work = None  # made by main once the run starts
        self.rest_body = None
        self.certs = {}  # tls_certs: made once per run in work
        self.gale_bin = a.gale_bin[0]

    def tool(self, name):
        return os.path.join(self.build, "tests", "bench", name)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--build", default="build", help="build directory (gale, tests/bench/*)")
    ap.add_argument("--cases", default="all",
                    help="comma-separated case ids or groups (mqtt, mqtt5, rest, feed, storage, "
                         "tls, bridge)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, smoke 1)")
    ap.add_argument("--smoke", action="store_true", help="tiny counts: checks the harness")
    ap.add_argument("--gale-bin", action="append", default=[], metavar="BIN",
                    help="Gale binary (default <build>/gale); twice: compare two binaries")
    ap.add_argument("--out", help="Markdown table (default <build>/bench/last.md)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--fleet-seconds", type=float, default=None,
                    help="length of the QoS 1 fleet case (default 30; the target is 180)")
    a = ap.parse_args(argv)
    if a.rounds is None:
        a.rounds = 1 if a.smoke else 3
    if not 1 <= a.rounds <= 15:
        ap.error("--rounds must be 1..15")
    if len(a.gale_bin) > 2:
        ap.error("--gale-bin at most twice")
    if not a.gale_bin:
        a.gale_bin = [os.path.join(a.build, "gale")]
    a.gale_bin = [os.path.abspath(b) for b in a.gale_bin]
    return a


def check_tools(ctx, a, chosen):
    need = list(a.gale_bin)
    groups = {c.group for c in chosen}
    if "mqtt" in groups:
        need += [ctx.tool("bench_mqtt"), ctx.tool("bench_conn")]
        if len(a.gale_bin) == 1:
            need.append("/usr/sbin/mosquitto")
    if "mqtt5" in groups:
        need.append(ctx.tool("bench_mqtt"))
        if len(a.gale_bin) == 1:
            need.append("/usr/sbin/mosquitto")
    if "feed" in groups:
        need.append(ctx.tool("bench_feed"))
    if "tls" in groups:
        need.append(ctx.tool("bench_tls"))
    if "tlsplain" in groups:
        need.append(ctx.tool("bench_mqtt"))
    if "storage" in groups:
        need.append(ctx.tool("bench_storage"))
    if "bridge" in groups:
        need += [ctx.tool("bench_mqtt"), ctx.tool("paho_pub"), "/usr/sbin/mosquitto"]
    missing = [t for t in need if not os.access(t, os.X_OK)]
    for prog, group in (("wrk", "rest"), ("nginx", "rest"), ("openssl", "tls"),
                        ("openssl", "tlsplain")):
        if group in groups and not shutil.which(prog):
            missing.append(prog)
    if missing:
        raise SystemExit("missing: %s (make bench builds and installs them)" % ", ".join(missing))


class Plan:
    """What one invocation runs: the cases, the two sides' binaries and labels, the modes."""

    def __init__(self, a, ctx):
        self.two = len(a.gale_bin) == 2
        self.bins = a.gale_bin
        self.labels = ([os.path.relpath(b) if len(os.path.relpath(b)) < len(b) else b
                        for b in a.gale_bin] if self.two else ["Gale"])
        modes = sync_modes(a.gale_bin[0])
        self.modes = modes if not self.two or sync_modes(a.gale_bin[1]) == modes else ["n/a"]
        self.cases = select(cases(ctx.p), a.cases)
        if self.two and any(c.group == "storage" for c in self.cases):
            self.cases = [c for c in self.cases if c.group != "storage"]
            print("storage is left out: bench_storage links the build's storage, not a binary")

    def modes_of(self, synced):
        return self.modes if synced else ["-"]

    def sides(self, cid, group, mode):
        """(measured, reference) for one case in one mode; the MQTT 5 cases (group mqtt5)
        speak 5.0 to both, and with one binary add a third side, the same Gale spoken
        to in 3.1.1 (rows "vs Gale 3.1.1")."""
        v = 5 if group == "mqtt5" else 4
        gale = Side("gale", self.labels[0] + (" 5.0" if v == 5 else ""), self.bins[0], mode, v)
        if self.two:
            return [gale, Side("gale", self.labels[1] + (" 5.0" if v == 5 else ""),
                               self.bins[1], mode, v)]
        sides = [gale, Side("ref", ref_name(cid, group), version=v)]
        if v == 5:
            sides.insert(1, Side("gale", self.labels[0] + " 3.1.1", self.bins[0], mode, 4))
        return sides


def run_one(ctx, fn, side, what, errors):
    t = time.monotonic()
    try:
        r = fn(ctx, side)
    except RUN_ERRORS as e:
        errors.append("%s %s: %s" % (what, side.label, e))
        print("  FAILED " + errors[-1], flush=True)
        r = {}
    print("%-28s %-10s %5.1fs %s" % (what, side.label, time.monotonic() - t,
                                      " ".join("%s=%s" % (k, fmt(v)) for k, v in r.items())),
          flush=True)
    return r


def run_rounds(ctx, plan, results, errors, disk):
    """Every case once per round, measured side then reference; storage last (it
    interleaves its own rounds). results[(case, mode)][metric] = [(ours, ref) per round]."""
    for rnd in range(1, ctx.rounds + 1):
        disk.append(fsync_probe(ctx.work, ctx.p["fsync_n"]))
        print("round %d: disk 4 KiB write+fdatasync p50 %.3f ms p99 %.3f ms" %
              ((rnd,) + disk[-1]), flush=True)
        for cid, group, title, synced, metrics, fn in plan.cases:
            for mode in plan.modes_of(synced) if fn else []:
                what = "round %d %s %s" % (rnd, cid, mode)
                got = [run_one(ctx, fn, side, what, errors)
                       for side in plan.sides(cid, group, mode)]
                # the reference is the last side; a middle one (Gale 3.1.1) has its own rows
                for rid, ref in [(cid, got[-1])] + [(cid + V311, g) for g in got[1:-1]]:
                    row = results.setdefault((rid, mode), {})
                    for key, _, _ in metrics:
                        row.setdefault(key, []).append((got[0].get(key), ref.get(key)))
    ids = [c.id for c in plan.cases if c.run is None]
    if ids:
        t = time.monotonic()
        try:
            for cid, row in run_storage(ctx, ids).items():
                results[(cid, "-")] = row
        except RUN_ERRORS as e:
            errors.append("storage: %s" % e)
            print("  FAILED " + errors[-1], flush=True)
        print("storage (%d rounds inside bench_storage) %.1fs" %
              (ctx.rounds, time.monotonic() - t), flush=True)


# results key suffix of a MQTT 5 case's rows against the same Gale in 3.1.1
V311 = "@3.1.1"


def render(ctx, plan, results, errors, disk, command, elapsed):
    """The Markdown report: machine, command, the table, the disk, failures."""
    ref_hdr = plan.labels[1] if plan.two else "Reference"
    lines = ["| Case | Mode | Metric | %s | %s | Ratio | Per-round ratios |"
             % (plan.labels[0], ref_hdr), "|---|---|---|---:|---:|---:|---|"]
    for cid, group, title, synced, metrics, fn in plan.cases:
        for mode in plan.modes_of(synced):
            refs = [(cid, "" if plan.two else " (%s)" % ref_name(cid, group))]
            if (cid + V311, mode) in results:
                refs.append((cid + V311, " (%s 3.1.1)" % plan.labels[0]))
            for rid, ref_label in refs:
                row = results.get((rid, mode), {})
                for key, label, higher in metrics:
                    pairs = row.get(key, [])
                    ratios = [g / r if g is not None and r else None for g, r in pairs]
                    mr = median_or_none(ratios)
                    lines.append("| %s | %s | %s%s | %s | %s%s | %s | %s |" % (
                        title, mode, label, "" if higher else " ↓",
                        fmt(median_or_none(g for g, _ in pairs), label),
                        fmt(median_or_none(r for _, r in pairs), label), ref_label,
                        "%.2f×" % mr if mr is not None else "failed",
                        ", ".join("%.2f" % x if x is not None else "failed" for x in ratios)))
    head = ["Machine: %s; Gale build: %s." % (machine(), build_type(ctx.build)),
            ("Binaries: %s." % " vs ".join(plan.bins)) if plan.two else
            ("References: %s." % versions()),
            "Command: `%s` (%d round%s%s, %.0f s)." % (command, ctx.rounds,
                                                       "s" if ctx.rounds > 1 else "",
                                                       ", smoke counts" if ctx.smoke else "",
                                                       elapsed),
            "Ratio = median of the per-round ratios %s / %s; ↓ = lower is better." %
            (plan.labels[0], plan.labels[1] if plan.two else "reference"), ""]
    tail = ["", "Disk (filesystem of the data directories): 4 KiB write + fdatasync"
            " p50 %.3f ms, p99 %.3f ms (median over %d round%s)." %
            (statistics.median(x[0] for x in disk), statistics.median(x[1] for x in disk),
             len(disk), "s" if len(disk) > 1 else "")]
    if errors:
        tail += ["", "Failed runs:"] + ["- " + e.replace("\n", " ")[:300] for e in errors]
    return "\n".join(head + lines + tail) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    ctx = Context(a)
    if a.list:
        for c in cases(ctx.p):
            print("%-11s %-8s %s" % (c.id, c.group, c.title))
        return 0
    plan = Plan(a, ctx)
    check_tools(ctx, a, plan.cases)
    bt = build_type(ctx.build)
    if not bt.startswith(("Release", "RelWithDebInfo")) or "+" in bt:
        print("warning: %s is a %s build; timings will not mean much" % (ctx.build, bt))
    out_md = a.out or os.path.join(ctx.build, "bench",
                                   "last-compare.md" if plan.two else "last.md")
    results, errors, disk = {}, [], []
    t0 = time.monotonic()
    ctx.work = tempfile.mkdtemp(prefix="gale-bench-")
    print("%s vs %s; sync modes: %s; %d rounds; work dir %s" %
          (plan.bins[0], plan.bins[1] if plan.two else "references", ", ".join(plan.modes),
           ctx.rounds, ctx.work), flush=True)
    try:
        run_rounds(ctx, plan, results, errors, disk)
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    command = " ".join(["python3 tests/bench/run.py"] + argv)
    if os.environ.get("MAKELEVEL"):  # the Makefile passes --build and BENCH_ARGS
        extra = [x for x in argv if x not in ("--build", a.build)]
        command = "make bench" + (' BENCH_ARGS="%s"' % " ".join(extra) if extra else "")
    text = render(ctx, plan, results, errors, disk, command, time.monotonic() - t0)
    print("\n" + text)
    os.makedirs(os.path.dirname(os.path.abspath(out_md)), exist_ok=True)
    with open(out_md, "w") as f:
        f.write(text)
    with open(os.path.splitext(out_md)[0] + ".json", "w") as f:
        json.dump({"%s/%s" % k: v for k, v in results.items()}, f, indent=1)
    print("written: %s" % out_md)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
