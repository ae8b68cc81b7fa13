"""A storage batch that fails takes its bridge outbox row with it; the drain does not stall
on it. Against a real upstream (Mosquitto): while the upstream is down, a device sends
more than the bridge keeps payloads of (the rest is read back from the outbox), then one
message whose commit fails (GALE_TEST_FAIL_COMMITS=4, SIGUSR2: it gets storage_error,
no ack), then more. Once the upstream is back the whole backlog drains (backlog 0, none
in flight), every acknowledged message arrives, and the log names the missing row."""
import json
import queue
import socket
import time

import paho.mqtt.client as paho

import upstreams
from galetest import Check, Gale, wait_for

t = Check("test_bridge_failed_commit")
DEV = "fc-1"
FIRST = 2100  # past half the read-ahead (2048): the last ones are read back from SQLite
MORE = 20
BASE = 1700000000000


def bridges(g):
    st, js = g.http("GET", "/api/bridges")
    return js[0] if st == 200 and js else {}


class Sub:
    """A persistent QoS 1 subscriber on the upstream (reconnects by itself)."""

    def __init__(self, port):
        self.got = queue.Queue()
        self.c = paho.Client(client_id="fc-sub", clean_session=False, protocol=paho.MQTTv311)
        self.c.on_message = lambda c, u, m: self.got.put(m.payload)
        self.c.on_connect = lambda c, u, f, rc: c.subscribe("devices/+/telemetry", 1)
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()

    def values(self):
        out = set()
        while True:
            try:
                out.add(json.loads(self.got.get_nowait())["values"]["n"])
            except queue.Empty:
                return out

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def line_send(c, first, n, seq):
    lines = "".join(json.dumps({"ts": BASE + i, "values": {"n": i}}) + "\n"
                    for i in range(first, first + n - 1))
    lines += json.dumps({"ts": BASE + first + n - 1, "values": {"n": first + n - 1},
                         "seq": seq}) + "\n"
    c.send(lines)
    return c.read_line(timeout=60)


def main():
    up = upstreams.MosquittoUpstream()
    up.start()
    sub = Sub(up.port)
    cfg = [{"name": "up1", "addresses": [up.uri], "max_inflight": 20, "drain_rate": 0,
            "forward": ["devices/+/telemetry"]}]
    try:
        with Gale(args=["--set", "bridge.upstreams=" + json.dumps(cfg)],
                  env={"GALE_TEST_FAIL_COMMITS": "4"}) as g:
            wait_for(lambda: bridges(g).get("connected"), 20, "bridge connected")
            tok = g.create_device(DEV)
            up.stop()
            wait_for(lambda: not bridges(g).get("connected"), 20, "bridge sees the outage")
            c = g.line(DEV, tok)
            t.eq(line_send(c, 0, FIRST, 1), {"ack": 1}, "%d messages stored" % FIRST)
            g.fail_commits(4)
            r = line_send(c, FIRST, 1, 2)
            t.eq((r.get("code"), r.get("seq")), ("storage_error", 2),
                 "the message whose commit fails is not acknowledged")
            t.eq(line_send(c, FIRST + 1, MORE, 3), {"ack": 3}, "%d more stored" % MORE)
            acked = set(range(FIRST)) | set(range(FIRST + 1, FIRST + 1 + MORE))
            up.start()
            try:
                wait_for(lambda: (lambda b: b.get("connected") and b.get("backlog") == 0)(
                    bridges(g)), 90, "the backlog drained")
            except AssertionError:
                pass
            b = bridges(g)
            t((b.get("backlog"), b.get("inflight")) == (0, 0),
              "the whole backlog drains (backlog %s, in flight %s)" % (b.get("backlog"),
                                                                      b.get("inflight")))
            got = set()
            deadline = time.monotonic() + 30
            while not acked <= got and time.monotonic() < deadline:
                got |= sub.values()
                time.sleep(0.2)
            missing = sorted(acked - got)
            t(not missing, "every acknowledged message arrived upstream (missing %d: %s)"
              % (len(missing), missing[:5]))
            t(any("outbox rows missing" in l for l in g.log_lines),
              "the log names the row the failed batch never wrote")
            c.close()
    finally:
        sub.close()
        up.close()


if __name__ == "__main__":
    t.run(main)
