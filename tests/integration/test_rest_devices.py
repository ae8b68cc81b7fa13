"""Devices over REST: create with name, metadata and a pre-set token (validated); unknown
fields refused; the list with paging, filters (online, prefix, q, role) and sort; attributes
in two scopes (reported by the device over MQTT, set by the server with PATCH: merge, null
deletes, the device's stay); delete with or without its data; token rotation; everything
kept across a restart; errors with JSON bodies."""
import json
import urllib.parse

import mqttraw as mr
from galetest import Check, Gale, wait_for

t = Check("test_rest_devices")
BASE = 1700000000000


def get(g, path, **params):
    return g.http("GET", path + ("?" + urllib.parse.urlencode(params) if params else ""))


def walk(g, **params):
    ids, pages = [], 0
    st, js = get(g, "/api/devices", **params)
    while True:
        t.eq(st, 200, "list page status")
        ids += [d["id"] for d in js["devices"]]
        pages += 1
        if "_next" not in js or pages > 100:
            return pages, ids, js
        st, js = get(g, "/api/devices", **dict(params, cursor=js["_next"]))


def main():
    g = Gale().start(wait_ports=("http", "line", "mqtt"))
    try:
        # ---- create ----
        tok = "my-own-token_0123456789.~"
        st, js = g.http("POST", "/api/devices", {"id": "s-1", "name": "Boiler room",
                                                 "metadata": {"floor": 2}, "token": tok,
                                                 "attributes": {"site": "lab"}})
        t.eq((st, js.get("token")), (201, tok), "create with a pre-set token")
        c = g.line("s-1", tok)
        t(c is not None, "the pre-set token authenticates")
        st, js = g.http("GET", "/api/devices/s-1")
        t.eq((js.get("name"), js.get("metadata"), js.get("attributes")),
             ("Boiler room", {"floor": 2}, {"site": "lab"}), "name, metadata, attributes")
        for body, code, what in [
                ({"id": "x", "token": "short"}, "invalid_token", "short token"),
                ({"id": "x", "token": "has space 0123456789"}, "invalid_token", "bad charset"),
                ({"id": "x", "token": "a" * 129}, "invalid_token", "long token"),
                ({"id": "x", "token": 12345678901234567}, "invalid_token", "token not a string"),
                ({"id": "x", "nmae": "typo"}, "unknown_field", "unknown field"),
                ({"id": "x", "name": ""}, "invalid_name", "empty name"),
                ({"id": "x", "name": "n" * 129}, "invalid_name", "long name"),
                ({"id": "x", "metadata": [1]}, "invalid_metadata", "metadata not an object"),
                ({"id": "x", "attributes": 5}, "invalid_attributes", "attributes not an object"),
                ({"id": "x", "role": "admin"}, "invalid_role", "bad role"),
                ({"id": "bad id"}, "invalid_id", "bad id")]:
            st, js = g.http("POST", "/api/devices", body)
            t.eq((st, js.get("code")), (400, code), what + " -> 400 " + code)
        st, js = g.http("POST", "/api/devices", {"id": "x", "nmae": "typo"})
        t("nmae" in js["error"], "the error names the unknown field")
        st, js = g.http("POST", "/api/devices", b"[1]")
        t.eq((st, js.get("code")), (400, "bad_json"), "not an object -> 400")
        st, js = g.http("POST", "/api/devices", {"id": "s-1"})
        t.eq((st, js.get("code")), (409, "exists"), "existing id -> 409")
        st, js = g.http("GET", "/api/devices/x")
        t.eq(st, 404, "nothing created by refused requests")

        # ---- list: paging, filters, sort ----
        for i in range(23):
            g.create_device("sensor-%02d" % i)
        for i in range(4):
            g.create_device("App.%d" % i, role="app")
        everyone = sorted(["s-1"] + ["sensor-%02d" % i for i in range(23)] +
                          ["App.%d" % i for i in range(4)])
        st, js = get(g, "/api/devices")
        t.eq(([d["id"] for d in js["devices"]], js["count"], js["total"], "_next" in js),
             (everyone, 28, 28, False), "unpaged list")
        pages, ids, last = walk(g, limit=5)
        t.eq((ids, pages, last["total"]), (everyone, 6, 28), "pages of 5 walk every device once")
        pages, ids, _ = walk(g, limit=7, sort="created", order="desc")
        t.eq(sorted(ids), everyone, "sort=created desc pages hold every device")
        t.eq(ids[0], "App.3", "newest first")
        st, js = get(g, "/api/devices", prefix="sensor-1")
        t.eq([d["id"] for d in js["devices"]], ["sensor-%02d" % i for i in range(10, 20)],
             "prefix filter")
        st, js = get(g, "/api/devices", q="NSOR-2")
        t.eq([d["id"] for d in js["devices"]], ["sensor-20", "sensor-21", "sensor-22"],
             "substring filter, case-insensitive")
        st, js = get(g, "/api/devices", role="app")
        t.eq([d["id"] for d in js["devices"]], ["App.%d" % i for i in range(4)], "role filter")
        st, js = get(g, "/api/devices", online="true")
        t.eq([d["id"] for d in js["devices"]], ["s-1"], "online filter")
        st, js = get(g, "/api/devices", online="false", prefix="s-")
        t.eq(js["devices"], [], "online=false excludes the connected one")
        pages, ids, _ = walk(g, limit=2, prefix="sensor-", sort="last_seen")
        t.eq(sorted(ids), ["sensor-%02d" % i for i in range(23)], "filtered paging")
        for params, what in [({"limit": 0}, "limit 0"), ({"limit": "x"}, "bad limit"),
                             ({"online": "yes"}, "bad online"), ({"role": "admin"}, "bad role"),
                             ({"sort": "name"}, "bad sort"), ({"order": "up"}, "bad order"),
                             ({"cursor": "!!"}, "bad cursor")]:
            st, js = get(g, "/api/devices", **params)
            t.eq((st, js.get("code")), (400, "bad_param"), what + " -> 400")
        st, js = get(g, "/api/devices", page=2)
        t.eq((st, js.get("code")), (400, "unknown_param"), "unknown parameter -> 400")

        # ---- attributes: reported (device, MQTT) and server (PATCH) ----
        m = mr.session(g.ports["mqtt"], "s-1-mqtt", username="s-1", password=tok)
        m.send(mr.publish("devices/s-1/attributes", json.dumps({"fw": "1.2", "model": "x1"}),
                          qos=1, pid=3))
        m.recv_type(mr.PUBACK)
        st, js = g.http("GET", "/api/devices/s-1/attributes")
        t.eq(js, {"server": {"site": "lab"}, "reported": {"fw": "1.2", "model": "x1"}},
             "two scopes")
        st, js = g.http("PATCH", "/api/devices/s-1", {"attributes": {"room": 4, "site": None}})
        t.eq((st, js.get("attributes")), (200, {"fw": "1.2", "model": "x1", "room": 4}),
             "PATCH merges, null deletes, reported attributes stay")
        st, js = g.http("PATCH", "/api/devices/s-1", {"attributes": {"fw": "pinned"}})
        t.eq(js["attributes"]["fw"], "pinned", "the server's value wins in the merged view")
        st, js = g.http("PATCH", "/api/devices/s-1/attributes", {"fw": None, "mode": "eco"})
        t.eq((st, js), (200, {"server": {"room": 4, "mode": "eco"},
                              "reported": {"fw": "1.2", "model": "x1"}}),
             "PATCH /attributes: server scope only")
        m.send(mr.publish("devices/s-1/attributes", json.dumps({"model": None, "up": 1}),
                          qos=1, pid=4))
        m.recv_type(mr.PUBACK)
        st, js = g.http("GET", "/api/devices/s-1/attributes")
        t.eq(js["reported"], {"fw": "1.2", "up": 1}, "the device's own null deletes its own")
        st, js = g.http("PATCH", "/api/devices/s-1", {"name": "Cellar", "metadata": {"a": 1}})
        t.eq((js.get("name"), js.get("metadata")), ("Cellar", {"a": 1}), "PATCH name, metadata")
        for body, code, what in [({"attributes": {"a": 1}, "reported": {}}, "unknown_field",
                                  "unknown field"),
                                 ({"attributes": [1]}, "invalid_attributes", "bad attributes"),
                                 ({"name": 5}, "invalid_name", "bad name"),
                                 ({"metadata": "x"}, "invalid_metadata", "bad metadata"),
                                 ({"token": "mine"}, "invalid_token", "token other than rotate"),
                                 ({}, "bad_json", "empty body")]:
            st, js = g.http("PATCH", "/api/devices/s-1", body)
            t.eq((st, js.get("code")), (400, code), "PATCH " + what + " -> 400")
        st, js = g.http("PATCH", "/api/devices/s-1/attributes", [1])
        t.eq((st, js.get("code")), (400, "invalid_attributes"), "PATCH /attributes array -> 400")
        st, js = g.http("DELETE", "/api/devices/s-1/attributes")
        t.eq(st, 405, "DELETE /attributes -> 405")

        # ---- token rotation ----
        st, js = g.http("POST", "/api/devices/s-1/token")
        t(st == 200 and js.get("token") and js["token"] != tok, "rotation gives a new token")
        new_tok = js["token"]
        t(c.closed(), "a connection with the old token is closed")
        t.eq(g.line().auth("s-1", tok).get("code"), "unauthorized", "the old token stops working")
        c = g.line("s-1", new_tok)
        st, js = g.http("GET", "/api/devices/s-1/token")
        t.eq(st, 405, "GET /token -> 405")
        st, js = g.http("POST", "/api/devices/nope/token")
        t.eq(st, 404, "rotation of an unknown device -> 404")

        # ---- kept across a restart ----
        t.eq(g.stop(), 0, "clean stop")
        g = Gale(data_dir=g.data_dir).start(wait_ports=("http", "line", "mqtt"))
        st, js = g.http("GET", "/api/devices/s-1")
        t.eq((js.get("name"), js.get("metadata")), ("Cellar", {"a": 1}), "name after a restart")
        st, js = g.http("GET", "/api/devices/s-1/attributes")
        t.eq(js, {"server": {"room": 4, "mode": "eco"}, "reported": {"fw": "1.2", "up": 1}},
             "both scopes after a restart")
        t(g.line("s-1", new_tok) is not None, "the rotated token after a restart")

        # ---- delete: data=delete (default) and data=keep ----
        for dev in ("keep-me", "drop-me"):
            g.create_device(dev)
            st, _ = g.http("POST", "/api/devices/%s/telemetry" % dev,
                           [{"ts": BASE + i, "values": {"v": i}} for i in range(5)])
            t.eq(st, 200, dev + ": telemetry stored")
        st, js = g.http("DELETE", "/api/devices/keep-me?data=keep")
        t.eq((st, js), (200, {"deleted": "keep-me", "data": "kept"}), "delete keeping data")
        st, js = g.http("DELETE", "/api/devices/drop-me")
        t.eq((st, js), (200, {"deleted": "drop-me", "data": "deleted"}), "delete with data")
        t.eq(g.http("GET", "/api/devices/keep-me")[0], 404, "the record is gone")
        g.create_device("keep-me")
        g.create_device("drop-me")
        st, js = get(g, "/api/devices/keep-me/telemetry", keys="v")
        t.eq([p["value"] for p in js["v"]], list(range(5)), "data=keep: the telemetry stayed")
        st, js = get(g, "/api/devices/drop-me/telemetry", keys="v")
        t.eq(js.get("v", []), [], "data=delete: the telemetry went")
        st, js = g.http("DELETE", "/api/devices/keep-me?data=maybe")
        t.eq((st, js.get("code")), (400, "bad_param"), "data=maybe -> 400")
        st, js = g.http("DELETE", "/api/devices/keep-me?force=1")
        t.eq((st, js.get("code")), (400, "unknown_param"), "unknown delete parameter -> 400")
        t.eq(g.http("GET", "/api/devices/keep-me")[0], 200, "refused deletes delete nothing")
        st, js = g.http("GET", "/api/devices", key="wrong")
        t.eq((st, js.get("code")), (401, "unauthorized"), "wrong key -> 401")
        t(g.alive(), "alive")
    finally:
        g.stop()


t.run(main)
