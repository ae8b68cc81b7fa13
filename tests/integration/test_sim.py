"""gale-sim against a real Gale:
- 20 devices, the four protocols in turn (mix), provisioned with the API key: every
  device is created, connects over its protocol (GET /api/devices/{id} "protocol"), and
  its values are readable over REST with the simulator's keys and kinds (temperature and
  humidity numbers, pulses a counter that never goes down, door_open a boolean, state one
  of idle/running/fault); commands sent over REST to an MQTT, a line, a /ws/device and an
  HTTP device are answered (status "replied", the reply the simulator sends); every message
  is acked, no error; --duration ends the run by itself with exit 0 and a summary;
- a second run on the same ids renews their tokens (POST .../token) and works;
- without a key, MQTT devices connect anonymously where Gale allows it (auto-registered),
  and --count ends the run once each has sent its messages;
- MQTT 5 (--mqtt-version 5) against Gale (commands answered) and Debian's Mosquitto:
  telemetry arrives as 5.0 publishes, a command is answered on its reply topic, or on
  its Response Topic with its Correlation Data;
- SIGINT stops a run without a duration (exit 0, summary); a refused API key is fatal
  (exit 1, naming it); a bad option exits 2."""
import json
import os
import signal
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from galetest import API_KEY, Check, Gale, wait_for
from mosquitto import Mosquitto

t = Check("test_sim")
SIM = os.environ.get("GALE_SIM_BIN", os.path.join(os.getcwd(), "gale-sim"))
PROTOS = ["mqtt", "line", "ws", "http"]  # --protocol mix: device i (from 1) is PROTOS[(i-1) % 4]
STATES = {"idle", "running", "fault"}
# gale-sim takes GALE_HTTP_API_KEY from the environment when no key is given: runs without
# a key must not inherit one
SIM_ENV = {k: v for k, v in os.environ.items() if k != "GALE_HTTP_API_KEY"}


def sim_args(g, *extra):
    # Gale() waits for the http and line listeners; mqtt's line may come a moment later
    wait_for(lambda: all(p in g.ports for p in ("http", "line", "mqtt")), 10, "gale's ports")
    return [SIM, "--host", "127.0.0.1", "--http-port", str(g.ports["http"]),
            "--mqtt-port", str(g.ports["mqtt"]), "--line-port", str(g.ports["line"])] + list(extra)


def run(args, timeout=60, env=None):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env or SIM_ENV)
    summary = None
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            summary = json.loads(line)
    return p.returncode, summary, p.stderr


def check_values(g, dev):
    st, latest = g.http("GET", "/api/devices/%s/latest" % dev)
    t(st == 200, "%s: latest answers (%s)" % (dev, st))
    keys = set(latest) if isinstance(latest, dict) else set()
    t(keys >= {"temperature", "humidity", "pulses", "door_open", "state"},
      "%s: latest has every key (%s)" % (dev, sorted(keys)))
    if not keys >= {"temperature", "humidity", "pulses", "door_open", "state"}:
        return
    t(isinstance(latest["temperature"]["value"], (int, float)) and
      5 < latest["temperature"]["value"] < 45, "%s: a plausible temperature (%s)"
      % (dev, latest["temperature"]["value"]))
    t(0 <= latest["humidity"]["value"] <= 100, "%s: humidity within 0..100" % dev)
    t(isinstance(latest["door_open"]["value"], bool), "%s: door_open is a boolean" % dev)
    t(latest["state"]["value"] in STATES, "%s: state is one of %s" % (dev, sorted(STATES)))
    st, series = g.http("GET", "/api/devices/%s/telemetry?keys=pulses&limit=10000" % dev)
    vals = [p["value"] for p in series.get("pulses", [])]
    t(len(vals) >= 2 and all(a <= b for a, b in zip(vals, vals[1:])),
      "%s: pulses is a counter that never goes down (%d points)" % (dev, len(vals)))


