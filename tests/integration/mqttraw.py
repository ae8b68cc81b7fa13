"""A byte-level MQTT 3.1.1 client for integration tests: builds every packet by hand
(so tests can also send malformed ones), reads packets with a deadline and decodes the
fields the tests look at. No dependencies beyond the standard library."""
import socket
import time
import struct

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
         7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
         12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT"}


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">H", len(b)) + b


def packet(first, body=b""):
    return bytes([first]) + varint(len(body)) + body


def connect(client_id="", clean=True, keepalive=60, username=None, password=None,
            will=None, proto=b"MQTT", level=4, flags_extra=0):
    """will = (topic, payload, qos, retain)"""
    flags = (0x02 if clean else 0) | flags_extra
    payload = s16(client_id)
    if will:
        topic, msg, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += s16(topic) + s16(msg)
    if username is not None:
        flags |= 0x80
        payload += s16(username)
    if password is not None:
        flags |= 0x40
        payload += s16(password)
    body = s16(proto) + bytes([level, flags]) + struct.pack(">H", keepalive) + payload
    return packet(0x10, body)


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=1):
    if isinstance(payload, str):
        payload = payload.encode()
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    body = s16(topic) + (struct.pack(">H", pid) if qos else b"") + payload
    return packet(first, body)


def subscribe(pid, filters):
    """filters: list of (filter, qos)"""
    body = struct.pack(">H", pid) + b"".join(s16(f) + bytes([q]) for f, q in filters)
    return packet(0x82, body)


def unsubscribe(pid, filters):
    return packet(0xA2, struct.pack(">H", pid) + b"".join(s16(f) for f in filters))


def ack(kind, pid):
    return packet((kind << 4) | (0x02 if kind == PUBREL else 0), struct.pack(">H", pid))


PINGREQ_BYTES = packet(0xC0)
DISCONNECT_BYTES = packet(0xE0)


class Packet:
    def __init__(self, first, body):
        self.type = first >> 4
        self.flags = first & 0x0F
        self.body = body
        self.qos = (self.flags >> 1) & 3
        self.dup = bool(self.flags & 0x08)
        self.retain = bool(self.flags & 0x01)
        self.pid = None
        if self.type == PUBLISH:
            n = struct.unpack(">H", body[:2])[0]
            self.topic = body[2:2 + n].decode()
            off = 2 + n
            if self.qos:
                self.pid = struct.unpack(">H", body[off:off + 2])[0]
                off += 2
            self.payload = body[off:]
        elif self.type in (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK):
            self.pid = struct.unpack(">H", body[:2])[0]
            self.codes = list(body[2:])
        elif self.type == CONNACK:
            self.session_present = body[0] & 1
            self.rc = body[1]

    def __repr__(self):
        if self.type == PUBLISH:
            return "PUBLISH(%s q%d r%d d%d id=%s %r)" % (self.topic, self.qos, self.retain,
                                                         self.dup, self.pid, self.payload)
        return "%s(%r)" % (NAMES.get(self.type, "?"), self.body)


