"""HTTP server behaviour over raw sockets: keep-alive, pipelining order, limits
(413 before the body arrives, 431), malformed requests, connection limits and
bounded memory; the gateway keeps serving after each. /api/ready before the gateway is
ready (503, through the start-up delay seam). The access log in every format, and
with log.format=json its fields as members of the log line (not a JSON string inside it)."""
import json
import re
import socket

from galetest import API_KEY, Check, Gale, wait_for

t = Check("test_http")


def connect(g):
    return socket.create_connection(("127.0.0.1", g.ports["http"]), timeout=10)


def read_responses(s, n, timeout=10):
    """Reads n complete responses (Content-Length framed); returns [(status, headers, body)]."""
    s.settimeout(timeout)
    buf, out = b"", []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return out
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
        clen = int(hdrs.get("content-length", 0))
        while len(rest) < clen:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        if status != 100:
            out.append((status, hdrs, rest[:clen]))
        buf = rest[clen:]
    return out


def is_closed(s, timeout=5):
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def served(g):
    st, js = g.http("GET", "/api/health", key=None)
    return st == 200


def ready_while_starting():
    """GET /api/ready: 503 with a JSON error until the gateway is ready, then 200."""
    with Gale(env={"GALE_TEST_READY_DELAY_MS": "1500"}) as g:
        st, body, hdrs = g.http("GET", "/api/ready", key=None, raw=True)
        js = json.loads(body)
        t.eq((st, js.get("code"), js.get("status"), hdrs.get("Retry-After")),
             (503, "not_ready", "starting", "1"), "not ready yet: 503 not_ready (JSON)")
        t("error" in js and "json" in hdrs.get("Content-Type", ""), "the error shape")
        t.eq(g.http("GET", "/api/health", key=None)[0], 200, "alive meanwhile (liveness)")
        wait_for(lambda: g.http("GET", "/api/ready", key=None)[0] == 200, 10, "ready")
        t.eq(g.http("GET", "/api/ready", key=None)[1], {"status": "ready"}, "then 200 ready")


def access_log_formats():
    """http.access_log=common|json, under log.format=text and json."""
    ua = "probe/3 \xe9"  # a byte that is not UTF-8 from the client
    with Gale(args=["--set", "http.access_log=json", "--set", "log.format=json"]) as g:
        s = connect(g)
        s.sendall(("GET /api/health?token=s3cret&b=%%ff HTTP/1.1\r\nHost: x\r\n"
                   "User-Agent: %s\r\n\r\n" % ua).encode("latin-1") + b"")
        read_responses(s, 1)
        s.close()
        g.wait_log(r'"type":"access"')
        lines = [l for l in g.log_lines if '"type":"access"' in l]
        js = json.loads(lines[0])  # the whole line is one JSON object
        t.eq((js["type"], js["method"], js["target"], js["status"], js["level"]),
             ("access", "GET", "/api/health?token=REDACTED&b=%ff", 200, "info"),
             "log.format=json: the access fields are top-level members of the line")
        t("ts" in js and "msg" not in js, "the line's own ts, no nested message string")
        t(js["user_agent"].startswith("probe/3 "), "a client's odd bytes keep the line JSON")
        t("s3cret" not in g.log(), "no secret in the log")
    with Gale(args=["--set", "http.access_log=common", "--set", "log.format=json"]) as g:
        g.http("GET", "/api/health")
        g.wait_log(r'GET /api/health HTTP/1\.1\\" 200')
        line = [l for l in g.log_lines if "GET /api/health" in l][0]
        t(json.loads(line)["msg"].startswith("127.0.0.1 - default ["),
          "common format under log.format=json: the NCSA line is the message (its user field "
          "names the API key)")
        # a client's "=" in the target or the User-Agent adds no member to the line
        s = connect(g)
        s.sendall(b"GET /api/health?level=error&ts=1 HTTP/1.1\r\nHost: x\r\n"
                  b"User-Agent: a=b level=debug ts=2\r\n\r\n")
        read_responses(s, 1)
        s.close()
        g.wait_log(r"level=error&ts=1")
        lines = [l for l in g.log_lines if "level=error&ts=1" in l]
        t.eq(len(lines), 1, "one log line for the request")
        js = json.loads(lines[0])
        t.eq(sorted(js), ["level", "msg", "ts"], "ts, level and one message: %s" % lines[0])
        t.eq(js["level"], "info", "the access log's level, not the client's")
        t(js["ts"] not in ("1", "2", 1, 2), "the log's own time, not the client's")
        t(re.match(r'127\.0\.0\.1 - - \[[^]]+\] "GET /api/health\?level=error&ts=1 '
                   r'HTTP/1\.1" 200 \d+ "-" "a=b level=debug ts=2" \d+\.\d{6}$', js["msg"]),
          "the whole NCSA line in the one member: %r" % js["msg"])
    with Gale(args=["--set", "http.access_log=json"]) as g:
        g.http("GET", "/api/health")
        g.wait_log(r'"type":"access"')
        line = [l for l in g.log_lines if '"type":"access"' in l][0]
        t.eq(json.loads(line[line.index("{"):])["target"], "/api/health",
             "log.format=text: the JSON object after the time and level")


