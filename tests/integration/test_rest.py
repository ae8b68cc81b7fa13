"""REST API: auth, device lifecycle, latest, telemetry queries with limit and
cursor, HTTP ingest with the device token, errors with JSON bodies."""

from galetest import Check, Gale, wait_for

t = Check("test_rest")


def main():
    with Gale() as g:
        st, js = g.http("GET", "/api/health", key=None)
        t.eq(st, 200, "health needs no key")
        t.eq(js.get("status"), "ok", "health status")

        st, js = g.http("GET", "/api/devices", key=None)
        t.eq(st, 401, "no key -> 401")
        t.eq(js.get("code"), "unauthorized", "401 has a JSON error body")
        st, _ = g.http("GET", "/api/devices", key="wrong")
        t.eq(st, 401, "wrong key -> 401")

        st, js = g.http("POST", "/api/devices", {"id": "dev-1"})
        t.eq(st, 201, "create device")
        t(len(js.get("token", "")) >= 32, "token returned once")
        tok = js["token"]
        st, js = g.http("POST", "/api/devices", {"id": "dev-1"})
        t.eq((st, js.get("code")), (409, "exists"), "duplicate id -> 409")
        for bad in ["", "has space", "x" * 65, "slash/no", "ünï"]:
            st, js = g.http("POST", "/api/devices", {"id": bad})
            t.eq((st, js.get("code")), (400, "invalid_id"), "invalid id %r -> 400" % bad)
        st, js = g.http("POST", "/api/devices", b"{nope")
        t.eq((st, js.get("code")), (400, "bad_json"), "bad JSON body -> 400")
        g.create_device("app-1", role="app")

        st, js = g.http("GET", "/api/devices")
        t.eq([d["id"] for d in js["devices"]], ["app-1", "dev-1"], "device list sorted")
        t.eq(js["devices"][1]["online"], False, "presence in list")
        st, js = g.http("GET", "/api/devices/dev-1")
        t.eq((st, js["id"], js["role"]), (200, "dev-1", "device"), "get device")
        t("token" not in js and "token_hash" not in js, "token never shown again")
        st, js = g.http("GET", "/api/devices/nope")
        t.eq((st, js.get("code")), (404, "not_found"), "unknown device -> 404")
        st, js = g.http("PUT", "/api/devices/dev-1")
        t.eq(st, 405, "PUT -> 405")
        st, js = g.http("GET", "/api/nothing")
        t.eq(st, 404, "unknown route -> 404")

        # HTTP ingest with the device's own token (not the API key)
        base = 1700000000000
        pts = [{"ts": base + i, "values": {"t": i}} for i in range(25)]
        st, js = g.http("POST", "/api/devices/dev-1/telemetry", pts, key=tok)
        t.eq((st, js), (200, {"stored": 25, "commands": []}),
             "ingest with device token (no command waiting)")
        st, js = g.http("POST", "/api/devices/dev-1/telemetry", {"t": 1}, key="bad")
        t.eq(st, 401, "ingest with a wrong token -> 401")
        st, js = g.http("POST", "/api/devices/dev-1/telemetry", b"[1,2", key=tok)
        t.eq((st, js.get("code")), (400, "bad_json"), "bad telemetry -> 400 bad_json")
        st, js = g.http("POST", "/api/devices/dev-1/telemetry", {"s": "x"})
        t.eq(st, 200, "ingest with the API key")

        st, js = g.http("GET", "/api/devices/dev-1/latest")
        t.eq(js["t"], {"ts": base + 24, "value": 24}, "latest after HTTP ingest")

        # range + limit + cursor: no silent truncation
        st, js = g.http("GET", "/api/devices/dev-1/telemetry?keys=t&limit=10")
        t.eq([p["ts"] - base for p in js["t"]], list(range(10)), "first page")
        t("_next" in js, "a cut reply carries _next")
        seen = [p["value"] for p in js["t"]]
        pages = 1
        while "_next" in js and pages < 10:
            st, js = g.http("GET", "/api/devices/dev-1/telemetry?limit=10&cursor=" + js["_next"])
            t.eq(st, 200, "cursor page status")
            seen += [p["value"] for p in js["t"]]
            pages += 1
        t.eq(seen, list(range(25)), "pages together give every point once")
        t.eq(pages, 3, "three pages of 10")
        st, js = g.http("GET", "/api/devices/dev-1/telemetry?keys=t&from=%d&to=%d" %
                        (base + 5, base + 7))
        t.eq([p["value"] for p in js["t"]], [5, 6, 7], "from/to inclusive")
        st, js = g.http("GET", "/api/devices/dev-1/telemetry?keys=t&order=desc&limit=2")
        t.eq([p["value"] for p in js["t"]], [24, 23], "desc order")
        st, js = g.http("GET", "/api/devices/dev-1/telemetry?keys=t&agg=avg&interval=10")
        t.eq([p["value"] for p in js["t"]], [4.5, 14.5, 22], "avg over 10 ms buckets")
        st, js = g.http("GET", "/api/devices/dev-1/telemetry?keys=t&agg=count&interval=1000")
        t.eq(js["t"][0]["value"], 25, "count aggregate")
        for q, what in [("limit=0", "limit 0"), ("from=abc", "bad from"),
                        ("agg=avg", "agg without interval"), ("agg=median&interval=5", "bad agg"),
                        ("cursor=!!!", "bad cursor"), ("from=10&to=5", "from after to")]:
            st, js = g.http("GET", "/api/devices/dev-1/telemetry?" + q)
            t.eq((st, js.get("code")), (400, "bad_param"), what + " -> 400")

        # a well-formed cursor without numeric members is refused, not left hanging
        import base64
        for cur in [b'{"t":"x"}', b'{"t":null}', b'{"t":1,"u":"x"}', b'{}', b'[1]', b'7']:
            enc = base64.urlsafe_b64encode(cur).decode().rstrip("=")
            st, js = g.http("GET", "/api/devices/dev-1/telemetry?cursor=" + enc, timeout=5)
            t.eq((st, js.get("code")), (400, "bad_param"), "cursor %r -> 400" % cur)
        wait_for(lambda: g.http("GET", "/api/connections")[1]["count"] == 1, 5,
                 "refused cursor requests leave no connection behind")

        # ingest without valid credentials: the same 401 for unknown and known ids
        for key in [None, "bad"]:
            known = g.http("POST", "/api/devices/dev-1/telemetry", {"t": 1}, key=key, raw=True)
            unknown = g.http("POST", "/api/devices/nope/telemetry", {"t": 1}, key=key, raw=True)
            t.eq((unknown[0], unknown[1]), (known[0], known[1]),
                 "key %r: unknown id answers as a known one" % key)
            t.eq(known[0], 401, "key %r: ingest without valid credentials -> 401" % key)
        st, js = g.http("POST", "/api/devices/nope/telemetry", {"t": 1})
        t.eq((st, js.get("code")), (404, "not_found"), "with the API key an unknown id is 404")

        # PATCH: attributes and token rotation
        st, js = g.http("PATCH", "/api/devices/dev-1", {"attributes": {"site": "lab"}})
        t.eq((st, js.get("attributes")), (200, {"site": "lab"}), "patch attributes")
        st, js = g.http("PATCH", "/api/devices/dev-1", {"token": "rotate"})
        t(st == 200 and js.get("token") and js["token"] != tok, "token rotation")
        new_tok = js["token"]
        c = g.line()
        t.eq(c.auth("dev-1", tok).get("code"), "unauthorized", "old token refused after rotation")
        c = g.line("dev-1", new_tok)

        # DELETE: device, its telemetry and its connections go
        st, js = g.http("DELETE", "/api/devices/dev-1")
        t.eq(st, 200, "delete device")
        t(c.closed(), "deleted device's connection is closed")
        st, js = g.http("GET", "/api/devices/dev-1")
        t.eq(st, 404, "deleted device is gone")
        g.create_device("dev-1")
        st, js = g.http("GET", "/api/devices/dev-1/telemetry?keys=t")
        t.eq(js.get("t", []), [], "re-created device starts without old telemetry")

        st, js = g.http("GET", "/api/openapi.json", key=None)
        t(st == 200 and js.get("openapi", "").startswith("3.") and "/api/devices" in js["paths"],
          "OpenAPI document served")
        st, body, hdrs = g.http("GET", "/", key=None, raw=True)
        t.eq(st, 200, "dashboard index served")
        t("text/html" in hdrs.get("Content-Type", ""), "dashboard is HTML")
        t(g.alive(), "alive")

    big_replies()


