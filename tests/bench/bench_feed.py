#!/usr/bin/python3
"""tests/bench/bench_feed.py: live-feed fan-out, Gale vs Tornado 6, same run.

N dashboard WebSocket clients subscribed to everything; one device sends telemetry
at R msg/s for S seconds over a WebSocket; every message must reach every viewer.
Both servers get the same input through the same kind of path (one WebSocket
ingest connection, JSON text frames: Gale's /ws/device, tornado_feed.py's
/ws/device) and are measured by the same C client (bench_feed: epoll, one thread
for the viewers, one for the publisher). Rounds are interleaved (gale, tornado,
gale, tornado, ...); the summary gives medians and ratios.

    /usr/bin/python3 tests/bench/bench_feed.py --build build-rel [--rounds 3]
        [--viewers 1000] [--rate 1000] [--seconds 10]

Needs a built gale and tests/bench/bench_feed in --build, and python3-tornado.
Loopback only; every process is stopped at the end."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import galetest  # noqa: E402

KEY = "bench-api-key-0123456789"


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_client(a, port, ingest, live):
    cmd = [os.path.join(a.build, "tests", "bench", "bench_feed"), "--port", str(port),
           "--viewers", str(a.viewers), "--rate", str(a.rate), "--seconds", str(a.seconds),
           "--grace", str(a.grace), "--ingest-path", ingest, "--live-path", live]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds + a.grace + 120)
    if out.returncode != 0:
        raise RuntimeError("bench_feed failed: %s" % out.stderr)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["client_stderr"] = out.stderr.strip()[-300:]
    return res


def run_gale(a):
    galetest.GALE_BIN = os.path.abspath(getattr(a, "gale_bin", None) or
                                        os.path.join(a.build, "gale"))
    with galetest.Gale(api_key=KEY, args=["--set", "limits.max_connections=20000"]) as g:
        tok = g.create_device("bench")
        pid = g.proc.pid
        c0 = cpu_s(pid)
        res = run_client(a, g.ports["http"], "/ws/device?device=bench&token=" + tok,
                         "/ws/live?api_key=" + KEY)
        res["server_cpu_s"] = cpu_s(pid) - c0
        res["server_rss_mb"] = rss_mb(pid)
        st, text = g.http("GET", "/metrics")
        for line in text.splitlines():
            if line.startswith(("gale_feed_sent_total ", "gale_feed_dropped_total ")):
                k, v = line.split()
                res[k] = int(float(v))
    return res


def run_tornado(a):
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "tornado_feed.py"),
                          "--port", "0", "--api-key", KEY], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        port = int(line.split("port=")[1])
        c0 = cpu_s(p.pid)
        res = run_client(a, port, "/ws/device", "/ws/live?api_key=" + KEY)
        res["server_cpu_s"] = cpu_s(p.pid) - c0
        res["server_rss_mb"] = rss_mb(p.pid)
    finally:
        p.kill()
        p.wait()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--viewers", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--grace", type=int, default=5)
    a = ap.parse_args()
    runs = {"gale": [], "tornado": []}
    for r in range(a.rounds):
        for name, fn in (("gale", run_gale), ("tornado", run_tornado)):
            res = fn(a)
            runs[name].append(res)
            print("round %d %-7s delivered/s=%9.0f fraction=%.4f p50=%8.2f ms p99=%8.2f ms "
                  "max=%8.2f ms server_cpu=%.1f s rss=%.0f MB %s" %
                  (r + 1, name, res["delivered_per_s"], res["fraction"], res["p50_ms"],
                   res["p99_ms"], res["max_ms"], res["server_cpu_s"], res["server_rss_mb"],
                   json.dumps({k: v for k, v in res.items() if k.startswith("gale_")})),
                  flush=True)
            time.sleep(1)
    med = {n: {k: statistics.median(x[k] for x in rs)
               for k in ("delivered_per_s", "fraction", "p50_ms", "p99_ms", "max_ms",
                         "server_cpu_s")}
           for n, rs in runs.items()}
    print("\n| %d viewers, %d msg/s, %d s, median of %d | delivered msg/s | delivered fraction "
          "| p50 ms | p99 ms | server CPU s |" % (a.viewers, a.rate, a.seconds, a.rounds))
    print("|---|---|---|---|---|---|")
    for n in ("gale", "tornado"):
        m = med[n]
        print("| %s | %.0f | %.4f | %.2f | %.2f | %.1f |" % (n, m["delivered_per_s"], m["fraction"],
                                                           m["p50_ms"], m["p99_ms"],
                                                           m["server_cpu_s"]))
    g, t = med["gale"], med["tornado"]
    print("\nratio gale/tornado delivered msg/s: %.1fx; tornado/gale p99 latency: %.1fx"
          % (g["delivered_per_s"] / max(t["delivered_per_s"], 1),
             t["p99_ms"] / max(g["p99_ms"], 1e-3)))


if __name__ == "__main__":
    main()
