"""The bridge's options against a real Mosquitto upstream: format "normalized" (one JSON
shape with device and ts), TLS to the upstream with a client certificate (and a refused
server certificate), drops by max_age_s, and a drain held to drain_rate while a live
message of a device with nothing waiting overtakes the backlog."""
import json
import os
import queue
import shutil
import tempfile
import time

import paho.mqtt.client as paho

from galetest import Check, Gale, wait_for
from tlscerts import CA
from upstreams import MosquittoUpstream, free_port

t = Check("test_bridge_options")


class Sub:
    def __init__(self, port, filt):
        self.got = queue.Queue()
        self.c = paho.Client(client_id="opt-sub-%d-%d" % (os.getpid(), port),
                             clean_session=False, protocol=paho.MQTTv311)
        self.c.on_message = lambda c, u, m: self.got.put((time.monotonic(), m.topic, m.payload))
        self.c.on_connect = lambda c, u, f, rc: c.subscribe(filt, 1)
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        time.sleep(0.5)

    def drain(self, want, timeout):
        out, deadline = [], time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            try:
                out.append(self.got.get(timeout=0.2))
            except queue.Empty:
                pass
        return out

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def gale(upstream, **extra):
    cfg = {"name": "up1", "addresses": [upstream], "max_inflight": 20}
    cfg.update(extra)
    return Gale(args=["--set", "bridge.upstreams=" + json.dumps([cfg])]).start(
        wait_ports=("http", "mqtt"))


def device(g, dev):
    tok = g.create_device(dev)
    ready = queue.Queue()
    c = paho.Client(client_id=dev, protocol=paho.MQTTv311)
    c.username_pw_set(dev, tok)
    c.on_connect = lambda cl, u, f, rc: ready.put(rc)
    c.connect("127.0.0.1", g.ports["mqtt"], 60)
    c.loop_start()
    t.eq(ready.get(timeout=10), 0, "device %s connects" % dev)
    return c


def publish(c, dev, payloads):
    infos = [c.publish("devices/%s/telemetry" % dev, p, qos=1) for p in payloads]
    for i in infos:
        i.wait_for_publish(20)
    return sum(1 for i in infos if i.is_published())


def bridges(g):
    st, js = g.http("GET", "/api/bridges")
    return js[0] if st == 200 and js else {}


def test_normalized():
    with MosquittoUpstream() as up:
        sub = Sub(up.port, "devices/#")
        g = gale(up.uri, format="normalized")
        try:
            g.wait_log(r"bridge connected upstream=up1", 20)
            c = device(g, "n1")
            publish(c, "n1", [json.dumps({"temp": 21.5, "on": True}),
                              json.dumps({"ts": 1700000000123, "values": {"temp": 22}})])
            got = [json.loads(p) for _, _, p in sub.drain(2, 20)]
            t.eq(len(got), 2, "both messages arrive")
            if len(got) == 2:
                t.eq((got[0]["device"], got[0]["values"]), ("n1", {"temp": 21.5, "on": True}),
                     "normalized: device and values")
                t(isinstance(got[0]["ts"], int) and abs(got[0]["ts"] - time.time() * 1000) < 60000,
                  "normalized: the arrival time when the device sent none (%r)" % got[0]["ts"])
                t.eq((got[1]["ts"], got[1]["values"]), (1700000000123, {"temp": 22}),
                     "normalized: the device's own ts is kept")
            c.loop_stop()
        finally:
            g.stop()
            sub.close()


