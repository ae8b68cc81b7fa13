"""Fleet tokens (auth.fleet_keys): a token issued offline by `gale --issue-token` is
accepted by two instances that share only the fleet key, on every transport that
authenticates devices (MQTT username/password, the line protocol's first line,
/ws/device, HTTP ingest); the device is registered on its first valid connect (REST shows
it); expired, unknown-key, tampered and other-device tokens are refused with a clear reason
(CONNACK 0x04, HTTP 401 JSON, the line protocol's error) and a log line; per-device tokens
keep working; key rotation: a token of a retired key is refused. Loopback only."""
import json
import subprocess
import time

import mqttraw

from galetest import GALE_BIN, Check, Gale, RawWS

t = Check("test_fleet")
K1 = {"id": "k1", "secret": "fleet-secret-k1-0123456789abcdef"}
K2 = {"id": "k2", "secret": "fleet-secret-k2-0123456789abcdef"}


def issue(keys, device, *extra):
    r = subprocess.run([GALE_BIN, "--set", "auth.fleet_keys=" + json.dumps(keys),
                        "--issue-token", device] + list(extra),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, (r.returncode, r.stderr)
    return r.stdout.strip()


def mqtt_rc(g, device, token, cid):
    c = mqttraw.Raw(g.ports["mqtt"])
    rc = c.connect(cid, username=device, password=token).rc
    c.close()
    return rc


def main():
    tok = issue([K1], "fleet-1")
    t(tok.startswith("gft1.fleet-1.") and ".k1." in tok, "token format: %r" % tok)
    never = issue([K1], "fleet-2", "--expires", "never")
    t(".0.k1." in never, "--expires never: %r" % never)
    short = issue([K1], "fleet-3", "--expires", "1s")
    rotated = issue([K2, K1], "fleet-4")
    old_key = issue([K2, K1], "fleet-5", "--key-id", "k1")
    t(".k2." in rotated and ".k1." in old_key, "the first key signs; --key-id picks another")
    r = subprocess.run([GALE_BIN, "--issue-token", "x"], capture_output=True, text=True,
                       timeout=20)
    t(r.returncode == 2 and "auth.fleet_keys" in r.stderr, "no fleet key: exit 2 naming the key")
    r = subprocess.run([GALE_BIN, "--set", "auth.fleet_keys=" + json.dumps([K1]),
                        "--issue-token", "x", "--key-id", "nope"], capture_output=True,
                       text=True, timeout=20)
    t(r.returncode == 2 and "--key-id" in r.stderr, "unknown --key-id: exit 2")
    r = subprocess.run([GALE_BIN, "--check-config", "--set",
                        "auth.fleet_keys=" + json.dumps([K1])], capture_output=True, text=True,
                       timeout=20)
    t(r.returncode == 0 and K1["secret"] not in r.stdout and '"***"' in r.stdout,
      "--check-config hides fleet secrets")
    time.sleep(1.1)  # the 1 s token has expired

    args = ["--set", "auth.fleet_keys=" + json.dumps([K2, K1])]
    with Gale(args=args) as a, Gale(args=args) as b:
        for g, name in ((a, "a"), (b, "b")):
            t.eq(mqtt_rc(g, "fleet-1", tok, "c-" + name), 0, "instance %s: MQTT CONNACK 0" % name)
            g.wait_log(r"device=fleet-1 registered by its fleet token")
            st, js = g.http("GET", "/api/devices/fleet-1")
            t.eq(st, 200, "instance %s: the device is registered" % name)
            t.eq(mqtt_rc(g, "fleet-4", rotated, "r-" + name), 0, "%s: token of k2" % name)
            t.eq(mqtt_rc(g, "fleet-5", old_key, "o-" + name), 0, "%s: token of k1" % name)
        g = a
        # line protocol
        c = g.line()
        t.eq(c.auth("fleet-2", never), {"ok": True}, "line login with a fleet token")
        c.send_line({"seq": 1, "temp": 20.5})
        t.eq(c.read_line(), {"ack": 1}, "line telemetry acked")
        c.close()
        # /ws/device
        ws = RawWS(g.ports["http"], "/ws/device?device=fleet-2&token=" + never)
        t.eq(ws.status, 101, "/ws/device upgrade with a fleet token")
        ws.send_json({"seq": 2, "temp": 21})
        t.eq(ws.recv_json(), {"ack": 2}, "/ws/device telemetry acked")
        ws.close()
        # HTTP ingest, the device new on this instance (b has not seen fleet-2)
        st, js = b.http("POST", "/api/devices/fleet-2/telemetry", {"temp": 22}, key=never)
        t.eq(st, 200, "HTTP ingest with a fleet token registers and stores: %r" % (js,))
        st, js = b.http("GET", "/api/devices/fleet-2/latest")
        t(st == 200 and js.get("temp", {}).get("value") == 22, "value stored: %r" % (js,))
        st, js = b.http("GET", "/api/devices/fleet-2/commands?wait=0", key=never)
        t(st == 200 and js.get("commands") == [], "an HTTP device's command poll: %r" % (js,))
        st, js = b.http("GET", "/api/devices/fleet-2/commands?wait=0", key=tok)
        t.eq(st, 401, "the command poll refuses another device's fleet token")

        # refusals: MQTT bad credentials, HTTP 401 with the reason, a log line each
        t.eq(mqtt_rc(g, "fleet-3", short, "exp"), 4, "expired: CONNACK 0x04")
        g.wait_log(r"proto=mqtt auth failed device=\"fleet-3\" reason=\"fleet token expired\"")
        t.eq(mqtt_rc(g, "fleet-9", tok, "other"), 4, "another device's token: CONNACK 0x04")
        g.wait_log(r"auth failed device=\"fleet-9\" reason=\"fleet token of another device\"")
        forged = tok[:-3] + ("AAA" if not tok.endswith("AAA") else "BBB")
        t.eq(mqtt_rc(g, "fleet-1", forged, "forged"), 4, "tampered: CONNACK 0x04")
        g.wait_log(r"reason=\"fleet token signature does not verify\"")
        unknown = issue([{"id": "k9", "secret": "fleet-secret-k9-0123456789abcdef"}], "fleet-6")
        st, js = b.http("POST", "/api/devices/fleet-6/telemetry", {"temp": 1}, key=unknown)
        t.eq(st, 401, "unknown key: HTTP 401")
        t(isinstance(js, dict) and js.get("code") == "unauthorized" and "key id" in js["error"],
          "401 JSON names the reason: %r" % (js,))
        b.wait_log(r"proto=http auth failed device=\"fleet-6\" reason=\"fleet token signed with "
                   r"a key id not in auth.fleet_keys\"")
        st, js = b.http("GET", "/api/devices/fleet-6")
        t.eq(st, 404, "a refused token registers nothing")
        c = g.line()
        resp = c.auth("fleet-3", short)
        t(resp.get("code") == "unauthorized", "line: expired token refused: %r" % resp)
        c.close()
        # provisioning through one instance: the token works on the other
        st, js = a.http("POST", "/api/fleet/tokens", {"device": "rest-1", "expires_s": 3600})
        t.eq(st, 201, "POST /api/fleet/tokens")
        t(js["token"].startswith("gft1.rest-1.") and js["key_id"] == "k2" and
          abs(js["expires"] - time.time() - 3600) < 60, "token, key and expiry: %r" % js)
        t.eq(mqtt_rc(b, "rest-1", js["token"], "rest"), 0, "a REST-issued token on the other")
        st, js = a.http("POST", "/api/fleet/tokens", {"device": "rest-2", "key_id": "k1",
                                                       "expires_s": 0})
        t(st == 201 and ".0.k1." in js["token"] and js["expires"] == 0, "key_id, never: %r" % js)
        for body, code in (({"device": "bad/id"}, "invalid_id"), ({"device": "x", "key_id": "k9"},
                           "unknown_key"), ({"device": "x", "expires_s": -1}, "invalid_expires"),
                           ({"device": "x", "extra": 1}, "unknown_field")):
            st, js = a.http("POST", "/api/fleet/tokens", body)
            t(st == 400 and js["code"] == code, "%r: 400 %s (%r)" % (body, code, js))
        st, js = a.http("POST", "/api/fleet/tokens", {"device": "x"}, key="wrong")
        t.eq(st, 401, "POST /api/fleet/tokens needs the API key")
        # per-device tokens keep working
        dtok = g.create_device("local-1")
        t.eq(mqtt_rc(g, "local-1", dtok, "local"), 0, "a per-device token still works")
        t.eq(mqtt_rc(g, "local-1", "wrong", "local2"), 4, "a wrong per-device token still fails")

    with Gale() as g:
        st, js = g.http("POST", "/api/fleet/tokens", {"device": "x"})
        t(st == 409 and js["code"] == "fleet_disabled", "no fleet key: 409 (%r)" % (js,))
        t.eq(mqtt_rc(g, "fleet-1", tok, "nofleet"), 4, "no fleet key: fleet tokens refused")

    # rotation done: k1 retired
    with Gale(args=["--set", "auth.fleet_keys=" + json.dumps([K2])]) as g:
        t.eq(mqtt_rc(g, "fleet-4", rotated, "k2"), 0, "k2 token after k1 is retired")
        t.eq(mqtt_rc(g, "fleet-1", tok, "k1"), 4, "k1 token refused once k1 is retired")
        g.wait_log(r"reason=\"fleet token signed with a key id not in auth.fleet_keys\"")


t.run(main)
