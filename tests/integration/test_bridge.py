"""The upstream bridge against a real upstream broker (GALE_BRIDGE_UPSTREAM=mosquitto, the
default, or rabbitmq): forward and receive with the remote prefix; an upstream outage
while 10 devices publish QoS 1 sequence numbers (GALE_BRIDGE_OUTAGE_S, default 30): every
acknowledged message arrives, in order per device, duplicates counted; kill -9 of Gale
with a backlog, restart, then the upstream: the backlog drains, nothing lost; a command
from upstream reaches an MQTT device and its reply goes back as status; a small
max_backlog_messages drops by the policy and /api/bridges, /metrics and the log say so;
--check-config refuses bad upstreams (exit 2, naming the key)."""
import json
import os
import queue
import subprocess
import sys
import time

import paho.mqtt.client as paho

from galetest import GALE_BIN, Check, Gale, wait_for

# GALE_BRIDGE_* is also where gale reads bridge.* keys from: taken out of the environment
# the gale processes inherit
KIND = os.environ.pop("GALE_BRIDGE_UPSTREAM", "mosquitto")
OUTAGE_S = float(os.environ.pop("GALE_BRIDGE_OUTAGE_S", "30"))
PREFIX = "site-7/"
NDEV = 10

import upstreams

t = Check("test_bridge[%s]" % KIND)


def make_upstream():
    return upstreams.make(KIND)


class Sub:
    """A persistent QoS 1 subscriber on the upstream: it reconnects by itself."""

    def __init__(self, port, filt):
        self.got = queue.Queue()
        self.c = paho.Client(client_id="bridge-test-sub-%d" % os.getpid(), clean_session=False,
                             protocol=paho.MQTTv311)
        self.c.on_message = lambda c, u, m: self.got.put((m.topic, m.payload))
        self.c.on_connect = lambda c, u, f, rc: c.subscribe(filt, 1)
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()

    def drain(self, want, timeout):
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            try:
                out.append(self.got.get(timeout=0.2))
            except queue.Empty:
                pass
        return out

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def device_client(g, dev, tok):
    ready = queue.Queue()
    c = paho.Client(client_id=dev, protocol=paho.MQTTv311)
    c.username_pw_set(dev, tok)
    c.on_connect = lambda cl, u, f, rc: ready.put(rc)
    c.connect("127.0.0.1", g.ports["mqtt"], 60)
    c.loop_start()
    t.eq(ready.get(timeout=10), 0, "device %s connects" % dev)
    return c


def publish_seq(clients, first, n):
    """n QoS 1 messages per device with seq first..first+n-1; returns the acked ones."""
    infos = []
    for s in range(first, first + n):
        for dev, c in clients.items():
            infos.append((dev, s, c.publish("devices/%s/telemetry" % dev,
                                            json.dumps({"n": s}), qos=1)))
    acked = set()
    for dev, s, info in infos:
        info.wait_for_publish(20)
        if info.is_published():
            acked.add((dev, s))
    return acked


def check_arrival(got, acked, what):
    """Every acked (dev, seq) arrived; first arrivals in seq order per device."""
    seen, dups, last, order_ok = set(), 0, {}, True
    for topic, payload in got:
        parts = topic.split("/")
        if len(parts) != 4 or parts[3] != "telemetry":
            continue
        dev, s = parts[2], json.loads(payload)["n"]
        if (dev, s) in seen:
            dups += 1
            continue
        seen.add((dev, s))
        if s < last.get(dev, -1):
            order_ok = False
        last[dev] = max(last.get(dev, -1), s)
    missing = acked - seen
    print("%s: acked=%d arrived=%d duplicates=%d missing=%d" % (what, len(acked), len(seen),
                                                                 dups, len(missing)))
    t(not missing, "%s: every acknowledged message arrived (missing %s)" % (what,
                                                                          sorted(missing)[:5]))
    t(order_ok, "%s: in order per device" % what)
    return dups


def bridges(g):
    st, js = g.http("GET", "/api/bridges")
    return js[0] if st == 200 and js else {}


def gale_args(up_uri, extra=None):
    cfg = {"name": "up1", "addresses": [up_uri], "remote_prefix": PREFIX,
           "max_inflight": 20, "drain_rate": 2000,
           "forward": ["devices/+/telemetry"], "subscribe": ["devices/+/commands", "down/#"]}
    cfg.update(extra or {})
    return ["--set", "bridge.upstreams=" + json.dumps([cfg])]