def slow_get(g, path):
    """GET over a socket with a small receive buffer that starts reading late, so the
    reply waits in gale's send queue. Returns (status, body) once gale closes."""
    import json
    import socket
    import time
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.connect(("127.0.0.1", g.ports["http"]))
    s.sendall(("GET %s HTTP/1.1\r\nHost: gale\r\nAuthorization: Bearer %s\r\n"
               "Connection: close\r\n\r\n" % (path, g.api_key)).encode())
    time.sleep(0.3)
    s.settimeout(10)
    data = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = dict(l.split(": ", 1) for l in lines[1:])
    complete = int(hdrs.get("Content-Length", -1)) == len(body)
    return int(lines[0].split()[1]), json.loads(body) if complete else None


def big_replies():
    """Replies larger than limits.max_send_queue_bytes arrive whole: the telemetry reply
    is cut to the budget and its cursor carries on where each key stopped."""
    # 6 MB of points: more than the socket buffers take at once (4 MiB at most here) plus
    # the 512 KiB budget, so an unpaged reply would be cut off
    budget = 512 * 1024
    with Gale(args=["--set", "limits.max_send_queue_bytes=%d" % budget,
                    "--set", "http.max_body_bytes=4194304"]) as g:
        g.create_device("big")
        base = 1700000000000
        n = 6000
        for k in ("a", "b"):
            for part in range(6):
                pts = [{"ts": base + i, "values": {k: "%06d" % i + "x" * 500}}
                       for i in range(part * n // 6, (part + 1) * n // 6)]
                st, js = g.http("POST", "/api/devices/big/telemetry", pts)
                t.eq(st, 200, "ingest %s part %d" % (k, part))
        got = {"a": [], "b": []}
        path = "/api/devices/big/telemetry?keys=a,b&limit=100000"
        pages = 0
        while path and pages < 100:
            st, js = slow_get(g, path)
            pages += 1
            if st != 200 or js is None:
                t(False, "page %d arrives complete with 200 (status %d)" % (pages, st))
                break
            for k in ("a", "b"):
                got[k] += [p["ts"] - base for p in js.get(k, [])]
            path = ("/api/devices/big/telemetry?limit=100000&cursor=" + js["_next"]
                    if "_next" in js else None)
        t(pages > 2, "a reply over the send budget is paged (%d pages)" % pages)
        t.eq((got["a"], got["b"]), (list(range(n)), list(range(n))),
             "the pages together hold every point of every key once, in order")
        st, js = g.http("GET", "/api/devices/big/telemetry?keys=a&order=desc&limit=100000")
        seen = [p["ts"] - base for p in js["a"]]
        while "_next" in js:
            st, js = g.http("GET", "/api/devices/big/telemetry?order=desc&limit=100000&cursor="
                            + js["_next"])
            seen += [p["ts"] - base for p in js["a"]]
        t.eq(seen, list(range(n - 1, -1, -1)), "descending pages hold every point once")


t.run(main)
