#!/usr/bin/python3
"""One device streaming N telemetry lines over the raw TCP line protocol, every
line with "seq"; lines/s from the first byte until the last {"ack":N} (durable
in SQLite). Reference in the same run: one MQTT client publishing the same
number of QoS 1 messages to Mosquitto (persistence off), messages/s until the
last PUBACK. Runs interleaved (gale, mosquitto, ...) and prints medians.

  python3 tests/bench/run_line.py [BUILD_DIR] [--rounds 3] [--n 100000]
"""
import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_build = next((x for x in sys.argv[1:] if not x.startswith("-")), "build")
os.environ.setdefault("GALE_BIN", os.path.abspath(os.path.join(_build, "gale")))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from galetest import Gale  # noqa: E402
from mosquitto import Mosquitto  # noqa: E402


def parse_rate(out, key):
    for tok in out.split():
        if tok.startswith(key + "="):
            return float(tok.split("=", 1)[1])
    raise RuntimeError("no %s in %r" % (key, out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build", nargs="?", default="build")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=100000)
    a = ap.parse_args()
    bench_line = os.path.join(a.build, "tests/bench/bench_line")
    bench_mqtt = os.path.join(a.build, "tests/bench/bench_mqtt")
    ours, ref = [], []
    for r in range(a.rounds):
        with Gale() as g:
            tok = g.create_device("bench-line")
            out = subprocess.run([bench_line, str(g.ports["line"]), "bench-line", tok, str(a.n)],
                                 capture_output=True, text=True, timeout=180, check=True).stdout
            ours.append(parse_rate(out, "lines_per_s"))
        with Mosquitto() as m:
            out = subprocess.run([bench_mqtt, str(m.port), "1", str(a.n), "1", "1000"],
                                 capture_output=True, text=True, timeout=180, check=True).stdout
            ref.append(parse_rate(out, "msgs_per_s"))
        print("round %d: gale %.0f lines/s, mosquitto %.0f msgs/s" % (r + 1, ours[-1], ref[-1]),
              flush=True)
    mo, mr = statistics.median(ours), statistics.median(ref)
    print()
    print("| one device, %d messages, acked | median per s | ratio |" % a.n)
    print("|---|---|---|")
    print("| gale line protocol (ack = durable in SQLite) | %.0f | %.2f |" % (mo, mo / mr))
    print("| mosquitto QoS 1, window 1000 (persistence off) | %.0f | 1.00 |" % mr)


if __name__ == "__main__":
    main()
