"""Failures a newcomer can see: a REST 401 is logged with the peer, what was asked and
why (a few per peer, then summed up); an unknown field in a command body or a live-feed
subscribe is answered naming it (not dropped); an RFC 3339 "ts" is taken on every
ingest transport (line, MQTT, HTTP, /ws/device) and lands at the same epoch ms as the
number would; the line protocol's auth timeout sends an error line before it closes;
the log line of MQTT telemetry that does not decode names the development switch."""
import json
import re
import subprocess

from galetest import API_KEY, Check, Gale, RawWS, wait_for

t = Check("test_visible_failures")

TS_MS = 1700000000250
TS_TEXT = "2023-11-15T00:13:20.250+02:00"  # the same instant


def count_log(g, pattern):
    rx = re.compile(pattern)
    return sum(1 for l in list(g.log_lines) if rx.search(l))


def unauthorized_logged(g):
    # a wrong key, then none: each logged with the peer, method, path and reason
    st, _ = g.http("GET", "/api/devices", key="wrong-key")
    t.eq(st, 401, "a wrong API key gets 401")
    g.wait_log(r'conn=\d+ peer=127\.0\.0\.1:\d+ proto=http refused status=401 method=GET '
               r'path="/api/devices" credentials=bearer reason="missing or wrong API key')
    st, _ = g.http("GET", "/api/telemetry?devices=x", key=None)
    t.eq(st, 401, "no API key gets 401")
    g.wait_log(r'peer=127\.0\.0\.1:\d+ proto=http refused status=401 method=GET '
               r'path="/api/telemetry" credentials=none reason=')
    # device-token ingest with a wrong token: logged too
    g.create_device("v-401")
    st, _ = g.http("POST", "/api/devices/v-401/telemetry", {"a": 1}, key="bad-token")
    t.eq(st, 401, "a wrong device token on ingest gets 401")
    g.wait_log(r'proto=http refused status=401 method=POST path="/api/devices/v-401/telemetry" '
               r'credentials=bearer reason="API key or the device\'s token required"')
    # a flood is rate-limited like other refusals: a few lines, then a summary
    before = count_log(g, r"refused status=401")
    for _ in range(30):
        g.http("GET", "/api/devices", key="wrong-key")
    logged = count_log(g, r"refused status=401") - before
    t(logged <= 3, "30 more 401s from one peer log at most 3 lines (logged %d)" % logged)


def unknown_fields(g):
    g.create_device("v-cmd")
    st, js = g.http("POST", "/api/devices/v-cmd/commands", {"name": "reboot", "paylod": {}})
    t.eq((st, js.get("code"), js.get("field")), (400, "unknown_field", "paylod"),
         "a command body with an unknown field gets 400 naming it (%r)" % js)
    st, js = g.http("POST", "/api/devices/v-cmd/commands",
                    {"name": "reboot", "params": {"x": 1}, "timeout_ms": 5000})
    t.eq(st, 202, "a command body with the known fields is still taken")

    ws = RawWS(g.ports["http"], "/ws/live", headers={"Authorization": "Bearer " + API_KEY})
    t.eq(ws.recv_json(), {"type": "ready"}, "live feed ready")
    ws.send_json({"subscribe": {"device": ["v-*"]}})
    js = ws.recv_json()
    t.eq((js.get("type"), js.get("code"), js.get("field")), ("error", "unknown_field", "device"),
         "a subscribe with an unknown field gets an error naming it (%r)" % js)
    ws.send_json({"subscribe": {"devices": ["v-*"]}, "presense": True})
    js = ws.recv_json()
    t.eq((js.get("code"), js.get("field")), ("unknown_field", "presense"),
         "an unknown field beside subscribe is named too (%r)" % js)
    ws.send_json({"subscribe": {"devices": ["v-*"], "keys": ["a"], "presence": False}})
    t.eq(ws.recv_json().get("type"), "subscribed", "a good subscribe still works")
    ws.close()