class Raw:
    def __init__(self, port, host="127.0.0.1", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n, timeout):
        self.sock.settimeout(timeout)
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by server")
            self.buf += chunk

    def recv(self, timeout=10):
        """Next packet; raises socket.timeout or ConnectionError."""
        self._fill(2, timeout)
        mult, rem, i = 1, 0, 1
        while True:
            self._fill(i + 1, timeout)
            b = self.buf[i]
            rem += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        self._fill(i + rem, timeout)
        first, body = self.buf[0], self.buf[i:i + rem]
        self.buf = self.buf[i + rem:]
        return Packet(first, body)

    def recv_type(self, kind, timeout=10):
        p = self.recv(timeout)
        if p.type != kind:
            raise AssertionError("expected %s, got %r" % (NAMES[kind], p))
        return p

    def nothing(self, timeout=0.5):
        """True when no packet arrives within timeout (and the connection stays open)."""
        try:
            p = self.recv(timeout)
        except socket.timeout:
            return True
        raise AssertionError("unexpected packet %r" % p)

    def closed(self, timeout=5):
        """True once the server closes the connection (packets before that are dropped)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def connect(self, client_id="", **kw):
        self.send(connect(client_id, **kw))
        return self.recv_type(CONNACK)

    def sub(self, pid, filters):
        self.send(subscribe(pid, filters))
        p = self.recv_type(SUBACK)
        assert p.pid == pid, p
        return p.codes

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Drops the connection without DISCONNECT (RST), as a crashed client would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def session(port, client_id, **kw):
    """A connected Raw client; asserts CONNACK 0."""
    c = Raw(port)
    ack_ = c.connect(client_id, **kw)
    assert ack_.rc == 0, "CONNACK rc=%d" % ack_.rc
    c.session_present = ack_.session_present
    return c


# ---- MQTT 5.0 (5.0 §2.2.2 properties): builders and a Packet5 that decodes properties ----

AUTH = 15
NAMES[AUTH] = "AUTH"
# property id -> type: b byte, h two-byte, i four-byte, v varint, s string, d binary, p pair
PROP_TYPES = {0x01: "b", 0x02: "i", 0x03: "s", 0x08: "s", 0x09: "d", 0x0B: "v", 0x11: "i",
              0x12: "s", 0x13: "h", 0x15: "s", 0x16: "d", 0x17: "b", 0x18: "i", 0x19: "b",
              0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: "h", 0x22: "h", 0x23: "h", 0x24: "b",
              0x25: "b", 0x26: "p", 0x27: "i", 0x28: "b", 0x29: "b", 0x2A: "b"}
P_PAYLOAD_FORMAT, P_MESSAGE_EXPIRY, P_CONTENT_TYPE, P_RESPONSE_TOPIC = 0x01, 0x02, 0x03, 0x08
P_CORRELATION, P_SUB_ID, P_SESSION_EXPIRY, P_ASSIGNED_ID = 0x09, 0x0B, 0x11, 0x12
P_SERVER_KEEP_ALIVE, P_AUTH_METHOD, P_AUTH_DATA, P_WILL_DELAY = 0x13, 0x15, 0x16, 0x18
P_REASON_STRING, P_RECEIVE_MAX, P_ALIAS_MAX, P_ALIAS = 0x1F, 0x21, 0x22, 0x23
P_USER, P_MAX_PACKET = 0x26, 0x27


def props(*items):
    """items: (id, value) pairs; a pair property's value is (name, value). Returns the
    property block with its length."""
    out = b""
    for pid, val in items:
        kind = PROP_TYPES[pid]
        out += varint(pid)
        if kind == "b":
            out += bytes([val])
        elif kind == "h":
            out += struct.pack(">H", val)
        elif kind == "i":
            out += struct.pack(">I", val)
        elif kind == "v":
            out += varint(val)
        elif kind in "sd":
            out += s16(val)
        else:
            out += s16(val[0]) + s16(val[1])
    return varint(len(out)) + out


def parse_props(b, off):
    """(dict id -> value or list for repeated ids, offset after the block)."""
    n, mult = 0, 1
    while True:
        c = b[off]
        off += 1
        n += (c & 0x7F) * mult
        mult *= 128
        if not c & 0x80:
            break
    end, out = off + n, {}
    while off < end:
        pid, mult = 0, 1
        while True:
            c = b[off]
            off += 1
            pid += (c & 0x7F) * mult
            mult *= 128
            if not c & 0x80:
                break
        kind = PROP_TYPES[pid]
        if kind == "b":
            v, off = b[off], off + 1
        elif kind == "h":
            v, off = struct.unpack(">H", b[off:off + 2])[0], off + 2
        elif kind == "i":
            v, off = struct.unpack(">I", b[off:off + 4])[0], off + 4
        elif kind == "v":
            v, mult = 0, 1
            while True:
                c = b[off]
                off += 1
                v += (c & 0x7F) * mult
                mult *= 128
                if not c & 0x80:
                    break
        elif kind in "sd":
            ln = struct.unpack(">H", b[off:off + 2])[0]
            v = b[off + 2:off + 2 + ln]
            v = v.decode() if kind == "s" else v
            off += 2 + ln
        else:
            l1 = struct.unpack(">H", b[off:off + 2])[0]
            k = b[off + 2:off + 2 + l1].decode()
            off += 2 + l1
            l2 = struct.unpack(">H", b[off:off + 2])[0]
            v = (k, b[off + 2:off + 2 + l2].decode())
            off += 2 + l2
        if pid in (P_USER, P_SUB_ID):
            out.setdefault(pid, []).append(v)
        else:
            out[pid] = v
    return out, end


def connect5(client_id="", clean=True, keepalive=60, username=None, password=None,
             will=None, will_props=b"\x00", prop=b"\x00"):
    """will = (topic, payload, qos, retain); prop / will_props: blocks from props()."""
    flags = 0x02 if clean else 0
    payload = s16(client_id)
    if will:
        topic, msg, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += will_props + s16(topic) + s16(msg)
    if username is not None:
        flags |= 0x80
        payload += s16(username)
    if password is not None:
        flags |= 0x40
        payload += s16(password)
    body = s16(b"MQTT") + bytes([5, flags]) + struct.pack(">H", keepalive) + prop + payload
    return packet(0x10, body)


def publish5(topic, payload=b"", qos=0, retain=False, dup=False, pid=1, prop=b"\x00"):
    if isinstance(payload, str):
        payload = payload.encode()
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    body = s16(topic) + (struct.pack(">H", pid) if qos else b"") + prop + payload
    return packet(first, body)


def subscribe5(pid, filters, prop=b"\x00"):
    """filters: list of (filter, options byte)"""
    body = struct.pack(">H", pid) + prop + b"".join(s16(f) + bytes([o]) for f, o in filters)
    return packet(0x82, body)


def unsubscribe5(pid, filters, prop=b"\x00"):
    return packet(0xA2, struct.pack(">H", pid) + prop + b"".join(s16(f) for f in filters))


def ack5(kind, pid, rc=0):
    return packet((kind << 4) | (0x02 if kind == PUBREL else 0),
                  struct.pack(">H", pid) + (bytes([rc, 0]) if rc else b""))


def disconnect5(rc=0, prop=b"\x00"):
    return packet(0xE0, bytes([rc]) + prop)


class Packet5(Packet):
    """A packet decoded with 5.0 rules: .props, .rc (acks, CONNACK, DISCONNECT, AUTH)."""

    def __init__(self, first, body):
        self.type = first >> 4
        self.flags = first & 0x0F
        self.body = body
        self.qos = (self.flags >> 1) & 3
        self.dup = bool(self.flags & 0x08)
        self.retain = bool(self.flags & 0x01)
        self.pid = None
        self.rc = 0
        self.props = {}
        if self.type == PUBLISH:
            n = struct.unpack(">H", body[:2])[0]
            self.topic = body[2:2 + n].decode()
            off = 2 + n
            if self.qos:
                self.pid = struct.unpack(">H", body[off:off + 2])[0]
                off += 2
            self.props, off = parse_props(body, off)
            self.payload = body[off:]
        elif self.type in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            self.pid = struct.unpack(">H", body[:2])[0]
            if len(body) > 2:
                self.rc = body[2]
            if len(body) > 3:
                self.props, _ = parse_props(body, 3)
        elif self.type in (SUBACK, UNSUBACK):
            self.pid = struct.unpack(">H", body[:2])[0]
            self.props, off = parse_props(body, 2)
            self.codes = list(body[off:])
        elif self.type == CONNACK:
            self.session_present = body[0] & 1
            self.rc = body[1]
            self.props, _ = parse_props(body, 2) if len(body) > 2 else ({}, 2)
        elif self.type in (DISCONNECT, AUTH):
            self.rc = body[0] if body else 0
            if len(body) > 1:
                self.props, _ = parse_props(body, 1)


class Raw5(Raw):
    """Raw with 5.0 decoding."""

    def recv(self, timeout=10):
        p = Raw.recv(self, timeout)
        return Packet5((p.type << 4) | p.flags, p.body)

    def connect(self, client_id="", **kw):
        self.send(connect5(client_id, **kw))
        return self.recv_type(CONNACK)

    def sub(self, pid, filters, prop=b"\x00"):
        self.send(subscribe5(pid, filters, prop))
        p = self.recv_type(SUBACK)
        assert p.pid == pid, p
        return p.codes

    def disconnected(self, timeout=5):
        """The reason code of the DISCONNECT the server sends before closing (packets
        before it are skipped), or None when it closes without one."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                p = self.recv(max(0.05, deadline - time.time()))
            except socket.timeout:
                continue
            except (ConnectionError, OSError):
                return None
            if p.type == DISCONNECT:
                return p.rc
        raise AssertionError("no DISCONNECT within %ss" % timeout)


def session5(port, client_id, **kw):
    c = Raw5(port)
    ack_ = c.connect(client_id, **kw)
    assert ack_.rc == 0, "CONNACK rc=0x%02x %r" % (ack_.rc, ack_.props)
    c.session_present = ack_.session_present
    c.connack = ack_
    return c
