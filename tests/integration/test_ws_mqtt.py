"""MQTT over WebSocket on /mqtt: paho's websocket transport publishing and
subscribing at QoS 0/1/2 (also across transports with plain MQTT/TCP), telemetry
stored and readable over REST; a raw client sending MQTT packets split across
WebSocket messages, several packets in one message and in a fragmented message;
subprotocol negotiation ("mqtt", "mqttv3.1", none -> 400) and text frames (1003)."""
import struct
import threading
import time

import paho.mqtt.client as mqtt

from galetest import Check, Gale, RawWS, wait_for

check = Check("ws_mqtt")


def ws_client(port, cid, user, pw, transport="websockets"):
    c = mqtt.Client(client_id=cid, transport=transport)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    c.username_pw_set(user, pw)
    c.got = []
    c.cond = threading.Condition()

    def on_message(cl, u, m):
        with c.cond:
            c.got.append((m.topic, m.payload, m.qos))
            c.cond.notify_all()

    def on_connect(cl, u, flags, rc):
        c.rc = rc

    c.rc = None
    c.on_message = on_message
    c.on_connect = on_connect
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    wait_for(lambda: c.rc is not None, 10, "CONNACK for " + cid)
    return c


def subscribe(c, topic, qos):
    acked = set()
    cond = threading.Condition()

    def on_subscribe(cl, u, m, granted):  # installed first: the SUBACK may come at once
        with cond:
            acked.add(m)
            cond.notify_all()

    c.on_subscribe = on_subscribe
    r, mid = c.subscribe(topic, qos)
    assert r == 0
    with cond:
        assert cond.wait_for(lambda: mid in acked, 10), "no SUBACK"


