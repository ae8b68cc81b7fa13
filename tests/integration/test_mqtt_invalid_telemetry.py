"""Telemetry that does not decode on an MQTT telemetry topic (mqtt.invalid_telemetry).
- disconnect (the default): no PUBACK/PUBREC, not routed, not stored; the connection is
  closed once the acks of the messages before it are out, packets after it are not
  handled; a log line names peer, client, device and reason; counted in
  gale_telemetry_rejected_total{proto="mqtt"}; QoS 0 too; a fresh client is served.
- ack: PUBACK as for a stored message, routed as a plain message, nothing stored, no
  device auto-registered, counted, logged once per connection and summed up at close."""
import json
import re
import shutil
import traceback

import mqttraw as mr
from galetest import Check, Gale, metric, wait_for

t = Check("test_mqtt_invalid_telemetry")
REJECTED = 'gale_telemetry_rejected_total{proto="mqtt"}'
BASE = 1700000000000
BAD_JSON = b'{"temp":'                                # invalid JSON
BAD_TS = b'{"ts":"soon","values":{"k":1}}'            # JSON, but not telemetry


def good(key, i):
    return json.dumps({"ts": BASE + i, "values": {key: i}}).encode()


def latest(g, dev):
    st, js = g.http("GET", "/api/devices/%s/latest" % dev)
    assert st == 200, (st, js)
    return js


def packets_until_closed(c, timeout=10):
    """Every packet the server sends before it closes; closed = False on a timeout."""
    out = []
    try:
        while True:
            out.append(c.recv(timeout))
    except (ConnectionError, OSError) as e:
        return out, not isinstance(e, TimeoutError)


def count_log(g, pattern):
    rx = re.compile(pattern)
    return sum(1 for l in list(g.log_lines) if rx.search(l))


def disconnect_mode():
    with Gale() as g:
        token = g.create_device("dev-b")
        app = g.create_device("backend", role="app")
        port = g.ports["mqtt"]
        sub = mr.session(port, "watch", username="backend", password=app)
        t.eq(sub.sub(1, [("devices/+/telemetry", 1), ("devices/+/will", 0)]), [1, 0],
             "watcher subscribed")

        # good, bad, good pipelined in one write: the first is acknowledged, the bad one
        # ends the connection, the one after it is not handled
        c = mr.session(port, "bt-1", username="dev-b", password=token,
                       will=("devices/dev-b/will", b"gone", 0, False))
        c.send(mr.publish("devices/dev-b/telemetry", good("a", 1), qos=1, pid=1) +
               mr.publish("devices/dev-b/telemetry", BAD_JSON, qos=1, pid=2) +
               mr.publish("devices/dev-b/telemetry", good("a", 3), qos=1, pid=3))
        got, closed = packets_until_closed(c)
        t.eq([(p.type, p.pid) for p in got], [(mr.PUBACK, 1)],
             "only the message before the bad one is acknowledged")
        t(closed, "connection closed after bad QoS 1 telemetry")
        c.close()
        g.wait_log(r'conn=\d+ peer=127\.0\.0\.1:\d+ proto=mqtt client="bt-1" device=dev-b '
                   r'telemetry not stored reason="invalid JSON" '
                   r'topic="devices/dev-b/telemetry" action=disconnect')
        g.wait_log(r'proto=mqtt device=dev-b close reason="telemetry that does not decode, '
                   r'not acknowledged"')
        t.eq(metric(g, REJECTED), 1, "rejection counted")
        st, js = g.http("GET", "/api/devices/dev-b/telemetry?keys=a")
        t.eq(js.get("a"), [{"ts": BASE + 1, "value": 1}],
             "the message before it stored, the one after it not handled")
        m = sub.recv_type(mr.PUBLISH)
        t.eq((m.topic, m.payload), ("devices/dev-b/telemetry", good("a", 1)),
             "watcher got the good message")
        sub.send(mr.ack(mr.PUBACK, m.pid))
        m = sub.recv_type(mr.PUBLISH)
        t.eq((m.topic, m.payload), ("devices/dev-b/will", b"gone"),
             "then the will (closed without DISCONNECT), not the bad payload")

        # QoS 2: no PUBREC; the id is not kept, so a fixed resend is stored
        c = mr.session(port, "bt-2", clean=False, username="dev-b", password=token)
        c.send(mr.publish("devices/dev-b/telemetry", BAD_TS, qos=2, pid=7))
        got, closed = packets_until_closed(c)
        t.eq(got, [], "no PUBREC for bad QoS 2 telemetry")
        t(closed, "connection closed after bad QoS 2 telemetry")
        c.close()
        t.eq(metric(g, REJECTED), 2, "QoS 2 rejection counted")
        t("k" not in latest(g, "dev-b"), "bad QoS 2 telemetry not stored")
        c = mr.session(port, "bt-2", clean=False, username="dev-b", password=token)
        c.send(mr.publish("devices/dev-b/telemetry", good("k", 8), qos=2, pid=7, dup=True))
        t.eq(c.recv_type(mr.PUBREC).pid, 7, "the fixed resend with the same id is PUBREC'd")
        c.send(mr.ack(mr.PUBREL, 7))
        t.eq(c.recv_type(mr.PUBCOMP).pid, 7, "and completed")
        t.eq(latest(g, "dev-b").get("k"), {"ts": BASE + 8, "value": 8}, "and stored")
        c.close()
        m = sub.recv_type(mr.PUBLISH)
        t.eq(m.payload, good("k", 8), "the watcher got the fixed resend, not the bad copy")
        sub.send(mr.ack(mr.PUBACK, m.pid))

        # QoS 0 (ThingsBoard topic): nothing to withhold, but counted, logged and closed
        c = mr.session(port, "bt-3", username="dev-b", password=token)
        c.send(mr.publish("v1/devices/me/telemetry", BAD_JSON, qos=0))
        got, closed = packets_until_closed(c)
        t(closed and got == [], "connection closed after bad QoS 0 telemetry")
        c.close()
        t.eq(metric(g, REJECTED), 3, "QoS 0 rejection counted")
        g.wait_log(r'client="bt-3" device=dev-b telemetry not stored reason="invalid JSON" '
                   r'topic="devices/dev-b/telemetry" action=disconnect')
        t(sub.nothing(0.3), "the watcher got none of the bad payloads")

        # everyone else is served
        c = mr.session(port, "bt-4", username="dev-b", password=token)
        c.send(mr.publish("devices/dev-b/telemetry", good("a", 9), qos=1, pid=1))
        t.eq(c.recv_type(mr.PUBACK).pid, 1, "a fresh client is served")
        t.eq(latest(g, "dev-b").get("a"), {"ts": BASE + 9, "value": 9}, "and stored")
        c.send(mr.DISCONNECT_BYTES)
        c.close()
        sub.close()
        t(g.alive(), "gateway alive")


