"""Operations routes (web/ops.c): connections (paging, filters, kick), MQTT sessions,
subscriptions and retained messages (listed, removed), POST /api/publish reaching an
MQTT subscriber, every route's errors with JSON bodies, /api/ready, and the OpenAPI
coverage check: every documented route answers, every route in the C sources and every
method a path allows is documented."""
import base64
import http.client
import json
import os
import re
import shutil
import socket
import subprocess

import mqttraw as mr
from galetest import Check, Gale, wait_for

t = Check("test_ops")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def err(t, st, js, status, what):
    t.eq(st, status, what)
    t(isinstance(js, dict) and "error" in js and "code" in js, what + ": JSON error body")


def conn_http(g):
    return http.client.HTTPConnection("127.0.0.1", g.ports["http"], timeout=10)


def connections(t, g):
    tok = g.create_device("dev-c")
    lines = [g.line("dev-c", tok) for _ in range(3)]
    st, js = g.http("GET", "/api/connections?protocol=line")
    t.eq(st, 200, "connections listed")
    t.eq(js["count"], 3, "protocol filter keeps the 3 line connections")
    t(all(c["device"] == "dev-c" and c["protocol"] == "line" for c in js["connections"]),
      "each names its device and protocol")
    ids = [c["id"] for c in js["connections"]]
    t.eq(ids, sorted(ids), "oldest first (by id)")
    seen, cursor = [], None
    while True:
        st, js, hdrs = g.http("GET", "/api/connections?protocol=line&limit=1" +
                              ("&cursor=" + cursor if cursor else ""), raw=True)
        js = json.loads(js)
        seen += [c["id"] for c in js["connections"]]
        cursor = js.get("_next")
        if cursor:
            t.eq(hdrs.get("X-Gale-Next-Cursor"), cursor, "cursor also as a header")
        else:
            break
    t.eq(seen, ids, "limit=1 pages walk every connection once")
    st, js = g.http("GET", "/api/connections?device=dev-c&listener=line&peer=127.0.0.1")
    t.eq(js["count"], 3, "device, listener and peer filters")
    st, js = g.http("GET", "/api/connections?device=nobody")
    t.eq(js["count"], 0, "device filter with no match")
    err(t, *g.http("GET", "/api/connections?limti=5"), 400, "unknown parameter")
    st, js = g.http("GET", "/api/connections?limti=5")
    t("limti" in js["error"], "the error names the parameter")
    err(t, *g.http("GET", "/api/connections?limit=0"), 400, "limit 0")
    err(t, *g.http("GET", "/api/connections?cursor=!!"), 400, "bad cursor")
    err(t, *g.http("GET", "/api/connections", key=None), 401, "no key")
    err(t, *g.http("POST", "/api/connections", {}), 405, "POST")
    st, js = g.http("GET", "/api/connections/%d" % ids[0])
    t.eq((st, js["id"]), (200, ids[0]), "one connection")
    err(t, *g.http("GET", "/api/connections/999999"), 404, "unknown connection")
    err(t, *g.http("GET", "/api/connections/abc"), 400, "bad id")
    st, body, hdrs = g.http("PUT", "/api/connections/%d" % ids[0], {}, raw=True)
    t.eq((st, hdrs.get("Allow")), (405, "GET, DELETE"), "PUT: 405 with Allow")
    # kick
    st, js = g.http("DELETE", "/api/connections/%d" % ids[0])
    t.eq((st, js), (200, {"kicked": ids[0]}), "kick answered")
    t(lines[0].closed(), "the kicked connection is closed")
    wait_for(lambda: g.http("GET", "/api/connections?protocol=line")[1]["count"] == 2, 5, "gone")
    err(t, *g.http("DELETE", "/api/connections/%d" % ids[0]), 404, "kicked twice")
    # kicking itself: one keep-alive connection lists itself, then asks to go
    hc = conn_http(g)
    auth = {"Authorization": "Bearer " + g.api_key}
    hc.request("GET", "/api/connections?protocol=http", headers=auth)
    me = json.loads(hc.getresponse().read())["connections"]
    hc.request("GET", "/api/connections?protocol=http", headers=auth)
    me2 = {c["id"] for c in json.loads(hc.getresponse().read())["connections"]}
    mine = [c["id"] for c in me if c["id"] in me2]
    t(len(mine) >= 1, "the keep-alive connection sees itself")
    hc.request("DELETE", "/api/connections/%d" % max(mine), headers=auth)
    r = hc.getresponse()
    body = json.loads(r.read())
    t.eq((r.status, body.get("code")), (409, "self"), "a connection cannot kick itself")
    hc.close()
    for c in lines[1:]:
        c.close()


