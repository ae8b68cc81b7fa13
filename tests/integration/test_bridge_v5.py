"""The bridge to an MQTT 5 upstream (protocol 5) against Debian's Mosquitto 2.0:
--check-config refuses a bad protocol or session_expiry_s; telemetry arrives upstream
from a client Mosquitto logs as MQTT 5 (p5), and /api/bridges shows protocol and CONNACK;
No Local keeps what the bridge sends up from coming back down on an overlapping
subscription; the Session Expiry Interval keeps the bridge's session upstream while
Gale is stopped (a command published meanwhile arrives; with session_expiry_s 0 it
does not); the upstream killed and restarted: the bridge reconnects and every message
acknowledged meanwhile arrives; a publish the upstream's ACL denies gets PUBACK (QoS 2:
PUBREC) 0x87: counted, shown in /api/bridges and /metrics, logged once, dropped from the
outbox while messages on other topics keep flowing; a message past the upstream's Maximum Packet Size
is refused (0x95) instead of getting the bridge disconnected at every resend; a wrong
password: CONNACK 0x86 in the status. Against a minimal MQTT 5 server (Mosquitto 2.0.11
closes a taken-over session without DISCONNECT): the upstream's DISCONNECT 0x8B with a
Reason String in the log and the status, and a reconnect; a reset of the connection at
each step of the exchange in turn: the bridge gets through (under ASan: cleanly)."""
import json
import os
import queue
import socket
import struct
import subprocess
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import mqttraw
from galetest import GALE_BIN, Check, Gale, wait_for
from upstreams import MosquittoUpstream

t = Check("test_bridge_v5")


