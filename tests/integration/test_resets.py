"""A peer that vanishes at every protocol step, and socket writes that fail inside every
step, on every listener (plain and TLS): the gateway stays up, serves the next client and
stops cleanly (under ASan, exit 0 means no bad access and no leak).

Two ways of cutting a connection:
- real resets (SO_LINGER 0, then close: the kernel sends RST) right after a step: a TLS
  handshake, an upgrade request, an `Expect: 100-continue` head, MQTT CONNECT, SUBSCRIBE,
  a shared SUBSCRIBE ($share/...; and with its own messages in flight), the first
  PUBLISH, MQTT 5 CONNECT with a delayed will, a PUBLISH by topic alias, SUBSCRIBE
  with an identifier, AUTH, DISCONNECT with properties, an MQTT 5 session resumed with a
  lower Receive Maximum, half a packet, half a WebSocket frame, half a TLS record, an HTTP
  device's command long poll, during a streamed CSV reply and during a live-feed burst,
  subscribers (MQTT and MQTT over WebSocket) while a burst of deliveries staged for them
  in one read is written;
  several times each, since whether the
  gateway's next write sees the reset depends on timing;
- the write fault seam (GALE_TEST_FAIL_WRITES): every connection's Nth socket write fails
  with EPIPE/ECONNRESET, for N = 1..6, then each write with probability 0.2, while a
  scenario of every protocol runs: the failure lands inside the 101 answer, the 100
  Continue, a CONNACK, an error reply, a close frame, a TLS record or close_notify.
Also: permessage-deflate frames sent right behind an upgrade request that inflate past the
read buffer (they used to be inflated into the loop-wide read buffer and realloc it away).
Loopback only; every client has a timeout; gale is stopped by its PID."""
import json
import os
import socket
import ssl
import struct
import tempfile
import time
import zlib

import mqttraw

from galetest import API_KEY, Check, Gale, RawWS, tls_args, wait_for
from tlscerts import CA

t = Check("test_resets")
D = tempfile.mkdtemp(prefix="gale-resets-")
ca = CA(D)
CERT, KEY = ca.issue("server", "localhost", server=True)
TLS_ARGS = tls_args(CERT, KEY)
ROUNDS = 8  # real resets per step: the race between the reset and the gateway's write


def ctx():
    c = ssl.create_default_context(cafile=ca.pem)
    return c


