#!/usr/bin/python3
"""MQTT benchmarks only: tests/bench/run.py --cases mqtt,mqtt5, with the same options.

    /usr/bin/python3 tests/bench/run_mqtt.py [--build DIR] [--rounds N] [--smoke]
    /usr/bin/python3 tests/bench/run_mqtt.py --gale-bin NEW --gale-bin OLD [--build DIR]

With one binary (default <build>/gale) every MQTT case runs against Debian's Mosquitto;
with two, NEW and OLD run interleaved in one run (NEW, OLD, NEW, OLD, ...) and the
ratio is NEW / OLD: a change's before and after on the same machine at the same time.
The load generators come from --build either way. See run.py for the cases (mqtt5: the
QoS 0 and QoS 1 cases in MQTT 5.0, against Gale in 3.1.1 as well)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if any(a == "--cases" or a.startswith("--cases=") for a in args):
        sys.exit("run_mqtt.py runs the MQTT cases; use run.py --cases to choose others")
    sys.exit(run.main(["--cases", "mqtt,mqtt5"] + args))
