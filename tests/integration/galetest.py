"""Helpers for integration tests: start the real gale binary on free ports,
read its ports from the `listening` log lines, and talk to it with real clients.
Every wait has a deadline; every process is stopped at the end."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
import time
import urllib.error
import urllib.request

GALE_BIN = os.environ.get("GALE_BIN", os.path.join(os.getcwd(), "gale"))
API_KEY = "test-api-key-0123456789"


def wait_for(cond, timeout=10.0, what="condition", interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError("timed out waiting for " + what)


def tls_args(cert, key, ca=None, client_auth="off"):
    """Flags for a gale with its TLS listeners on free ports (tls_port=-1); their ports
    show as "https", "lines" and "mqtts" in Gale.ports."""
    args = ["--set", "tls.cert_file=" + cert, "--set", "tls.key_file=" + key,
            "--set", "tls.client_auth=" + client_auth,
            "--set", "http.tls_port=-1", "--set", "line.tls_port=-1", "--set", "mqtt.tls_port=-1"]
    if ca:
        args += ["--set", "tls.ca_file=" + ca]
    return args


class Gale:
    """A running gale process. Use as a context manager."""

    def __init__(self, data_dir=None, args=(), env=None, api_key=API_KEY):
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="gale-test-")
        self.args = list(args)
        self.env = dict(os.environ)
        self.env.pop("GALE_BIN", None)
        if api_key:
            self.env["GALE_HTTP_API_KEY"] = api_key
        self.env.update(env or {})
        self.api_key = api_key
        self.proc = None
        self.ports = {}
        self.log_lines = []
        self._lock = threading.Lock()

    def start(self, wait_ports=("http", "line", "mqtt")):
        cmd = [GALE_BIN, "--data-dir", self.data_dir,
               "--set", "http.port=0", "--set", "line.port=0", "--set", "mqtt.port=0",
               "--set", "http.bind=127.0.0.1", "--set", "line.bind=127.0.0.1",
               "--set", "mqtt.bind=127.0.0.1"] + self.args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=self.env, text=True, errors="replace")
        self._reader_thread = threading.Thread(target=self._reader, daemon=True)
        self._reader_thread.start()
        wait_for(lambda: all(p in self.ports for p in wait_ports) or self.proc.poll() is not None,
                 15, "listening lines")
        if self.proc.poll() is not None:
            raise AssertionError("gale exited early:\n" + self.log())
        return self

    def _reader(self):
        for line in self.proc.stdout:
            with self._lock:
                self.log_lines.append(line.rstrip("\n"))
            m = re.search(r"listening protocol=(\w+) port=(\d+)", line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))
            elif line.startswith("{") and '"listening"' in line:
                js = json.loads(line)
                self.ports[js["protocol"]] = int(js["port"])
            if os.environ.get("GALE_TEST_VERBOSE"):
                sys.stderr.write("gale| " + line)

    def log(self):
        # once the process is gone, its last lines may still sit in the pipe: read them all
        rt = getattr(self, "_reader_thread", None)
        if rt and self.proc and self.proc.poll() is not None:
            rt.join(5)
        with self._lock:
            return "\n".join(self.log_lines)

    def fail_commits(self, n):
        """The storage fault seam (the gateway runs with GALE_TEST_FAIL_COMMITS=n): makes the
        next n commit attempts fail; returns once the gateway has armed it. The writer tries
        a batch 4 times, 50/100/200 ms apart: n=4 fails a batch, fewer delay it."""
        line = "test seam: the next %d storage commit attempts fail" % n
        before = sum(1 for l in list(self.log_lines) if line in l)
        os.kill(self.proc.pid, signal.SIGUSR2)
        wait_for(lambda: sum(1 for l in list(self.log_lines) if line in l) > before, 10,
                 "seam armed")

    def wait_log(self, pattern, timeout=10):
        rx = re.compile(pattern)
        return wait_for(lambda: any(rx.search(l) for l in list(self.log_lines)), timeout,
                        "log line matching %r" % pattern)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("gale did not stop within %ss" % timeout)
        return self.proc.returncode if self.proc else None

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for l in f:
                if l.startswith("VmRSS:"):
                    return int(l.split()[1])
        return 0

    def alive(self):
        return self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            rc = self.stop()
        finally:
            if self.own_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)
        if exc[0] is not None:
            sys.stderr.write("---- gale log (exit status %r; negative: killed by that "
                             "signal) ----\n" % rc + self.log()[-20000:] + "\n")
        elif rc != 0:
            # a clean SIGTERM stop exits 0; sanitizer reports (leaks, bad accesses) do not
            sys.stderr.write("---- gale log ----\n" + self.log()[-20000:] + "\n")
            raise AssertionError("gale exited with %r after SIGTERM" % rc)
        return False

    # ---- HTTP ----
    def http(self, method, path, body=None, key="default", headers=None, raw=False, timeout=10):
        url = "http://127.0.0.1:%d%s" % (self.ports["http"], path)
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if key == "default":
            key = self.api_key
        if key:
            req.add_header("Authorization", "Bearer " + key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, payload, hdrs = r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            status, payload, hdrs = e.code, e.read(), dict(e.headers)
        if raw:
            return status, payload, hdrs
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def create_device(self, dev_id, **extra):
        body = {"id": dev_id}
        body.update(extra)
        st, js = self.http("POST", "/api/devices", body)
        assert st == 201, (st, js)
        return js["token"]

    def line(self, device=None, token=None):
        c = LineClient(self.ports["line"])
        if device:
            resp = c.auth(device, token)
            assert resp == {"ok": True}, resp
        return c


class LineClient:
    def __init__(self, port, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""

    def send(self, data):
        if isinstance(data, dict) or isinstance(data, list):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def send_line(self, obj):
        self.send((json.dumps(obj) if not isinstance(obj, (str, bytes)) else obj))
        self.send(b"\n")

    def read_line(self, timeout=10):
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by gale; buffered=%r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def auth(self, device, token):
        self.send_line({"device": device, "token": token})
        return self.read_line()

    def closed(self, timeout=5):
        """True once gale closes the connection (reads past any pending lines)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


