"""The PROXY protocol (v1 and v2) on every listener: mqtt, line, http and their TLS twins.

- a header from a trusted peer names the client: its address is the connection's peer in
  the log, in GET /api/connections, and in the per-address cap on unauthenticated
  connections (limits.max_connections_per_ip counts the clients, not the balancer);
- v1 and v2 (PROXY and LOCAL commands, TCP4 and TCP6), whole or a byte at a time, and
  the client's first bytes in the same segment as the header;
- on a TLS listener the header comes before the ClientHello;
- refused, with a log line naming the peer and the reason: a peer outside
  limits.proxy_trusted, a connection without a header, a bad header, a header of the
  other version, a header that does not come within limits.proxy_header_timeout_ms;
- a reset at every byte of a v1 and a v2 header (the connection lifetime rule), after
  which a fresh client is served and gale stops cleanly (exit 0, ASan clean).
Loopback only; every client has a timeout; gale is stopped by its PID."""
import json
import socket
import ssl
import struct
import tempfile
import time

import mqttraw

from galetest import Check, Gale, metric, tls_args, wait_for
from tlscerts import CA

t = Check("test_proxy")
D = tempfile.mkdtemp(prefix="gale-proxy-")
ca = CA(D)
CERT, KEY = ca.issue("server", "localhost", server=True)

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, sport, dst="127.0.0.1", dport=1883):
    fam = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def v2(src, sport, dst="127.0.0.1", dport=1883, cmd=1, tlvs=b""):
    if ":" in src:
        addrs = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                 + struct.pack("!HH", sport, dport))
        fam = 0x21
    else:
        addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
        fam = 0x11
    body = addrs + tlvs
    return V2_SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def v2_local():
    return V2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", 0)


