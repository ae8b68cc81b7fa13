"""Each pre-authentication budget and per-identity limit from the outside, one small case
each, against one gateway started with small limits (README "Security"):
- pre-auth caps: an MQTT CONNECT declaring more than limits.preauth_max_bytes is refused
  from its fixed header alone; an unauthenticated HTTP body past it gets 413 unread (an
  authenticated one does not); a first line past it gets line_too_long; a first
  WebSocket message past it closes the connection
- the auth deadline: an unauthenticated keep-alive HTTP connection is closed at
  limits.auth_timeout_ms although it was answered; an authenticated one is not
- limits.max_connections_per_ip: unauthenticated connections of one address past it are
  refused, while another loopback address (127.0.0.2) is served; authenticated ones do
  not count
- limits.preauth_total_bytes: a connection whose bytes would pass it is closed
- limits.max_sessions_per_device: the session unused longest makes room; with all of
  them connected a new one is refused (CONNACK 5)
- mqtt.session_expiry_s: an unused persistent session is deleted; a device's sessions go
  with it when it is deleted
- limits.max_retained_per_device / _bytes_per_device: retained publishes past them are
  acknowledged and not kept
- limits.max_attribute_bytes: PATCH past it -> 413; an attribute publish past it is not
  merged
- mqtt.max_subscriptions: past it SUBACK 0x80
- limits.device_rate_msgs_per_s: excess dropped (still acknowledged over MQTT; an error
  with code rate_limited on the line protocol), counted in gale_rate_limited_total
- ACL: an anonymous client cannot publish into a provisioned device's namespace nor
  subscribe to its commands, nor receive them through a wildcard; a subscription the
  ACL no longer allows is dropped when the session is loaded at start and on resume."""
import json
import shutil
import socket
import tempfile
import time

import mqttraw as mr
from galetest import API_KEY, Check, Gale, RawWS, metric, wait_for

t = Check("test_limits")
PREAUTH = 4096
LIMITS = ["--set", "limits.preauth_max_bytes=%d" % PREAUTH,
          "--set", "limits.preauth_total_bytes=16384",
          "--set", "limits.auth_timeout_ms=3000",
          "--set", "limits.max_connections_per_ip=20",
          "--set", "limits.max_sessions_per_device=2",
          "--set", "mqtt.session_expiry_s=2",
          "--set", "limits.max_retained_per_device=3",
          "--set", "limits.max_retained_bytes_per_device=2000",
          "--set", "limits.max_attribute_bytes=200",
          "--set", "mqtt.max_subscriptions=3",
          "--set", "limits.device_rate_msgs_per_s=5",
          "--set", "limits.device_rate_burst=20",
          "--set", "mqtt.allow_anonymous=true",
          "--set", "http.ws_echo=true"]


def closed_within(sock, secs):
    sock.settimeout(secs)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def http_raw(g, data):
    s = socket.create_connection(("127.0.0.1", g.ports["http"]), timeout=10)
    s.sendall(data)
    return s


def status_of(s):
    s.settimeout(10)
    buf = b""
    while b"\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return None
        buf += chunk
    return int(buf.split()[1])


