"""The device session every transport shares (gateway/session.c): a batch sent as one
message with the envelope {"seq":N,"batch":[...]} is acked once, after every point of
it is durable, over the line protocol, /ws/device, HTTP and MQTT; an error reply names
the "seq" of the bad message; and the line protocol and /ws/device count errors and
answer alike."""
import json

import mqttraw
from galetest import Check, Gale, RawWS

t = Check("device_session")
BASE = 1700000000000


def points(g, dev, key):
    st, js = g.http("GET", "/api/devices/%s/telemetry?keys=%s&from=0&limit=1000" % (dev, key))
    return [p["value"] for p in js.get(key, [])] if st == 200 else None


def batch(n, start, key="v"):
    return [{"ts": BASE + start + i, "values": {key: start + i}} for i in range(n)]


def main():
    with Gale(args=["--set", "line.max_errors=3"]) as g:
        tok = g.create_device("dev-s")

        # --- line protocol ---
        c = g.line("dev-s", tok)
        c.send_line({"seq": 1, "batch": batch(50, 0)})
        t.eq(c.read_line(), {"ack": 1}, "line: a batch with seq gets one ack")
        t.eq(points(g, "dev-s", "v"), list(range(50)), "line: every point of the batch stored")
        c.send_line({"seq": 2, "batch": batch(3, 50)})
        c.send_line({"ts": BASE + 99, "values": {"v": 99}, "seq": 3})
        t.eq([c.read_line(), c.read_line()], [{"ack": 2}, {"ack": 3}],
             "line: batch ack keeps arrival order with single acks")
        c.send_line({"seq": 4, "ts": "yesterday", "values": {"a": 1}})
        t.eq(c.read_line(), {"error": "ts must be epoch ms (an integer) or an RFC 3339 time "
                                      "(2026-03-29T12:00:00Z)", "code": "bad_ts",
                             "seq": 4}, "line: an error reply carries the bad message's seq")
        c.send_line({"seq": 5, "batch": [{"a": 1}, 7]})
        e = c.read_line()
        t.eq((e.get("code"), e.get("seq")), ("bad_shape", 5),
             "line: a bad batch's error has its seq")
        c.send_line([{"seq": 6, "a": 1}])
        e = c.read_line()
        t.eq(e.get("code"), "bad_shape", "line: seq inside a plain array is still refused")
        t("batch" in e.get("error", ""), "line: the refusal points at the batch envelope")
        t(c.closed(), "line: closed after line.max_errors errors")
        t.eq(points(g, "dev-s", "a"), [], "line: nothing of the bad messages stored")

        # --- /ws/device: the same session ---
        w = RawWS(g.ports["http"], "/ws/device?device=dev-s&token=" + tok)
        t.eq(w.status, 101, "ws: upgraded")
        w.send_json({"seq": 10, "batch": batch(20, 100, key="w")})
        t.eq(w.recv_json(), {"ack": 10}, "ws: a batch with seq gets one ack")
        t.eq(points(g, "dev-s", "w"), list(range(100, 120)), "ws: every point of the batch stored")
        w.send_text('{"seq":11,"x":')
        t.eq(w.recv_json(), {"error": "invalid JSON", "code": "bad_json"},
             "ws: no seq in the error when the JSON does not parse")
        w.send_json({"seq": 12, "batch": []})
        t.eq(w.recv_json(), {"error": "empty telemetry", "code": "empty", "seq": 12},
             "ws: an error reply carries the bad message's seq")
        w.send_json({"seq": 13, "batch": batch(1, 200, key="w"), "extra": 1})
        e = w.recv_json()
        t.eq((e.get("code"), e.get("seq")), ("bad_shape", 13), "ws: only seq beside batch")
        t.eq(w.recv_json().get("code"), "too_many_errors", "ws: too many errors, as on a line")
        w.close()

        # --- HTTP: the envelope is one payload, answered once ---
        st, js = g.http("POST", "/api/devices/dev-s/telemetry",
                        {"seq": 20, "batch": batch(5, 300, key="h")})
        t.eq((st, js), (200, {"stored": 5}), "http: a batch envelope is stored")
        t.eq(points(g, "dev-s", "h"), list(range(300, 305)), "http: its points are readable")

        # --- MQTT: the envelope is telemetry too; the PUBACK covers all of it ---
        m = mqttraw.session(g.ports["mqtt"], "sess-1", username="dev-s", password=tok)
        m.send(mqttraw.publish("devices/dev-s/telemetry",
                               json.dumps({"seq": 30, "batch": batch(4, 400, key="q")}),
                               qos=1, pid=7))
        t.eq(m.recv_type(mqttraw.PUBACK).pid, 7, "mqtt: the envelope is PUBACKed")
        t.eq(points(g, "dev-s", "q"), list(range(400, 404)), "mqtt: its points are stored")
        m.close()

        # a value named batch that is not an array stays a value
        c2 = g.line("dev-s", tok)
        c2.send_line({"batch": "A7", "seq": 41})
        t.eq(c2.read_line(), {"ack": 41}, "a string named batch is a value")
        st, js = g.http("GET", "/api/devices/dev-s/latest")
        t.eq(js.get("batch", {}).get("value"), "A7", "the batch value is stored")
        t(g.alive(), "gateway alive at the end")


t.run(main)
