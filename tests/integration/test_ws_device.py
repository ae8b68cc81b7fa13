"""/ws/device with python3-websockets: auth by header, query and first message (and
refusals), telemetry with seq acked once durable and readable over REST, error
objects for bad messages and the close after line.max_errors, commands delivered
as frames and replies that mark them replied, presence."""
import asyncio
import json

import websockets

from galetest import Check, Gale, RawWS, wait_for

check = Check("ws_device")


async def recv_json(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def closed_with(ws, timeout=10):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as e:
        return e.code


async def main(g):
    port = g.ports["http"]
    base = "ws://127.0.0.1:%d/ws/device" % port
    tok1 = g.create_device("dev-1")
    tok2 = g.create_device("dev-2")
    tok3 = g.create_device("dev-3")

    # --- auth: header + ?device= ---
    async with websockets.connect(base + "?device=dev-1",
                                  extra_headers={"Authorization": "Bearer " + tok1}) as ws:
        await ws.send(json.dumps({"temp": 21.5, "seq": 1}))
        check.eq(await recv_json(ws), {"ack": 1}, "header auth: telemetry acked")
        st, dev = g.http("GET", "/api/devices/dev-1")
        check.eq((st, dev.get("online"), dev.get("protocol")), (200, True, "ws"),
                 "device online over ws")
        await ws.send(json.dumps({"ts": 1700000000000, "values": {"hum": 40, "on": True},
                                  "seq": 2}))
        check.eq(await recv_json(ws), {"ack": 2}, "ts/values shape acked")
        await ws.send(json.dumps([{"ts": 1700000001000, "values": {"hum": 41}},
                                  {"ts": 1700000002000, "values": {"hum": 42}}]))
        await ws.send(json.dumps({"hum": 43, "seq": 3}))
        check.eq(await recv_json(ws), {"ack": 3}, "array shape then ack in order")
        await ws.send(b'{"bin":1,"seq":4}')
        check.eq(await recv_json(ws), {"ack": 4}, "binary message with JSON accepted")
    wait_for(lambda: g.http("GET", "/api/devices/dev-1")[1].get("online") is False, 5,
             "dev-1 offline after close")
    st, tel = g.http("GET", "/api/devices/dev-1/telemetry?keys=hum&from=0")
    check.eq(st, 200, "telemetry query")
    check.eq([p["value"] for p in tel.get("hum", [])][:4], [40, 41, 42, 43],
             "stored telemetry readable over REST in time order")
    st, latest = g.http("GET", "/api/devices/dev-1/latest")
    check.eq(latest.get("temp", {}).get("value"), 21.5, "latest over REST")

    # --- auth: query ---
    async with websockets.connect(base + "?device=dev-2&token=" + tok2) as ws:
        await ws.send(json.dumps({"x": 1, "seq": 10}))
        check.eq(await recv_json(ws), {"ack": 10}, "query auth works")

    # --- auth: first message ---
    async with websockets.connect(base) as ws:
        await ws.send(json.dumps({"device": "dev-3", "token": tok3}))
        check.eq(await recv_json(ws), {"ok": True}, "first-message auth answered ok")
        await ws.send(json.dumps({"y": 2, "seq": 11}))
        check.eq(await recv_json(ws), {"ack": 11}, "first-message auth: telemetry acked")
        # bad messages: error objects, connection survives
        await ws.send("{not json")
        err = await recv_json(ws)
        check("error" in err and "code" in err, "bad JSON answered with an error object")
        await ws.send(json.dumps({"z": 3, "seq": 12}))
        check.eq(await recv_json(ws), {"ack": 12}, "connection survives a bad message")

    # --- refusals ---
    try:
        async with websockets.connect(base + "?device=dev-1&token=wrong"):
            check(False, "wrong token accepted")
    except websockets.InvalidStatusCode as e:
        check.eq(e.status_code, 401, "wrong query token: 401")
    try:
        async with websockets.connect(base, extra_headers={"Authorization": "Bearer " + tok1}):
            check(False, "bearer without device id accepted")
    except websockets.InvalidStatusCode as e:
        check.eq(e.status_code, 401, "bearer token without ?device=: 401")
    async with websockets.connect(base) as ws:
        await ws.send(json.dumps({"device": "dev-1", "token": "nope"}))
        err = await recv_json(ws)
        check.eq(err.get("code"), "unauthorized", "bad first-message token: error object")
        check.eq(await closed_with(ws), 1008, "bad first-message token: close 1008")
    async with websockets.connect(base) as ws:
        await ws.send(json.dumps({"temp": 1}))
        err = await recv_json(ws)
        check.eq(err.get("code"), "unauthorized", "telemetry before auth: error object")
        check.eq(await closed_with(ws), 1008, "telemetry before auth: close 1008")

    # --- max_errors (3 in this run) ---
    async with websockets.connect(base + "?device=dev-2&token=" + tok2) as ws:
        codes = []
        for i in range(3):
            await ws.send("[}")
        for i in range(4):
            try:
                codes.append((await recv_json(ws)).get("code"))
            except websockets.ConnectionClosed:
                break
        check.eq(codes[-1], "too_many_errors", "too many errors reported")
        check.eq(await closed_with(ws), 1008, "too many errors: close 1008")

    # --- commands over WS ---
    async with websockets.connect(base + "?device=dev-1&token=" + tok1) as ws:
        st, cmd = g.http("POST", "/api/devices/dev-1/commands",
                         {"name": "reboot", "params": {"delay": 5}})
        check.eq(st, 202, "command accepted")
        msg = await recv_json(ws)
        c = msg.get("command", {})
        check.eq((c.get("id"), c.get("name"), c.get("params")), (cmd["id"], "reboot", {"delay": 5}),
                 "command delivered as a frame")
        wait_for(lambda: g.http("GET", "/api/devices/dev-1/commands/" + cmd["id"])[1]
                 .get("status") in ("delivered", "replied"), 5, "command delivered status")
        await ws.send(json.dumps({"reply": {"id": cmd["id"], "result": "ok"}}))
        wait_for(lambda: g.http("GET", "/api/devices/dev-1/commands/" + cmd["id"])[1]
                 .get("status") == "replied", 5, "command replied status")
        check(True, "reply over WS marks the command replied")
        await ws.send(json.dumps({"after": 1, "seq": 99}))
        check.eq(await recv_json(ws), {"ack": 99}, "telemetry after a reply")


with Gale(args=["--set", "line.max_errors=3"]) as g:
    asyncio.run(main(g))
    # raw: auth message in the same packet as the upgrade request
    tok = g.create_device("dev-raw")
    c = RawWS(g.ports["http"], "/ws/device",
              extra=RawWS.frame(0x1, json.dumps({"device": "dev-raw", "token": tok})))
    check.eq(c.recv_json(), {"ok": True}, "auth frame sent together with the upgrade")
    c.send_json({"v": 1, "seq": 5})
    check.eq(c.recv_json(), {"ack": 5}, "raw client acked")
    c.close()
    check(g.alive(), "gateway alive")

check.done()