def rst(s):
    """Closes s with a reset (SO_LINGER 0)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def plain(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def tls(port):
    return ctx().wrap_socket(plain(port), server_hostname="localhost")


def sock(g, name, use_tls):
    return tls(g.ports[name]) if use_tls else plain(g.ports[name])


def port_name(base, use_tls):
    return {"http": "https", "line": "lines", "mqtt": "mqtts"}[base] if use_tls else base


# ---- MQTT packets (mqttraw's builders) ----
def connect_pkt(client, user=None, pw=None):
    return mqttraw.connect(client, clean=True, keepalive=30, username=user, password=pw)


def subscribe_pkt(pid, topic, qos=1):
    return mqttraw.subscribe(pid, [(topic, qos)])


def publish_pkt(topic, payload, qos=1, pid=1):
    return mqttraw.publish(topic, payload, qos=qos, pid=pid)


def recv_some(s, n=1, timeout=2):
    s.settimeout(timeout)
    try:
        return s.recv(n)
    except (OSError, ssl.SSLError):
        return b""


def healthy(g, what):
    """The gateway is alive and serves a fresh client on each listener."""
    if not g.alive():
        raise AssertionError("%s: gale died:\n%s" % (what, g.log()[-3000:]))
    st, _ = g.http("GET", "/api/health")
    t.eq(st, 200, "%s: health" % what)


def deflate_frames(n, size):
    """n permessage-deflate binary messages, each inflating to size bytes of zeros."""
    out = b""
    for _ in range(n):
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = c.compress(b"\0" * size) + c.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        out += RawWS.frame(0x2, data[:-4], rsv=4)
    return out


def upgrade_req(path, extra_headers=""):
    return ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (path, extra_headers)).encode()


AUTH = "Authorization: Bearer %s\r\n" % API_KEY


def case_tls_handshake(g, dev, token, use_tls):
    """TLS handshake done, then gone (the close_notify write meets the reset)."""
    if use_tls:
        for name in ("https", "lines", "mqtts"):
            rst(sock(g, name, True))


def case_upgrade(g, dev, token, use_tls):
    """An upgrade request, then gone before the 101 (every WebSocket endpoint)."""
    for path, hdrs in (("/ws/live", AUTH), ("/ws/device?device=%s&token=%s" % (dev, token), ""),
                       ("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n")):
        s = sock(g, port_name("http", use_tls), use_tls)
        s.sendall(upgrade_req(path, hdrs))
        rst(s)


def case_deflate_behind_upgrade(g, dev, token, use_tls):
    """Compressed frames right behind the upgrade, inflating past the read buffer."""
    s = sock(g, port_name("http", use_tls), use_tls)
    s.sendall(upgrade_req("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n"
                          "Sec-WebSocket-Extensions: permessage-deflate\r\n")
              + deflate_frames(6, 30000))
    recv_some(s, 4096, 0.5)
    rst(s)


def case_expect_continue(g, dev, token, use_tls):
    """Expect: 100-continue, then gone before the body."""
    s = sock(g, port_name("http", use_tls), use_tls)
    s.sendall(("POST /api/devices/%s/telemetry HTTP/1.1\r\nHost: x\r\n%s"
               "Content-Type: application/json\r\nContent-Length: 12\r\n"
               "Expect: 100-continue\r\n\r\n" % (dev, AUTH)).encode())
    rst(s)


def mqtt_case(extra_of):
    def case(g, dev, token, use_tls):
        s = sock(g, port_name("mqtt", use_tls), use_tls)
        s.sendall(connect_pkt("rst-" + dev, dev, token) + extra_of(dev))
        rst(s)
    return case


def mqtt5_case(extra_of, will=False):
    """An MQTT 5 client (CONNECT with properties and a will with a delay), then extra_of's
    packets, then a reset."""
    R = mqttraw

    def case(g, dev, token, use_tls):
        s = sock(g, port_name("mqtt", use_tls), use_tls)
        s.sendall(R.connect5("rst5-" + dev, keepalive=30, username=dev, password=token,
                             prop=R.props((R.P_SESSION_EXPIRY, 30), (R.P_RECEIVE_MAX, 5),
                                          (R.P_ALIAS_MAX, 4), (R.P_USER, ("k", "v"))),
                             will=("devices/%s/will" % dev, "w", 1, False) if will else None,
                             will_props=R.props((R.P_WILL_DELAY, 1)))
                  + extra_of(dev))
        rst(s)
    return case


def v5_alias_publishes(dev):
    R = mqttraw
    topic = "devices/%s/telemetry" % dev
    return (R.publish5(topic, b'{"x":1}', qos=1, pid=1, prop=R.props((R.P_ALIAS, 1)))
            + R.publish5("", b'{"x":2}', qos=1, pid=2, prop=R.props((R.P_ALIAS, 1))))


def case_v5_resume_lower_receive_maximum(g, dev, token, use_tls):
    """An MQTT 5 session with unacknowledged deliveries (Receive Maximum 5), reset; resumed
    with Receive Maximum 1 (the deliveries past it go back to the queue) and reset while
    they are resent."""
    R = mqttraw
    topic = "devices/%s/telemetry" % dev
    for rm in (5, 1):
        s = sock(g, port_name("mqtt", use_tls), use_tls)
        s.sendall(R.connect5("rst5r-" + dev, clean=False, username=dev, password=token,
                             prop=R.props((R.P_SESSION_EXPIRY, 30), (R.P_RECEIVE_MAX, rm)))
                  + (R.subscribe5(1, [(topic, 1)])
                     + b"".join(R.publish5(topic, b'{"x":%d}' % i, qos=1, pid=i)
                                for i in range(1, 5)) if rm == 5 else b""))
        got, deadline = b"", time.monotonic() + 2
        while rm == 5 and got.count(b'{"x":') < 4 and time.monotonic() < deadline:
            got += recv_some(s, 4096, 0.2)  # the deliveries, unacknowledged
        rst(s)


def case_line_mid_line(g, dev, token, use_tls):
    s = sock(g, port_name("line", use_tls), use_tls)
    s.sendall(json.dumps({"device": dev, "token": token}).encode() + b'\n{"seq":1,"tem')
    rst(s)


def case_ws_mid_frame(g, dev, token, use_tls):
    s = sock(g, port_name("http", use_tls), use_tls)
    s.sendall(upgrade_req("/ws/device?device=%s&token=%s" % (dev, token))
              + RawWS.frame(0x1, b'{"seq":1,"temp":1}' * 20)[:60])
    rst(s)


def case_viewer_error(g, dev, token, use_tls):
    """A live viewer's bad messages, then gone while the error replies are written."""
    s = sock(g, port_name("http", use_tls), use_tls)
    s.sendall(upgrade_req("/ws/live", AUTH)
              + b"".join(RawWS.frame(0x1, b"not json") for _ in range(12)))
    rst(s)


