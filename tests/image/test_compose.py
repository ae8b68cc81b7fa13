#!/usr/bin/python3
"""docker/compose.yaml run with podman-compose the way the README says: Gale, the
upstream Mosquitto its bridge forwards to, and a gale-sim fleet. Within a minute of `up`
the dashboard's data API shows live data (the fleet's devices provisioned, a device's
latest values moving), the upstream receives the fleet's telemetry (mosquitto_sub on
its published port) and Prometheus has scraped Gale's fleet metrics; `down` then `up`
keeps the data (the named volume) and the fleet carries on. Ports are published on 127.0.0.1 only (free ones, through the compose file's
PUBLISH_* variables) and the project has a name of its own; `down -v` at the end removes
its containers, network and volume.

usage: test_compose.py [--work DIR]"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import podman  # noqa: E402
from galetest import Check, wait_for  # noqa: E402

t = Check("test_compose")
COMPOSE = os.path.join(ROOT, "docker", "compose.yaml")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, path, key=None, timeout=5):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path))
    if key:
        req.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except (OSError, ValueError):
        return 0, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "image"))
    opts = ap.parse_args()
    t_start = time.monotonic()
    env = podman.configure(opts.work)
    podman.base_image(env, opts.work)

    section = podman.readme_section("Docker Compose")
    cmds = podman.readme_commands(section)
    up = podman.find_command(cmds, "docker", "compose", "-f", "docker/compose.yaml", "up")
    key_cmd = podman.find_command(cmds, "docker", "compose", "-f", "docker/compose.yaml", "exec")
    down = podman.find_command(cmds, "docker", "compose", "-f", "docker/compose.yaml", "down")

    # Gale's image as the compose file names it, built the README's way (podman-compose
    # cannot pass the build secret; the layers are the ones test_image.py built)
    p, build_s = podman.build_gale(env, "gale")
    if p.returncode != 0:
        print(p.stdout[-6000:])
    t.eq(p.returncode, 0, "the compose file's gale image built")
    if p.returncode != 0:
        return

    project = "galeci%d" % os.getpid()
    ports = {k: free_port() for k in ("HTTP", "MQTT", "LINE", "UPSTREAM", "PROMETHEUS")}
    cenv = dict(env, BUILDAH_FORMAT="docker", SIM_DEVICES="6", SIM_RATE="2")
    cenv.pop("GALE_HTTP_API_KEY", None)
    for k, v in ports.items():
        cenv["PUBLISH_" + k] = "127.0.0.1:%d" % v

    def compose(argv, timeout=600, check=True):
        """A README `docker compose -f docker/compose.yaml ...` line with podman-compose,
        under this test's project name."""
        assert argv[:4] == ["docker", "compose", "-f", "docker/compose.yaml"], argv
        cmd = ["podman-compose", "-p", project, "-f", COMPOSE] + argv[4:]
        return podman.run(cmd, env=cenv, timeout=timeout, check=check)

    try:
        t0 = time.monotonic()
        compose(up)
        print("compose: up in %.0f s" % (time.monotonic() - t0), flush=True)
        check_stack(compose, key_cmd, ports, first=True)
        compose(down, timeout=180)
        gone = podman.run(["podman", "ps", "-a", "--filter", "label=io.podman.compose.project="
                           + project, "--format", "{{.Names}}"], env=env).stdout.split()
        t(gone == [], "down removed the containers (%s)" % gone)
        t0 = time.monotonic()
        compose(up)
        print("compose: up again in %.0f s" % (time.monotonic() - t0), flush=True)
        check_stack(compose, key_cmd, ports, first=False)
    finally:
        compose(down + ["-v"], timeout=180, check=False)
        podman.run(["podman", "volume", "rm", "-f", "%s_gale-data" % project], env=env,
                   check=False)
        # podman-compose 1.0.3's down leaves the project's network
        podman.run(["podman", "network", "rm", "-f", "%s_default" % project], env=env,
                   check=False)
    print("compose: test done in %.0f s" % (time.monotonic() - t_start), flush=True)


STATE = {}


def check_stack(compose, key_cmd, ports, first):
    deadline = time.monotonic() + 60  # "within a minute": from `up` returning
    hp = ports["HTTP"]
    wait_for(lambda: http(hp, "/api/ready")[0] == 200, 60, "Gale ready", interval=0.5)
    out = compose(key_cmd, timeout=60).stdout  # podman-compose also echoes its commands
    keys = re.findall(r"^(gk_[0-9a-f]{48})\r?$", out, re.M)
    t(len(keys) == 1, "API key read: %r" % out[-300:])
    key = keys[0] if keys else ""
    if first:
        STATE["key"] = key
    else:
        t.eq(key, STATE["key"], "the same generated key after down and up")

    # the upstream: what the bridge forwards under fleet/
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(ports["UPSTREAM"]),
                            "-t", "fleet/devices/+/telemetry", "-v", "-C", "10", "-W", "60"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def fleet():
            st, js = http(hp, "/api/devices", key)
            if st != 200:
                return None
            items = js.get("devices", js) if isinstance(js, dict) else js
            ids = sorted(d["id"] for d in items if d["id"].startswith("sim-"))
            return ids if len(ids) == 6 else None
        ids = wait_for(fleet, max(1, deadline - time.monotonic()),
                       "the fleet's 6 devices provisioned", interval=0.5)
        dev = ids[0]

        def fresh(after_ms):
            st, js = http(hp, "/api/devices/%s/latest" % dev, key)
            if st != 200 or not js:
                return None
            newest = max(v["ts"] for v in js.values())
            return js if newest > after_ms else None
        now_ms = int(time.time() * 1000)
        v1 = wait_for(lambda: fresh(now_ms - 5000), max(1, deadline - time.monotonic()),
                      "live values of %s" % dev, interval=0.5)
        ts1 = max(v["ts"] for v in v1.values())
        v2 = wait_for(lambda: fresh(ts1), max(1, deadline - time.monotonic()),
                      "%s's latest values moving" % dev, interval=0.5)
        t(v2 is not None, "live data on the dashboard's API: %s" % sorted(v2))
        if first:
            STATE["dev"], STATE["ts1"] = dev, ts1
        else:
            st, js = http(hp, "/api/devices/%s/telemetry?from=0&to=%d&limit=100000"
                          % (STATE["dev"], STATE["ts1"]), key)
            pts = [p for series in (js or {}).values() if isinstance(series, list)
                   for p in series]
            t(st == 200 and any(p["ts"] == STATE["ts1"] for p in pts),
              "data from before down still there (%d points up to %d)"
              % (len(pts), STATE["ts1"]))
        out, _ = sub.communicate(timeout=max(5, deadline - time.monotonic() + 5))
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(timeout=10)
    lines = [x for x in (out or "").splitlines() if x.startswith("fleet/devices/sim-")]
    t(len(lines) >= 10, "the upstream received the fleet's telemetry (%d messages: %s)"
      % (len(lines), lines[:2]))

    def scraped():
        q = urllib.parse.quote('gale_connections_by_protocol{job="gale",protocol="mqtt"}')
        st, js = http(ports["PROMETHEUS"], "/api/v1/query?query=" + q)
        res = (js or {}).get("data", {}).get("result", []) if st == 200 else []
        return res if res and float(res[0]["value"][1]) > 0 else None
    res = wait_for(scraped, max(1, deadline - time.monotonic()),
                   "Prometheus scraping Gale's fleet connections", interval=1)
    t(res is not None, "Prometheus has Gale's metrics: %s" % res)
    t(time.monotonic() <= deadline + 5, "all of it within a minute of up")


if __name__ == "__main__":
    t.run(main)