def main():
    with Gale(args=["--set", "http.max_header_bytes=4096", "--set", "http.max_body_bytes=65536",
                    "--set", "limits.max_connections=20",
                    "--set", "limits.auth_timeout_ms=1500"]) as g:
        auth = "Authorization: Bearer %s\r\n" % API_KEY
        # pipelining: three requests in one write, answered in order on one connection
        s = connect(g)
        s.sendall(("GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
                   "GET /api/devices HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n"
                   "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").encode())
        rs = read_responses(s, 3)
        t.eq([r[0] for r in rs], [200, 200, 404], "pipelined replies in order")
        t(json.loads(rs[1][2]).get("devices") == [], "second pipelined reply is the device list")
        # keep-alive: the same socket serves another request
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        t.eq(read_responses(s, 1)[0][0], 200, "keep-alive connection reused")
        # a request split into single bytes
        for ch in b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n":
            s.send(bytes([ch]))
        t.eq(read_responses(s, 1)[0][0], 200, "byte-at-a-time request parsed")
        s.close()

        # HTTP/1.0 without keep-alive closes after the reply
        s = connect(g)
        s.sendall(b"GET /api/health HTTP/1.0\r\n\r\n")
        r = read_responses(s, 1)
        t.eq(r[0][0], 200, "HTTP/1.0 answered")
        t(is_closed(s), "HTTP/1.0 connection closed after the reply")

        # 413 as soon as the headers declare too much, without waiting for the body
        s = connect(g)
        s.sendall(("POST /api/devices HTTP/1.1\r\nHost: x\r\n" + auth +
                   "Content-Length: 999999999\r\n\r\n").encode())
        r = read_responses(s, 1)
        t.eq(r[0][0] if r else None, 413, "huge Content-Length -> 413 before the body")
        t.eq(json.loads(r[0][2]).get("code"), "body_too_large", "413 JSON body")
        t(is_closed(s), "closed after 413")
        # chunked body over the limit
        s = connect(g)
        s.sendall(("POST /api/devices HTTP/1.1\r\nHost: x\r\n" + auth +
                   "Transfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"x" * 30000
        for _ in range(3):
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break
        r = read_responses(s, 1)
        t.eq(r[0][0] if r else None, 413, "chunked body over the limit -> 413")
        # 431
        s = connect(g)
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        r = read_responses(s, 1)
        t.eq(r[0][0] if r else None, 431, "header over the limit -> 431")
        t.eq(json.loads(r[0][2]).get("code"), "headers_too_large", "431 JSON body")
        # malformed
        s = connect(g)
        s.sendall(b"BLAH\x01 / HTTP/1.1\r\n\r\n")
        r = read_responses(s, 1)
        t.eq(r[0][0] if r else None, 400, "malformed request line -> 400")
        t(is_closed(s), "closed after 400")
        t(served(g), "still serving after bad requests")
        g.wait_log(r"proto=http bad request status=400 reason=")

        # a connection that never completes its first request is closed by the timer
        s = connect(g)
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        t(is_closed(s, timeout=5), "half a request is closed after the request timeout")
        # ... but an idle keep-alive connection after an authenticated request is not (an
        # unauthenticated one keeps its auth deadline: test_limits.py)
        s = connect(g)
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + API_KEY.encode() + b"\r\n\r\n")
        read_responses(s, 1)
        t(not is_closed(s, timeout=2), "keep-alive connection survives past the request timeout")
        s.close()

        # connection limit: excess refused and logged, others unaffected
        socks = [connect(g) for _ in range(25)]
        refused = sum(1 for x in socks if is_closed(x, timeout=1))
        t(refused >= 5, "connections over max_connections are refused (%d)" % refused)
        g.wait_log(r"refused reason=\"max connections reached\"")
        for x in socks:
            x.close()
        wait_for(lambda: served(g), 5, "served again after limit")

        # bounded memory: many clients declare big bodies and send nothing
        rss0 = g.rss_kb()
        socks = []
        for _ in range(15):
            x = connect(g)
            x.sendall(("POST /api/devices/a/telemetry HTTP/1.1\r\nHost: x\r\n"
                       "Content-Length: 60000\r\n\r\n").encode())
            socks.append(x)
        wait_for(lambda: True, 0.1)
        rss1 = g.rss_kb()
        t(rss1 - rss0 < 20000, "declared bodies do not allocate memory (%d kB)" % (rss1 - rss0))
        for x in socks:
            x.close()
        t(served(g), "still serving at the end")

    ready_while_starting()
    access_log_formats()


t.run(main)