def test_check_config():
    for bad, key in (({"name": "a", "addresses": ["tcp://h:1"], "bogus": 1}, "bogus"),
                     ({"name": "a", "addresses": []}, "addresses"),
                     ({"name": "a", "addresses": ["http://h:1"]}, "addresses"),
                     ({"name": "a", "addresses": ["tcp://h:1"], "qos": 3}, "qos"),
                     ({"name": "a", "addresses": ["tcp://h:1"], "overflow": "x"}, "overflow")):
        p = subprocess.run([GALE_BIN, "--check-config", "--set",
                            "bridge.upstreams=" + json.dumps([bad])],
                           capture_output=True, text=True, timeout=10)
        t(p.returncode == 2 and key in p.stderr and '"a"' in p.stderr,
          "--check-config refuses %s (rc=%d: %s)" % (key, p.returncode, p.stderr.strip()))
    good = {"name": "a", "addresses": ["tcp://h:1"], "username": "u", "password": "s3cr3t-pw"}
    p = subprocess.run([GALE_BIN, "--check-config", "--set",
                        "bridge.upstreams=" + json.dumps([good])],
                       capture_output=True, text=True, timeout=10)
    t(p.returncode == 0 and '"password":' in p.stdout + p.stderr
      and "s3cr3t-pw" not in p.stdout + p.stderr,
      "--check-config accepts the upstream and prints its password as *** (rc=%d)" % p.returncode)


def test_drops():
    """Upstream unreachable, max_backlog_messages 5: 20 messages keep the newest 5."""
    from mosquitto import free_port
    dead = "tcp://127.0.0.1:%d" % free_port()
    g = Gale(args=gale_args(dead, {"max_backlog_messages": 5})).start(
        wait_ports=("http", "mqtt"))
    try:
        tok = g.create_device("dd")
        c = device_client(g, "dd", tok)
        acked = publish_seq({"dd": c}, 0, 20)
        t.eq(len(acked), 20, "every message is acknowledged while the outbox overflows")
        b = bridges(g)
        t.eq((b.get("backlog"), b.get("dropped", {}).get("full"), b.get("dropped_total")),
             (5, 15, 15), "/api/bridges: backlog 5, 15 dropped as full")
        t(b.get("connected") is False and b.get("address") is None, "not connected, no address")
        st, text, _ = g.http("GET", "/metrics", raw=True)
        text = text.decode()
        t('gale_bridge_dropped_total{upstream="up1",reason="full"} 15' in text,
          "/metrics counts the drops")
        t('gale_bridge_backlog_messages{upstream="up1"} 5' in text, "/metrics: the backlog")
        g.wait_log(r"bridge dropped upstream=up1 reason=full count=", 5)
        t(True, "the log says so")
        c.loop_stop()
        c.disconnect()
    finally:
        g.stop()


def kill9_mid_drain(data, up, sub, toks):
    """A 2000-message backlog drains at 400/s; Gale is killed once part of it is acked.
    After the restart every acked message arrives in order per device; the duplicates
    (what was in flight at the kill) are counted and bounded by the window."""
    slow = {"drain_rate": 400}
    started = []  # every Gale this test starts, stopped whatever happens

    def start():
        started.append(Gale(data_dir=data, args=gale_args(up.uri, slow)))
        return started[-1].start(wait_ports=("http", "mqtt"))
    try:
        g = start()
        g.wait_log(r"bridge connected upstream=up1", 20)
        clients = {d: device_client(g, d, tok) for d, tok in toks.items()}
        up.stop()
        g.wait_log(r"bridge connection lost upstream=up1", 20)
        acked = publish_seq(clients, 20000, 200)
        for c in clients.values():
            c.loop_stop()
            c.disconnect()
        up.start()
        wait_for(lambda: 0 < bridges(g).get("acked_total", 0) and
                 bridges(g).get("backlog", 0) > 500, 30, "the drain has begun")
        before = bridges(g)
        g.kill9()
        g = start()
        t(bridges(g)["backlog"] <= before["backlog"] + before["inflight"] + 20,
          "after kill -9 the outbox holds what was not acked (%d <= %d + %d)"
          % (bridges(g)["backlog"], before["backlog"], before["inflight"]))
        got = sub.drain(len(acked), 120)
        got += sub.drain(200, 5)  # the duplicates came on top: what is still on its way
        dups = check_arrival(got, acked, "kill -9 mid-drain")
        wait_for(lambda: bridges(g).get("backlog") == 0, 60, "the rest drains after the restart")
        print("kill -9 mid-drain: acked_before_kill=%d backlog_at_kill=%d duplicates=%d"
              % (before["acked_total"], before["backlog"], dups))
        t(dups <= 2 * 20 + 20, "duplicates bounded by the window (%d)" % dups)
    finally:
        for g in started:
            if g.alive():
                g.stop()