def ack_mode():
    with Gale(args=["--set", "mqtt.invalid_telemetry=ack",
                    "--set", "mqtt.allow_anonymous=true"]) as g:
        token = g.create_device("dev-a")
        app = g.create_device("backend", role="app")
        port = g.ports["mqtt"]
        sub = mr.session(port, "watch", username="backend", password=app)
        t.eq(sub.sub(1, [("devices/+/telemetry", 0)]), [0], "watcher subscribed")

        c = mr.session(port, "at-1", username="dev-a", password=token)
        c.send(mr.publish("devices/dev-a/telemetry", BAD_TS, qos=1, pid=1))
        t.eq(c.recv_type(mr.PUBACK).pid, 1, "ack: bad QoS 1 telemetry acknowledged")
        m = sub.recv_type(mr.PUBLISH)
        t.eq((m.topic, m.payload), ("devices/dev-a/telemetry", BAD_TS),
             "ack: routed as a plain message")
        c.send(mr.publish("devices/dev-a/telemetry", BAD_JSON, qos=2, pid=2))
        t.eq(c.recv_type(mr.PUBREC).pid, 2, "ack: bad QoS 2 telemetry PUBREC'd")
        c.send(mr.ack(mr.PUBREL, 2))
        t.eq(c.recv_type(mr.PUBCOMP).pid, 2, "ack: and completed")
        c.send(mr.publish("devices/dev-a/telemetry", BAD_JSON, qos=0))
        c.send(mr.publish("devices/dev-a/telemetry", good("a", 1), qos=1, pid=3))
        t.eq(c.recv_type(mr.PUBACK).pid, 3, "ack: the connection goes on")
        js = latest(g, "dev-a")
        t.eq(sorted(js), ["a"], "ack: nothing of the bad payloads stored")
        t.eq(metric(g, REJECTED), 3, "ack: QoS 1, 2 and 0 rejections counted")
        t.eq(count_log(g, r'client="at-1" device=dev-a telemetry not stored reason=.* '
                          r'action=ack'), 1, "ack: logged once per connection")
        c.send(mr.DISCONNECT_BYTES)
        c.close()
        g.wait_log(r'client="at-1" refusals publish_denied=0 subscribe_denied=0 '
                   r'telemetry_not_stored=3')

        # an unknown device is not registered by a payload that would not be stored
        c = mr.session(port, "anon-1")
        c.send(mr.publish("devices/ghost-1/telemetry", BAD_JSON, qos=1, pid=1))
        t.eq(c.recv_type(mr.PUBACK).pid, 1, "ack: anonymous bad telemetry acknowledged")
        st, _ = g.http("GET", "/api/devices/ghost-1")
        t.eq(st, 404, "no device registered by bad telemetry")
        t.eq(metric(g, REJECTED), 4, "counted")
        c.send(mr.publish("devices/ghost-1/telemetry", good("g", 1), qos=1, pid=2))
        t.eq(c.recv_type(mr.PUBACK).pid, 2, "good telemetry of the unknown device acknowledged")
        st, js = g.http("GET", "/api/devices/ghost-1")
        t.eq(st, 200, "and it registers the device")
        c.close()
        sub.close()
        t(g.alive(), "gateway alive")


def bad_value():
    g = Gale(args=["--set", "mqtt.invalid_telemetry=drop"])
    try:
        g.start()
        t(False, "gale started with mqtt.invalid_telemetry=drop")
        g.stop()
    except AssertionError:
        g.proc.wait(10)
        t(g.proc.returncode != 0, "bad value: exit status %s" % g.proc.returncode)
        # the reader thread may still be reading the last lines
        g.wait_log(re.escape('config: mqtt.invalid_telemetry: must be one of disconnect|ack '
                             '(got "drop")'), 5)
        t(True, "the error names the key")
    finally:
        shutil.rmtree(g.data_dir, ignore_errors=True)


def main():
    for part in (bad_value, disconnect_mode, ack_mode):
        try:
            part()
        except Exception:
            traceback.print_exc()
            t(False, "exception in " + part.__name__)


t.run(main)