def rst(s):
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def conn(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def closed(s, timeout=5):
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def mqtt_connect(port, header, client_id, device, token, bytewise=False):
    """Raw MQTT client whose connection opens with header; returns (Raw, CONNACK rc)."""
    c = mqttraw.Raw(port)
    data = header + mqttraw.connect(client_id, username=device, password=token)
    if bytewise:
        for i in range(len(data)):
            c.send(data[i:i + 1])
            time.sleep(0.001)
    else:
        c.send(data)
    return c, c.recv_type(mqttraw.CONNACK).rc


def peers(g, proto):
    st, js = g.http("GET", "/api/connections?protocol=" + proto)
    assert st == 200, (st, js)
    return [c["peer"] for c in js["connections"]]


def http_via(g, port, header, path="/api/health", tls_ctx=None):
    s = conn(port)
    s.sendall(header)
    if tls_ctx:
        s = tls_ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Connection: close\r\n\r\n" % (path, g.api_key)).encode())
    data = b""
    s.settimeout(5)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def main():
    args = ["--set", "mqtt.proxy_protocol=any", "--set", "line.proxy_protocol=v1",
            "--set", "http.proxy_protocol=v2", "--set", "limits.proxy_trusted=127.0.0.0/8, ::1",
            "--set", "limits.proxy_header_timeout_ms=400",
            "--set", "limits.max_connections_per_ip=3"] + tls_args(CERT, KEY)
    with Gale(args=args) as g:
        for name in ("mqtt", "line", "http", "mqtts", "lines", "https"):
            g.wait_log(r"listening protocol=%s port=\d+ .*proxy_protocol=" % name)
        tok = None
        # the API itself is behind http.proxy_protocol=v2 now: galetest's http() cannot
        # reach it, so REST goes through a v2 header naming the operator
        op = v2("192.0.2.1", 1000, dport=g.ports["http"])

        def api(method, path, body=None):
            s = conn(g.ports["http"])
            payload = json.dumps(body).encode() if body is not None else b""
            s.sendall(op + ("%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                            "Content-Type: application/json\r\nContent-Length: %d\r\n"
                            "Connection: close\r\n\r\n" % (method, path, g.api_key, len(payload))
                            ).encode() + payload)
            data = b""
            s.settimeout(5)
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            head, _, body_ = data.partition(b"\r\n\r\n")
            status = int(head.split()[1])
            if b"Transfer-Encoding: chunked" in head:
                out, rest = b"", body_
                while rest:
                    n, _, rest = rest.partition(b"\r\n")
                    n = int(n, 16)
                    if n == 0:
                        break
                    out, rest = out + rest[:n], rest[n + 2:]
                body_ = out
            try:
                return status, json.loads(body_) if body_ else None
            except ValueError:
                return status, body_.decode()

        g.http = lambda method, path, body=None, **kw: api(method, path, body)
        st, js = api("POST", "/api/devices", {"id": "px-1"})
        t.eq(st, 201, "device created through a v2 header")
        tok = js["token"]

        # ---- MQTT: v1 and v2, IPv4 and IPv6 clients, whole and bytewise ----
        cases = [
            ("v1 tcp4", v1("203.0.113.7", 40001), "203.0.113.7:40001", False),
            ("v2 tcp4", v2("203.0.113.8", 40002), "203.0.113.8:40002", False),
            ("v2 tcp6", v2("2001:db8::5", 40003, "::1"), "[2001:db8::5]:40003", False),
            ("v1 tcp6", v1("2001:db8::6", 40004, "::1"), "[2001:db8::6]:40004", False),
            ("v2 bytewise", v2("203.0.113.9", 40005), "203.0.113.9:40005", True),
            ("v1 bytewise", v1("203.0.113.10", 40006), "203.0.113.10:40006", True),
        ]
        clients = []
        for what, hdr, peer, bw in cases:
            c, rc = mqtt_connect(g.ports["mqtt"], hdr, "px-" + what.replace(" ", "-"), "px-1",
                                 tok, bytewise=bw)
            t.eq(rc, 0, "%s: CONNACK" % what)
            clients.append(c)
            t(peer in peers(g, "mqtt"), "%s: %s in /api/connections (%r)" %
              (what, peer, peers(g, "mqtt")))
            g.wait_log(r"peer=%s proto=mqtt device=px-1 online" % peer.replace("[", r"\[")
                       .replace("]", r"\]"))
        # a header then a PUBLISH QoS 1: data flows, ack from the gateway
        c = clients[0]
        c.send(mqttraw.publish("devices/px-1/telemetry", b'{"t":1}', qos=1, pid=7))
        t.eq(c.recv_type(mqttraw.PUBACK).pid, 7, "PUBACK behind a v1 header")
        for c in clients:
            c.close()

        # v2 LOCAL (a balancer's health check): the connection's own address stands
        c, rc = mqtt_connect(g.ports["mqtt"], v2_local(), "px-local", "px-1", tok)
        t.eq(rc, 0, "v2 LOCAL: CONNACK")
        t(any(p.startswith("127.0.0.1:") for p in peers(g, "mqtt")), "v2 LOCAL keeps 127.0.0.1")
        c.close()
        # v2 with TLVs (skipped)
        tlv = bytes([0x05, 0x00, 0x04]) + b"abcd"  # PP2_TYPE_UNIQUE_ID
        c, rc = mqtt_connect(g.ports["mqtt"], v2("198.51.100.4", 50000, tlvs=tlv), "px-tlv",
                             "px-1", tok)
        t.eq(rc, 0, "v2 with a TLV: CONNACK")
        t("198.51.100.4:50000" in peers(g, "mqtt"), "v2 with a TLV names its client")
        c.close()

        # ---- line (v1 only) and its TLS twin: the header precedes the ClientHello ----
        s = conn(g.ports["line"])
        s.sendall(v1("203.0.113.20", 41000) + json.dumps({"device": "px-1", "token": tok})
                  .encode() + b"\n")
        s.settimeout(5)
        t.eq(s.recv(100), b'{"ok":true}\n', "line login behind a v1 header")
        t("203.0.113.20:41000" in peers(g, "line"), "line peer from the header")
        s.close()
        cx = ssl.create_default_context(cafile=ca.pem)
        raw = conn(g.ports["lines"])
        raw.sendall(v1("203.0.113.21", 41001))
        s = cx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(json.dumps({"device": "px-1", "token": tok}).encode() + b"\n")
        t.eq(s.recv(100), b'{"ok":true}\n', "line over TLS behind a v1 header")
        t("203.0.113.21:41001" in peers(g, "line"), "TLS line peer from the header")
        s.close()
        raw = conn(g.ports["mqtts"])
        raw.sendall(v2("203.0.113.22", 41002))
        s = cx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(mqttraw.connect("px-tls", username="px-1", password=tok))
        s.settimeout(5)
        t.eq(s.recv(4)[:2], b"\x20\x02", "MQTT over TLS behind a v2 header: CONNACK")
        t("203.0.113.22:41002" in peers(g, "mqtt"), "TLS MQTT peer from the header")
        s.close()
        data = http_via(g, g.ports["https"], v2("203.0.113.23", 41003), tls_ctx=cx)
        t(data.startswith(b"HTTP/1.1 200"), "HTTPS behind a v2 header: %r" % data[:40])
        # the access to http names the header's client in the close line (debug) and the
        # connections listing (the listing's own request is behind op's header)
        t("192.0.2.1:1000" in peers(g, "http"), "the REST request's own peer is its client")

        # ---- refusals, each with a log line naming the peer and the reason ----
        s = conn(g.ports["mqtt"])
        s.sendall(mqttraw.connect("px-nohdr", username="px-1", password=tok))
        t(closed(s), "no header: closed")
        g.wait_log(r"peer=127\.0\.0\.1:\d+ listener=mqtt PROXY header refused "
                   r"reason=\"no PROXY header\"")
        s = conn(g.ports["line"])
        s.sendall(v2("203.0.113.30", 1))
        t(closed(s), "v2 header on a v1 listener: closed")
        g.wait_log(r"listener=line PROXY header refused reason=\"PROXY v2 header where v1 is "
                   r"expected\"")
        s = conn(g.ports["mqtt"])
        s.sendall(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n")
        t(closed(s), "bad v1 port: closed")
        g.wait_log(r"reason=\"PROXY v1 address or port invalid\"")
        s = conn(g.ports["mqtt"])
        s.sendall(b"PROXY TCP4 " + b"1" * 120)
        t(closed(s), "v1 line past 107 bytes: closed")
        g.wait_log(r"reason=\"PROXY v1 line longer than 107 bytes\"")
        s = conn(g.ports["mqtt"])
        s.sendall(V2_SIG + b"\x21\x11\xff\xff")
        t(closed(s), "v2 length over the cap: closed at once")
        g.wait_log(r"reason=\"PROXY v2 header longer than 2064 bytes\"")
        s = conn(g.ports["mqtt"])
        s.sendall(b"PROXY TCP4 1.2")
        t0 = time.monotonic()
        t(closed(s, 5), "half a header: closed by the header timeout")
        t(time.monotonic() - t0 < 4, "the timeout is limits.proxy_header_timeout_ms")
        g.wait_log(r"peer=127\.0\.0\.1:\d+ listener=mqtt PROXY header refused "
                   r"reason=\"PROXY header timeout \(limits.proxy_header_timeout_ms\)\"")

        # ---- per-address cap counts the header's clients ----
        held = []
        for i in range(3):  # 3 unauthenticated connections, all of one client: at the cap
            s = conn(g.ports["mqtt"])
            s.sendall(v2("203.0.113.50", 42000 + i))
            held.append(s)
        s = conn(g.ports["mqtt"])
        s.sendall(v2("203.0.113.50", 42010))
        t(closed(s), "a 4th unauthenticated connection of one client: refused")
        g.wait_log(r"listener=mqtt peer=203\.0\.113\.50:42010 refused reason=\"too many "
                   r"unauthenticated connections")
        # other clients behind the same balancer address are not capped by it
        c, rc = mqtt_connect(g.ports["mqtt"], v2("203.0.113.51", 42100), "px-cap", "px-1", tok)
        t.eq(rc, 0, "another client behind the same balancer connects")
        c.close()
        for s in held:
            s.close()

        # ---- resets at every byte of a header (v1 and v2), and after it ----
        for hdr in (v1("203.0.113.60", 43000), v2("203.0.113.61", 43001, tlvs=b"\x05\x00\x01z")):
            for k in range(len(hdr) + 1):
                s = conn(g.ports["mqtt"])
                if k:
                    s.sendall(hdr[:k])
                rst(s)
        s = conn(g.ports["mqtts"])  # header complete, TLS open, then reset mid-ClientHello
        s.sendall(v2("203.0.113.62", 43002) + b"\x16\x03\x01\x00")
        rst(s)
        c, rc = mqtt_connect(g.ports["mqtt"], v1("203.0.113.63", 43003), "px-after", "px-1", tok)
        t.eq(rc, 0, "a fresh client is served after the resets")
        c.close()
        st, text = api("GET", "/metrics")
        t(st == 200, "metrics through a v2 header")
        failed = [float(l.split()[-1]) for l in text.splitlines()
                  if l.startswith('gale_proxy_connections_total{result="failed"}')]
        t(failed and failed[0] >= 5, "failed headers counted: %r" % failed)

    # ---- an untrusted peer is refused outright ----
    with Gale(args=["--set", "mqtt.proxy_protocol=v2",
                    "--set", "limits.proxy_trusted=[\"10.0.0.0/8\"]"]) as g:
        s = conn(g.ports["mqtt"])
        s.sendall(v2("203.0.113.70", 44000))
        t(closed(s), "untrusted peer: closed")
        g.wait_log(r"listener=mqtt peer=127\.0\.0\.1:\d+ refused reason=\"PROXY protocol "
                   r"listener: peer not in limits.proxy_trusted\"")
        t.eq(metric(g, 'gale_proxy_connections_total{result="untrusted"}'), 1.0,
             "untrusted refusal counted")
        # the listeners without the switch are unchanged
        st, _ = g.http("GET", "/api/health")
        t.eq(st, 200, "http without proxy_protocol serves directly")

    # ---- bad trusted list: gale refuses to start, naming the key ----
    import subprocess
    from galetest import GALE_BIN
    r = subprocess.run([GALE_BIN, "--check-config", "--set", "limits.proxy_trusted=10.0.0.0/33"],
                       capture_output=True, text=True, timeout=20)
    t.eq(r.returncode, 2, "a bad CIDR is a config error")
    t("limits.proxy_trusted" in r.stderr, "the error names limits.proxy_trusted: %r" % r.stderr)
    r = subprocess.run([GALE_BIN, "--check-config", "--set", "mqtt.proxy_protocol=v2"],
                       capture_output=True, text=True, timeout=20)
    t(r.returncode == 2 and "mqtt.proxy_protocol is on but limits.proxy_trusted is empty"
      in r.stderr, "proxy_protocol without trusted peers is a config error: %r" % r.stderr)


t.run(main)