def mqtt_ops(t, g):
    port = g.ports["mqtt"]
    st, js = g.http("GET", "/api/mqtt/sessions")
    t.eq((st, js.get("sessions"), js.get("count")), (200, [], 0), "no session yet: an empty list")
    tok = g.create_device("dev-m")
    sub = mr.Raw(port)
    t.eq(sub.connect("sub-1", clean=False, username="dev-m", password=tok).rc, 0, "subscriber in")
    t.eq(sub.sub(1, [(b"devices/dev-m/in/#", 1)]), [1], "subscribed")
    st, js = g.http("GET", "/api/mqtt/sessions")
    t.eq(st, 200, "sessions listed")
    s = [x for x in js["sessions"] if x["client_id"] == "sub-1"]
    t(len(s) == 1 and s[0]["connected"] and not s[0]["clean"] and s[0]["device"] == "dev-m"
      and s[0]["subscriptions"] == 1, "the session: connected, persistent, its device, 1 sub")
    st, js = g.http("GET", "/api/mqtt/sessions?prefix=sub-&limit=1")
    t.eq(js["count"], 1, "prefix and limit")
    err(t, *g.http("GET", "/api/mqtt/sessions?bogus=1"), 400, "unknown parameter")
    st, js = g.http("GET", "/api/mqtt/sessions/sub-1")
    t.eq([x["filter"] for x in js["subscription_list"]], ["devices/dev-m/in/#"],
         "one session with its subscriptions")
    err(t, *g.http("GET", "/api/mqtt/sessions/nope"), 404, "unknown session")
    err(t, *g.http("POST", "/api/mqtt/sessions/sub-1", {}), 405, "POST on a session")
    st, js = g.http("GET", "/api/mqtt/subscriptions?client_id=sub-1")
    t.eq((st, js["count"]), (200, 1), "subscriptions of one client")
    err(t, *g.http("GET", "/api/mqtt/subscriptions?client_id=nope"), 404, "of no session")

    # publish reaches the subscriber
    st, js = g.http("POST", "/api/publish", {"topic": "devices/dev-m/in/x", "payload": "hello",
                                             "qos": 1})
    t.eq((st, js.get("bytes")), (200, 5), "published")
    p = sub.recv_type(mr.PUBLISH)
    t.eq((p.topic, p.payload, p.qos), ("devices/dev-m/in/x", b"hello", 1), "subscriber got it")
    sub.send(mr.ack(mr.PUBACK, p.pid))
    raw = bytes(range(256))
    st, js = g.http("POST", "/api/publish", {"topic": "devices/dev-m/in/bin", "qos": 0,
                                             "payload": base64.b64encode(raw).decode(),
                                             "payload_encoding": "base64"})
    t.eq(st, 200, "base64 publish")
    p = sub.recv_type(mr.PUBLISH)
    t.eq(p.payload, raw, "base64 payload arrives as bytes")

    # publish errors
    err(t, *g.http("POST", "/api/publish", b"{"), 400, "bad JSON")
    err(t, *g.http("POST", "/api/publish", {"topic": "a/+"}), 400, "wildcard topic")
    err(t, *g.http("POST", "/api/publish", {"topic": "$SYS/x"}), 400, "$ topic")
    err(t, *g.http("POST", "/api/publish", {"topic": "a", "qos": 3}), 400, "qos 3")
    err(t, *g.http("POST", "/api/publish", {"topic": "a", "tpoic": 1}), 400, "unknown field")
    err(t, *g.http("POST", "/api/publish", {"topic": "a", "payload": "!!!",
                                            "payload_encoding": "base64"}), 400, "not base64")
    err(t, *g.http("POST", "/api/publish", {"topic": "a", "payload": "x" * 5000}), 413,
        "past mqtt.max_packet_bytes")
    err(t, *g.http("POST", "/api/publish", {"topic": "a", "payload": "x" * 70000}), 413,
        "past http.max_body_bytes")
    err(t, *g.http("GET", "/api/publish"), 405, "GET publish")
    err(t, *g.http("POST", "/api/publish", {"topic": "a"}, key="wrong"), 401, "wrong key")

    # retained
    st, js = g.http("POST", "/api/publish", {"topic": "devices/dev-m/r/1", "payload": "kept", "retain": True,
                                             "qos": 1})
    t.eq(st, 200, "retained publish")
    g.http("POST", "/api/publish", {"topic": "devices/dev-m/r/2", "payload": "two", "retain": True})
    st, js = g.http("GET", "/api/mqtt/retained?topic=devices/dev-m/r/%23")
    t.eq([(r["topic"], r["payload"]) for r in js["retained"]], [("devices/dev-m/r/1", "kept"), ("devices/dev-m/r/2", "two")],
         "retained listed by topic")
    st, js = g.http("GET", "/api/mqtt/retained?topic=devices/dev-m/r/%23&limit=1")
    t(js["count"] == 1 and "_next" in js, "retained paged")
    st, js = g.http("GET", "/api/mqtt/retained?topic=devices/dev-m/r/%23&cursor=" + js["_next"])
    t.eq([r["topic"] for r in js["retained"]], ["devices/dev-m/r/2"], "next page")
    err(t, *g.http("GET", "/api/mqtt/retained?topic=a/%23/b"), 400, "invalid filter")
    st, js = g.http("DELETE", "/api/mqtt/retained?topic=devices/dev-m/r/1")
    t.eq((st, js), (200, {"deleted": "devices/dev-m/r/1"}), "retained cleared")
    st, js = g.http("GET", "/api/mqtt/retained?topic=devices/dev-m/r/%23")
    t.eq([r["topic"] for r in js["retained"]], ["devices/dev-m/r/2"], "r/1 is gone")
    late = mr.Raw(port)
    late.connect("late", username="dev-m", password=tok)
    late.sub(1, [(b"devices/dev-m/r/#", 0)])
    p = late.recv_type(mr.PUBLISH)
    t.eq((p.topic, p.retain), ("devices/dev-m/r/2", True), "a new subscriber gets only what is still retained")
    t(late.nothing(0.3), "and nothing of r/1")
    late.close()
    err(t, *g.http("DELETE", "/api/mqtt/retained?topic=devices/dev-m/r/1"), 404, "cleared twice")
    err(t, *g.http("DELETE", "/api/mqtt/retained"), 400, "no topic")
    err(t, *g.http("PUT", "/api/mqtt/retained", {}), 405, "PUT retained")

    # subscription and session removal
    err(t, *g.http("DELETE", "/api/mqtt/subscriptions?client_id=sub-1"), 400, "no filter")
    st, js = g.http("DELETE", "/api/mqtt/subscriptions?client_id=sub-1&filter=devices/dev-m/in/%23")
    t.eq(st, 200, "subscription removed")
    err(t, *g.http("DELETE", "/api/mqtt/subscriptions?client_id=sub-1&filter=devices/dev-m/in/%23"),
        404, "removed twice")
    g.http("POST", "/api/publish", {"topic": "devices/dev-m/in/y", "payload": "no"})
    t(sub.nothing(0.5), "after unsubscribing nothing arrives")
    st, js = g.http("DELETE", "/api/mqtt/sessions/sub-1")
    t.eq((st, js), (200, {"deleted": "sub-1"}), "session discarded")
    t(sub.closed(), "its connection closed")
    err(t, *g.http("GET", "/api/mqtt/sessions/sub-1"), 404, "the session is gone")
    again = mr.Raw(port)
    t.eq(again.connect("sub-1", clean=False, username="dev-m", password=tok).session_present, 0,
         "reconnecting finds no session")
    again.close()


