"""Line protocol end to end: provision over REST, stream over raw TCP, acks after
durable commit, read back over REST; every bad input gets its error and the
gateway keeps serving."""
import socket
import time

from galetest import Check, Gale, wait_for

t = Check("test_line")


def main():
    with Gale(args=["--set", "line.max_errors=3", "--set", "line.max_line_bytes=1024",
                    "--set", "limits.auth_timeout_ms=500"]) as g:
        token = g.create_device("dev-1")
        c = g.line("dev-1", token)
        base = 1700000000000
        for i in range(100):
            c.send_line({"ts": base + i, "values": {"temp": 20 + i / 10, "on": i % 2 == 0},
                         "seq": i})
        acks = [c.read_line()["ack"] for _ in range(100)]
        t.eq(acks, list(range(100)), "acks arrive in order for every seq")

        st, js = g.http("GET", "/api/devices/dev-1/telemetry?keys=temp,on&limit=1000")
        t.eq(st, 200, "telemetry query status")
        t.eq(len(js.get("temp", [])), 100, "100 temp points stored")
        t.eq(js["temp"][0], {"ts": base, "value": 20}, "first point value and ts")
        t.eq(js["on"][1], {"ts": base + 1, "value": False}, "booleans stay booleans")
        st, js = g.http("GET", "/api/devices/dev-1/latest")
        t.eq(js.get("temp"), {"ts": base + 99, "value": 29.9}, "latest value")

        # plain shape, arrays, strings and objects; no seq -> no ack
        c.send_line([{"hum": 40}, {"ts": base + 500, "values": {"s": "ok", "o": {"a": [1, 2]}}}])
        c.send_line({"x": 1, "seq": 1000})
        t.eq(c.read_line(), {"ack": 1000}, "ack for the line after a line without seq")
        st, js = g.http("GET", "/api/devices/dev-1/latest")
        t.eq(js["s"]["value"], "ok", "string value")
        t.eq(js["o"]["value"], {"a": [1, 2]}, "object value kept as JSON")
        t("hum" in js, "array element stored")

        # bad lines: error, connection survives
        c.send(b"{not json\n")
        e = c.read_line()
        t.eq(e.get("code"), "bad_json", "bad JSON gets a bad_json error line")
        c.send_line({"ts": "yesterday", "values": {"a": 1}})
        e = c.read_line()
        t.eq(e.get("code"), "bad_ts", "bad ts gets a bad_ts error line")
        c.send_line({"v": 1, "seq": 7})
        t.eq(c.read_line(), {"ack": 7}, "connection still works after errors")
        # third error crosses max_errors=3: error line, then close
        c.send_line("42")
        t.eq(c.read_line().get("code"), "bad_shape", "third bad line gets its error")
        t.eq(c.read_line().get("code"), "too_many_errors", "then too_many_errors")
        t(c.closed(), "connection closed after too many errors")

        # bad auth: error, then close
        c2 = g.line()
        resp = c2.auth("dev-1", "wrong-token")
        t.eq(resp.get("code"), "unauthorized", "bad token is refused")
        t(c2.closed(), "closed after bad auth")
        c3 = g.line()
        c3.send(b"hello\n")
        t.eq(c3.read_line().get("code"), "unauthorized", "non-JSON auth line refused")
        t(c3.closed(), "closed after malformed auth")
        c4 = g.line()
        t.eq(c4.auth("nobody", token).get("code"), "unauthorized", "unknown device refused")

        # line too long: rejected before its newline arrives
        c5 = g.line("dev-1", token)
        c5.send(b"x" * 5000)
        t.eq(c5.read_line().get("code"), "line_too_long", "over-long line refused early")
        t(c5.closed(), "closed after over-long line")

        # auth timeout
        c6 = g.line()
        t0 = time.monotonic()
        t(c6.closed(timeout=5), "silent connection closed by auth timeout")
        t(time.monotonic() - t0 < 4, "auth timeout closes within its limit")
        g.wait_log(r"reason=\"authentication timeout\"")

        # error lines are logged with peer and reason
        g.wait_log(r"peer=127\.0\.0\.1:\d+ proto=line device=dev-1 bad line reason=")

        # a fresh client is still served
        c7 = g.line("dev-1", token)
        c7.send_line({"fresh": 1, "seq": 1})
        t.eq(c7.read_line(), {"ack": 1}, "fresh client served after all the bad input")

        # commands reach a line-protocol device as a line; its reply is tracked
        st, js = g.http("POST", "/api/devices/dev-1/commands",
                        {"name": "reboot", "params": {"delay": 5}})
        t.eq((st, js.get("status")), (202, "queued"), "command accepted")
        cmd = js["id"]
        line = c7.read_line()
        t.eq(line.get("command", {}).get("name"), "reboot", "command arrives as a line")
        t.eq(line["command"].get("id"), cmd, "command line carries its id")
        st, js = g.http("GET", "/api/devices/dev-1/commands/" + cmd)
        t.eq(js.get("status"), "delivered", "written to the device: delivered")
        c7.send_line({"reply": {"id": cmd, "ok": True}})
        wait_for(lambda: g.http("GET", "/api/devices/dev-1/commands/" + cmd)[1]["status"]
                 == "replied", 5, "command replied")
        st, js = g.http("GET", "/api/devices/dev-1/commands/" + cmd)
        t.eq(js.get("reply"), {"id": cmd, "ok": True}, "reply stored with the command")
        st, js = g.http("POST", "/api/devices/dev-1/commands", {"name": "x", "timeout_ms": 200})
        c7.read_line()
        wait_for(lambda: g.http("GET", "/api/devices/dev-1/commands/" + js["id"])[1]["status"]
                 == "expired", 5, "unanswered command expires")
        st, js = g.http("POST", "/api/devices/dev-1/commands", {"params": {}})
        t.eq((st, js.get("code")), (400, "bad_json"), "command without name -> 400")

        # the connection registry
        st, js = g.http("GET", "/api/connections")
        mine = [x for x in js["connections"] if x["device"] == "dev-1" and x["protocol"] == "line"]
        t.eq(len(mine), 1, "line connection listed in the registry")
        t(mine and mine[0]["messages_in"] >= 2 and mine[0]["bytes_out"] > 0
          and mine[0]["peer"].startswith("127.0.0.1:"), "registry entry has counters and peer")

        # presence
        st, js = g.http("GET", "/api/devices/dev-1")
        t.eq(js.get("online"), True, "device online while connected")
        t.eq(js.get("protocol"), "line", "presence protocol")
        c7.close()
        wait_for(lambda: g.http("GET", "/api/devices/dev-1")[1]["online"] is False, 5,
                 "device offline after disconnect")
        t(g.http("GET", "/api/devices/dev-1")[1]["last_seen"] > 0, "last_seen set")

        st, js = g.http("GET", "/metrics", raw=True)[:2]
        t.eq(st, 200, "metrics served")
        t(b"gale_line_errors_total" in js, "line error counter exported")
        t(b'gale_connections_by_protocol{protocol="http"} 1' in js,
          "connections by protocol (the scrape itself is one HTTP connection)")
        t(g.alive(), "gateway alive at the end")
    t.eq(g.proc.returncode, 0, "SIGTERM exits 0")


t.run(main)