def main():
    test_check_config()
    test_drops()
    up = make_upstream().start()
    sub = None
    g = None
    try:
        sub = Sub(up.port, PREFIX + "#")
        time.sleep(0.5)
        data = None
        g = Gale(args=gale_args(up.uri)).start(wait_ports=("http", "mqtt"))
        data = g.data_dir
        g.wait_log(r"bridge connected upstream=up1 address=", 20)
        toks = {("d%d" % i): g.create_device("d%d" % i) for i in range(NDEV)}
        clients = {d: device_client(g, d, tok) for d, tok in toks.items()}

        # forward
        acked = publish_seq(clients, 0, 20)
        got = sub.drain(len(acked), 30)
        check_arrival(got, acked, "connected")
        t(all(tp.startswith(PREFIX + "devices/") for tp, _ in got), "remote prefix prepended")
        wait_for(lambda: bridges(g).get("backlog") == 0, 20, "acked messages leave the outbox")
        b = bridges(g)
        t(b["connected"] is True and b["address"] == up.uri, "connected to %s" % b["address"])
        t(b["acked_total"] >= len(acked) and b["sent_total"] >= len(acked), "sent and acked")

        # down: a plain message and a command
        cmds = queue.Queue()
        clients["d0"].on_message = lambda c, u, m: cmds.put(m)
        clients["d0"].subscribe("devices/d0/commands", 1)
        pub = paho.Client(client_id="up-pub-%d" % os.getpid(), protocol=paho.MQTTv311)
        pub.connect("127.0.0.1", up.port, 30)
        pub.loop_start()
        time.sleep(0.5)
        pub.publish(PREFIX + "devices/d0/commands",
                    json.dumps({"id": "c1", "name": "reboot", "params": {"in": 1}}), qos=1)
        m = cmds.get(timeout=15)
        js = json.loads(m.payload)
        t.eq((js["id"], js["name"], js["params"]), ("c1", "reboot", {"in": 1}),
             "a command from upstream reaches the device")
        clients["d0"].publish("devices/d0/commands/c1/reply", json.dumps({"ok": True}), qos=1)
        statuses = {}

        def status_seen():
            for tp, p in sub.drain(1, 0.3):
                if tp == PREFIX + "devices/d0/commands/c1/status":
                    statuses[json.loads(p)["status"]] = json.loads(p)
            return "replied" in statuses
        wait_for(status_seen, 20, "status replied upstream")
        t.eq(statuses["replied"].get("reply"), {"ok": True}, "the reply goes back up")
        st, js = g.http("GET", "/api/devices/d0/commands/c1")
        t.eq(js.get("status"), "replied", "the command is tracked like a REST one")
        pub.publish(PREFIX + "devices/d0/commands",
                    json.dumps({"id": "c2", "name": "x", "timeout_s": 1e300}), qos=1)
        g.wait_log(r"bridge upstream=up1 device=d0 command refused", 15)
        seen = [tp for tp, _ in sub.drain(1, 10)]  # our subscriber sees it too: take it
        t.eq(seen, [PREFIX + "devices/d0/commands"], "the refused command was on the upstream")
        st, js = g.http("GET", "/api/devices/d0/commands/c2")
        t.eq(st, 404, "a command with an absurd timeout_s is refused, and logged")
        pub.loop_stop()
        pub.disconnect()

        # outage while devices publish
        up.stop()
        g.wait_log(r"bridge connection lost upstream=up1", 20)
        acked2 = set()
        deadline = time.monotonic() + OUTAGE_S
        s = 100
        while time.monotonic() < deadline:
            acked2 |= publish_seq(clients, s, 5)
            s += 5
            time.sleep(0.2)
        t(bridges(g)["backlog"] >= len(acked2), "the backlog holds what came in the outage")
        up.start()
        got = sub.drain(len(acked2), 120)
        dups = check_arrival(got, acked2, "after a %.0f s outage" % OUTAGE_S)
        wait_for(lambda: bridges(g).get("backlog") == 0, 60, "the backlog drains")
        b = bridges(g)
        print("outage: reconnects=%d resent=%d duplicates=%d" % (b["reconnects_total"],
                                                                  b["resent_total"], dups))
        t(b["reconnects_total"] >= 1, "reconnect counted")

        # kill -9 with a backlog
        up.stop()
        g.wait_log(r"bridge connection lost upstream=up1", 20)
        acked3 = publish_seq(clients, 10000, 30)
        for c in clients.values():
            c.loop_stop()
        g.kill9()
        g = Gale(data_dir=data, args=gale_args(up.uri)).start(wait_ports=("http", "mqtt"))
        t(bridges(g)["backlog"] >= len(acked3), "the backlog survives kill -9 (%d)"
          % bridges(g)["backlog"])
        up.start()
        got = sub.drain(len(acked3), 120)
        dups = check_arrival(got, acked3, "after kill -9")
        wait_for(lambda: bridges(g).get("backlog") == 0, 60, "the backlog drains after restart")
        print("kill -9: resent=%d duplicates=%d" % (bridges(g)["resent_total"], dups))

        # kill -9 in the middle of a drain: messages in flight when Gale dies go again
        g.stop()
        g = None
        kill9_mid_drain(data, up, sub, toks)
    finally:
        if sub:
            sub.close()
        if g:
            g.stop()
        up.close()


if __name__ == "__main__":
    if KIND != "mosquitto":
        ok, why = upstreams.available(KIND)
        if not ok:
            # CI installs every upstream (.ci/setup.sh test-deps): a missing one fails there
            print("%s: %s upstream not available: %s" % ("FAIL" if os.environ.get("CI") else "SKIP",
                                                         KIND, why))
            sys.exit(1 if os.environ.get("CI") else 77)
    t.run(main)
