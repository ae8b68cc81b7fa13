"""A byte-level MQTT 3.1.1 client for integration tests: builds every packet by hand
(so tests can also send malformed ones), reads packets with a deadline and decodes the
fields the tests look at. No dependencies beyond the standard library."""
import socket
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
