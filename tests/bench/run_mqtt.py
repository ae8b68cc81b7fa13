#!/usr/bin/env python3
"""MQTT publish throughput, Gale side by side with Mosquitto, in one run.

    /usr/bin/python3 tests/bench/run_mqtt.py [--build DIR] [--clients 100]
        [--qos0-msgs N] [--qos1-msgs N] [--window 100] [--rounds 3]

Starts Gale (mqtt.allow_anonymous on, so the bench-<i> clients' telemetry on
devices/bench-<i>/telemetry is decoded and stored: each device registers itself on
first sight) and Debian's Mosquitto (/usr/sbin/mosquitto, a temporary config: loopback
listener on a free port, allow_anonymous true, persistence false), then runs
tests/bench/bench_mqtt (CLIENTS publishers, 64-byte JSON telemetry) for QoS 0 and
QoS 1 against each, interleaved (gale, mosquitto, gale, mosquitto, ...) for ROUNDS
rounds, and prints every run, then the medians and the ratio gale/mosquitto.

What is measured: QoS 0 ends when every client's trailing PINGREQ is answered (the
server has read everything); QoS 1 when every PUBACK is in, and Gale acknowledges
telemetry only once its batch is committed to SQLite, while Mosquitto stores nothing.
Bounded: each bench run gives up after 120 s; the defaults take about 1-2 minutes."""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from mosquitto import Mosquitto  # noqa: E402


def start_gale(build, tmp):
    os.environ.setdefault("GALE_BIN", os.path.join(build, "gale"))
    import galetest  # noqa: E402  (after GALE_BIN is set)
    galetest.GALE_BIN = os.environ["GALE_BIN"]
    g = galetest.Gale(data_dir=os.path.join(tmp, "gale"),
                      args=["--set", "mqtt.allow_anonymous=true"])
    os.makedirs(g.data_dir, exist_ok=True)
    g.start(wait_ports=("mqtt",))
    return g, g.ports["mqtt"]


def run_bench(bench, port, clients, msgs, qos, window):
    cmd = [bench, str(port), str(clients), str(msgs), str(qos), str(window)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), r.stderr.strip()))
    fields = dict(kv.split("=") for kv in r.stdout.split()[1:])
    return float(fields["msgs_per_s"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="build directory (gale, tests/bench)")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--qos0-msgs", type=int, default=20000, help="messages per client, QoS 0")
    ap.add_argument("--qos1-msgs", type=int, default=5000, help="messages per client, QoS 1")
    ap.add_argument("--window", type=int, default=100, help="QoS 1 in-flight per client")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    bench = os.path.join(build, "tests", "bench", "bench_mqtt")
    tmp = tempfile.mkdtemp(prefix="gale-bench-mqtt-")
    g = None
    results = {}
    try:
        with Mosquitto() as mosq:
            g, gport = start_gale(build, tmp)
            servers = [("gale", gport), ("mosquitto", mosq.port)]
            print("clients=%d qos0=%d/client qos1=%d/client window=%d rounds=%d" %
                  (a.clients, a.qos0_msgs, a.qos1_msgs, a.window, a.rounds))
            for rnd in range(a.rounds):
                for qos, msgs in ((0, a.qos0_msgs), (1, a.qos1_msgs)):
                    for name, port in servers:
                        rate = run_bench(bench, port, a.clients, msgs, qos, a.window)
                        results.setdefault((name, qos), []).append(rate)
                        print("round %d qos %d %-9s %10.0f msgs/s" % (rnd + 1, qos, name, rate),
                              flush=True)
            if not g.alive():
                raise RuntimeError("gale died:\n" + g.log()[-3000:])
    finally:
        if g:
            g.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| QoS | Gale msgs/s (median) | Mosquitto msgs/s (median) | Gale / Mosquitto |")
    print("|-----|---------------------:|--------------------------:|-----------------:|")
    for qos in (0, 1):
        gm = statistics.median(results[("gale", qos)])
        mm = statistics.median(results[("mosquitto", qos)])
        print("| %d   | %20.0f | %25.0f | %16.2f |" % (qos, gm, mm, gm / mm))


if __name__ == "__main__":
    main()
