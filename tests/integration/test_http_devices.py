"""HTTP devices as first-class devices: a device posting telemetry with its own token is
online with protocol "http" (its record, the device list, gale_devices_online, presence
events on the live feed) until http.device_idle_s after its last request, then offline with
the usual presence event; an API key posting for it does not make it online. Commands: the
POST reply carries the queued commands (marked delivered); a long poll
GET /api/devices/{id}/commands?wait=S answers at once when commands wait, is woken at once
by a new command, and answers [] when its wait ends; one poll per device (409), at most
http.command_polls_max in all (503); the device's result (POST .../commands/{cmd}/result)
sets the status to replied, as other transports' replies do. A client that resets (or
closes) during a long poll frees its slot at once, and the gateway stays up."""
import json
import socket
import struct
import threading
import time

from galetest import Check, Gale, RawWS, metric, wait_for

t = Check("test_http_devices")


def dev_http(g, method, path, token, body=None, timeout=30):
    return g.http(method, path, body, key=token, timeout=timeout)


def device(g, dev):
    st, js = g.http("GET", "/api/devices/" + dev)
    assert st == 200, (st, js)
    return js


def raw_poll(g, dev, token, wait):
    s = socket.create_connection(("127.0.0.1", g.ports["http"]), timeout=10)
    s.sendall(("GET /api/devices/%s/commands?wait=%s HTTP/1.1\r\nHost: x\r\n"
               "Authorization: Bearer %s\r\n\r\n" % (dev, wait, token)).encode())
    return s


def waiting(g, dev, token):
    """True once dev has a long poll waiting (a second one is refused 409)."""
    st, js = dev_http(g, "GET", "/api/devices/%s/commands?wait=0.001" % dev, token)
    return st == 409 and js.get("code") == "poll_in_progress"


def presence(g):
    ws = RawWS(g.ports["http"], "/ws/live", headers={"Authorization": "Bearer " + g.api_key})
    t.eq(ws.recv_json(), {"type": "ready"}, "live feed ready")
    ws.send_json({"subscribe": {"devices": ["h-*"], "keys": ["none"], "presence": True}})
    t.eq(ws.recv_json().get("type"), "subscribed", "live feed subscribed")
    return ws


def main():
    with Gale(args=["--set", "http.device_idle_s=2", "--set", "http.command_wait_max_s=20",
                    "--set", "http.command_polls_max=3"]) as g:
        run(g)