def ready(t, g):
    st, js = g.http("GET", "/api/ready", key=None)
    t.eq((st, js), (200, {"status": "ready"}), "ready once started, without a key")
    err(t, *g.http("POST", "/api/ready", {}, key=None), 405, "POST ready")


def route_literals():
    """Every route path the C sources compare request paths against."""
    found = set()
    for name in ("rest.c", "ops.c", "ws_routes.c"):
        src = open(os.path.join(ROOT, "web", name)).read()
        for m in re.finditer(r'"(/(?:api|ws|metrics|mqtt|healthz)[^"]*)"', src):
            if "<" not in m.group(1):  # "/api/devices/<id>/<rest>" is a comment's shape
                found.add(m.group(1))
    return found


def documented(paths, literal):
    """Whether a literal from the sources (a full path, or a prefix ending in /) is covered
    by a documented path template."""
    for p in paths:
        rx = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(p)) + "$"
        if re.match(rx, literal) or (literal.endswith("/") and p.startswith(literal)):
            return True
        if re.match(rx, literal + "x"):
            return True
    return False


def openapi(t, g):
    st, doc = g.http("GET", "/api/openapi.json", key=None)
    t.eq((st, doc.get("openapi")), (200, "3.1.0"), "OpenAPI 3.1 served")
    paths = doc["paths"]
    st, body, hdrs = g.http("GET", "/api/docs", key=None, raw=True)
    t(st == 200 and hdrs.get("Content-Type", "").startswith("text/html") and
      b"/api/openapi.json" in body and b"http" not in body.replace(b"/api/", b""),
      "the docs page is served and loads nothing from outside")
    # the page renders the document: headless Chromium (Debian's, from the setup step) runs
    # its script and every documented path shows up in the DOM
    chromium = shutil.which("chromium")
    t(chromium is not None, "chromium installed (.ci/setup.sh)")
    if chromium:
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                              "--virtual-time-budget=5000", "--dump-dom",
                              "http://127.0.0.1:%d/api/docs" % g.ports["http"]],
                             capture_output=True, text=True, timeout=60).stdout
        shown = set(re.findall(r"<code>([^<]*)</code>", dom))
        t.eq(sorted(set(paths) - shown), [], "the docs page lists every documented path")
    missing = [l for l in route_literals() if not documented(paths, l)]
    t.eq(missing, [], "every route in the sources is documented")
    g.create_device("dev-o")  # the probes below delete it
    tok = g.create_device("dev-w")
    g.http("POST", "/api/devices/dev-o/commands", {"name": "x"})
    fill = {"id": "dev-o", "cmd": "nope", "client_id": "nobody"}
    for path, item in paths.items():
        methods = [m.upper() for m in item if m in ("get", "post", "patch", "delete", "put")]
        concrete = re.sub(r"\{(\w+)\}", lambda m: fill.get(m.group(1), "1"), path)
        if path == "/api/connections/{id}":
            concrete = "/api/connections/999999"
        for m in methods:
            if path.startswith("/ws/") or path == "/mqtt":
                s = socket.create_connection(("127.0.0.1", g.ports["http"]), timeout=5)
                s.sendall(("GET %s?device=dev-w&token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n"
                           "%s\r\n" % (concrete, tok,
                           "Authorization: Bearer %s\r\n" % g.api_key if path == "/ws/live" else "")).encode())
                line = s.recv(4096).split(b"\r\n", 1)[0]
                s.close()
                t(b" 101 " in line, "%s %s answers the upgrade (%r)" % (m, path, line))
                continue
            body = {} if m in ("POST", "PATCH") else None
            st, js = g.http(m, concrete, body)
            no_route = st == 404 and isinstance(js, dict) and js.get("error") == "no such resource"
            t(not no_route and st != 405, "%s %s is answered (got %d)" % (m, path, st))
        if not (path.startswith("/ws/") or path == "/mqtt"):
            st, body, hdrs = g.http("PUT", concrete, {}, raw=True)
            if st == 405:
                allowed = {a.strip() for a in hdrs.get("Allow", "").split(",")} - {"HEAD"}
                t(allowed <= set(methods),
                  "%s: every allowed method (%s) is documented" % (path, sorted(allowed)))


def main():
    with Gale(args=["--set", "mqtt.max_packet_bytes=4096", "--set", "http.max_body_bytes=65536",
                    "--set", "http.ws_echo=true"]) as g:
        ready(t, g)
        connections(t, g)
        mqtt_ops(t, g)
        openapi(t, g)
        t(g.alive(), "gateway alive at the end")
    t.eq(g.proc.returncode, 0, "SIGTERM exits 0")


t.run(main)
