#!/usr/bin/python3
"""Bytes per point as the files on disk count them: the real gateway ingests a 1 Hz
fleet over the line protocol and, after each round of acknowledged lines, the sizes of
gale.db and gale.db-wal are taken and divided by the points stored so far.

Workload (like bench_storage's disk part): DEVICES devices x 5 keys at 1 Hz for HOURS of
device time (ts 1 s apart, a few ms of jitter): temp and hum (slowly varying floats with
noise at two decimals), count (a counter with integer increments, sometimes 0), door (a
boolean) and state (a string of ok/warn/idle that changes rarely). Every device sends
ROUND seconds of lines per round, the last one with a seq; the next round starts once
every device's previous round is acknowledged (durable), so the points stored at each
sample are known exactly.

Prints per sample: points stored, gale.db, gale.db-wal, (gale.db + wal) / points, and
the bytes per point the files grew by since the middle of the run (the steady-state cost
of a further point, without the fixed part: the WAL bound and the segment log). Then
stops the gateway with SIGTERM and prints gale.db / points (the WAL is gone).

  python3 tests/bench/disk_files.py [BUILD_DIR] [--devices 200] [--hours 6] [--round 300]
                                    [--set key=value ...]
"""
import argparse
import json
import os
import random
import re
import select
import shutil
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
_build = next((x for x in sys.argv[1:] if not x.startswith("-")), "build")
os.environ.setdefault("GALE_BIN", os.path.abspath(os.path.join(_build, "gale")))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from galetest import Gale  # noqa: E402

TS0 = 1700000000000
STATES = ("ok", "warn", "idle")


class Device:
    def __init__(self, i, rng):
        self.rng = rng
        self.temp = 20.0 + rng.uniform(-3, 3)
        self.hum = 45.0 + rng.uniform(-10, 10)
        self.count = 0
        self.door = False
        self.state = 0
        self.name = "dev-%04d" % i

    def lines(self, t0, secs, seq):
        r = self.rng
        out = []
        for s in range(t0, t0 + secs):
            self.temp += r.gauss(0, 0.02)
            self.hum += r.gauss(0, 0.05)
            self.count += r.choice((0, 1, 1, 2))
            if r.random() < 0.01:
                self.door = not self.door
            if r.random() < 0.001:
                self.state = r.randrange(3)
            out.append('{"ts":%d,"values":{"temp":%.2f,"hum":%.2f,"count":%d,"door":%s,'
                       '"state":"%s"}' % (TS0 + s * 1000 + r.randrange(5),
                                          self.temp + r.uniform(-0.05, 0.05), self.hum,
                                          self.count, "true" if self.door else "false",
                                          STATES[self.state]))
            out[-1] += ',"seq":%d}\n' % seq if s == t0 + secs - 1 else "}\n"
        return "".join(out)


def sizes(data_dir):
    def size(p):
        try:
            return os.stat(p).st_size
        except FileNotFoundError:
            return 0
    db = os.path.join(data_dir, "gale.db")
    return size(db), size(db + "-wal")


def wait_acks(clients, seq, timeout=300):
    """Every client's {"ack":seq} or a later one (acks come in order)."""
    want = {c.sock.fileno(): c for c in clients if getattr(c, "acked", 0) < seq}
    deadline = time.monotonic() + timeout
    while want:
        if time.monotonic() > deadline:
            raise RuntimeError("acks for round %d missing from %d devices" % (seq, len(want)))
        ready, _, _ = select.select(list(want), [], [], 1.0)
        for fd in ready:
            c = want[fd]
            c.sock.settimeout(10)
            chunk = c.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed by gale")
            c.buf += chunk
            while b"\n" in c.buf:
                line, c.buf = c.buf.split(b"\n", 1)
                js = json.loads(line)
                if "ack" not in js:
                    raise RuntimeError("unexpected reply %r" % line)
                c.acked = js["ack"]
            if getattr(c, "acked", 0) >= seq:
                del want[fd]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build", nargs="?", default="build")
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--hours", type=float, default=6)
    ap.add_argument("--round", type=int, default=300, help="seconds of device time per round")
    ap.add_argument("--set", action="append", default=[], help="gateway config key=value")
    a = ap.parse_args()
    args = []
    for kv in a.set:
        args += ["--set", kv]
    secs = int(a.hours * 3600)
    rounds = (secs + a.round - 1) // a.round
    rng = random.Random(1)
    devs = [Device(i, rng) for i in range(a.devices)]
    print("disk_files: %d devices x 5 keys at 1 Hz for %.2f h = %d points, %d rounds" %
          (a.devices, a.hours, a.devices * secs * 5, rounds), flush=True)
    g = Gale(args=args).start()
    try:
        clients = [g.line(d.name, g.create_device(d.name)) for d in devs]
        print("| points stored | gale.db | gale.db-wal | (db + wal) / point | since mid-run"
              " / point | wal peak |")
        print("|---|---|---|---|---|---|")
        t_start = time.monotonic()
        stored, mid, wal_peak = 0, None, 0
        for r in range(rounds):
            t0 = r * a.round
            n = min(a.round, secs - t0)
            for d, c in zip(devs, clients):
                c.send(d.lines(t0, n, r + 1))
            if r > 0:
                wait_acks(clients, r)
                stored = a.devices * t0 * 5
            db, wal = sizes(g.data_dir)
            wal_peak = max(wal_peak, wal)
            if r == rounds // 2:
                mid = (stored, db + wal)
            if r > 0 and (r % max(1, rounds // 8) == 0):
                marg = ("%.2f" % ((db + wal - mid[1]) / (stored - mid[0]))
                        if mid and stored > mid[0] else "-")
                print("| %d | %d | %d | %.2f | %s | %d |" % (stored, db, wal, (db + wal) / stored,
                                                             marg, wal_peak), flush=True)
        wait_acks(clients, rounds)
        stored = a.devices * secs * 5
        elapsed = time.monotonic() - t_start
        db, wal = sizes(g.data_dir)
        wal_peak = max(wal_peak, wal)
        marg = (db + wal - mid[1]) / (stored - mid[0]) if mid else float("nan")
        print("| %d | %d | %d | %.2f | %.2f | %d |" % (stored, db, wal, (db + wal) / stored,
                                                       marg, wal_peak))
        print("ingest: %.0f points/s (%.1f s)" % (stored / elapsed, elapsed))
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % g.ports["http"]) as r:
            m = dict(re.findall(r"^(gale_storage_wal_\w+) (\S+)$", r.read().decode(), re.M))
        print("wal: " + " ".join("%s=%s" % (k[len("gale_storage_wal_"):], v)
                                for k, v in sorted(m.items())), flush=True)
        for c in clients:
            c.close()
        rc = g.stop()
        db, wal = sizes(g.data_dir)
        print("after SIGTERM (exit %s): gale.db %d bytes = %.2f bytes/point, gale.db-wal %d"
              " bytes" % (rc, db, db / stored, wal), flush=True)
    finally:
        if g.alive():
            g.kill9()
        shutil.rmtree(g.data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