def run(g):
    tok = g.create_device("h-1")
    tok2 = g.create_device("h-2")
    ws = presence(g)

    # ---- presence from HTTP activity ----
    t.eq(device(g, "h-1")["online"], False, "a new device is offline")
    online0 = metric(g, "gale_devices_online")
    st, js = g.http("POST", "/api/devices/h-1/telemetry", {"t": 1})
    t.eq(st, 200, "the API key posts for the device")
    t.eq(device(g, "h-1")["online"], False, "an API key's post does not make the device online")
    st, js = dev_http(g, "POST", "/api/devices/h-1/telemetry", tok, {"t": 2})
    t.eq((st, js), (200, {"stored": 1, "commands": []}),
         "the device's own post: stored, and no command waiting")
    d = device(g, "h-1")
    t.eq((d["online"], d["protocol"]), (True, "http"), "online over http after its post")
    st, js = g.http("GET", "/api/devices?online=true")
    t.eq([x["id"] for x in js["devices"]], ["h-1"], "in the list of online devices")
    t.eq(metric(g, "gale_devices_online"), online0 + 1, "counted in gale_devices_online")
    ev = ws.recv_json()
    t.eq((ev.get("type"), ev.get("device"), ev.get("online")), ("presence", "h-1", True),
         "a presence event on the live feed")
    # posting every half second keeps it online past the idle time
    for i in range(6):
        dev_http(g, "POST", "/api/devices/h-1/telemetry", tok, {"t": i})
        time.sleep(0.5)
        t(device(g, "h-1")["online"], "still online while posting (%d)" % i)
    start = time.time()
    wait_for(lambda: not device(g, "h-1")["online"], 10, "offline after the idle time")
    t(time.time() - start < 4, "offline about http.device_idle_s after the last post")
    d = device(g, "h-1")
    t.eq((d["online"], d["protocol"]), (False, "http"), "offline, last protocol http")
    ev = ws.recv_json()
    t.eq((ev.get("type"), ev.get("device"), ev.get("online")), ("presence", "h-1", False),
         "the offline presence event")
    t.eq(metric(g, "gale_devices_online"), online0, "no longer counted online")
    ws.close()

    # ---- a command in the ingest reply ----
    st, js = g.http("POST", "/api/devices/h-1/commands", {"name": "reboot", "params": {"in": 5}})
    t.eq(st, 202, "command queued")
    cid = js["id"]
    st, js = dev_http(g, "POST", "/api/devices/h-1/telemetry", tok, {"t": 3})
    t.eq((st, js.get("commands")), (200, [{"id": cid, "name": "reboot", "params": {"in": 5}}]),
         "the POST reply carries the queued command")
    st, js = g.http("GET", "/api/devices/h-1/commands/" + cid)
    t.eq(js.get("status"), "delivered", "the command is delivered")
    st, js = dev_http(g, "POST", "/api/devices/h-1/telemetry", tok, {"t": 4})
    t.eq(js.get("commands"), [], "a command is delivered once")

    # ---- the result, as other transports reply ----
    st, js = dev_http(g, "POST", "/api/devices/h-1/commands/%s/result" % cid, tok,
                      {"ok": True, "took_ms": 12})
    t.eq((st, js), (200, {"id": cid, "status": "replied"}), "result accepted")
    st, js = g.http("GET", "/api/devices/h-1/commands/" + cid)
    t.eq((js.get("status"), js.get("reply")), ("replied", {"ok": True, "took_ms": 12}),
         "status replied with the reply")
    st, js = dev_http(g, "POST", "/api/devices/h-1/commands/%s/result" % cid, tok, {"ok": 1})
    t.eq((st, js.get("code")), (409, "already_replied"), "a second result -> 409")
    st, js = dev_http(g, "POST", "/api/devices/h-1/commands/nope/result", tok, {"ok": 1})
    t.eq(st, 404, "a result for an unknown command -> 404")
    st, js = dev_http(g, "POST", "/api/devices/h-1/commands/%s/result" % cid, tok2, {"ok": 1})
    t.eq(st, 401, "another device's token -> 401")
    st, js = dev_http(g, "POST", "/api/devices/h-1/commands/%s/result" % cid, tok, b"not json")
    t.eq((st, js.get("code")), (400, "bad_json"), "a result that is not JSON -> 400")
    st, js = dev_http(g, "GET", "/api/devices/h-1/commands/%s/result" % cid, tok)
    t.eq(st, 405, "a result is POSTed: GET -> 405")
    st, js = dev_http(g, "DELETE", "/api/devices/h-1/commands", tok)
    t.eq(st, 405, "another method on its commands -> 405")
    st, js = dev_http(g, "POST", "/api/devices/h-1/commands", tok, {"name": "self"})
    t.eq(st, 401, "a device cannot send itself a command with its token")

    # ---- long poll: at once when a command waits ----
    st, js = g.http("POST", "/api/devices/h-1/commands", {"name": "a"})
    c1 = js["id"]
    start = time.time()
    st, js = dev_http(g, "GET", "/api/devices/h-1/commands?wait=10", tok)
    t.eq((st, [c["id"] for c in js["commands"]]), (200, [c1]), "a waiting command at once")
    t(time.time() - start < 2, "answered without waiting")
    st, js = g.http("GET", "/api/devices/h-1/commands")
    t.eq(st, 200, "an API key still lists the device's commands")
    t(any(c["id"] == c1 and c["status"] == "delivered" for c in js["commands"]),
      "the polled command is delivered")

    # ---- long poll: the wait ends with [] ----
    start = time.time()
    st, js = dev_http(g, "GET", "/api/devices/h-1/commands?wait=1", tok)
    took = time.time() - start
    t.eq((st, js), (200, {"commands": []}), "a poll that times out answers []")
    t(0.9 <= took < 5, "it waited about its wait (%.2fs)" % took)

    # ---- long poll: woken at once by a new command ----
    box = {}

    def poll():
        s0 = time.time()
        box["r"] = dev_http(g, "GET", "/api/devices/h-1/commands?wait=20", tok)
        box["at"] = time.time()
        box["s0"] = s0

    th = [threading.Thread(target=poll)]
    th[0].start()

    def poll_waits():
        # the probe is a (1 ms) poll itself: when it came first, the thread's poll was
        # refused 409 and ends at once; it goes again
        if not th[0].is_alive() and box.get("r", (None,))[0] == 409:
            box.clear()
            th[0] = threading.Thread(target=poll)
            th[0].start()
            return False
        return waiting(g, "h-1", tok)

    wait_for(poll_waits, 10, "the poll waits")
    t(device(g, "h-1")["online"], "a device with a poll waiting is online")
    sent = time.time()
    st, js = g.http("POST", "/api/devices/h-1/commands", {"name": "wake", "params": [1]})
    c2 = js["id"]
    th[0].join(25)
    t.eq(box["r"], (200, {"commands": [{"id": c2, "name": "wake", "params": [1]}]}),
         "the poll answers with the new command")
    t(box["at"] - sent < 2, "woken at once (%.2fs after the command)" % (box["at"] - sent))

    # ---- bounds: one poll per device, http.command_polls_max in all ----
    socks = []
    for dev, tk in (("h-1", tok), ("h-2", tok2)):
        socks.append(raw_poll(g, dev, tk, 15))
        wait_for(lambda: waiting(g, dev, tk), 10, "poll of %s waits" % dev)
    tok3 = g.create_device("h-3")
    tok4 = g.create_device("h-4")
    socks.append(raw_poll(g, "h-3", tok3, 15))
    wait_for(lambda: waiting(g, "h-3", tok3), 10, "poll of h-3 waits")
    st, js = dev_http(g, "GET", "/api/devices/h-4/commands?wait=5", tok4)
    t.eq((st, js.get("code")), (503, "busy"), "past http.command_polls_max -> 503")

    # ---- a client that resets during a long poll frees its slot at once ----
    s = socks[0]
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST
    wait_for(lambda: not waiting(g, "h-1", tok), 5, "the reset poll's slot is free")
    socks[1].close()  # a plain close (FIN) too
    wait_for(lambda: not waiting(g, "h-2", tok2), 5, "the closed poll's slot is free")
    st, js = dev_http(g, "GET", "/api/devices/h-4/commands?wait=0.2", tok4)
    t.eq((st, js), (200, {"commands": []}), "room for another poll")
    # a command for a device whose poll went away waits for its next request
    st, js = g.http("POST", "/api/devices/h-1/commands", {"name": "later"})
    st, js = dev_http(g, "POST", "/api/devices/h-1/telemetry", tok, {"t": 5})
    t.eq([c["name"] for c in js["commands"]], ["later"], "the next request takes it")
    # the last waiting poll answers its own client at the end of its wait
    s = socks[2]
    s.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    t(data.startswith(b"HTTP/1.1 200") and data.rstrip().endswith(b'{"commands":[]}'),
      "a raw poll gets its [] at the end: %r" % data[-80:])
    s.close()

    # ---- credentials ----
    st, js = dev_http(g, "GET", "/api/devices/h-1/commands?wait=1", "wrong-token")
    t.eq(st, 401, "a wrong token -> 401")
    st, js = dev_http(g, "GET", "/api/devices/nope/commands?wait=1", tok)
    t.eq(st, 401, "an unknown device looks the same -> 401")
    st, js = dev_http(g, "GET", "/api/devices/h-1/commands?wiat=1", tok)
    t.eq((st, js.get("code")), (400, "unknown_param"), "an unknown parameter -> 400")
    t(g.alive(), "the gateway is alive")


t.run(main)
t.done()
