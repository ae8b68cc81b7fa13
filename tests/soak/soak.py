#!/usr/bin/python3
"""tests/soak/soak.py: a soak of the real gateway under a steady mixed load.

Starts build/gale on free loopback ports with its data directory in OUT/data,
provisions DEVICES devices and one application client through REST (POST
/api/devices with the API key), and runs soak_load (tests/soak/soak_load.c) for
SECONDS: the devices send RATE messages/s in total, paced, as MQTT QoS 0, MQTT QoS 1
and line-protocol devices (--mix), an application client subscribed to "#" and a
/ws/live viewer read along, and a thread here makes REST reads (latest, telemetry
queries, a multi-device aggregate) at --rest-rate requests/s. Every second it records
the gateway's RSS, the size of gale.db-wal and gale.db, and soak_load's counts and
ack latencies (PUBACK and line {"ack":N}, p50/p99 of that second) into OUT/soak.csv.

After the run (and a drain of at most --drain seconds for the last acks) every value
of every acknowledged message is read back over REST
(GET /api/devices/<id>/telemetry?keys=n,temp,hum,bat) and checked; then the gateway
gets SIGTERM and must exit 0. It prints a summary (peak RSS, peak WAL, database bytes
per point stored, PUBACK p99 per minute), writes OUT/summary.json and draws
OUT/soak.png (matplotlib).

It fails (exit 1, each reason on its own FAIL: line) when
  - the gateway's peak RSS passes --rss-bound-mib,
  - the WAL passes its bound: storage.wal_max_bytes of the gateway's configuration when
    that key exists, else --wal-bound-mib (64), plus --wal-margin-mib (16),
  - any minute's PUBACK or line-ack p99 passes --ack-p99-bound-ms (1000),
  - fewer than --min-rate (0.9) of RATE messages/s were sent,
  - a QoS 1 or line message is not acknowledged by the end of the drain, a QoS 0
    publisher's final PINGRESP does not come, a connection is refused or closed,
  - an acknowledged value is missing or wrong when read back,
  - a REST read fails, or the gateway does not stop cleanly.
Everything runs on 127.0.0.1 and stops by itself: connecting is bounded (60 s), the
run by SECONDS + the drain, the read-back by --verify-timeout.
"""
import argparse
import csv
import http.client
import json
import os
import random
import secrets
import select
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import galetest  # noqa: E402

MIB = 1024 * 1024
KEYS = ("n", "temp", "hum", "bat")


