"""MQTT 5.0 with real clients, each in MQTT 5 mode: mosquitto_pub/mosquitto_sub -V mqttv5
(user properties, a device's telemetry stored), python3-paho-mqtt with MQTTv5
(request/response with Response Topic and Correlation Data, user properties, content
type, No Local, a 3.1.1 client and a 5.0 client on the same topics both ways, a shared
subscription of three consumers one of which leaves), the
Eclipse Paho C asynchronous client (mqtt5_paho_c: CONNACK properties, Subscription
Identifier, PUBACK reason codes 0 and 0x87, session expiry), and MQTT.js over WebSocket
(request/response with a topic alias). The MQTT 5 behaviours at the byte level are in
test_mqtt5.py."""
import json
import os
import queue
import shutil
import subprocess
import time

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from galetest import Check, Gale, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
t = Check("test_mqtt5_clients")
ANON = ["--set", "mqtt.allow_anonymous=true"]


class Client5:
    """A python3-paho-mqtt client speaking MQTT 5, its loop in a thread."""

    def __init__(self, port, cid, user=None, pw=None, v5=True, expiry=None):
        self.msgs = queue.Queue()
        self.connacks = queue.Queue()
        proto = paho.MQTTv5 if v5 else paho.MQTTv311
        self.c = paho.Client(client_id=cid, protocol=proto)
        if user:
            self.c.username_pw_set(user, pw)
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        if v5:
            self.c.on_connect = lambda c, u, f, rc, props: self.connacks.put((rc, props))
            cp = Properties(PacketTypes.CONNECT)
            if expiry is not None:
                cp.SessionExpiryInterval = expiry
            self.c.connect("127.0.0.1", port, 30, clean_start=True, properties=cp)
        else:
            self.c.on_connect = lambda c, u, f, rc: self.connacks.put((rc, None))
            self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        self.rc, self.props = self.connacks.get(timeout=10)

    def sub(self, flt, qos=1, **opts):
        r = []
        self.c.on_subscribe = lambda *a: r.append(a)
        if opts:
            self.c.subscribe(flt, options=SubscribeOptions(qos=qos, **opts))
        else:
            self.c.subscribe(flt, qos)
        wait_for(lambda: r, 10, "SUBACK")

    def get(self, timeout=5):
        return self.msgs.get(timeout=timeout)

    def none(self, timeout=0.7):
        try:
            self.msgs.get(timeout=timeout)
            return False
        except queue.Empty:
            return True

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def mosquitto_clients(g):
    port = str(g.ports["mqtt"])
    sub = subprocess.Popen(["mosquitto_sub", "-V", "mqttv5", "-p", port, "-t", "m5/#", "-C", "1",
                            "-F", "%t|%p|%P", "-W", "10"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    r = subprocess.run(["mosquitto_pub", "-V", "mqttv5", "-p", port, "-t", "m5/a", "-m", "hi",
                        "-q", "1", "-D", "publish", "user-property", "k", "v"],
                       capture_output=True, text=True, timeout=10)
    t.eq(r.returncode, 0, "mosquitto_pub -V mqttv5 connects and publishes (%s)" % r.stderr.strip())
    out, _ = sub.communicate(timeout=15)
    t.eq(out.strip(), "m5/a|hi|k:v", "mosquitto_sub -V mqttv5 gets it with its user property")
    tok = g.create_device("mosq5")
    r = subprocess.run(["mosquitto_pub", "-V", "mqttv5", "-p", port, "-u", "mosq5", "-P", tok,
                        "-t", "devices/mosq5/telemetry", "-m", '{"v5temp": 7.5}', "-q", "1"],
                       capture_output=True, text=True, timeout=10)
    t.eq(r.returncode, 0, "a device publishes with mosquitto_pub -V mqttv5")
    st, js = g.http("GET", "/api/devices/mosq5/telemetry?keys=v5temp")
    t(st == 200 and [p["value"] for p in js.get("v5temp", [])] == [7.5],
      "its telemetry is stored: %r" % (js,))


def python_paho(g):
    port = g.ports["mqtt"]
    server = Client5(port, "py5-server")
    t.eq(server.rc, 0, "paho MQTTv5 connects")
    t(getattr(server.props, "ReceiveMaximum", 0) > 0, "CONNACK Receive Maximum seen by paho")
    server.sub("svc/req", 1, noLocal=True)
    client = Client5(port, "py5-client")
    client.sub("svc/resp/py5-client", 1)
    # request/response: the server answers on the Response Topic with the Correlation Data
    pp = Properties(PacketTypes.PUBLISH)
    pp.ResponseTopic = "svc/resp/py5-client"
    pp.CorrelationData = b"req-1"
    pp.UserProperty = [("trace", "abc")]
    pp.ContentType = "text/plain"
    client.c.publish("svc/req", "2+2", qos=1, properties=pp)
    req = server.get()
    rp = req.properties
    t.eq((req.payload, rp.ResponseTopic, rp.CorrelationData, rp.ContentType),
         (b"2+2", "svc/resp/py5-client", b"req-1", "text/plain"),
         "request arrives with Response Topic, Correlation Data, Content Type")
    t.eq(rp.UserProperty, [("trace", "abc")], "and its User Property")
    ans = Properties(PacketTypes.PUBLISH)
    ans.CorrelationData = rp.CorrelationData
    server.c.publish(rp.ResponseTopic, "4", qos=1, properties=ans)
    resp = client.get()
    t.eq((resp.payload, resp.properties.CorrelationData), (b"4", b"req-1"),
         "response round trip with the Correlation Data")
    # No Local: the server's own publish on svc/req does not come back to it
    server.c.publish("svc/req", "self", qos=1)
    t(server.none(), "No Local: a client's own message is not delivered to it")
    # 3.1.1 and 5.0 on the same topics, both ways
    old = Client5(port, "py311", v5=False)
    old.sub("mix/#", 1)
    client.sub("mix/#", 1)
    client.c.publish("mix/from5", "a", qos=1, properties=pp)
    t.eq(old.get().payload, b"a", "3.1.1 subscriber gets a 5.0 publish")
    t.eq(client.get().payload, b"a", "5.0 subscriber gets it too")
    old.c.publish("mix/from311", "b", qos=1)
    got = client.get()
    t.eq((got.topic, got.payload), ("mix/from311", b"b"), "5.0 subscriber gets a 3.1.1 publish")
    t.eq(old.get().payload, b"b", "3.1.1 subscriber gets its own publish (no No Local there)")
    for c in (server, client, old):
        c.close()


def shared_consumers(g):
    """Three python paho MQTTv5 consumers of $share/workers/jobs/#, QoS 1; one leaves (its
    clean session ends) halfway: every message reaches exactly one consumer, none lost."""
    port = g.ports["mqtt"]
    cons = [Client5(port, "worker-%d" % i) for i in range(3)]
    for c in cons:
        c.sub("$share/workers/jobs/#", 1)
    pub = Client5(port, "jobs-pub")
    got = {i: [] for i in range(3)}
    n = 300
    for i in range(n):
        pub.c.publish("jobs/%d" % (i % 7), str(i), qos=1)
        if i == n // 2:
            time.sleep(0.3)
            cons[2].close()  # leaves with whatever it had not acknowledged
        for k, c in enumerate(cons):
            while True:
                try:
                    got[k].append(int(c.msgs.get_nowait().payload))
                except queue.Empty:
                    break
    deadline = time.time() + 10
    while time.time() < deadline and sum(len(set(v)) for v in got.values()) < n:
        for k, c in enumerate(cons[:2]):
            try:
                got[k].append(int(c.msgs.get(timeout=0.2).payload))
            except queue.Empty:
                pass
    union = set().union(*[set(v) for v in got.values()])
    t.eq(len(union), n, "$share with 3 MQTT 5 consumers: none lost when one leaves")
    t(all(len(got[k]) > n // 10 for k in range(2)), "the load is spread: %r"
      % [len(got[k]) for k in range(3)])
    for c in cons[:2] + [pub]:
        c.close()


def paho_c(g):
    exe = os.path.join(os.getcwd(), "tests", "integration", "mqtt5_paho_c")
    tok = g.create_device("dev-c5")
    app_tok = g.create_device("app-c5", role="app")
    r = subprocess.run([exe, str(g.ports["mqtt"]), "dev-c5", tok, "app-c5", app_tok],
                       capture_output=True, text=True, timeout=120)
    print(r.stdout, end="")
    t.eq(r.returncode, 0, "paho C MQTTAsync v5: every step passed (%s)" % r.stderr.strip()[-300:])
    for s in ["5.0 CONNACK carries Receive Maximum and Topic Alias Maximum",
              "application subscribes with a Subscription Identifier",
              "device publishes at QoS 1 with properties: PUBACK reason 0",
              "application receives it with the properties and its Subscription Identifier",
              "a denied publish gets PUBACK 0x87",
              "the application's session keeps a message while it is away"]:
        t("ok " + s in r.stdout, s)


def mqttjs(g):
    env = dict(os.environ, NODE_PATH=os.path.join(HERE, "node_modules"))
    if not shutil.which("node") or subprocess.run(
            ["node", "-e", "require.resolve('mqtt')"], env=env, capture_output=True).returncode:
        if shutil.which("npm"):
            subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix",
                            HERE, "mqtt@5"], capture_output=True, timeout=300)
    r = subprocess.run(["node", os.path.join(HERE, "mqttjs5_client.js"),
                        "ws://127.0.0.1:%d/mqtt" % g.ports["http"], "js5"],
                       env=env, capture_output=True, text=True, timeout=60)
    res = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
    t.eq(res.get("end"), "done", "MQTT.js v5 over WebSocket: request/response done (%r %s)"
         % (res, r.stderr[-300:]))
    reqs = res.get("requests", [])
    t(len(reqs) == 2 and all(q["topic"] == "req/js5" for q in reqs),
      "both requests arrive on their topic (one by alias): %r" % reqs)
    t(reqs and reqs[0]["responseTopic"] == "resp/js5" and reqs[0]["correlation"] == "corr-1"
      and reqs[0]["contentType"] == "text/plain" and reqs[0]["user"] == {"a": "b"}
      and reqs[0]["subid"] == 7, "request properties and Subscription Identifier: %r" % reqs[:1])
    t.eq(sorted(x["correlation"] for x in res.get("responses", [])), ["corr-1", "corr-2"],
         "responses carry the Correlation Data back")
    t((res.get("connack") or {}).get("topicAliasMaximum", 0) > 0,
      "CONNACK Topic Alias Maximum seen by MQTT.js")


def main():
    with Gale(args=ANON) as g:
        mosquitto_clients(g)
        python_paho(g)
        shared_consumers(g)
        paho_c(g)
        mqttjs(g)
        t(g.alive(), "gateway alive")


t.run(main)
