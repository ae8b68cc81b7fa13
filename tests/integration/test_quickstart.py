"""The README's quick start runs as written: its first ```sh block under "Quick start" is
taken from README.md verbatim and run with bash -e in a fresh directory (so ./data is new),
and what it prints must show the device added, its MQTT and line-protocol telemetry
acknowledged and read back. What differs in a test is outside the block: `make` is a
stand-in that runs the gale under test as `make run` does (`gale --data-dir ./data`;
building and apt-get are not a test's business), and the ports come from the GALE_*_PORT
variables that Gale and the block both honour (loopback only). A block that reads the API
key before Gale wrote it, or loses any step, prints something else and fails. Gale is
stopped by its pid at the end, whatever happened. The Makefile's part is checked apart:
`make run` sets up with .ci/setup.sh run-deps, which installs the clients the block uses."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from galetest import GALE_BIN, Check

t = Check("test_quickstart")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

MAKE_SHIM = """#!/bin/sh
# stands in for the repository's Makefile: `make run` runs the gale under test
case "$1" in
run) echo $$ > "$QS_PIDFILE"; exec "$QS_GALE" --data-dir ./data ;;
setup) exit 0 ;;
*) echo "make (test stand-in): no target $1" >&2; exit 2 ;;
esac
"""


def quickstart_block():
    readme = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"^## Quick start.*?^```sh\n(.*?)^```", readme, re.S | re.M)
    assert m, "no ```sh block under a '## Quick start' heading"
    return m.group(1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def stop(pid):
    """SIGTERM, then SIGKILL after 20 s: gale must not outlive the test."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def run_block():
    block = quickstart_block()
    work = tempfile.mkdtemp(prefix="gale-quickstart-")
    shim_dir = os.path.join(work, ".bin")
    os.mkdir(shim_dir)
    with open(os.path.join(shim_dir, "make"), "w") as f:
        f.write(MAKE_SHIM)
    os.chmod(os.path.join(shim_dir, "make"), 0o755)
    pidfile = os.path.join(shim_dir, "gale.pid")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALE_")}
    env.update({"PATH": shim_dir + ":" + env.get("PATH", "/usr/bin:/bin"),
                "QS_GALE": os.path.abspath(GALE_BIN), "QS_PIDFILE": pidfile})
    for proto in ("HTTP", "LINE", "MQTT"):
        env["GALE_%s_PORT" % proto] = str(free_port())
        env["GALE_%s_BIND" % proto] = "127.0.0.1"
    pid = None
    try:
        t(not os.path.exists(os.path.join(work, "data")), "the data directory is fresh")
        p = subprocess.run(["bash", "-e", "-c", block], cwd=work, env=env, capture_output=True,
                           text=True, timeout=180)
        if os.path.exists(pidfile):
            pid = int(open(pidfile).read())
        out = p.stdout
        log = open(os.path.join(work, "gale.log")).read() if os.path.exists(
            os.path.join(work, "gale.log")) else ""
        if p.returncode != 0 or os.environ.get("GALE_TEST_VERBOSE"):
            print("---- block ----\n%s---- stdout ----\n%s---- stderr ----\n%s---- gale.log ----\n%s"
                  % (block, out, p.stderr, log[-4000:]))
        t.eq(p.returncode, 0, "the block runs to its end under bash -e")
        t(pid is not None, "the block started gale with make run")
        t('{"status":"ready"}' in out, "it waited for /api/ready")
        t('{"ok":true}' in out and '{"ack":1}' in out and '{"ack":2}' in out,
          "the line protocol logged in and both lines were acknowledged")
        latest = [l for l in out.splitlines() if l.startswith("{") and '"hum"' in l]
        t(latest, "the latest values are printed")
        if latest:
            js = json.loads(latest[0])
            vals = {k: (v.get("value") if isinstance(v, dict) else v) for k, v in js.items()}
            t(vals.get("hum") == 40, "MQTT telemetry read back (%r)" % js)
            t(vals.get("on") is True, "line telemetry read back (%r)" % js)
        series = [l for l in out.splitlines() if l.startswith('{"temp"')]
        t(series and "1767268800000" in series[0] and "21.5" in series[0],
          "the temp series holds both line values, the RFC 3339 one at its time (%r)" % series)
        t("dashboard url=http://127.0.0.1:%s/" % env["GALE_HTTP_PORT"] in log,
          "gale.log starts with the banner")
    finally:
        if pid is None and os.path.exists(pidfile):
            pid = int(open(pidfile).read())
        if pid:
            stop(pid)
        shutil.rmtree(work, ignore_errors=True)


def make_run_installs_clients():
    """make run -> make setup -> .ci/setup.sh run-deps, whose packages hold the clients;
    then it runs gale on ./data, which is what the stand-in does."""
    p = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    t("sh .ci/setup.sh run-deps" in p.stdout, "make run sets up with run-deps (%s)"
      % p.stdout.splitlines()[:2])
    t(re.search(r"^\./\S+/gale --data-dir \./data$", p.stdout, re.M),
      "make run runs gale --data-dir ./data, as the stand-in does")
    setup = open(os.path.join(ROOT, ".ci", "setup.sh")).read()
    m = re.search(r'^CLIENT_PKGS="([^"]*)"', setup, re.M)
    pkgs = m.group(1).split() if m else []
    for pkg in ("curl", "mosquitto-clients", "netcat-openbsd"):
        t(pkg in pkgs, "run-deps installs %s" % pkg)
    t(re.search(r'run-deps\) want="[^"]*\$CLIENT_PKGS', setup), "run-deps takes the clients")


def main():
    make_run_installs_clients()
    run_block()


t.run(main)