def expected(k):
    """The values soak_load sends in message k (see soak_load.c)."""
    return {"n": k, "temp": 15.0 + (k % 200) / 10.0, "hum": (7 * k) % 100,
            "bat": 3.0 + (k % 1000) / 1000.0}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default where there is one (not for flags, nor for None)."""

    def _get_help_string(self, action):
        if action.default in (None, False, []):
            return action.help
        return super()._get_help_string(action)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--build", default="build", help="build directory (gale, tests/soak/soak_load)")
    ap.add_argument("--gale-bin", help="the gateway binary (default BUILD/gale)")
    ap.add_argument("--load-bin", help="soak_load (default BUILD/tests/soak/soak_load)")
    ap.add_argument("--out", help="output directory (default BUILD/soak)")
    ap.add_argument("--seconds", type=float, default=60, help="seconds of load")
    ap.add_argument("--devices", type=int, default=1000, help="devices provisioned and publishing")
    ap.add_argument("--rate", type=float, default=10000, help="messages/s, all devices together")
    ap.add_argument("--mix", default="q0=3,q1=4,line=3",
                    help="shares of MQTT QoS 0, MQTT QoS 1 and line-protocol devices")
    ap.add_argument("--drain", type=float, default=30, help="seconds to wait for the last acks")
    ap.add_argument("--window", type=int, default=64,
                    help="unacknowledged messages a QoS 1 or line device may have")
    ap.add_argument("--rest-rate", type=float, default=20, help="REST reads/s during the run")
    ap.add_argument("--no-feed", action="store_true", help="no /ws/live viewer")
    ap.add_argument("--no-sub", action="store_true", help="no '#' subscriber")
    ap.add_argument("--rss-bound-mib", type=float, default=256, help="the gateway's peak RSS")
    ap.add_argument("--wal-bound-mib", type=float, default=64,
                    help="WAL bound when the gateway has no storage.wal_max_bytes")
    ap.add_argument("--wal-margin-mib", type=float, default=16, help="added to the WAL bound")
    ap.add_argument("--ack-p99-bound-ms", type=float, default=1000,
                    help="PUBACK and line-ack p99 of every minute")
    ap.add_argument("--min-rate", type=float, default=0.9, help="fraction of RATE to reach")
    ap.add_argument("--verify-timeout", type=float,
                    help="seconds for reading every value back (default 120 + SECONDS)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="gateway configuration (repeatable), e.g. storage.sync=normal")
    ap.add_argument("--no-plot", action="store_true", help="CSV and summary only")
    ap.add_argument("--keep-data", action="store_true", help="keep OUT/data afterwards")
    a = ap.parse_args()
    a.gale_bin = a.gale_bin or os.path.join(a.build, "gale")
    a.load_bin = a.load_bin or os.path.join(a.build, "tests", "soak", "soak_load")
    a.out = a.out or os.path.join(a.build, "soak")
    if a.verify_timeout is None:
        a.verify_timeout = 120 + a.seconds
    mix = {}
    for part in a.mix.split(","):
        k, _, v = part.partition("=")
        if k not in ("q0", "q1", "line") or not v.isdigit():
            ap.error("--mix: want q0=N,q1=N,line=N, got %r" % a.mix)
        mix[k] = int(v)
    if sum(mix.values()) == 0:
        ap.error("--mix: all shares are 0")
    a.mix = mix
    if a.seconds <= 0 or a.devices < 1 or a.rate <= 0 or a.drain < 0:
        ap.error("--seconds, --devices and --rate must be positive")
    return a


def kinds_for(n, mix):
    """n device kinds in the proportions of mix, interleaved (device i gets the kind
    that keeps every prefix closest to the proportions)."""
    order = [k for k in ("q0", "q1", "line") if mix.get(k)]
    total = sum(mix[k] for k in order)
    got = {k: 0 for k in order}
    out = []
    for i in range(n):
        k = max(order, key=lambda k: mix[k] * (i + 1) / total - got[k])
        got[k] += 1
        out.append(k)
    return out


class Rest:
    """One keep-alive HTTP connection to the gateway (reconnects once on a closed one)."""

    def __init__(self, port, key, timeout=30):
        self.port, self.key, self.timeout = port, key, timeout
        self.conn = None

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": "Bearer " + self.key}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                payload = r.read()
                return r.status, payload, r
            except (http.client.HTTPException, ConnectionError, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn:
            self.conn.close()


def provision(port, key, ids, kinds, app_id, threads=4):
    """Creates every device (and the application client) with a token of ours;
    returns {id: token}."""
    tokens = {i: secrets.token_urlsafe(24) for i in ids + [app_id]}
    errors = []

    def work(part):
        rest = Rest(port, key)
        try:
            for dev in part:
                body = {"id": dev, "token": tokens[dev]}
                if dev == app_id:
                    body["role"] = "app"
                st, payload, _ = rest.request("POST", "/api/devices", body)
                if st != 201:
                    errors.append("POST /api/devices %s: %d %s" % (dev, st, payload[:200]))
                    return
        finally:
            rest.close()

    everything = ids + [app_id]
    parts = [everything[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=work, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    if errors or any(t.is_alive() for t in ts):
        raise AssertionError("provisioning failed: %s" % (errors[:3] or "timed out"))
    return tokens


class RestReader(threading.Thread):
    """REST reads during the run, paced at rate/s: a device's latest values, a
    device's last 10 s of one key, and every fifth time a 1 s average over 8 devices.
    Counts per second, latency and failures."""

    def __init__(self, port, key, ids, rate):
        super().__init__(daemon=True)
        self.rest = Rest(port, key, timeout=10)
        self.ids, self.rate = ids, rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.lat = []        # ms of the reads since the last take()
        self.count = 0
        self.failures = []   # (what, why), the first few
        self.failed = 0
        self.rng = random.Random(7)

    def one(self, i):
        dev = self.rng.choice(self.ids)
        if i % 5 == 4:
            devs = ",".join(self.rng.sample(self.ids, min(8, len(self.ids))))
            path = "/api/telemetry?devices=%s&keys=temp&agg=avg&interval=1s&from=-1m" % devs
        elif i % 2:
            path = "/api/devices/%s/telemetry?keys=temp&from=-10s" % dev
        else:
            path = "/api/devices/%s/latest" % dev
        t = time.monotonic()
        try:
            st, payload, _ = self.rest.request("GET", path)
            ok = st == 200 and isinstance(json.loads(payload), dict)
            why = "status %d: %s" % (st, payload[:120])
        except Exception as e:  # a failed read is a finding, not a crash of the soak
            ok, why = False, repr(e)
        ms = (time.monotonic() - t) * 1e3
        with self.lock:
            self.count += 1
            self.lat.append(ms)
            if not ok:
                self.failed += 1
                if len(self.failures) < 5:
                    self.failures.append((path, why))

    def run(self):
        t0 = time.monotonic()
        i = 0
        while not self.stop.is_set():
            due = t0 + i / self.rate
            wait = due - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                break
            self.one(i)
            # a read slower than the pace skips the slots it missed instead of bursting
            i = max(i + 1, int((time.monotonic() - t0) * self.rate))
        self.rest.close()

    def take(self):
        with self.lock:
            lat, n = sorted(self.lat), self.count
            self.lat, self.count = [], 0
        p99 = round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3) if lat else None
        return n, p99


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def proc_status(pid):
    """(VmRSS, VmHWM) in bytes, or (0, 0) once the process is gone."""
    rss = hwm = 0
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


def proc_cpu_s(pid):
    """User + system CPU seconds of the process so far."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