def preauth_caps(g):
    port = g.ports["mqtt"]
    # a CONNECT whose fixed header declares 1 MB: closed at once, nothing more is read
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(bytes([0x10]) + mr.varint(1000000) + b"\x00\x04MQTT")
    t(closed_within(s, 1.5), "a CONNECT declaring 1 MB is refused from its fixed header")
    s.close()
    c = mr.Raw(port)  # a full CONNECT just over the cap
    c.send(mr.connect("big", username="x" * (PREAUTH + 10), password="p"))
    t(c.closed(2), "a CONNECT just over limits.preauth_max_bytes is refused")
    # HTTP: 413 before the body, unless the head carries the API key
    s = http_raw(g, b"POST /api/devices HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    t.eq(status_of(s), 413, "an unauthenticated 100 kB body gets 413 unread")
    s.close()
    body = json.dumps({"id": "big-attrs", "attributes": {"a": "x" * 6000}}).encode()
    s = http_raw(g, b"POST /api/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + API_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    st = status_of(s)
    t.eq(st, 413, "an authenticated body past the pre-auth cap is read, and judged by "
         "limits.max_attribute_bytes (413)")
    s.close()
    # line: a first line past the cap
    lc = g.line()
    lc.send(b'{"device":"' + b"x" * (PREAUTH + 100))
    t.eq(lc.read_line().get("code"), "line_too_long", "a first line past the cap is refused")
    t(lc.closed(), "... and the connection closed")
    # WebSocket: a first message past the cap (the echo endpoint never authenticates)
    ws = RawWS(g.ports["http"], "/ws/echo")
    ws.send(0x1, b"y" * (PREAUTH + 100))
    t(ws.closed(3), "a first WebSocket message past the cap closes the connection")
    t(metric(g, "gale_preauth_bytes") == 0, "nothing is held once they are gone")


def auth_deadline(g):
    s = http_raw(g, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    t.eq(status_of(s), 200, "health answered without credentials")
    t(not closed_within(s, 1.0), "... the connection stays open for now")
    t(closed_within(s, 4.0), "... and is closed at the auth deadline although it was served")
    s.close()
    s = http_raw(g, b"GET /api/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + API_KEY.encode() + b"\r\n\r\n")
    t.eq(status_of(s), 200, "health answered with the API key")
    t(not closed_within(s, 4.0), "an authenticated keep-alive connection outlives the deadline")
    s.close()


def per_ip(g, tok):
    port = g.ports["mqtt"]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    time.sleep(0.3)
    extra = socket.create_connection(("127.0.0.1", port), timeout=10)
    t(closed_within(extra, 2), "the 21st unauthenticated connection of 127.0.0.1 is refused")
    other = socket.socket()
    other.bind(("127.0.0.2", 0))
    other.settimeout(10)
    other.connect(("127.0.0.1", port))
    other.sendall(mr.connect("other-addr", username="lim-dev", password=tok))
    c = mr.Raw.__new__(mr.Raw)
    c.sock, c.buf = other, b""
    t.eq(c.recv().rc, 0, "a device from 127.0.0.2 is served meanwhile")
    c.close()
    g.wait_log(r"too many unauthenticated connections from this address")
    for s in idle:
        s.close()
    time.sleep(0.3)
    # authenticated connections do not count
    held = [mr.session(port, "many-%d" % i, username="lim-dev", password=tok) for i in range(25)]
    t(True, "25 authenticated connections from one address past the limit of 20")
    for c in held:
        c.close()


def preauth_total(g):
    port = g.ports["line"]
    socks = []
    for i in range(5):  # 5 x 3500 unconsumed bytes > 16384
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b'{"device":"' + b"z" * 3500)
        socks.append(s)
        time.sleep(0.1)
    closed = [closed_within(s, 0.5) for s in socks]
    t(closed[-1] and not any(closed[:4]), "the connection passing the budget is closed "
      "(%s)" % closed)
    for s in socks:
        s.close()
    wait_for(lambda: metric(g, "gale_preauth_bytes") == 0, 5, "budget released")
    t(metric(g, "gale_preauth_refused_total") >= 1, "counted in gale_preauth_refused_total")


def sessions(g, tok):
    port = g.ports["mqtt"]
    for cid in ("s1", "s2"):
        c = mr.session(port, cid, clean=False, username="lim-dev", password=tok)
        c.close()
        time.sleep(0.05)
    c = mr.session(port, "s3", clean=False, username="lim-dev", password=tok)
    c.close()
    g.wait_log(r'client="s1" device=lim-dev session deleted reason="limits.max_sessions')
    c = mr.Raw(port)
    t.eq(c.connect("s2", clean=False, username="lim-dev", password=tok).session_present, 1,
         "s2 kept")
    d = mr.Raw(port)
    t.eq(d.connect("s3", clean=False, username="lim-dev", password=tok).session_present, 1,
         "s3 kept")
    e = mr.Raw(port)
    t.eq(e.connect("s4", clean=False, username="lim-dev", password=tok).rc, 5,
         "a third session while both are connected: CONNACK 5")
    for x in (c, d, e):
        x.close()
    # expiry: 2 s unused
    g.wait_log(r'client="s2" session expired', timeout=8)
    c = mr.Raw(port)
    t.eq(c.connect("s2", clean=False, username="lim-dev", password=tok).session_present, 0,
         "an expired session is gone")
    c.close()
    # deleted with the device
    tok2 = g.create_device("del-dev")
    c = mr.session(port, "del-1", clean=False, username="del-dev", password=tok2)
    c.close()
    time.sleep(0.2)
    st, _ = g.http("DELETE", "/api/devices/del-dev")
    t.eq(st, 200, "device deleted")
    g.wait_log(r"device=del-dev deleted with its mqtt sessions=1")


def retained(g):
    tok = g.create_device("ret-dev")
    port = g.ports["mqtt"]
    c = mr.session(port, "ret", username="ret-dev", password=tok)
    for i, name in enumerate(["a", "b", "c", "d"]):
        c.send(mr.publish("devices/ret-dev/" + name, "v", qos=1, retain=True, pid=i + 1))
        t.eq(c.recv_type(mr.PUBACK).pid, i + 1, "retained %s acknowledged" % name)
    c.send(mr.publish("devices/ret-dev/a", "w" * 1500, qos=1, retain=True, pid=9))
    c.recv_type(mr.PUBACK)
    c.send(mr.publish("devices/ret-dev/b", "w" * 600, qos=1, retain=True, pid=10))
    c.recv_type(mr.PUBACK)
    c.close()
    s = mr.session(port, "ret-sub", username="ret-dev", password=tok)
    s.send(mr.subscribe(1, [("devices/ret-dev/#", 0)]))
    got = {}
    try:
        while True:
            p = s.recv(timeout=1)
            if p.type == mr.PUBLISH:
                got[p.topic] = len(p.payload)
    except socket.timeout:
        pass
    s.close()
    t("devices/ret-dev/status" in got, "its presence is retained")
    got.pop("devices/ret-dev/status", None)
    t.eq(sorted(got), ["devices/ret-dev/a", "devices/ret-dev/b"],
         "past 3 retained topics (its status topic is one) none is kept")
    t.eq(got.get("devices/ret-dev/a"), 1500, "a replacement within the byte share is kept")
    t.eq(got.get("devices/ret-dev/b"), 1, "one past the byte share is not")
    g.wait_log(r"retained publish dropped topic=\"devices/ret-dev/c\" "
               r"reason=\"limits.max_retained_per_device reached\"")


def attributes(g):
    tok = g.create_device("attr-dev", attributes={"a": 1})
    st, js = g.http("PATCH", "/api/devices/attr-dev", {"attributes": {"big": "x" * 300}})
    t.eq((st, js.get("code")), (413, "attributes_too_large"), "PATCH past the limit -> 413")
    c = mr.session(g.ports["mqtt"], "attr", username="attr-dev", password=tok)
    c.send(mr.publish("devices/attr-dev/attributes", json.dumps({"b": 2}), qos=1, pid=1))
    c.recv_type(mr.PUBACK)
    c.send(mr.publish("devices/attr-dev/attributes", json.dumps({"c": "y" * 300}), qos=1, pid=2))
    c.recv_type(mr.PUBACK)
    c.close()
    st, js = g.http("GET", "/api/devices/attr-dev")
    t.eq(js.get("attributes"), {"a": 1, "b": 2}, "an attribute publish past the limit is not "
         "merged")
    g.wait_log(r"device=attr-dev attributes not merged")


def subscriptions(g, tok):
    c = mr.session(g.ports["mqtt"], "subs", username="lim-dev", password=tok)
    c.send(mr.subscribe(1, [("devices/lim-dev/%d" % i, 0) for i in range(4)]))
    t.eq(c.recv_type(mr.SUBACK).codes, [0, 0, 0, 0x80], "the 4th subscription is refused")
    c.close()


def rate(g):
    tok = g.create_device("rate-dev")
    before = metric(g, 'gale_rate_limited_total{action="drop"}')
    c = mr.session(g.ports["mqtt"], "rate", username="rate-dev", password=tok)
    for i in range(40):
        c.send(mr.publish("devices/rate-dev/telemetry", '{"n":%d}' % i, qos=1, pid=i + 1))
    acks = [c.recv_type(mr.PUBACK).pid for _ in range(40)]
    c.close()
    t.eq(sorted(acks), list(range(1, 41)), "every publish acknowledged (3.1.1 has no nack)")
    dropped = metric(g, 'gale_rate_limited_total{action="drop"}') - before
    t(10 <= dropped <= 21, "messages past the burst of 20 dropped (%d)" % dropped)
    lc = g.line("rate-dev", tok)
    codes = []
    for i in range(30):
        lc.send_line({"n": i, "seq": i})
    for i in range(30):
        r = lc.read_line()
        codes.append(r.get("code") or "ack")
    lc.close()
    t("rate_limited" in codes, "the line protocol answers rate_limited (%d of 30)"
      % codes.count("rate_limited"))


def anonymous(g, tok):
    port = g.ports["mqtt"]
    dev = mr.session(port, "lim-own", username="lim-dev", password=tok)
    dev.send(mr.subscribe(1, [("devices/lim-dev/commands", 1)]))
    dev.recv_type(mr.SUBACK)
    a = mr.session(port, "anon-1")
    a.send(mr.subscribe(1, [("devices/lim-dev/commands", 0), ("devices/+/commands", 0),
                            ("devices/free-dev/commands", 0)]))
    t.eq(a.recv_type(mr.SUBACK).codes, [0x80, 0, 0],
         "anonymous: a provisioned device's commands refused; a wildcard and an "
         "unprovisioned id granted")
    a.send(mr.publish("devices/lim-dev/telemetry", '{"forged":1}', qos=1, pid=7))
    t.eq(a.recv_type(mr.PUBACK).pid, 7, "an anonymous publish into it is acknowledged...")
    st, _ = g.http("POST", "/api/devices/lim-dev/commands", {"name": "reboot"})
    t.eq(st, 202, "command queued")
    p = dev.recv_type(mr.PUBLISH)
    t.eq(p.topic, "devices/lim-dev/commands", "the device gets its command")
    try:
        while True:
            q = a.recv(timeout=1)
            t(q.type != mr.PUBLISH or "lim-dev" not in q.topic,
              "no command reaches the anonymous wildcard (%r)" % q)
    except socket.timeout:
        pass
    st, latest = g.http("GET", "/api/devices/lim-dev/latest")
    t("forged" not in (latest or {}), "... and dropped: not stored")
    a.close()
    dev.close()


def recheck_on_load():
    """A persistent subscription a rule allowed is dropped once the rule is gone: at start
    (the loaded session) and so on resume."""
    data = tempfile.mkdtemp(prefix="gale-test-")
    rule = '[{"user":"acl-dev","topic":"shared/#","action":"all","allow":true}]'
    try:
        with Gale(data_dir=data, args=["--set", "mqtt.acl=" + rule]) as g:
            tok = g.create_device("acl-dev")
            c = mr.session(g.ports["mqtt"], "acl-sess", clean=False, username="acl-dev",
                           password=tok)
            c.send(mr.subscribe(1, [("shared/x", 1), ("devices/acl-dev/commands", 1)]))
            t.eq(c.recv_type(mr.SUBACK).codes, [1, 1], "granted by the rule")
            c.close()
            time.sleep(0.3)
        with Gale(data_dir=data, args=["--set", "mqtt.allow_anonymous=true"]) as g:
            g.wait_log(r'client="acl-sess" subscription dropped filter="shared/x" '
                       r'reason="no longer allowed by the ACL"')
            c = mr.Raw(g.ports["mqtt"])
            t.eq(c.connect("acl-sess", clean=False, username="acl-dev", password=tok)
                 .session_present, 1, "the session itself is kept")
            other = mr.session(g.ports["mqtt"], "app-anon")
            other.send(mr.publish("shared/x", "leak", qos=0))
            other.close()
            t(c.nothing(1.0), "nothing arrives on the dropped subscription")
            c.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main():
    with Gale(args=LIMITS) as g:
        tok = g.create_device("lim-dev")
        preauth_caps(g)
        auth_deadline(g)
        per_ip(g, tok)
        preauth_total(g)
        sessions(g, tok)
        retained(g)
        attributes(g)
        subscriptions(g, tok)
        rate(g)
        anonymous(g, tok)
    recheck_on_load()


if __name__ == "__main__":
    t.run(main)