def test_tls():
    d = tempfile.mkdtemp(prefix="gale-bridge-tls-")
    os.chmod(d, 0o755)
    try:
        ca, other = CA(d, "ca"), CA(d, "other")
        srv_pem, srv_key = ca.issue("broker", "127.0.0.1", server=True)
        cli_pem, cli_key = ca.issue("gale", "gale-site")
        for f in os.listdir(d):
            os.chmod(os.path.join(d, f), 0o644)  # mosquitto reads them as its own user
        tls_port = free_port()
        conf = ("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n"
                "require_certificate true\n" % (tls_port, ca.pem, srv_pem, srv_key))
        with MosquittoUpstream(extra_conf=conf) as up:
            sub = Sub(up.port, "devices/#")
            uri = "ssl://127.0.0.1:%d" % tls_port
            g = gale(uri, ca_file=ca.pem, cert_file=cli_pem, key_file=cli_key)
            try:
                g.wait_log(r"bridge connected upstream=up1 address=ssl://", 20)
                c = device(g, "s1")
                publish(c, "s1", [json.dumps({"v": 1})])
                got = sub.drain(1, 20)
                t.eq([json.loads(p) for _, _, p in got], [{"v": 1}],
                     "over TLS with a client certificate the message arrives")
                c.loop_stop()
            finally:
                g.stop()
            # a server certificate from a CA we do not trust: never connected
            g = gale(uri, ca_file=other.pem, cert_file=cli_pem, key_file=cli_key)
            try:
                g.wait_log(r"bridge connect failed upstream=up1|bridge connection lost upstream=up1",
                           20)
                t(bridges(g).get("connected") is False, "an untrusted server is refused")
            finally:
                g.stop()
            sub.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_age_drops():
    dead = "tcp://127.0.0.1:%d" % free_port()
    g = gale(dead, max_age_s=1)
    try:
        c = device(g, "a1")
        t.eq(publish(c, "a1", [json.dumps({"v": i}) for i in range(5)]), 5, "5 acked")
        wait_for(lambda: bridges(g).get("dropped", {}).get("age") == 5, 20,
                 "messages older than max_age_s are dropped")
        b = bridges(g)
        t.eq((b["backlog"], b["dropped_total"]), (0, 5), "backlog empty, 5 dropped")
        g.wait_log(r"bridge dropped upstream=up1 reason=age count=5", 5)
        t(True, "the log says reason=age")
        c.loop_stop()
    finally:
        g.stop()


def test_drain_rate_and_live_first():
    up = MosquittoUpstream()
    up.start()
    sub = Sub(up.port, "devices/#")
    g = gale(up.uri, drain_rate=200, max_inflight=40)
    try:
        g.wait_log(r"bridge connected upstream=up1", 20)
        up.stop()
        g.wait_log(r"bridge connection lost upstream=up1", 20)
        c = device(g, "b1")
        n = 600
        t.eq(publish(c, "b1", [json.dumps({"n": i}) for i in range(n)]), n, "backlog acked")
        live = device(g, "live1")
        up.start()
        start = time.monotonic()
        wait_for(lambda: bridges(g).get("connected") is True, 40, "reconnected")
        time.sleep(0.3)
        publish(live, "live1", [json.dumps({"live": 1})])
        got = sub.drain(n + 1, 60)
        took = time.monotonic() - start
        topics = [tp for _, tp, _ in got]
        t.eq(len(set((tp, p) for _, tp, p in got)), n + 1, "everything arrives")
        if "devices/live1/telemetry" in topics:
            pos = topics.index("devices/live1/telemetry")
            t(pos < n * 3 // 4, "the live message overtakes the backlog (arrived as %d of %d)"
              % (pos + 1, n + 1))
        else:
            t(False, "the live message arrived")
        # 600 messages at 200/s take about 3 s: well above what an unlimited drain takes
        t(took >= 0.6 * n / 200, "the drain is held to drain_rate (%.1f s for %d)" % (took, n))
        print("drain_rate 200/s: %d messages in %.1f s, live message arrived as %d"
              % (n, took, topics.index("devices/live1/telemetry") + 1
                 if "devices/live1/telemetry" in topics else -1))
        c.loop_stop()
        live.loop_stop()
    finally:
        g.stop()
        sub.close()
        up.close()


def main():
    test_normalized()
    test_tls()
    test_age_drops()
    test_drain_rate_and_live_first()


if __name__ == "__main__":
    t.run(main)