SCRAPED = {"gale_storage_queued_rows": "queued_rows",
           "gale_storage_hot_points": "hot_points",
           "gale_storage_ingest_paused": "ingest_paused",
           "gale_storage_commit_seconds_count": "commits"}


def scrape(rest):
    """The storage gauges of GET /metrics (None when it fails)."""
    try:
        st, payload, _ = rest.request("GET", "/metrics")
    except Exception:
        return None
    if st != 200:
        return None
    out = {}
    for line in payload.decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        if name in SCRAPED:
            try:
                out[SCRAPED[name]] = float(value)
            except ValueError:
                pass
    return out


class Sampler(threading.Thread):
    """Samples the gateway every second of the clock, whatever the rest of the soak is
    doing: RSS, the database and WAL file sizes, CPU and the machine's load average; a
    second thread scrapes the storage gauges of /metrics, so a slow answer delays no
    sample. latest() is the last sample; peaks are kept here."""

    def __init__(self, pid, port, key, db_path, wal_path):
        super().__init__(daemon=True)
        self.pid, self.db_path, self.wal_path = pid, db_path, wal_path
        self.rest = Rest(port, key, timeout=5)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sample = {}
        self.metrics = {}  # the last scrape: gauges, and commits/s between the last two
        self.peak = {"rss": 0, "wal": 0, "db": 0}

    def one(self, last):
        now, cpu = time.monotonic(), proc_cpu_s(self.pid)
        rss, _ = proc_status(self.pid)
        smp = {"rss_bytes": rss, "wal_bytes": file_size(self.wal_path),
               "db_bytes": file_size(self.db_path), "load1": load1(), "t": now, "cpu": cpu}
        if cpu is not None and last.get("cpu") is not None:
            smp["gale_cpu_pct"] = round(100 * (cpu - last["cpu"]) / (now - last["t"]), 1)
        with self.lock:
            smp.update(self.metrics)
            self.sample = smp
            for k in ("rss", "wal", "db"):
                self.peak[k] = max(self.peak[k], smp[k + "_bytes"])
        return smp

    def scraper(self):
        last = None
        while not self.stop.is_set():
            t = time.monotonic()
            m = scrape(self.rest) or {}
            got = {k: m.get(k) for k in ("queued_rows", "hot_points", "ingest_paused")}
            if m.get("commits") is not None:
                if last is not None:
                    got["commits"] = round((m["commits"] - last[1]) / (t - last[0]), 1)
                last = (t, m["commits"])
            with self.lock:
                self.metrics = got
            self.stop.wait(max(0.0, t + 1 - time.monotonic()))
        self.rest.close()

    def run(self):
        threading.Thread(target=self.scraper, daemon=True).start()
        last = self.one({})
        t = time.monotonic()
        while not self.stop.wait(max(0.0, t + 1 - time.monotonic())):
            t = max(t + 1, time.monotonic() - 1)
            last = self.one(last)

    def latest(self):
        with self.lock:
            return dict(self.sample)


