"""Scoped API keys from outside: keys created, listed and revoked over /api/keys; each role
(admin, operator, read) against a sample of every class of route (queries, the live feed,
commands, attributes, device creation, token rotation, the keys themselves): a missing
role answers 403 naming the role needed; a device filter hides other devices from lists,
queries and the live feed; revocation takes effect at once, also on an open live feed;
the configured key is the admin key "bootstrap" and cannot be revoked while it is the
last admin key; only hashes reach the database file; keys survive a restart; a key whose
commit fails is not created; the access log names the key of each request, never its
secret. The OpenAPI document's x-gale-role of every operation is the role enforced."""
import glob
import json
import os
import re
import shutil
import tempfile

from galetest import API_KEY, Check, Gale, RawWS, wait_for

t = Check("test_api_keys")


def key(g, name, role, devices=None, as_key="default"):
    body = {"name": name, "role": role}
    if devices is not None:
        body["devices"] = devices
    st, js = g.http("POST", "/api/keys", body, key=as_key)
    t.eq(st, 201, "create key %s (%s): %r" % (name, role, js))
    return js


def live(g, k):
    ws = RawWS(g.ports["http"], "/ws/live", headers={"Authorization": "Bearer " + k})
    return ws


def sample_routes(dev, tok_dev):
    """(what, method, path, body, role needed) for every class of route."""
    return [
        ("device list", "GET", "/api/devices", None, "read"),
        ("device", "GET", "/api/devices/" + dev, None, "read"),
        ("latest", "GET", "/api/devices/%s/latest" % dev, None, "read"),
        ("telemetry query", "GET", "/api/devices/%s/telemetry?keys=t" % dev, None, "read"),
        ("multi-device query", "GET", "/api/telemetry?devices=" + dev, None, "read"),
        ("command list", "GET", "/api/devices/%s/commands" % dev, None, "read"),
        ("connections", "GET", "/api/connections", None, "read"),
        ("metrics", "GET", "/metrics", None, "read"),
        ("command", "POST", "/api/devices/%s/commands" % dev, {"name": "reboot"}, "operator"),
        ("attributes", "PATCH", "/api/devices/%s/attributes" % dev, {"a": 1}, "operator"),
        ("telemetry with a key", "POST", "/api/devices/%s/telemetry" % dev, {"t": 1},
         "operator"),
        ("publish", "POST", "/api/publish", {"topic": "x/y", "payload": "1"}, "operator"),
        ("device create", "POST", "/api/devices", {"id": "new-" + tok_dev}, "admin"),
        ("token rotate", "POST", "/api/devices/%s/token" % dev, None, "admin"),
        ("device patch", "PATCH", "/api/devices/" + dev, {"name": "n"}, "admin"),
        ("retained delete", "DELETE", "/api/mqtt/retained?topic=x/y", None, "admin"),
        ("key list", "GET", "/api/keys", None, "admin"),
        ("key create", "POST", "/api/keys", {"name": "k-" + tok_dev, "role": "read"}, "admin"),
    ]


RANK = {"read": 1, "operator": 2, "admin": 3}


def main():
    data = tempfile.mkdtemp(prefix="gale-keys-")
    try:
        with Gale(data_dir=data, args=["--set", "http.access_log=common",
                                       "--set", "http.metrics_auth=true"]) as g:
            run(g)
        # ---- persistence: the keys and the revocations survive a restart ----
        with Gale(data_dir=data) as g:
            restart(g)
        # ---- a key whose row cannot be stored is not created ----
        with Gale(env={"GALE_TEST_FAIL_COMMITS": "4"}) as g:
            g.fail_commits(4)
            st, js = g.http("POST", "/api/keys", {"name": "doomed", "role": "read"})
            t.eq((st, js.get("code"), "key" in js), (503, "storage_error", False),
                 "a failed commit: 503 and no key shown")
            st, js = g.http("GET", "/api/keys")
            t.eq([k["name"] for k in js["keys"]], ["default"], "and no key listed")
    finally:
        shutil.rmtree(data, ignore_errors=True)


STATE = {}