def rfc3339_ts(g):
    tok = g.create_device("v-ts")
    # line protocol
    c = g.line("v-ts", tok)
    c.send_line({"ts": TS_TEXT, "values": {"line": 1}, "seq": 1})
    t.eq(c.read_line(), {"ack": 1}, "line: an RFC 3339 ts is taken")
    c.send_line({"ts": "2023-11-14T22:13:20", "values": {"line": 2}, "seq": 2})
    e = c.read_line()
    t.eq((e.get("code"), e.get("seq")), ("bad_ts", 2), "line: a time without a zone is bad_ts")
    c.close()
    # HTTP ingest
    st, _ = g.http("POST", "/api/devices/v-ts/telemetry",
                   {"ts": "2023-11-14T22:13:20.250Z", "values": {"http": 1}}, key=tok)
    t.eq(st, 200, "HTTP: an RFC 3339 ts is taken")
    # MQTT (QoS 1: the PUBACK says it is stored)
    p = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(g.ports["mqtt"]),
                        "-i", "v-ts-pub", "-u", "v-ts", "-P", tok, "-q", "1",
                        "-t", "devices/v-ts/telemetry",
                        "-m", json.dumps({"ts": "2023-11-14t22:13:20.250z",
                                          "values": {"mqtt": 1}})],
                       capture_output=True, text=True, timeout=30)
    t.eq(p.returncode, 0, "MQTT: the publish is acknowledged (%s)" % p.stderr.strip())
    # /ws/device
    ws = RawWS(g.ports["http"], "/ws/device?token=" + tok + "&device=v-ts")
    ws.send_json({"ts": TS_TEXT, "values": {"ws": 1}, "seq": 7})
    t.eq(ws.recv_json(), {"ack": 7}, "/ws/device: an RFC 3339 ts is taken")
    ws.close()
    for key in ("line", "http", "mqtt", "ws"):
        st, js = g.http("GET", "/api/devices/v-ts/telemetry?keys=%s&from=0" % key)
        pts = js.get(key, []) if st == 200 else js
        t.eq([p.get("ts") for p in pts] if isinstance(pts, list) else pts, [TS_MS],
             "%s: stored at the epoch ms the RFC 3339 ts names" % key)


def line_auth_timeout():
    with Gale(args=["--set", "limits.auth_timeout_ms=300"]) as g:
        c = g.line()
        line = c.read_line(timeout=10)
        t.eq(line.get("code"), "auth_timeout", "line: an error line before the auth timeout "
                                               "closes (%r)" % line)
        t("limits.auth_timeout_ms" in line.get("error", ""), "the error names the setting")
        t(c.closed(), "then the connection is closed")
        tok = g.create_device("v-late")
        c2 = g.line("v-late", tok)  # a prompt login is not affected
        c2.send_line({"a": 1, "seq": 1})
        t.eq(c2.read_line(), {"ack": 1}, "a device that logs in in time is served")
        c2.close()


def line_auth_timeout_write_fails():
    """The error line is a write like any other: when it fails (every connection's first
    write fails, GALE_TEST_FAIL_WRITES=1), the connection closes once and gale goes on
    (clean stop, and clean under ASan)."""
    with Gale(args=["--set", "limits.auth_timeout_ms=200"],
              env={"GALE_TEST_FAIL_WRITES": "1"}) as g:
        clients = [g.line() for _ in range(3)]
        for c in clients:
            t(c.closed(timeout=10), "the connection whose error line failed is closed")
            c.close()
        g.wait_log(r'proto=line close reason="[^"]*"')
        t(g.alive(), "gale keeps running")


def invalid_telemetry_hint(g):
    tok = g.create_device("v-bad")
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(g.ports["mqtt"]),
                    "-i", "v-bad-pub", "-u", "v-bad", "-P", tok, "-q", "1",
                    "-t", "devices/v-bad/telemetry", "-m", '{"temp":'],
                   capture_output=True, text=True, timeout=30)
    line = g.wait_log(r'device=v-bad telemetry not stored reason="invalid JSON"')
    lines = [l for l in list(g.log_lines) if "device=v-bad telemetry not stored" in l]
    t(len(lines) == 1 and "action=disconnect" in lines[0] and
      "mqtt.invalid_telemetry=ack" in lines[0],
      "the one log line names the switch to mqtt.invalid_telemetry=ack (%r)" % lines)


def main():
    with Gale(args=["--set", "mqtt.port=0"]) as g:
        wait_for(lambda: "mqtt" in g.ports, 10, "mqtt port")
        unauthorized_logged(g)
        unknown_fields(g)
        rfc3339_ts(g)
        invalid_telemetry_hint(g)
    line_auth_timeout()
    line_auth_timeout_write_fails()


t.run(main)