def case_command_poll(g, dev, token, use_tls):
    """An HTTP device's command long poll, then gone while it waits: alone, with a
    request pipelined behind it, and racing a command that wakes it."""
    poll = ("GET /api/devices/%s/commands?wait=10 HTTP/1.1\r\nHost: x\r\n"
            "Authorization: Bearer %s\r\n\r\n" % (dev, token)).encode()
    for extra, wake in ((b"", False), (b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n", False),
                        (b"", True)):
        s = sock(g, port_name("http", use_tls), use_tls)
        s.sendall(poll + extra)
        recv_some(s, 1, 0.05)  # the poll is waiting (no answer yet)
        rst(s)
        if wake:
            g.http("POST", "/api/devices/%s/commands" % dev, {"name": "wake"})


def case_staged_deliveries(g, dev, token, use_tls):
    """Subscribers (MQTT, and MQTT over WebSocket) reset while a publisher's burst, read
    at once, is routed to them: their deliveries, staged during that read, are written at
    its end (or with the close) into a reset socket."""
    topic = "devices/%s/telemetry" % dev
    subs = []
    for i, ws in enumerate((False, True)):
        s = sock(g, port_name("http" if ws else "mqtt", use_tls), use_tls)
        pkts = connect_pkt("rst-stsub%d-%s" % (i, dev), dev, token) + subscribe_pkt(1, topic, 0)
        if ws:
            s.sendall(upgrade_req("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n"))
            recv_some(s, 4096, 2)  # the 101
            pkts = RawWS.frame(0x2, pkts)
        s.sendall(pkts)
        recv_some(s, 4096, 2)  # CONNACK, SUBACK
        subs.append(s)
    p = sock(g, port_name("mqtt", use_tls), use_tls)
    p.sendall(connect_pkt("rst-stpub-" + dev, dev, token)
              + b"".join(publish_pkt(topic, b'{"x":%d}' % i, qos=i % 2, pid=i + 1)
                         for i in range(200)))
    for s in subs:
        rst(s)
    recv_some(p, 4096, 0.2)
    rst(p)


STEPS = [
    ("tls_handshake_done", case_tls_handshake),
    ("upgrade_sent", case_upgrade),
    ("deflate_frames_behind_upgrade", case_deflate_behind_upgrade),
    ("expect_100_continue", case_expect_continue),
    ("mqtt_connect", mqtt_case(lambda dev: b"")),
    ("mqtt_subscribe", mqtt_case(lambda dev: subscribe_pkt(1, "devices/%s/commands" % dev))),
    ("mqtt_shared_subscribe",
     mqtt_case(lambda dev: subscribe_pkt(1, "$share/g/devices/%s/commands" % dev))),
    ("mqtt_shared_member_inflight",
     mqtt_case(lambda dev: subscribe_pkt(1, "$share/g/devices/%s/x" % dev)
               + b"".join(publish_pkt("devices/%s/x" % dev, b"m", pid=i) for i in range(1, 6)))),
    ("mqtt_first_publish",
     mqtt_case(lambda dev: publish_pkt("devices/%s/telemetry" % dev, b'{"x":1}'))),
    ("mqtt_mid_packet",
     mqtt_case(lambda dev: publish_pkt("devices/%s/telemetry" % dev, b'{"x":1}' * 50)[:40])),
    ("mqtt5_connect_with_will", mqtt5_case(lambda dev: b"", will=True)),
    ("mqtt5_alias_publish", mqtt5_case(v5_alias_publishes)),
    ("mqtt5_subscribe_with_id",
     mqtt5_case(lambda dev: mqttraw.subscribe5(1, [("devices/%s/commands" % dev, 0x1D)],
                                               mqttraw.props((mqttraw.P_SUB_ID, 7))))),
    ("mqtt5_auth", mqtt5_case(lambda dev: mqttraw.packet(0xF0, bytes([0x19]) + mqttraw.props(
        (mqttraw.P_AUTH_METHOD, "x"))))),
    ("mqtt5_disconnect_with_props",
     mqtt5_case(lambda dev: mqttraw.disconnect5(0x04, mqttraw.props((mqttraw.P_SESSION_EXPIRY, 5),
                                                                    (mqttraw.P_REASON_STRING, "bye"))),
                will=True)),
    ("mqtt5_resume_lower_receive_maximum", case_v5_resume_lower_receive_maximum),
    ("line_mid_line", case_line_mid_line),
    ("ws_mid_frame", case_ws_mid_frame),
    ("live_viewer_error", case_viewer_error),
    ("http_command_poll", case_command_poll),
    ("mqtt_staged_deliveries", case_staged_deliveries),
]


def half_tls_record(g, name):
    """A TLS session whose next record arrives in part, then a reset."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx().wrap_bio(incoming, outgoing, server_hostname="localhost")
    s = plain(g.ports[name])
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            s.sendall(outgoing.read())
            data = s.recv(65536)
            if not data:
                return
            incoming.write(data)
    s.sendall(outgoing.read())
    obj.write(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n" if name == "https"
              else connect_pkt("half-record"))
    rec = outgoing.read()
    s.sendall(rec[:len(rec) // 2])
    time.sleep(0.05)
    rst(s)


def streamed_csv_reset(g, dev, use_tls):
    """A long CSV reply (streamed, chunked), cut while it is being written."""
    s = sock(g, port_name("http", use_tls), use_tls)
    s.sendall(("GET /api/devices/%s/telemetry?keys=v&from=0&limit=20000&format=csv HTTP/1.1\r\n"
               "Host: x\r\nAuthorization: Bearer %s\r\n\r\n" % (dev, API_KEY)).encode())
    got = recv_some(s, 8192, 5)
    t(got.startswith(b"HTTP/1.1 200"), "streamed CSV starts: %r" % got[:40])
    rst(s)


def live_burst_reset(g, dev, token, use_tls):
    """A live viewer cut while a burst of updates is written to it."""
    s = sock(g, port_name("http", use_tls), use_tls)
    s.sendall(upgrade_req("/ws/live", AUTH)
              + RawWS.frame(0x1, json.dumps({"subscribe": {"devices": [dev]}}).encode()))
    head = recv_some(s, 4096, 5)
    t(head.startswith(b"HTTP/1.1 101"), "live viewer upgraded: %r" % head[:40])
    lc = g.line(dev, token)
    for i in range(300):
        lc.send_line({"v": i, "pad": "x" * 200})
    time.sleep(0.05)
    rst(s)
    for i in range(300):
        lc.send_line({"v": i})
    lc.close()


def scenario(g, dev, token, use_tls):
    """One pass of every protocol's happy path (its writes are what the seam fails)."""
    h, l, m = (port_name(x, use_tls) for x in ("http", "line", "mqtt"))
    try:
        s = sock(g, l, use_tls)
        s.sendall(json.dumps({"device": dev, "token": token}).encode() + b"\n"
                  + b'{"seq":1,"v":1}\n{"seq":2,"v":2}\nnot json\n')
        recv_some(s, 4096, 0.5)
        rst(s)
    except OSError:
        pass
    try:
        s = sock(g, m, use_tls)
        s.sendall(connect_pkt("seam-" + dev, dev, token)
                  + subscribe_pkt(1, "devices/%s/#" % dev)
                  + publish_pkt("devices/%s/telemetry" % dev, b'{"v":3}', 1, 2)
                  + publish_pkt("devices/%s/telemetry" % dev, b'{"v":4}', 0)
                  + b"\xe0\x00")
        recv_some(s, 4096, 0.5)
        s.close()
    except OSError:
        pass
    try:  # MQTT 5: CONNACK with properties, aliases both ways, a negative ack, DISCONNECT
        R = mqttraw
        s = sock(g, m, use_tls)
        s.sendall(R.connect5("seam5-" + dev, username=dev, password=token,
                             prop=R.props((R.P_ALIAS_MAX, 3), (R.P_SESSION_EXPIRY, 10)))
                  + R.subscribe5(1, [("devices/%s/#" % dev, 1)], R.props((R.P_SUB_ID, 3)))
                  + v5_alias_publishes(dev)
                  + R.publish5("devices/%s/telemetry" % dev, b"{bad", qos=1, pid=3)
                  + R.publish5("devices/%s/x" % dev, b"", qos=0, prop=R.props((R.P_ALIAS, 9))))
        recv_some(s, 4096, 0.5)
        s.close()
    except OSError:
        pass
    for path, hdrs, msgs in (
            ("/ws/live", "Authorization: Bearer %s\r\n" % API_KEY,
             [b'{"subscribe":{"devices":["%s"]}}' % dev.encode(), b"not json", b"[]", b"{}"]),
            ("/ws/device?device=%s&token=%s" % (dev, token), "",
             [b'{"seq":5,"v":5}', b"oops"]),
            ("/ws/echo", "", [b"hello"])):
        try:
            s = sock(g, h, use_tls)
            s.sendall(upgrade_req(path, hdrs) + b"".join(RawWS.frame(0x1, x) for x in msgs)
                      + RawWS.frame(0x8, struct.pack(">H", 1000)))
            recv_some(s, 4096, 0.5)
            s.close()
        except OSError:
            pass
    try:  # an HTTP device: its POST (commands in the reply) and a long poll that ends
        s = sock(g, h, use_tls)
        g.http("POST", "/api/devices/%s/commands" % dev, {"name": "seam"})
        s.sendall(("POST /api/devices/%s/telemetry HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer %s\r\nContent-Length: 7\r\n\r\n{\"v\":8}"
                   "GET /api/devices/%s/commands?wait=0.2 HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer %s\r\n\r\n" % (dev, token, dev, token)).encode())
        recv_some(s, 4096, 0.5)
        s.close()
    except OSError:
        pass
    try:
        s = sock(g, h, use_tls)
        s.sendall(("POST /api/devices/%s/telemetry HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer %s\r\nContent-Length: 7\r\n"
                   "Expect: 100-continue\r\n\r\n" % (dev, API_KEY)).encode())
        recv_some(s, 100, 0.5)
        s.sendall(b'{"v":6}')
        s.sendall(b"GET /api/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                  % API_KEY.encode())
        recv_some(s, 4096, 0.5)
        s.close()
    except OSError:
        pass


def provision(g, dev):
    st, body = g.http("POST", "/api/devices", {"id": dev})
    t.eq(st, 201, "device %s provisioned" % dev)
    return body["token"]


def main():
    # real resets at each step, plain and TLS: each step on a gateway of its own, so a
    # crash names its step
    only = os.environ.get("RESETS_ONLY")
    for name, case in STEPS + [("tls_mid_record", None), ("csv_stream_and_live_burst", None)]:
        if only and name != only:
            continue
        try:
            with Gale(args=TLS_ARGS) as g:
                wait_for(lambda: all(p in g.ports for p in ("https", "lines", "mqtts")), 10,
                         "TLS ports")
                token = provision(g, "dev-r")
                if case:
                    for _ in range(ROUNDS):
                        for use_tls in (False, True):
                            case(g, "dev-r", token, use_tls)
                elif name == "tls_mid_record":
                    for _ in range(ROUNDS):
                        for pname in ("https", "mqtts"):
                            half_tls_record(g, pname)
                else:
                    lc = g.line("dev-r", token)
                    for i in range(2500):
                        lc.send_line({"ts": 1700000000000 + i, "values": {"v": i}})
                    lc.send_line({"seq": 1, "v": -1})
                    t.eq(lc.read_line(), {"ack": 1}, "data for the CSV stored")
                    lc.close()
                    for _ in range(ROUNDS):
                        for use_tls in (False, True):
                            streamed_csv_reset(g, "dev-r", use_tls)
                            live_burst_reset(g, "dev-r", token, use_tls)
                healthy(g, name)
                lc = g.line("dev-r", token)  # the next client is served as usual
                lc.send_line({"seq": 7, "v": 7})
                t.eq(lc.read_line(), {"ack": 7}, "%s: a line client served after" % name)
                lc.close()
        except Exception as e:
            t(False, "step %s: %s" % (name, str(e).splitlines()[0] if str(e) else repr(e)))
    # the write fault seam: the Nth write of every connection fails, then writes at random.
    # The device is provisioned first, on the same data dir, by a gateway without the seam.
    seam_dir = tempfile.mkdtemp(prefix="gale-resets-seam-")
    if not only:
        with Gale(data_dir=seam_dir) as g:
            token = provision(g, "dev-s")
    for spec in [] if only else ["1", "2", "3", "4", "5", "6", "p=0.2,seed=7"]:
        try:
            with Gale(data_dir=seam_dir, args=TLS_ARGS,
                      env={"GALE_TEST_FAIL_WRITES": spec}) as g:
                wait_for(lambda: all(p in g.ports for p in ("https", "lines", "mqtts")), 10,
                         "TLS ports")
                g.wait_log(r"test seam: socket writes fail")
                for _ in range(3):
                    for use_tls in (False, True):
                        scenario(g, "dev-s", token, use_tls)
                t(g.alive(), "seam %s: gale alive after every step's writes failed" % spec)
                t(any("broken pipe" in l or "connection reset by peer" in l
                      for l in g.log_lines), "seam %s: writes did fail" % spec)
        except Exception as e:
            t(False, "seam %s: %s" % (spec, str(e).splitlines()[0] if str(e) else repr(e)))

t.run(main)