def mixed_fleet(g):
    n = 20
    proc = subprocess.Popen(sim_args(g, "--devices", str(n), "--protocol", "mix", "--rate", "4",
                                     "--duration", "6", "--key", API_KEY, "--prefix", "mix-"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=SIM_ENV)
    try:
        ids = ["mix-%04d" % i for i in range(1, n + 1)]

        def all_online():
            st, js = g.http("GET", "/api/devices?prefix=mix-&online=true&limit=100")
            return st == 200 and js["total"] == n  # HTTP devices: online while they post
        wait_for(all_online, 15, "every device online")
        cmds = {}
        for dev in ids[:4]:  # an MQTT, a line, a ws and an HTTP device
            st, js = g.http("POST", "/api/devices/%s/commands" % dev,
                            {"name": "ping", "params": {"n": 1}})
            t(st == 202, "%s: command accepted (%s)" % (dev, st))
            cmds[dev] = js["id"]

        def replied(dev):
            st, js = g.http("GET", "/api/devices/%s/commands/%s" % (dev, cmds[dev]))
            return js if st == 200 and js.get("status") == "replied" else None
        for i, dev in enumerate(ids[:4]):
            js = wait_for(lambda: replied(dev), 10, "%s's command replied" % dev)
            t(js["reply"].get("result") == "pong", "%s (%s): the reply is the simulator's (%s)"
              % (dev, PROTOS[i], js.get("reply")))
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t(proc.returncode == 0,
      "the run ends by itself with exit 0 (%s): %s" % (proc.returncode, err[-800:]))
    summary = json.loads(out.strip().splitlines()[-1])
    t(summary["errors"] == 0, "no errors (%s)" % summary)
    t(summary["sent"] > 2 * n and summary["acked"] == summary["sent"],
      "every message acked (%d sent, %d acked)" % (summary["sent"], summary["acked"]))
    t(summary["commands"] == 4, "four commands answered (%s)" % summary["commands"])
    t("connected=20/20" in err, "the progress line shows every device connected")
    st, js = g.http("GET", "/api/devices?prefix=mix-&limit=100")
    t(js["total"] == n, "provisioning created the %d devices (%s)" % (n, js["total"]))
    for i, dev in enumerate(ids):
        st, d = g.http("GET", "/api/devices/%s" % dev)
        want = PROTOS[i % 4]
        t(d.get("protocol") == want, "%s: used %s (%s)" % (dev, PROTOS[i % 4], d.get("protocol")))
        check_values(g, dev)

    # the same ids again: they exist, their tokens are renewed
    rc, summary, err = run(sim_args(g, "--devices", "8", "--rate", "5", "--duration", "2",
                                    "--key", API_KEY, "--prefix", "mix-"))
    t(rc == 0 and summary["errors"] == 0 and summary["acked"] == summary["sent"] > 0,
      "a second run on the same devices takes them over (%s %s): %s" % (rc, summary, err[-400:]))


def anonymous_count():
    with Gale(args=["--set", "mqtt.allow_anonymous=true"]) as g:
        rc, summary, err = run(sim_args(g, "--devices", "5", "--protocol", "mqtt", "--rate", "10",
                                        "--count", "7", "--gaps", "0", "--prefix", "anon-"))
        t(rc == 0, "anonymous MQTT run exits 0 (%s): %s" % (rc, err[-400:]))
        t(summary and summary["sent"] == 35 and summary["acked"] == 35 and summary["errors"] == 0,
          "--count 7: every device sent 7 messages, all acked (%s)" % summary)
        st, js = g.http("GET", "/api/devices?prefix=anon-&limit=10")
        t(js["total"] == 5, "the anonymous devices registered themselves (%s)" % js["total"])
        st, latest = g.http("GET", "/api/devices/anon-0003/latest")
        t("temperature" in latest, "an anonymous device's values are stored")


def mqtt5_mosquitto():
    with Mosquitto() as m:
        got = {"v5": 0, "replies": []}
        c = mqtt.Client(client_id="watcher", protocol=mqtt.MQTTv5)

        def on_message(cl, ud, msg):
            if msg.topic.endswith("/telemetry"):
                got["v5"] += 1
            elif "/reply" in msg.topic or msg.topic.startswith("resp/"):
                cd = getattr(msg.properties, "CorrelationData", None)
                got["replies"].append((msg.topic, json.loads(msg.payload), cd))
        c.on_message = on_message
        c.connect("127.0.0.1", m.port)
        c.subscribe("devices/#", qos=1)
        c.subscribe("resp/#", qos=1)
        c.loop_start()
        try:
            proc = subprocess.Popen([SIM, "--mqtt-port", str(m.port), "--protocol", "mqtt",
                                     "--mqtt-version", "5", "--devices", "3", "--rate", "5",
                                     "--duration", "5", "--prefix", "v5-"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=SIM_ENV)
            wait_for(lambda: got["v5"] >= 3, 10, "MQTT 5 telemetry at mosquitto")
            c.publish("devices/v5-0002/commands", json.dumps({"id": "c-1", "name": "ping"}), qos=1)
            wait_for(lambda: got["replies"], 10, "the command's reply")
            t(got["replies"][0][0] == "devices/v5-0002/commands/c-1/reply" and
              got["replies"][0][1].get("result") == "pong", "MQTT 5 device answers a command (%s)"
              % got["replies"])
            # MQTT 5 request/response: the reply goes to the Response Topic with the
            # Correlation Data
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "resp/abc"
            props.CorrelationData = b"corr-9"
            c.publish("devices/v5-0003/commands", json.dumps({"id": "c-2", "name": "reboot"}),
                      qos=1, properties=props)
            wait_for(lambda: len(got["replies"]) >= 2, 10, "the reply on the Response Topic")
            t(got["replies"][1][0] == "resp/abc" and got["replies"][1][2] == b"corr-9" and
              got["replies"][1][1].get("result") == "ok",
              "the reply goes to the Response Topic with the Correlation Data (%s)"
              % (got["replies"][1:],))
            out, err = proc.communicate(timeout=30)
            summary = json.loads(out.strip().splitlines()[-1])
            t(proc.returncode == 0 and summary["errors"] == 0 and
              summary["acked"] == summary["sent"],
              "MQTT 5 run: every publish acked by mosquitto (%s)" % summary)
        finally:
            c.loop_stop()
            c.disconnect()


def mqtt5_gale(g):
    """MQTT 5 devices against Gale: CONNECT level 5, acks, a command replied (Gale sends it
    with a Response Topic and Correlation Data)."""
    proc = subprocess.Popen(sim_args(g, "--devices", "3", "--protocol", "mqtt", "--mqtt-version",
                                     "5", "--rate", "5", "--duration", "4", "--key", API_KEY,
                                     "--prefix", "m5-"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=SIM_ENV)
    try:
        wait_for(lambda: g.http("GET", "/api/devices?prefix=m5-&online=true")[1].get("total") == 3,
                 15, "the MQTT 5 devices online")
        st, js = g.http("POST", "/api/devices/m5-0002/commands", {"name": "ping"})
        cmd = js["id"]
        js = wait_for(lambda: (lambda r: r if r.get("status") == "replied" else None)(
            g.http("GET", "/api/devices/m5-0002/commands/%s" % cmd)[1]), 10, "replied")
        t(js["reply"].get("result") == "pong", "an MQTT 5 device answers Gale's command (%s)" % js)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    summary = json.loads(out.strip().splitlines()[-1])
    t(proc.returncode == 0 and summary["errors"] == 0 and summary["acked"] == summary["sent"] > 0,
      "MQTT 5 devices: every message acked by Gale (%s): %s" % (summary, err[-300:]))
    t(any("protocol=5" in l and 'client="m5-0001"' in l for l in g.log().splitlines()),
      "Gale saw MQTT 5 CONNECTs")


def stops_and_failures(g):
    proc = subprocess.Popen(sim_args(g, "--devices", "4", "--protocol", "line", "--key", API_KEY,
                                     "--prefix", "sig-"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=SIM_ENV)
    try:
        wait_for(lambda: g.http("GET", "/api/devices?prefix=sig-&online=true")[1].get("total") == 4,
                 15, "the devices online")
        time.sleep(1.2)  # let it send
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    summary = json.loads(out.strip().splitlines()[-1])
    t(proc.returncode == 0 and summary["sent"] > 0 and summary["acked"] == summary["sent"],
      "SIGINT: a clean stop, every message acked first (%s %s)" % (proc.returncode, summary))
    t("SIGINT" in err, "the stop says why")

    rc, summary, err = run(sim_args(g, "--devices", "2", "--key", "wrong-key", "--duration", "5"))
    t(rc == 1 and "API key was refused" in err,
      "a refused key is fatal (%s): %s" % (rc, err[-300:]))
    # --wait: readiness first; the key file is read after it
    keyfile = os.path.join(g.data_dir, "sim-key")
    with open(keyfile, "w") as f:
        f.write(API_KEY + "\n")
    rc, summary, err = run(sim_args(g, "--devices", "2", "--wait", "10", "--key-file", keyfile,
                                    "--duration", "2", "--prefix", "wait-"))
    t(rc == 0 and summary["sent"] > 0 and summary["errors"] == 0,
      "--wait and --key-file against a ready Gale (%s %s): %s" % (rc, summary, err[-300:]))
    t0 = time.monotonic()
    rc, summary, err = run([SIM, "--http-port", "1", "--wait", "1.5", "--key-file", keyfile,
                            "--duration", "2"])
    t(rc == 1 and "did not become ready within 1.5 s" in err and time.monotonic() - t0 < 10,
      "--wait gives up after its time when nothing answers (%s): %s" % (rc, err[-300:]))
    rc, summary, err = run(sim_args(g, "--devices", "2", "--duration", "2", "--prefix", "env-"),
                           env=dict(SIM_ENV, GALE_HTTP_API_KEY=API_KEY))
    st, js = g.http("GET", "/api/devices?prefix=env-")
    t(rc == 0 and js["total"] == 2 and summary["errors"] == 0,
      "the key from GALE_HTTP_API_KEY provisions (%s %s)" % (rc, js.get("total")))
    rc, _, err = run([SIM, "--devices", "zero"])
    t(rc == 2, "a bad option exits 2 (%s)" % rc)
    rc, _, err = run([SIM, "--help"])
    t(rc == 0, "--help exits 0")


def main():
    with Gale() as g:
        mixed_fleet(g)
        mqtt5_gale(g)
        stops_and_failures(g)
    anonymous_count()
    if os.path.exists("/usr/sbin/mosquitto"):
        mqtt5_mosquitto()
    else:
        print("test_sim: mosquitto not installed: the MQTT 5 part is skipped")


t.run(main)