def mqtt_str(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def rl(n):
    out = b""
    while True:
        d, n = n % 128, n // 128
        out += bytes([d | (0x80 if n else 0)])
        if not n:
            return out


def packet(t, body):
    return bytes([t]) + rl(len(body)) + body


def connect_pkt(cid, user, pw):
    var = mqtt_str("MQTT") + bytes([4, 0x80 | 0x40 | 0x02]) + struct.pack(">H", 30)
    return packet(0x10, var + mqtt_str(cid) + mqtt_str(user) + mqtt_str(pw))


class MqttStream:
    """Decodes server MQTT packets out of WebSocket binary messages."""

    def __init__(self, ws):
        self.ws = ws
        self.buf = b""

    def next(self, timeout=10):
        while True:
            if len(self.buf) >= 2:
                n, mul, i = 0, 1, 1
                while i < len(self.buf):
                    n += (self.buf[i] & 0x7f) * mul
                    mul *= 128
                    if not self.buf[i] & 0x80:
                        break
                    i += 1
                if i < len(self.buf) and len(self.buf) >= i + 1 + n:
                    p, self.buf = self.buf[:i + 1 + n], self.buf[i + 1 + n:]
                    return p[0] >> 4, p[i + 1:]
            m = self.ws.recv_msg(timeout)
            assert isinstance(m, bytes), "expected a binary message, got %r" % (m,)
            self.buf += m


with Gale() as g:
    port, mport = g.ports["http"], g.ports["mqtt"]
    tok = g.create_device("dev-1")

    # ---- paho over WebSocket: QoS 0/1/2 both ways ----
    sub = ws_client(port, "dev-1", "dev-1", tok)
    check.eq(sub.rc, 0, "paho websockets: CONNACK accepted")
    subscribe(sub, "devices/dev-1/#", 2)
    pub = ws_client(port, "dev-1-pub", "dev-1", tok)
    for q in (0, 1, 2):
        info = pub.publish("devices/dev-1/telemetry", '{"temp":%d,"q":%d}' % (20 + q, q), qos=q)
        info.wait_for_publish(10)
        check(info.is_published(), "QoS %d publish completed over WebSocket" % q)
    with sub.cond:
        sub.cond.wait_for(lambda: sum(1 for t, p, q in sub.got if t.endswith("telemetry")) >= 3,
                          10)
    tel = [(p, q) for t, p, q in sub.got if t == "devices/dev-1/telemetry"]
    check.eq(sorted(q for p, q in tel), [0, 1, 2], "subscriber over WebSocket got QoS 0/1/2")
    check.eq(sorted(p for p, q in tel),
             [b'{"temp":20,"q":0}', b'{"temp":21,"q":1}', b'{"temp":22,"q":2}'], "payloads")
    st, latest = g.http("GET", "/api/devices/dev-1/latest")
    check.eq(latest.get("temp", {}).get("value"), 22, "telemetry over MQTT/WS stored")
    st, series = g.http("GET", "/api/devices/dev-1/telemetry?keys=temp&from=0")
    check.eq(sorted(p["value"] for p in series.get("temp", [])), [20, 21, 22],
             "telemetry series readable over REST")

    # across transports: TCP publisher -> WebSocket subscriber and back
    tcp = ws_client(mport, "dev-1-tcp", "dev-1", tok, transport="tcp")
    tcp.got.clear()
    subscribe(tcp, "devices/dev-1/x", 1)
    with sub.cond:
        sub.got.clear()
    tcp.publish("devices/dev-1/telemetry", '{"temp":30}', qos=1).wait_for_publish(10)
    with sub.cond:
        sub.cond.wait_for(lambda: sub.got, 10)
    check.eq(sub.got[:1], [("devices/dev-1/telemetry", b'{"temp":30}', 1)],
             "TCP publish reaches WebSocket subscriber")
    pub.publish("devices/dev-1/x", "hi", qos=2).wait_for_publish(10)
    with tcp.cond:
        tcp.cond.wait_for(lambda: tcp.got, 10)
    check.eq(tcp.got[:1], [("devices/dev-1/x", b"hi", 1)], "WebSocket publish reaches TCP")
    for c in (sub, pub, tcp):
        c.disconnect()
        c.loop_stop()

    # ---- raw: packets split across messages, several in one ----
    ws = RawWS(port, "/mqtt", subprotocol="mqtt")
    check.eq((ws.status, ws.headers.get("sec-websocket-protocol")), (101, "mqtt"),
             "subprotocol mqtt agreed")
    con = connect_pkt("raw-1", "dev-1", tok)
    ws.send(0x2, con[:1])          # the fixed header byte alone
    ws.send(0x2, con[1:7])         # length + part of the protocol name
    ws.send(0x2, con[7:])
    s = MqttStream(ws)
    check.eq(s.next(), (2, b"\x00\x00"), "CONNECT split across three messages: CONNACK")
    subp = packet(0x82, struct.pack(">H", 7) + mqtt_str("devices/dev-1/raw") + b"\x00")
    pubp = packet(0x30, mqtt_str("devices/dev-1/raw") + b"payload-1")
    ws.send(0x2, subp + b"\xc0\x00" + pubp)
    got = [s.next() for _ in range(3)]
    check.eq(got[0], (9, struct.pack(">H", 7) + b"\x00"), "SUBACK from a packed message")
    check.eq(got[1], (13, b""), "PINGRESP from a packed message")
    check.eq(got[2][0], 3, "PUBLISH delivered back")
    check(got[2][1].endswith(b"payload-1"), "published payload")
    # a fragmented WebSocket message whose fragments split two packets
    two = packet(0x30, mqtt_str("devices/dev-1/raw") + b"payload-2") + b"\xc0\x00"
    ws.send(0x2, two[:5], fin=False)
    ws.send(0x9, b"ping")          # control frame between fragments
    ws.send(0x0, two[5:])
    kinds = []
    for _ in range(2):
        kinds.append(s.next())
    check.eq(sorted(k for k, b in kinds), [3, 13], "fragmented message: PUBLISH + PINGRESP")
    ws.send(0x2, b"\xe0\x00")      # DISCONNECT
    check(ws.closed(5), "DISCONNECT closes the connection")
    ws.close()

    # ---- subprotocols ----
    ws = RawWS(port, "/mqtt", subprotocol="mqttv3.1")
    check.eq((ws.status, ws.headers.get("sec-websocket-protocol")), (101, "mqttv3.1"),
             "subprotocol mqttv3.1 accepted")
    ws.close()
    ws = RawWS(port, "/mqtt", subprotocol="foo, mqtt")
    check.eq(ws.headers.get("sec-websocket-protocol"), "mqtt", "mqtt chosen from a list")
    ws.close()
    ws = RawWS(port, "/mqtt")
    check.eq(ws.status, 400, "no subprotocol: 400")
    check(b"subprotocol_required" in ws.body, "400 names the missing subprotocol")
    ws.close()

    # ---- text frames are refused [MQTT-6.0.0-1] ----
    ws = RawWS(port, "/mqtt", subprotocol="mqtt")
    ws.send(0x1, "hello")
    check.eq(ws.read_close()[0], 1003, "text frame on /mqtt: close 1003")
    ws.close()
    # bad credentials: CONNACK 5 then close
    ws = RawWS(port, "/mqtt", subprotocol="mqtt")
    ws.send(0x2, connect_pkt("raw-2", "dev-1", "wrong"))
    check.eq(MqttStream(ws).next(), (2, b"\x00\x04"), "bad password: CONNACK 4")
    check(ws.closed(5), "refused CONNECT closes")
    ws.close()
    check(g.alive(), "gateway alive")

check.done()