class Sub:
    """An MQTT 5 subscriber on the upstream with a session that outlives a restart of it
    (Session Expiry Interval 3600); it reconnects and subscribes again by itself."""

    def __init__(self, port, filt, cid=None):
        self.got = queue.Queue()
        self.c = paho.Client(client_id=cid or "v5-sub-%d-%d" % (os.getpid(), port),
                             protocol=paho.MQTTv5)
        self.c.on_message = lambda c, u, m: self.got.put((m.topic, m.payload))
        self.subscribed = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, rc, props=None: self.subscribed.put(rc)

        def on_connect(c, u, flags, rc, props=None):
            c.subscribe(filt, 1)
        self.c.on_connect = on_connect
        self.c.reconnect_delay_set(0.2, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
        self.c.loop_start()
        self.subscribed.get(timeout=10)

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


def upstream_pub(port, topic, payload, qos=1):
    """One MQTT 5 publish on the upstream, waited for."""
    c = paho.Client(client_id="v5-pub-%d" % os.getpid(), protocol=paho.MQTTv5)
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    c.publish(topic, payload, qos=qos).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def gale_args(uri, **extra):
    cfg = {"name": "up1", "addresses": [uri], "protocol": 5, "max_inflight": 4}
    cfg.update(extra)
    return ["--set", "bridge.upstreams=" + json.dumps([cfg])]


def gale(uri, data_dir=None, **extra):
    return Gale(data_dir=data_dir, args=gale_args(uri, **extra)).start(wait_ports=("http", "mqtt"))


def device(g, dev, tok=None):
    tok = tok or g.create_device(dev)
    ready = queue.Queue()
    c = paho.Client(client_id=dev, protocol=paho.MQTTv311)
    c.username_pw_set(dev, tok)
    c.on_connect = lambda cl, u, f, rc: ready.put(rc)
    c.connect("127.0.0.1", g.ports["mqtt"], 60)
    c.loop_start()
    t.eq(ready.get(timeout=10), 0, "device %s connects" % dev)
    return c


def publish(c, dev, first, n):
    """n QoS 1 messages {"n": k}; returns the acknowledged k."""
    infos = [(k, c.publish("devices/%s/telemetry" % dev, json.dumps({"n": k}), qos=1))
             for k in range(first, first + n)]
    acked = set()
    for k, i in infos:
        i.wait_for_publish(20)
        if i.is_published():
            acked.add(k)
    return acked


def stopped(g):
    """Stops g (SIGTERM): a clean stop exits 0, a sanitizer report does not."""
    rc = g.stop()
    if rc != 0:
        print(g.log()[-5000:])
    t.eq(rc, 0, "gale exits 0 after SIGTERM")


def bridges(g):
    st, js = g.http("GET", "/api/bridges")
    return js[0] if st == 200 and js else {}


def mosq_log(up):
    try:
        with open(up.logfile) as f:
            return f.read()
    except OSError:
        return ""


def test_check_config():
    base = {"name": "a", "addresses": ["tcp://h:1"]}
    for extra, key in (({"protocol": "4"}, "protocol"), ({"protocol": "mqtt5"}, "protocol"),
                       ({"protocol": 3}, "protocol"),
                       ({"session_expiry_s": 60}, "session_expiry_s"),
                       ({"protocol": "5", "session_expiry_s": -1}, "session_expiry_s"),
                       ({"protocol": "5", "session_expiry_s": 2 ** 32}, "session_expiry_s")):
        cfg = dict(base, **extra)
        p = subprocess.run([GALE_BIN, "--check-config", "--set",
                            "bridge.upstreams=" + json.dumps([cfg])],
                           capture_output=True, text=True, timeout=10)
        t(p.returncode == 2 and key in p.stderr and '"a"' in p.stderr,
          "--check-config refuses %s (rc=%d: %s)" % (json.dumps(extra), p.returncode,
                                                      p.stderr.strip()))
    for extra in ({"protocol": 5}, {"protocol": "5"}, {"protocol": "5.0"},
                  {"protocol": "3.1.1"},
                  {"protocol": 5, "session_expiry_s": 4294967295, "clean_session": True}):
        p = subprocess.run([GALE_BIN, "--check-config", "--set",
                            "bridge.upstreams=" + json.dumps([dict(base, **extra)])],
                           capture_output=True, text=True, timeout=10)
        t(p.returncode == 0, "--check-config accepts %s (rc=%d: %s)"
          % (json.dumps(extra), p.returncode, p.stderr.strip()))


def test_forward_no_local_and_session():
    with MosquittoUpstream(extra_conf="log_type notice\n") as up:
        sub = Sub(up.port, "devices/#")
        # the bridge subscribes to what it forwards: No Local keeps its own copies up there
        g = gale(up.uri, subscribe=["devices/+/telemetry", "devices/+/commands"])
        data = g.data_dir
        try:
            g.wait_log(r"bridge connected upstream=up1 address=\S+ protocol=5", 20)
            c = device(g, "v1")
            acked = publish(c, "v1", 0, 10)
            t.eq(len(acked), 10, "10 messages acknowledged by Gale")
            got = sub.drain(10, 20)
            t.eq(sorted(json.loads(p)["n"] for _, p in got), list(range(10)),
                 "every message arrives upstream, MQTT 5 subscriber")
            t("as gale-up1 (p5, c0, k60" in mosq_log(up),
              "the upstream logs the bridge as an MQTT 5 client with Clean Start 0 (p5, c0)")
            wait_for(lambda: bridges(g).get("backlog") == 0, 20, "acked messages leave the outbox")
            b = bridges(g)
            t.eq((b.get("protocol"), b.get("connected")), ("5", True), "/api/bridges: protocol 5")
            t.eq((b.get("connack") or {}).get("code"), 0, "/api/bridges: CONNACK 0")
            t.eq((b.get("connack") or {}).get("name"), "Success", "/api/bridges: CONNACK name")
            t.eq(b.get("disconnect"), None, "no DISCONNECT from the upstream yet")
            # another client's message on the overlapping filter comes down; ours did not
            upstream_pub(up.port, "devices/other/telemetry", b'{"x":1}')
            wait_for(lambda: bridges(g).get("received_total", 0) >= 1, 20,
                     "a third party's message comes down")
            time.sleep(0.5)
            t.eq(bridges(g).get("received_total"), 1,
                 "No Local: the bridge's own 10 messages did not come back down")
            c.loop_stop()
            c.disconnect()

            # the session outlives Gale's absence (session_expiry_s defaults to 3600)
            stopped(g)
            upstream_pub(up.port, "devices/v1/commands", json.dumps({"id": "k1", "name": "ping"}))
            g = Gale(data_dir=data, args=gale_args(
                up.uri, subscribe=["devices/+/telemetry", "devices/+/commands"])).start(
                wait_ports=("http", "mqtt"))
            g.wait_log(r"bridge connected upstream=up1 .*session_present=1", 20)
            wait_for(lambda: g.http("GET", "/api/devices/v1/commands/k1")[0] == 200, 20,
                     "the command published while Gale was stopped arrives")
            t(True, "session kept upstream: the command published while Gale was stopped "
                    "arrives (session_present=1)")
            stopped(g)
            # session_expiry_s 0: the upstream forgets the bridge at its disconnect
            g = Gale(data_dir=data, args=gale_args(
                up.uri, subscribe=["devices/+/commands"], session_expiry_s=0)).start(
                wait_ports=("http", "mqtt"))
            g.wait_log(r"bridge connected upstream=up1", 20)
            stopped(g)
            upstream_pub(up.port, "devices/v1/commands", json.dumps({"id": "k2", "name": "ping"}))
            g = Gale(data_dir=data, args=gale_args(
                up.uri, subscribe=["devices/+/commands"], session_expiry_s=0)).start(
                wait_ports=("http", "mqtt"))
            g.wait_log(r"bridge connected upstream=up1 .*session_present=0", 20)
            time.sleep(1.5)
            t.eq(g.http("GET", "/api/devices/v1/commands/k2")[0], 404,
                 "with session_expiry_s 0 nothing is kept for the bridge while it is away")
        finally:
            stopped(g)
            sub.close()


def check_arrival(got, acked, what):
    seen = set(json.loads(p)["n"] for _, p in got)
    missing = acked - seen
    print("%s: acked=%d arrived=%d missing=%d" % (what, len(acked), len(seen), len(missing)))
    t(not missing, "%s: every acknowledged message arrived (missing %s)"
      % (what, sorted(missing)[:5]))


def test_upstream_killed():
    # autosave every second: a kill -9 keeps the subscriber's session saved before it
    up = MosquittoUpstream(extra_conf="autosave_interval 1\nautosave_on_changes false\n")
    up.start()
    sub = Sub(up.port, "devices/#")
    g = gale(up.uri, max_inflight=20)
    try:
        g.wait_log(r"bridge connected upstream=up1 address=\S+ protocol=5", 20)
        c = device(g, "k1")
        acked = publish(c, "k1", 0, 50)
        check_arrival(sub.drain(len(acked), 30), acked, "before the kill")
        time.sleep(2.5)  # the subscriber's session is in the autosave
        up.kill()
        g.wait_log(r"bridge connection lost upstream=up1", 20)
        acked2 = publish(c, "k1", 100, 200)
        t.eq(len(acked2), 200, "Gale acknowledges while the upstream is down")
        t(bridges(g)["backlog"] >= 200, "the backlog holds them")
        up.start()
        got = sub.drain(len(acked2), 90)
        check_arrival(got, acked2, "after kill -9 of the upstream")
        wait_for(lambda: bridges(g).get("backlog") == 0, 60, "the backlog drains")
        b = bridges(g)
        t(b["connected"] and b["reconnects_total"] >= 1,
          "reconnected (reconnects_total %d)" % b["reconnects_total"])
        c.loop_stop()
        c.disconnect()
    finally:
        stopped(g)
        sub.close()
        up.close()


def upstream_with(name, text, directive):
    """A MosquittoUpstream (not started) with a file of its own (in its directory, which
    it can read when it runs as its own user) named by a config directive."""
    up = MosquittoUpstream()
    path = os.path.join(up.dir, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    with open(up.conf, "a") as f:
        f.write("%s %s\n" % (directive, path))
    return up, path


def test_refused_publish(qos=1):
    """QoS 1: PUBACK 0x87; QoS 2: PUBREC 0x87."""
    up, _ = upstream_with("acl", "topic deny devices/secret/#\ntopic readwrite #\n", "acl_file")
    print("refused publish, QoS %d upstream" % qos)
    with up:
        sub = Sub(up.port, "devices/#")
        g = gale(up.uri, max_inflight=2, qos=qos)
        try:
            g.wait_log(r"bridge connected upstream=up1", 20)
            s = device(g, "secret")
            ok = device(g, "ok1")
            t.eq(len(publish(s, "secret", 0, 5)), 5, "Gale acknowledges the denied ones")
            acked = publish(ok, "ok1", 0, 20)
            check_arrival(sub.drain(len(acked), 30), acked,
                          "messages on an allowed topic after refused ones")
            wait_for(lambda: bridges(g).get("backlog") == 0, 20,
                     "the queue is not wedged: the outbox empties")
            b = bridges(g)
            t.eq(b.get("dropped", {}).get("refused"), 5, "5 dropped as refused")
            t.eq(b.get("refused"), {"0x87": 5}, "refused per reason code: 0x87")
            last = b.get("last_refused") or {}
            t.eq((last.get("code"), last.get("name"), last.get("topic")),
                 (0x87, "Not authorized", "devices/secret/telemetry"),
                 "last_refused: 0x87 Not authorized and the topic")
            t.eq(b.get("acked_total"), 20, "the refused ones are not counted as acked")
            t.eq(b.get("dropped_total"), 5, "dropped_total counts them")
            st, text, _ = g.http("GET", "/metrics", raw=True)
            text = text.decode()
            t('gale_bridge_refused_total{upstream="up1",code="0x87"} 5' in text,
              "/metrics: gale_bridge_refused_total by code")
            t('gale_bridge_dropped_total{upstream="up1",reason="refused"} 5' in text,
              "/metrics: dropped, reason refused")
            g.wait_log(r"bridge refused upstream=up1 reason=0x87 \(Not authorized\)"
                       r".*topic=\"devices/secret/telemetry\"", 5)
            n = sum(1 for line in g.log().splitlines() if "bridge refused upstream=up1" in line)
            t.eq(n, 1, "the first refusal is logged, the others counted")
            g.wait_log(r"bridge dropped upstream=up1 reason=refused count=", 5)
            t(True, "the drop log counts them")
            s.loop_stop()
            ok.loop_stop()
        finally:
            stopped(g)
            sub.close()


def test_packet_too_large():
    """Mosquitto's max_packet_size goes in its CONNACK (Maximum Packet Size); a bigger
    PUBLISH would get DISCONNECT 0x95 at every resend: the bridge refuses it itself."""
    with MosquittoUpstream(extra_conf="max_packet_size 1000\n") as up:
        sub = Sub(up.port, "devices/#")
        g = gale(up.uri)
        try:
            g.wait_log(r"bridge connected upstream=up1", 20)
            c = device(g, "big")
            acked = publish(c, "big", 0, 1)
            info = c.publish("devices/big/telemetry", json.dumps({"n": 1, "x": "a" * 2000}), qos=1)
            info.wait_for_publish(10)
            t(info.is_published(), "Gale acknowledges the big message")
            acked |= publish(c, "big", 2, 1)
            check_arrival(sub.drain(2, 20), acked, "the small messages around a too big one")
            wait_for(lambda: bridges(g).get("backlog") == 0, 20, "the outbox empties")
            b = bridges(g)
            t.eq((b.get("refused"), (b.get("last_refused") or {}).get("name")),
                 ({"0x95": 1}, "Packet too large"), "refused: 0x95 Packet too large")
            t.eq((b.get("connected"), b.get("reconnects_total"), b.get("disconnect")),
                 (True, 0, None), "never disconnected by the upstream")
            g.wait_log(r"bridge refused upstream=up1 reason=0x95 \(Packet too large\) "
                       r"reason_string=\"larger than the upstream's Maximum Packet Size "
                       r"\(1000 bytes\)\"", 5)
            t(True, "logged with the upstream's limit")
            c.loop_stop()
        finally:
            stopped(g)
            sub.close()


def test_connack_refused():
    up, pwfile = upstream_with("passwd", "", "password_file")
    subprocess.run(["mosquitto_passwd", "-b", pwfile, "gale", "right-pw"], check=True,
                   capture_output=True, timeout=10)
    os.chmod(pwfile, 0o644)
    with up:
        g = gale(up.uri, username="gale", password="wrong-pw")
        try:
            g.wait_log(r"bridge connect failed upstream=up1 reason=\"connect refused: "
                       r"CONNACK 0x8[67]", 20)
            b = bridges(g)
            ca = b.get("connack") or {}
            t(b.get("connected") is False and ca.get("code") in (0x86, 0x87),
              "/api/bridges: not connected, CONNACK %r" % ca)
            t(str(ca.get("name")).lower() in ("bad user name or password", "not authorized"),
              "the CONNACK's name (%r)" % ca.get("name"))
            st, text, _ = g.http("GET", "/metrics", raw=True)
            t(('gale_bridge_connack_reason_code{upstream="up1"} %d' % ca.get("code", -2))
              in text.decode(), "/metrics: the CONNACK reason code")
        finally:
            stopped(g)
        g = gale(up.uri, username="gale", password="right-pw")
        try:
            g.wait_log(r"bridge connected upstream=up1", 20)
            t.eq((bridges(g).get("connack") or {}).get("code"), 0,
                 "the right password: CONNACK 0")
        finally:
            stopped(g)


class FakeV5Upstream:
    """A minimal MQTT 5 server on loopback (raw packets, standard library only), one
    scripted behaviour per connection (script[i] for the i-th, "normal" past its end):
      normal      CONNACK 0, SUBACK, PUBACK 0 to every PUBLISH (recorded in .got), PINGRESP
      kick        as normal until the SUBSCRIBE, then DISCONNECT 0x8B (Server shutting
                  down) with a Reason String, and close
      no_connack  reset (RST) once the CONNECT is read
      after_sub   reset right after the SUBACK
      mid_pub     reset when the first PUBLISH arrives, without PUBACK
      refuse_rst  PUBACK 0x87 (Not authorized) to the first PUBLISH, then reset
      disc_rst    DISCONNECT 0x8B right after the SUBACK, then reset at once
    Records each CONNECT's protocol level."""

    def __init__(self, script=()):
        self.script = list(script)
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.uri = "tcp://127.0.0.1:%d" % self.port
        self.levels = []
        self.got = []  # payloads of acknowledged PUBLISH packets
        self.stopping = False
        self.conns = []
        self.th = threading.Thread(target=self._accept, daemon=True)
        self.th.start()

    @staticmethod
    def _read(sock):
        first = sock.recv(1)
        if not first:
            raise ConnectionError
        n, mult = 0, 1
        while True:
            b = sock.recv(1)
            if not b:
                raise ConnectionError
            n += (b[0] & 0x7F) * mult
            mult *= 128
            if not b[0] & 0x80:
                break
        body = b""
        while len(body) < n:
            chunk = sock.recv(n - len(body))
            if not chunk:
                raise ConnectionError
            body += chunk
        return first[0], body

    @staticmethod
    def _varint_at(b, off):
        n, mult = 0, 1
        while True:
            n += (b[off] & 0x7F) * mult
            mult *= 128
            off += 1
            if not b[off - 1] & 0x80:
                return n, off

    @staticmethod
    def _reset(c):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()

    def _accept(self):
        nth = 0
        while not self.stopping:
            try:
                c, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            mode = self.script[nth] if nth < len(self.script) else "normal"
            nth += 1
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c, mode), daemon=True).start()

    def _serve(self, c, mode):
        c.settimeout(30)
        try:
            first, body = self._read(c)
            if first >> 4 != mqttraw.CONNECT:
                return
            self.levels.append(body[6])
            if mode == "no_connack":
                return self._reset(c)
            c.sendall(mqttraw.packet(0x20, b"\x00\x00" + mqttraw.varint(0)))
            while not self.stopping:
                first, body = self._read(c)
                kind = first >> 4
                if kind == mqttraw.SUBSCRIBE:
                    nfilt = 0
                    plen, off = self._varint_at(body, 2)
                    off += plen
                    while off < len(body):
                        n = struct.unpack(">H", body[off:off + 2])[0]
                        off += 2 + n + 1
                        nfilt += 1
                    c.sendall(mqttraw.packet(0x90, body[:2] + b"\x00" + b"\x01" * nfilt))
                    if mode == "after_sub":
                        return self._reset(c)
                    if mode in ("kick", "disc_rst"):
                        props = b"\x1f" + mqttraw.s16("maintenance window")
                        c.sendall(mqttraw.packet(0xE0, b"\x8b" + mqttraw.varint(len(props)) +
                                                 props))
                        if mode == "disc_rst":
                            return self._reset(c)
                        time.sleep(0.2)
                        return
                elif kind == mqttraw.PUBLISH:
                    qos = (first >> 1) & 3
                    n = struct.unpack(">H", body[:2])[0]
                    off = 2 + n
                    pid = body[off:off + 2] if qos else b""
                    off += 2 if qos else 0
                    plen, off = self._varint_at(body, off)
                    payload = body[off + plen:]
                    if mode == "mid_pub":
                        return self._reset(c)
                    if mode == "refuse_rst":
                        c.sendall(mqttraw.packet(0x40, pid + b"\x87\x00"))
                        time.sleep(0.2)
                        return self._reset(c)
                    self.got.append(payload)
                    if qos == 1:
                        c.sendall(mqttraw.packet(0x40, pid))
                elif kind == mqttraw.PINGREQ:
                    c.sendall(b"\xd0\x00")
                elif kind == mqttraw.DISCONNECT:
                    return
        except (OSError, ConnectionError, IndexError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.stopping = True
        self.srv.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.th.join(5)


def test_resets():
    """The upstream resets the connection at each step of the MQTT 5 exchange in turn
    (before CONNACK, after SUBACK, mid-PUBLISH, after a refusing PUBACK, right after its
    DISCONNECT): the bridge reconnects each time, one message is refused, every other
    one arrives, and Gale stops cleanly (under ASan: no bad access, no leak)."""
    up = FakeV5Upstream(["no_connack", "after_sub", "mid_pub", "refuse_rst", "disc_rst"])
    g = Gale(args=gale_args(up.uri, max_inflight=2))
    g.start(wait_ports=("http", "mqtt"))
    try:
        c = device(g, "r1")
        t.eq(len(publish(c, "r1", 0, 6)), 6, "6 messages acknowledged by Gale")
        wait_for(lambda: bridges(g).get("backlog") == 0, 90,
                 "the outbox empties through the resets")
        b = bridges(g)
        got = set(json.loads(p)["n"] for p in up.got)
        t.eq((len(got), b.get("refused")), (5, {"0x87": 1}),
             "5 messages arrive, 1 refused (0x87) (arrived %s)" % sorted(got))
        t(b.get("connected") is True and b.get("reconnects_total", 0) >= 4,
          "connected again after the resets (reconnects_total %s)" % b.get("reconnects_total"))
        t.eq(set(up.levels), {5}, "every CONNECT is MQTT 5")
        c.loop_stop()
        c.disconnect()
    finally:
        stopped(g)
        up.close()


def test_server_disconnect():
    up = FakeV5Upstream(["kick"])
    g = gale(up.uri)
    try:
        g.wait_log(r"bridge connection lost upstream=up1 reason=\"disconnected by the "
                   r"upstream: 0x8B Server shutting down: maintenance window\"", 20)
        t(True, "the log names the upstream's DISCONNECT, its reason code and Reason String")
        b = bridges(g)
        t.eq(b.get("disconnect"), {"code": 0x8B, "hex": "0x8B", "name": "Server shutting down",
                                   "reason_string": "maintenance window"},
             "/api/bridges: the upstream's DISCONNECT")
        wait_for(lambda: bridges(g).get("connected") is True, 30, "the bridge reconnects")
        t.eq(up.levels[:2], [5, 5], "each CONNECT is MQTT 5 (protocol level 5)")
        lines = g.log().splitlines()
        lost = [ln for ln in lines if "bridge connection lost upstream=up1" in ln]
        failed = [ln for ln in lines if "bridge connect failed upstream=up1" in ln]
        t.eq((len(lost), len(failed)), (1, 0), "one loss reported, no stray connect failure")
        t.eq(bridges(g).get("reconnects_total"), 1, "one reconnect")
        t.eq((bridges(g).get("disconnect") or {}).get("code"), 0x8B,
             "the last DISCONNECT stays in the status after the reconnect")
    finally:
        stopped(g)
        up.close()


def main():
    test_check_config()
    test_forward_no_local_and_session()
    test_refused_publish(1)
    test_refused_publish(2)
    test_packet_too_large()
    test_connack_refused()
    test_server_disconnect()
    test_resets()
    test_upstream_killed()


if __name__ == "__main__":
    t.run(main)