def run(g):
    g.create_device("pump-1")
    g.create_device("pump-2")
    g.create_device("meter-1")
    g.http("POST", "/api/devices/pump-1/telemetry", {"t": 1})

    # ---- the configured key is the first admin key ----
    st, js = g.http("GET", "/api/keys")
    t.eq(st, 200, "GET /api/keys with the configured key")
    ids = [(k["id"], k["name"], k["role"]) for k in js["keys"]]
    t.eq(ids, [("bootstrap", "default", "admin")], "the configured key is listed as bootstrap")
    st, js = g.http("DELETE", "/api/keys/bootstrap")
    t.eq((st, js.get("code")), (409, "last_admin"),
         "the last admin key cannot be revoked")

    # ---- creation ----
    adm = key(g, "ops-admin", "admin")
    op = key(g, "operator-1", "operator")
    rd = key(g, "wall-display", "read")
    pumps = key(g, "pumps-only", "operator", ["pump-*"])
    for k, role in ((adm, "admin"), (op, "operator"), (rd, "read")):
        t(k["key"].startswith("gk_%s_" % k["id"]) and len(k["key"]) > 40,
          "%s key shape gk_<id>_<secret>: %r" % (role, k["key"]))
        t.eq(k["role"], role, "role echoed")
    t.eq(pumps["devices"], ["pump-*"], "device filter echoed")
    for body, code in [({"name": "x", "role": "root"}, "invalid_role"),
                       ({"name": "has space", "role": "read"}, "invalid_name"),
                       ({"name": "x", "role": "read", "devices": []}, "invalid_devices"),
                       ({"name": "x", "role": "read", "scope": 1}, "unknown_field")]:
        st, js = g.http("POST", "/api/keys", body)
        t.eq((st, js.get("code")), (400, code), "bad key body -> 400 " + code)
    st, js = g.http("POST", "/api/keys", {"name": "wall-display", "role": "read"})
    t.eq((st, js.get("code")), (409, "name_taken"), "names are unique")
    st, js = g.http("GET", "/api/keys")
    listed = {k["name"]: k for k in js["keys"]}
    t.eq(sorted(listed), sorted(["default", "ops-admin", "operator-1", "wall-display",
                                 "pumps-only"]), "every key listed")
    t(all("key" not in k for k in js["keys"]), "the list shows no secret")
    t(rd["key"] not in json.dumps(js), "no secret anywhere in the list")

    # ---- each role against each class of route ----
    for k, role in ((adm, "admin"), (op, "operator"), (rd, "read")):
        for what, method, path, body, need in sample_routes("meter-1", role):
            st, js = g.http(method, path, body, key=k["key"])
            if RANK[role] >= RANK[need]:
                t(st not in (401, 403) and st < 500,
                  "%s key: %s %s -> %d %r" % (role, method, path, st, js))
            else:
                t.eq((st, js.get("code"), js.get("role_needed")), (403, "forbidden", need),
                     "%s key: %s %s -> 403 naming %s" % (role, method, path, need))
    st, js = g.http("POST", "/api/devices/meter-1/token", key=rd["key"])
    t("token" not in (js or {}), "a read key never sees a token")
    st, js = g.http("GET", "/api/keys", key="gk_nope_nope")
    t.eq(st, 401, "a wrong key -> 401")
    st, _ = g.http("GET", "/api/health", key=None)
    t.eq(st, 200, "health stays public")

    # ---- the OpenAPI document states each operation's role, and it is the one enforced ----
    st, doc = g.http("GET", "/api/openapi.json", key=None)
    below = {"operator": rd, "admin": op}
    nops = 0
    for path, ops in doc["paths"].items():
        for method, o in ops.items():
            if method not in ("get", "post", "patch", "delete"):
                continue
            role = o.get("x-gale-role")
            t(role in ("public", "device", "read", "operator", "admin"),
              "%s %s states its role: %r" % (method, path, role))
            if role in ("device", None) or path.startswith("/ws/") or path == "/mqtt":
                continue
            nops += 1
            url = (path.replace("/api/devices/{id}", "/api/devices/meter-1")
                   .replace("{id}", "1").replace("{client_id}", "c").replace("{cmd}", "x"))
            if role == "public":
                st, _ = g.http(method.upper(), url, key=None)
                t(st not in (401, 403), "%s %s is public: %d" % (method, path, st))
                continue
            if role == "read":
                st, _ = g.http(method.upper(), url, key=None)
                t.eq(st, 401, "%s %s without a key" % (method, path))
                continue
            st, js = g.http(method.upper(), url, {} if method != "get" else None,
                            key=below[role]["key"])
            t.eq((st, (js or {}).get("role_needed")), (403, role),
                 "%s %s below its documented role %s" % (method, path, role))
    t(nops > 30, "every REST operation checked against its documented role (%d)" % nops)

    # the live feed: every role may watch; a read key's viewer gets updates
    for k, role in ((adm, "admin"), (op, "operator"), (rd, "read")):
        ws = live(g, k["key"])
        t.eq(ws.status, 101, "%s key opens the live feed" % role)
        t.eq(ws.recv_json(), {"type": "ready"}, "%s key's viewer ready" % role)
        ws.close()

    # ---- the device filter ----
    pk = pumps["key"]
    st, js = g.http("GET", "/api/devices", key=pk)
    t.eq(sorted(d["id"] for d in js["devices"]), ["pump-1", "pump-2"],
         "a filtered key lists only its devices")
    st, js = g.http("GET", "/api/devices/meter-1", key=pk)
    t.eq(st, 404, "another device looks absent")
    st, js = g.http("POST", "/api/devices/meter-1/commands", {"name": "x"}, key=pk)
    t.eq(st, 404, "no command to another device")
    st, js = g.http("POST", "/api/devices/pump-2/commands", {"name": "x"}, key=pk)
    t.eq(st, 202, "a command to its own device")
    st, js = g.http("GET", "/api/telemetry?devices=pump-1,meter-1", key=pk)
    t.eq(st, 404, "a multi-device query naming another device -> 404")
    st, js = g.http("GET", "/api/telemetry?devices=pump-1", key=pk)
    t.eq(st, 200, "a query over its own devices")
    st, js = g.http("GET", "/api/connections", key=pk)
    t.eq((st, js.get("devices_needed")), (403, "all"),
         "routes about every device refuse a filtered key")
    ws = live(g, pk)
    t.eq(ws.recv_json(), {"type": "ready"}, "filtered key's viewer ready")
    ws.send_json({"subscribe": {"devices": ["*"]}})
    t.eq(ws.recv_json().get("type"), "subscribed", "filtered viewer subscribed to *")
    g.http("POST", "/api/devices/meter-1/telemetry", {"m": 1})
    g.http("POST", "/api/devices/pump-1/telemetry", {"p": 2})
    msg = ws.recv_json()
    t.eq((msg.get("type"), msg.get("device")), ("telemetry", "pump-1"),
         "the filtered viewer sees its device, not the other one first: %r" % msg)
    ws.close()

    # ---- revocation at once, an open live feed included ----
    ws = live(g, rd["key"])
    t.eq(ws.recv_json(), {"type": "ready"}, "read viewer ready")
    ws.send_json({"subscribe": {}})
    ws.recv_json()
    ws2 = RawWS(g.ports["http"], "/ws/live")
    ws2.send_json({"auth": rd["key"]})
    t.eq(ws2.recv_json(), {"type": "ready"}, "viewer authenticated by message")
    st, js = g.http("DELETE", "/api/keys/" + rd["id"], key=rd["key"])
    t.eq(st, 403, "a read key cannot revoke")
    st, js = g.http("DELETE", "/api/keys/" + rd["id"], key=adm["key"])
    t.eq((st, js), (200, {"id": rd["id"], "revoked": True}), "revoked")
    st, _ = g.http("GET", "/api/devices", key=rd["key"])
    t.eq(st, 401, "the next request with the revoked key -> 401")
    for w, how in ((ws, "upgrade"), (ws2, "auth message")):
        code, _ = w.read_close(5)
        t.eq(code, 1008, "the open live feed (%s) is closed at once" % how)
        w.close()
    st, js = g.http("DELETE", "/api/keys/" + rd["id"])
    t.eq(st, 404, "revoking twice -> 404")
    # the configured key may go once another admin key exists
    st, js = g.http("DELETE", "/api/keys/bootstrap", key=adm["key"])
    t.eq(st, 200, "the configured key revoked once another admin exists")
    st, _ = g.http("GET", "/api/devices")
    t.eq(st, 401, "the configured key is refused after its revocation")
    st, js = g.http("DELETE", "/api/keys/" + adm["id"], key=adm["key"])
    t.eq((st, js.get("code")), (409, "last_admin"), "the last admin key stays")

    # ---- the access log names the key, never the secret ----
    g.http("GET", "/api/devices?probe=1", key=op["key"])
    g.wait_log(r' - operator-1 \[.*"GET /api/devices\?probe=1 ')
    log = g.log()
    for k in (adm, op, rd, pumps):
        t(k["key"].split("_")[-1] not in log, "no secret of %s in the log" % k["name"])

    # ---- hashed storage ----
    g.http("GET", "/api/health", key=None)
    blob = b""
    for f in glob.glob(os.path.join(g.data_dir, "gale.db*")):
        with open(f, "rb") as fh:
            blob += fh.read()
    t(b"ops-admin" in blob, "the key records are in the database file")
    for k in (adm, op, pumps):
        t(k["key"].encode() not in blob and k["key"].split("_")[-1].encode() not in blob,
          "the secret of %s is not in the database file" % k["name"])
    STATE.update(adm=adm, op=op, rd=rd, pumps=pumps)


def restart(g):
    adm, op, rd, pumps = STATE["adm"], STATE["op"], STATE["rd"], STATE["pumps"]
    st, js = g.http("GET", "/api/keys", key=adm["key"])
    t.eq(st, 200, "the admin key works after a restart")
    t.eq(sorted(k["name"] for k in js["keys"]),
         ["k-admin", "operator-1", "ops-admin", "pumps-only"],
         "keys persisted; revoked ones (the configured key too) stay revoked")
    st, _ = g.http("GET", "/api/devices", key=rd["key"])
    t.eq(st, 401, "a revoked key stays refused")
    st, _ = g.http("GET", "/api/devices", key=API_KEY)
    t.eq(st, 401, "the revoked configured key stays refused")
    st, js = g.http("POST", "/api/devices/pump-1/commands", {"name": "x"}, key=op["key"])
    t.eq(st, 202, "the operator key works after a restart")
    st, js = g.http("GET", "/api/devices", key=pumps["key"])
    t.eq(sorted(d["id"] for d in js["devices"]), ["pump-1", "pump-2"],
         "the device filter persisted")


t.run(main)
t.done()