def gateway_config(gale_bin, args, env):
    """The gateway's effective configuration (gale --check-config with the same flags)."""
    r = subprocess.run([gale_bin, "--check-config"] + args, env=env, capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError("gale --check-config failed:\n" + r.stdout + r.stderr)
    return json.loads(r.stdout)


def fmt_ms(v):
    return "-" if v is None else "%.3g" % v if v < 100 else "%.0f" % v


def parse_ranges(s):
    if s == "-":
        return []
    out = []
    for part in s.split(","):
        a, _, b = part.partition("-")
        out.append((int(a), int(b)))
    return out


def read_back(port, key, acked_path, deadline):
    """Reads every device's values back; returns (findings, stats). A finding is a
    string naming what is missing or wrong."""
    findings = []
    stats = {"points": 0, "acked_msgs": 0, "q0_sent": 0, "q0_stored": 0, "missing": 0}
    rest = Rest(port, key, timeout=60)
    with open(acked_path) as f:
        rows = [line.split() for line in f if line.strip()]
    for dev, kind, sent, ranges in rows:
        sent = int(sent)
        series = {k: {} for k in KEYS}   # key -> {ts: value}
        cursor = None
        while True:
            if time.monotonic() > deadline:
                raise AssertionError("reading back took longer than --verify-timeout")
            q = {"keys": ",".join(KEYS), "limit": "100000"}
            if cursor:
                q["cursor"] = cursor
            st, payload, _ = rest.request("GET", "/api/devices/%s/telemetry?%s"
                                          % (dev, urllib.parse.urlencode(q)))
            if st != 200:
                raise AssertionError("GET telemetry of %s: %d %s" % (dev, st, payload[:200]))
            js = json.loads(payload)
            for k in KEYS:
                for p in js.get(k, []):
                    series[k][p["ts"]] = p["value"]
            cursor = js.get("_next")
            if not cursor:
                break
        stats["points"] += sum(len(v) for v in series.values())
        by_k = {}
        for ts, v in series["n"].items():
            if not isinstance(v, (int, float)) or v != int(v) or not 0 <= v < sent:
                findings.append("%s: n=%r at ts %d was never sent" % (dev, v, ts))
                continue
            by_k.setdefault(int(v), []).append(ts)
        for k, tss in by_k.items():
            if len(tss) > 1:
                findings.append("%s: message %d stored %d times" % (dev, k, len(tss)))
        if kind == "q0":
            stats["q0_sent"] += sent
            stats["q0_stored"] += len(by_k)
        bad_here = 0
        for a, b in parse_ranges(ranges):
            for k in range(a, b + 1):
                stats["acked_msgs"] += 1
                tss = by_k.get(k)
                if not tss:
                    bad_here += 1
                    if bad_here <= 3:
                        findings.append("%s: acked message %d (n=%d) is missing" % (dev, k, k))
                    continue
                want = expected(k)
                for key_ in KEYS[1:]:
                    got = series[key_].get(tss[0])
                    if got is None or abs(got - want[key_]) > 1e-9 * max(1, abs(want[key_])):
                        bad_here += 1
                        if bad_here <= 3:
                            findings.append("%s: acked message %d: %s is %r, sent %r"
                                            % (dev, k, key_, got, want[key_]))
        stats["missing"] += bad_here
    rest.close()
    return findings, stats


def plot(path, rows, a, bounds, verdict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nan = float("nan")
    t = [r["sec"] + 1 for r in rows]  # each row is the second that ends there
    drain_at = next((r["sec"] for r in rows if r["phase"] == "drain"), None)

    def col(name, scale=1.0):
        return [nan if r.get(name) in (None, "") else float(r[name]) / scale for r in rows]

    fig, ax = plt.subplots(3, 2, figsize=(13, 12), sharex=True)
    twins = []
    fig.suptitle("Gale soak: %d devices, %.0f msg/s target, %.0f s  (%s)"
                 % (a.devices, a.rate, a.seconds, verdict), fontsize=13)

    p = ax[0][0]
    p.plot(t, col("rss_bytes", MIB), label="gateway RSS", color="tab:blue")
    p.axhline(bounds["rss"] / MIB, color="tab:red", ls="--", lw=1,
              label="bound %.0f MiB" % (bounds["rss"] / MIB))
    p.set_title("Memory")
    p.set_ylabel("RSS (MiB)")
    p.set_ylim(bottom=0)

    p = ax[0][1]
    p.plot(t, col("wal_bytes", MIB), label="gale.db-wal", color="tab:orange")
    p.plot(t, col("db_bytes", MIB), label="gale.db", color="tab:green")
    p.axhline(bounds["wal"] / MIB, color="tab:red", ls="--", lw=1,
              label="WAL bound %.0f MiB" % (bounds["wal"] / MIB))
    p.set_title("Storage files")
    p.set_ylabel("size (MiB)")
    p.set_ylim(bottom=0)

    p = ax[1][0]
    # both kinds wait for the same commits and often coincide: PUBACK wide underneath
    for name, label, style in (("puback_p99_ms", "PUBACK p99", "-"),
                               ("puback_p50_ms", "PUBACK p50", "--"),
                               ("line_p99_ms", "line ack p99", "-"),
                               ("line_p50_ms", "line ack p50", "--")):
        puback = name.startswith("puback")
        p.plot(t, col(name), label=label, ls=style, color="tab:purple" if puback else "gold",
               lw=3 if puback else 1.2, alpha=0.55 if puback else 1)
    p.axhline(a.ack_p99_bound_ms, color="tab:red", ls="--", lw=1,
              label="p99 bound %.0f ms" % a.ack_p99_bound_ms)
    p.set_yscale("log")
    p.set_title("Ack latency per second")
    p.set_ylabel("ms (log)")

    p = ax[1][1]
    p.plot(t, col("sent"), label="sent", color="tab:blue")
    acked = [(r["acked_q1"] or 0) + (r["acked_line"] or 0) for r in rows]
    p.plot(t, acked, label="acked (QoS 1 + line)", color="tab:green")
    p.plot(t, col("sub_rx"), label="'#' subscriber received", color="tab:gray", lw=1)
    p.plot(t, col("feed_rx"), label="/ws/live received", color="tab:olive", lw=1)
    p.axhline(a.rate, color="black", ls=":", lw=1, label="target %.0f/s" % a.rate)
    p.axhline(a.rate * a.min_rate, color="tab:red", ls="--", lw=1,
              label="%.0f %% of target" % (a.min_rate * 100))
    p.set_title("Throughput")
    p.set_ylabel("messages/s")
    p.set_ylim(bottom=0)

    p = ax[2][0]
    p.plot(t, col("gale_cpu_pct"), label="gateway CPU (100 = one core)", color="tab:blue")
    p.set_title("CPU")
    p.set_ylabel("gateway CPU %")
    p.set_xlabel("seconds since the load started")
    p.set_ylim(bottom=0)
    q = p.twinx()
    q.plot(t, col("load1"), label="machine load average (right)", color="tab:gray", lw=1)
    q.set_ylabel("load average (runnable tasks)")
    q.set_ylim(bottom=0)
    twins.append((p, q))

    p = ax[2][1]
    p.plot(t, col("queued_rows"), label="rows queued for the writer", color="tab:red")
    p.plot(t, col("commits"), label="commits/s", color="tab:green")
    p.set_title("Storage writer")
    p.set_ylabel("rows, commits/s")
    p.set_xlabel("seconds since the load started")
    p.set_ylim(bottom=0)
    q = p.twinx()
    q.plot(t, col("hot_points", 1e6), label="hot points, not yet chunked (right)",
           color="tab:cyan")
    q.set_ylabel("hot points (millions)")
    q.set_ylim(bottom=0)
    twins.append((p, q))

    for row in ax:
        for p in row:
            if drain_at is not None:
                p.axvline(drain_at, color="gray", lw=0.8, ls="-.")
            p.grid(True, alpha=0.3)
            if not any(p is tp for tp, _ in twins):
                p.legend(fontsize=8, loc="best")
    for p, q in twins:  # one legend for both axes
        h1, l1 = p.get_legend_handles_labels()
        h2, l2 = q.get_legend_handles_labels()
        p.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    a = parse_args()
    failures = []
    for path in (a.gale_bin, a.load_bin):
        if not os.access(path, os.X_OK):
            sys.exit("soak: %s is missing (build it: make soak, or cmake --build BUILD "
                     "--target gale soak_load with -DGALE_TESTS=ON)" % path)
    if not a.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.exit("soak: matplotlib is missing (sh .ci/setup.sh soak-deps installs "
                     "python3-matplotlib), or run with --no-plot")
    os.makedirs(a.out, exist_ok=True)
    data_dir = os.path.join(a.out, "data")
    shutil.rmtree(data_dir, ignore_errors=True)
    os.makedirs(data_dir)
    csv_path = os.path.join(a.out, "soak.csv")
    png_path = os.path.join(a.out, "soak.png")
    for p in (csv_path, png_path, os.path.join(a.out, "summary.json")):
        if os.path.exists(p):
            os.remove(p)
    api_key = secrets.token_hex(16)
    gale_args = []
    for kv in a.set:
        gale_args += ["--set", kv]

    env = dict(os.environ, GALE_HTTP_API_KEY=api_key)
    cfg = gateway_config(a.gale_bin, ["--data-dir", data_dir] + gale_args, env)
    wal_max = cfg.get("storage", {}).get("wal_max_bytes")
    if isinstance(wal_max, (int, float)) and wal_max > 0:
        wal_base, wal_src = wal_max, "storage.wal_max_bytes"
    else:
        wal_base, wal_src = a.wal_bound_mib * MIB, "--wal-bound-mib"
    bounds = {"rss": a.rss_bound_mib * MIB, "wal": wal_base + a.wal_margin_mib * MIB}
    db_path = cfg.get("storage", {}).get("path") or os.path.join(data_dir, "gale.db")
    wal_path = db_path + "-wal"

    galetest.GALE_BIN = os.path.abspath(a.gale_bin)
    gale = galetest.Gale(data_dir=data_dir, args=gale_args, api_key=api_key)
    gale.start(wait_ports=("http", "line", "mqtt"))
    load = None
    reader = None
    sampler = None
    rows, minutes, summary = [], [], None
    stats = {}
    peak = {"rss": 0, "wal": 0, "db": 0}
    try:
        ids = ["soak-%04d" % i for i in range(a.devices)]
        kinds = kinds_for(a.devices, a.mix)
        t = time.monotonic()
        tokens = provision(gale.ports["http"], api_key, ids, kinds, "soak-app")
        print("soak: provisioned %d devices in %.1f s (%s); gateway pid %d, data in %s"
              % (a.devices, time.monotonic() - t,
                 ", ".join("%s %d" % (k, kinds.count(k)) for k in ("q0", "q1", "line")),
                 gale.proc.pid, data_dir), flush=True)
        dev_path = os.path.join(a.out, "devices.txt")
        acked_path = os.path.join(a.out, "acked.txt")
        with open(dev_path, "w") as f:
            for dev, kind in zip(ids, kinds):
                f.write("%s %s %s\n" % (dev, tokens[dev], kind))
        cmd = [a.load_bin, "--mqtt-port", str(gale.ports["mqtt"]),
               "--line-port", str(gale.ports["line"]), "--http-port", str(gale.ports["http"]),
               "--api-key", api_key, "--devices", dev_path, "--rate", str(a.rate),
               "--seconds", str(a.seconds), "--drain", str(a.drain), "--window", str(a.window),
               "--acked", acked_path]
        if not a.no_sub:
            cmd += ["--sub", "soak-app", tokens["soak-app"]]
        if not a.no_feed:
            cmd += ["--feed"]
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        reader = RestReader(gale.ports["http"], api_key, ids, a.rest_rate)
        sampler = Sampler(gale.proc.pid, gale.ports["http"], api_key, db_path, wal_path)
        sampler.start()
        deadline = time.monotonic() + 60 + a.seconds + a.drain + 30
        with open(csv_path, "w", newline="") as f:
            fields = ["sec", "phase", "rss_bytes", "wal_bytes", "db_bytes", "sent", "sent_q0",
                      "sent_q1", "sent_line", "acked_q1", "acked_line", "puback_p50_ms",
                      "puback_p99_ms", "line_p50_ms", "line_p99_ms", "sub_rx", "feed_rx",
                      "feed_dropped", "owed", "unacked", "late_ms", "rest_reads", "rest_p99_ms",
                      "gale_cpu_pct", "load1", "commits", "queued_rows", "hot_points",
                      "ingest_paused"]
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("soak_load did not finish in time")
                if not select.select([load.stdout], [], [], min(left, 5))[0]:
                    if not gale.alive():
                        raise AssertionError("the gateway exited during the run:\n"
                                             + gale.log()[-3000:])
                    continue
                line = load.stdout.readline()
                if not line:
                    break
                js = json.loads(line)
                if js.get("event") == "ready":
                    reader.start()
                    print("soak: %d clients connected; load running for %.0f s"
                          % (js["clients"], a.seconds), flush=True)
                elif "sec" in js:
                    smp = sampler.latest()
                    for k in ("rss_bytes", "wal_bytes", "db_bytes", "gale_cpu_pct", "load1",
                              "commits", "queued_rows", "hot_points", "ingest_paused"):
                        js[k] = smp.get(k)
                    js["rest_reads"], js["rest_p99_ms"] = reader.take()
                    rows.append(js)
                    w.writerow(js)
                    f.flush()
                    if js["sec"] % 10 == 9:
                        print("soak: t=%3ds sent %5d/s  PUBACK p99 %s ms  RSS %.1f MiB  "
                              "WAL %.1f MiB  db %.1f MiB" %
                              (js["sec"] + 1, js["sent"], js["puback_p99_ms"],
                               (js["rss_bytes"] or 0) / MIB, (js["wal_bytes"] or 0) / MIB,
                               (js["db_bytes"] or 0) / MIB), flush=True)
                    if (sampler.peak["wal"] > 4 * bounds["wal"]
                            or sampler.peak["rss"] > 4 * bounds["rss"]):
                        failures.append("stopped early: WAL or RSS past 4x its bound")
                        break
                elif "minute" in js:
                    minutes.append(js)
                elif js.get("summary"):
                    summary = js
        if load.poll() is None:
            load.kill()
        rc = load.wait(30)
        sampler.stop.set()
        sampler.join(15)
        peak.update(sampler.peak)
        reader.stop.set()
        if reader.ident is not None:
            reader.join(15)
        if rc != 0 or summary is None:
            failures.append("soak_load exited %s before its summary (see its message above)"
                            % rc)
        _, hwm = proc_status(gale.proc.pid)
        peak["rss"] = max(peak["rss"], hwm)
        if summary is not None:
            t = time.monotonic()
            findings, stats = read_back(gale.ports["http"], api_key, acked_path,
                                        time.monotonic() + a.verify_timeout)
            stats["verify_s"] = round(time.monotonic() - t, 1)
            for fnd in findings[:20]:
                print("soak: " + fnd)
            if findings:
                failures.append("%d acked values missing or wrong when read back"
                                % stats["missing"] if stats["missing"] else
                                "read-back found %d problems" % len(findings))
        stats["db_bytes_end"] = file_size(db_path)
        stats["wal_bytes_end"] = file_size(wal_path)
    except AssertionError as e:  # a deadline passed or the gateway died: judged below
        failures.append(str(e))
    finally:
        if load and load.poll() is None:
            load.kill()
            load.wait()
        if reader:
            reader.stop.set()
        if sampler:
            sampler.stop.set()
            peak.update(sampler.peak)
        rc = None
        try:
            rc = gale.stop(timeout=60)
        except AssertionError as e:
            failures.append(str(e))
    if rc != 0:
        failures.append("the gateway's exit status is %r, not the 0 of a clean SIGTERM stop; its "
                        "log ends:\n%s" % (rc, gale.log()[-3000:]))
    stats["db_bytes_stopped"] = file_size(db_path)
    stats["wal_bytes_stopped"] = file_size(wal_path)

    # ---- judge ----
    if peak["rss"] > bounds["rss"]:
        failures.append("peak RSS %.1f MiB is over the bound of %.0f MiB"
                        % (peak["rss"] / MIB, bounds["rss"] / MIB))
    if peak["wal"] > bounds["wal"]:
        failures.append("peak WAL %.1f MiB is over the bound of %.1f MiB (%s %.1f MiB + margin "
                        "%.0f MiB)" % (peak["wal"] / MIB, bounds["wal"] / MIB, wal_src,
                                       wal_base / MIB, a.wal_margin_mib))
    for m in minutes:
        for kind, name in (("PUBACK", "puback_p99_ms"), ("line ack", "line_p99_ms")):
            if m.get(name) is not None and m[name] > a.ack_p99_bound_ms:
                failures.append("minute %d: %s p99 %.1f ms is over the bound of %.0f ms"
                                % (m["minute"], kind, m[name], a.ack_p99_bound_ms))
    if summary:
        if summary["rate"] < a.min_rate * a.rate:
            failures.append("sent %.0f msg/s, under %.0f %% of the target %.0f msg/s"
                            % (summary["rate"], a.min_rate * 100, a.rate))
        if summary["unacked"]:
            failures.append("%d QoS 1 / line messages were not acknowledged within the %.0f s "
                            "drain" % (summary["unacked"], a.drain))
        if summary["q0_unconfirmed_devices"]:
            failures.append("%d QoS 0 publishers got no PINGRESP within the drain"
                            % summary["q0_unconfirmed_devices"])
        if not a.no_sub and summary["sub_rx"] == 0:
            failures.append("the '#' subscriber received nothing")
        if not a.no_feed and summary["feed_rx"] == 0:
            failures.append("the /ws/live viewer received nothing")
    if reader and reader.failed:
        failures.append("%d REST reads failed, e.g. %s" % (reader.failed, reader.failures[:2]))

    points = stats.get("points", 0)
    files_end = stats.get("db_bytes_end", 0) + stats.get("wal_bytes_end", 0)
    files_stopped = stats["db_bytes_stopped"] + stats["wal_bytes_stopped"]
    result = {
        "verdict": "FAIL" if failures else "PASS",
        "failures": failures,
        "parameters": {"seconds": a.seconds, "devices": a.devices, "rate": a.rate,
                       "mix": a.mix, "drain": a.drain, "window": a.window,
                       "rest_rate": a.rest_rate, "set": a.set},
        "bounds": {"rss_bytes": bounds["rss"], "wal_bytes": bounds["wal"],
                   "wal_source": wal_src, "ack_p99_ms": a.ack_p99_bound_ms,
                   "min_rate": a.min_rate * a.rate},
        "peak_rss_bytes": peak["rss"], "peak_wal_bytes": peak["wal"],
        "peak_db_bytes": peak["db"],
        "points_stored": points,
        "db_bytes_per_point_end": files_end / points if points else None,
        "db_bytes_per_point_stopped": files_stopped / points if points else None,
        "minutes": minutes, "load": summary, "read_back": stats,
    }
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(result, f, indent=1)
    if rows and not a.no_plot:
        plot(png_path, rows, a, bounds, result["verdict"])

    print("\n==== soak summary (%s) ====" % result["verdict"])
    print("load:        %d devices (%s), %.0f s at a target of %.0f msg/s"
          % (a.devices, ", ".join("%s %d" % (k, v) for k, v in a.mix.items()), a.seconds,
             a.rate))
    if summary:
        print("sent:        %d messages, %.0f msg/s; acked %d QoS 1 + %d line, %d unacked; "
              "not sent (behind schedule) %d"
              % (summary["sent"], summary["rate"], summary["acked_q1"], summary["acked_line"],
                 summary["unacked"], summary["not_sent"]))
        print("readers:     '#' subscriber %d messages, /ws/live %d (dropped %d); the load "
              "generator used %.1f s of CPU"
              % (summary["sub_rx"], summary["feed_rx"], summary["feed_dropped"],
                 summary.get("cpu_s", 0)))
        print("ack latency: PUBACK p50 %s / p99 %s ms; line p50 %s / p99 %s ms (whole run)"
              % tuple(fmt_ms(summary[k]) for k in ("puback_p50_ms", "puback_p99_ms",
                                                   "line_p50_ms", "line_p99_ms")))
    for kind, name in (("PUBACK", "puback_p99_ms"), ("line-ack", "line_p99_ms")):
        print("%s p99 per minute (ms): %s"
              % (kind, ", ".join("m%d %s" % (m["minute"], fmt_ms(m[name])) for m in minutes)
                 or "-"))
    print("peak RSS:    %.1f MiB (bound %.0f MiB)" % (peak["rss"] / MIB, bounds["rss"] / MIB))
    print("peak WAL:    %.1f MiB (bound %.1f MiB from %s)"
          % (peak["wal"] / MIB, bounds["wal"] / MIB, wal_src))
    print("database:    %.1f MiB db + %.1f MiB WAL at the end, %.1f MiB after the stop"
          % (stats.get("db_bytes_end", 0) / MIB, stats.get("wal_bytes_end", 0) / MIB,
             files_stopped / MIB))
    if points:
        print("bytes/point: %.2f (db+wal at the end / %d points stored), %.2f after the stop"
              % (files_end / points, points, files_stopped / points))
    if "acked_msgs" in stats:
        print("read back:   %d acked messages x 4 values checked, %d missing or wrong; "
              "QoS 0 stored %d of %d sent (%.1f s)"
              % (stats["acked_msgs"], stats["missing"], stats["q0_stored"], stats["q0_sent"],
                 stats["verify_s"]))
    if reader:
        print("REST reads:  %d failed" % reader.failed)
    print("output:      %s, %s%s" % (csv_path, os.path.join(a.out, "summary.json"),
                                     "" if a.no_plot or not rows else ", " + png_path))
    for fl in failures:
        print("FAIL: " + fl)
    if not a.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
