"""MQTT.js (npm "mqtt", in node, over the `ws` package with permessage-deflate) against
Gale's /mqtt: connect, subscribe at QoS 2, publish at QoS 0/1/2 and a 100 kB message,
all delivered back; the telemetry is stored. MQTT.js comes from the npm registry: it is
installed into tests/integration/node_modules on first run (npm install mqtt@5); when
node or npm is missing the test says so and is skipped."""
import json
import os
import shutil
import subprocess
import sys

from galetest import Check, Gale

HERE = os.path.dirname(os.path.abspath(__file__))
check = Check("ws_mqttjs")


def have_mqttjs():
    env = dict(os.environ, NODE_PATH=os.path.join(HERE, "node_modules"))
    return subprocess.run(["node", "-e", "require.resolve('mqtt')"], env=env,
                          capture_output=True).returncode == 0


if not shutil.which("node"):
    print("ws_mqttjs: 0 passed, 0 failed, 1 skipped (node not installed)")
    sys.exit(0)
if not have_mqttjs() and shutil.which("npm"):
    subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", HERE,
                    "mqtt@5"], capture_output=True, timeout=300)
if not have_mqttjs():
    print("ws_mqttjs: 0 passed, 0 failed, 1 skipped (npm package mqtt not installable)")
    sys.exit(0)

with Gale() as g:
    tok = g.create_device("dev-js")
    env = dict(os.environ, NODE_PATH=os.path.join(HERE, "node_modules"))
    r = subprocess.run(["node", os.path.join(HERE, "mqttjs_client.js"),
                        "ws://127.0.0.1:%d/mqtt" % g.ports["http"], "dev-js", tok],
                       env=env, capture_output=True, text=True, timeout=60)
    res = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
    check(res.get("connected"), "MQTT.js connected over WebSocket: %r %s" % (res, r.stderr[-500:]))
    check.eq(res.get("granted"), [2], "SUBACK granted QoS 2")
    check.eq(sorted(res.get("published", [])), [0, 1, 1, 2], "publishes completed")
    got = sorted((q, n) for t, q, n in res.get("got", []))
    check.eq(got, [(0, 11), (1, 11), (1, 100011), (2, 11)], "all four delivered back with QoS")
    check.eq(res.get("end"), "done", "finished before the timeout")
    st, latest = g.http("GET", "/api/devices/dev-js/latest")
    check.eq(latest.get("temp", {}).get("value"), 12, "telemetry from MQTT.js stored")
    check("upgrade endpoint=/mqtt subprotocol=mqtt deflate=yes" in g.log(),
          "permessage-deflate negotiated with the ws package")
check.done()