class Check:
    """Counts assertions; prints a plain summary line and sets the exit code."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0

    def __call__(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL: %s: %s" % (self.name, what), flush=True)

    def eq(self, got, want, what):
        self(got == want, "%s: got %r, want %r" % (what, got, want))

    def run(self, main):
        """Runs main(); an exception counts as a failure. Then prints the summary
        and exits (see done)."""
        try:
            main()
        except Exception:
            traceback.print_exc()
            self(False, "exception")
        self.done()

    def done(self):
        print("%s: %d passed, %d failed" % (self.name, self.passed, self.failed))
        sys.exit(1 if self.failed or self.passed == 0 else 0)


# ---- WebSocket (raw socket, for frames that real clients refuse to send) ----

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept_key(key):
    import base64
    import hashlib
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


class RawWS:
    """A WebSocket client on a plain socket: writes any frame (masked or not, any
    bits) and reads server frames. status/headers hold the handshake answer."""

    def __init__(self, port, path, headers=None, subprotocol=None, extra=b"", timeout=10,
                 handshake=True):
        import base64
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.status = None
        self.headers = {}
        self.body = b""
        if handshake:
            req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n" % (path, self.key))
            if subprotocol:
                req += "Sec-WebSocket-Protocol: %s\r\n" % subprotocol
            for k, v in (headers or {}).items():
                req += "%s: %s\r\n" % (k, v)
            self.sock.sendall(req.encode() + b"\r\n" + extra)
            self.read_head()

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during handshake: %r" % self.buf)
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        for l in lines[1:]:
            k, v = l.split(":", 1)
            self.headers[k.strip().lower()] = v.strip()
        n = int(self.headers.get("content-length", "0"))
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        self.body, self.buf = self.buf[:n], self.buf[n:]
        if self.status == 101:
            assert self.headers.get("sec-websocket-accept") == ws_accept_key(self.key), \
                self.headers
        return self.status

    @staticmethod
    def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
        import struct
        if isinstance(payload, str):
            payload = payload.encode()
        n = len(payload) if length is None else length
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        if n < 126:
            hdr = bytes([b0, (0x80 if mask else 0) | n])
        elif n < 65536:
            hdr = bytes([b0, (0x80 if mask else 0) | 126]) + struct.pack(">H", n)
        else:
            hdr = bytes([b0, (0x80 if mask else 0) | 127]) + struct.pack(">Q", n)
        if not mask:
            return hdr + payload
        key = os.urandom(4)
        return hdr + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))

    def send(self, opcode, payload=b"", **kw):
        self.sock.sendall(self.frame(opcode, payload, **kw))

    def send_text(self, s):
        self.send(0x1, s.encode() if isinstance(s, str) else s)

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def _need(self, n, timeout):
        self.sock.settimeout(timeout)
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by gale; buffered=%r" % self.buf[:200])
            self.buf += chunk

    def recv_frame(self, timeout=10):
        """(fin, rsv, opcode, payload) of the next server frame."""
        import struct
        self._need(2, timeout)
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames must not be masked"
        n, off = b1 & 0x7f, 2
        if n == 126:
            self._need(4, timeout)
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10, timeout)
            n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(off + n, timeout)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0f, payload

    def recv_msg(self, timeout=10):
        """Next data message (text decoded, pings answered); ('close', code)."""
        parts, op0 = [], None
        while True:
            fin, rsv, op, p = self.recv_frame(timeout)
            if op == 0x9:
                self.send(0xA, p)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                return ("close", int.from_bytes(p[:2], "big") if len(p) >= 2 else 1005)
            if op != 0:
                op0 = op
            parts.append(p)
            if fin:
                data = b"".join(parts)
                return data.decode() if op0 == 1 else data

    def recv_json(self, timeout=10):
        m = self.recv_msg(timeout)
        if isinstance(m, tuple):
            raise ConnectionError("got close %r" % (m,))
        return json.loads(m)

    def read_close(self, timeout=10):
        """Reads until the server's close frame: (code, reason) — (None, None) if the
        connection ended without one."""
        try:
            while True:
                fin, rsv, op, p = self.recv_frame(timeout)
                if op == 0x8:
                    code = int.from_bytes(p[:2], "big") if len(p) >= 2 else 1005
                    return code, p[2:].decode(errors="replace")
        except (ConnectionError, OSError):
            return None, None

    def closed(self, timeout=5):
        """True once gale closes the TCP connection."""
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

    def close(self):
        self.sock.close()


def metric(g, name):
    """Value of one Prometheus sample from /metrics (0 when absent). A name without
    labels sums every sample of that name (all label sets of a counter family)."""
    st, text = g.http("GET", "/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or ("{" not in name and line.startswith(name + "{")):
            total += float(line.rsplit(None, 1)[1])
    return total
