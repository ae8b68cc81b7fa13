"""/ws/live, the dashboard feed: API key by header, query or first message (401 for a
wrong key at the upgrade, close 1008 without one), device and key glob filters,
presence events, unsubscribe, shared compressed frames, and a deliberately slow
dashboard that never reads: gale's memory stays bounded, the drop counter in
/metrics rises, other viewers keep receiving, and the slow viewer is told how many
updates it lost when it reads again."""
import asyncio
import json
import time
import zlib

import websockets

from galetest import API_KEY, Check, Gale, RawWS, metric, wait_for

check = Check("ws_live")


async def recv_json(ws, timeout=5):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def drain(ws, timeout=0.6):
    """Messages until none arrives for `timeout` seconds."""
    out = []
    try:
        while True:
            out.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    except asyncio.TimeoutError:
        return out


async def viewer(uri, sub, how="header"):
    if how == "header":
        ws = await websockets.connect(uri, extra_headers={"Authorization": "Bearer " + API_KEY})
    elif how == "query":
        ws = await websockets.connect(uri + "?api_key=" + API_KEY)
    else:
        ws = await websockets.connect(uri)
        await ws.send(json.dumps({"auth": API_KEY}))
    check.eq(await recv_json(ws), {"type": "ready"}, "ready after %s auth" % how)
    if sub is not None:
        await ws.send(json.dumps({"subscribe": sub}))
        ack = await recv_json(ws)
        check.eq(ack.get("type"), "subscribed", "subscribe acknowledged")
    return ws


def points(msgs, device=None):
    """(device, key, value) of telemetry messages."""
    return [(m["device"], p["key"], p["value"]) for m in msgs if m["type"] == "telemetry"
            for p in m["points"] if device is None or m["device"] == device]


async def main(g):
    port = g.ports["http"]
    uri = "ws://127.0.0.1:%d/ws/live" % port
    toks = {d: g.create_device(d) for d in ("dev-a1", "dev-a2", "dev-b1")}

    # ---- auth ----
    for how in ("header", "query", "message"):
        ws = await viewer(uri, None, how)
        await ws.close()
    for extra, path in (({"Authorization": "Bearer nope"}, ""), ({}, "?api_key=nope")):
        try:
            async with websockets.connect(uri + path, extra_headers=extra):
                check(False, "wrong key accepted")
        except websockets.InvalidStatusCode as e:
            check.eq(e.status_code, 401, "wrong key at the upgrade: 401 (%s)" % (path or "header"))
    async with websockets.connect(uri) as ws:
        await ws.send(json.dumps({"subscribe": {}}))
        err = await recv_json(ws)
        check.eq((err.get("type"), err.get("code")), ("error", "unauthorized"),
                 "no key: subscribe refused")
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as e:
            check.eq(e.code, 1008, "no key: closed with 1008")
    async with websockets.connect(uri) as ws:
        await ws.send(json.dumps({"auth": "nope"}))
        await recv_json(ws)
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as e:
            check.eq(e.code, 1008, "wrong key in the first message: closed with 1008")

    # ---- filters and presence ----
    v_all = await viewer(uri, {})
    v_a = await viewer(uri, {"devices": ["dev-a*"]}, "query")
    v_temp = await viewer(uri, {"keys": ["temp"], "presence": False}, "message")
    v_b_hu = await viewer(uri, {"devices": ["dev-b?"], "keys": ["hu*", "x"]})
    v_none = await viewer(uri, {"devices": ["other-*"]})
    lines = {}
    for d in ("dev-a1", "dev-b1"):
        lines[d] = g.line(d, toks[d])
    lines["dev-a1"].send_line({"temp": 21.5, "hum": 40, "seq": 1})
    lines["dev-b1"].send_line({"temp": 18, "hum": 55, "co2": 400, "seq": 1})
    for d in lines:
        check.eq(lines[d].read_line(), {"ack": 1}, "line telemetry acked " + d)
    got = {n: await drain(v) for n, v in (("all", v_all), ("a", v_a), ("temp", v_temp),
                                           ("bhu", v_b_hu), ("none", v_none))}
    check.eq(sorted(points(got["all"])),
             sorted([("dev-a1", "temp", 21.5), ("dev-a1", "hum", 40), ("dev-b1", "temp", 18),
                     ("dev-b1", "hum", 55), ("dev-b1", "co2", 400)]), "no filter: everything")
    check.eq(sorted(points(got["a"])), sorted([("dev-a1", "temp", 21.5), ("dev-a1", "hum", 40)]),
             "device glob dev-a*")
    check.eq(sorted(points(got["temp"])), sorted([("dev-a1", "temp", 21.5),
                                                  ("dev-b1", "temp", 18)]), "key filter temp")
    check.eq(points(got["bhu"]), [("dev-b1", "hum", 55)], "device dev-b? and key hu*")
    check.eq(got["none"], [], "non-matching viewer gets nothing")
    pres = lambda msgs: sorted((m["device"], m["online"]) for m in msgs if m["type"] == "presence")
    check.eq(pres(got["all"]), [("dev-a1", True), ("dev-b1", True)], "presence online events")
    check.eq(pres(got["a"]), [("dev-a1", True)], "presence filtered by device glob")
    check.eq(pres(got["temp"]), [], "presence off when asked")
    tele = [m for m in got["all"] if m["type"] == "telemetry"]
    check(all("seq" in m and all("ts" in p for p in m["points"]) for m in tele),
          "telemetry frames carry seq and ts")
    lines["dev-a1"].close()
    await asyncio.sleep(0.2)
    got_a = await drain(v_a)
    check.eq(pres(got_a), [("dev-a1", False)], "presence offline event")
    # re-subscribe replaces the filter; unsubscribe stops everything
    await v_a.send(json.dumps({"subscribe": {"devices": ["dev-b1"]}}))
    check.eq((await recv_json(v_a))["devices"], ["dev-b1"], "re-subscribe acknowledged")
    await v_temp.send(json.dumps({"unsubscribe": True}))
    check.eq(await recv_json(v_temp), {"type": "unsubscribed"}, "unsubscribe acknowledged")
    lines["dev-b1"].send_line({"temp": 19, "seq": 2})
    lines["dev-b1"].read_line()
    check.eq(points(await drain(v_a)), [("dev-b1", "temp", 19)], "new filter in effect")
    check.eq(await drain(v_temp), [], "nothing after unsubscribe")
    await drain(v_all)
    await v_all.send("{bad")
    check.eq((await recv_json(v_all)).get("code"), "bad_json", "bad message: error object")
    await v_all.send(json.dumps({"subscribe": {"devices": "dev-1"}}))
    check.eq((await recv_json(v_all)).get("code"), "bad_request", "bad subscription refused")
    await drain(v_all)

    # ---- permessage-deflate: the shared frame's compressed variant ----
    raw = RawWS(port, "/ws/live?api_key=" + API_KEY,
                headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    check("permessage-deflate" in raw.headers.get("sec-websocket-extensions", ""),
          "live feed agrees permessage-deflate")
    raw.recv_json()
    raw.send_json({"subscribe": {"devices": ["dev-b1"], "keys": ["note"], "presence": False}})
    raw.recv_json()
    note = "compressible " * 40
    lines["dev-b1"].send_line({"note": note, "seq": 3})
    lines["dev-b1"].read_line()
    fin, rsv, op, payload = raw.recv_frame()
    check.eq((fin, rsv, op), (True, 4, 1), "large update sent compressed (RSV1)")
    text = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    check.eq(points([json.loads(text)]), [("dev-b1", "note", note)], "compressed frame inflates")
    async with websockets.connect(uri + "?api_key=" + API_KEY) as wz:
        await recv_json(wz)
        await wz.send(json.dumps({"subscribe": {"keys": ["note"], "presence": False}}))
        await recv_json(wz)
        lines["dev-b1"].send_line({"note": note + "2", "seq": 4})
        lines["dev-b1"].read_line()
        check.eq(points([await recv_json(wz)]), [("dev-b1", "note", note + "2")],
                 "python websockets reads the compressed shared frame")
    raw.close()
    lines["dev-b1"].close()
    for v in (v_all, v_a, v_temp, v_b_hu, v_none):
        await v.close()


def slow_dashboard(g):
    port = g.ports["http"]
    tok = g.create_device("dev-flood")
    slow = RawWS(port, "/ws/live?api_key=" + API_KEY)
    slow.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    check.eq(slow.recv_json(), {"type": "ready"}, "slow viewer ready")
    slow.send_json({"subscribe": {}})
    check.eq(slow.recv_json()["type"], "subscribed", "slow viewer subscribed")
    fast = RawWS(port, "/ws/live?api_key=" + API_KEY)
    fast.recv_json()
    fast.send_json({"subscribe": {"keys": ["n"]}})
    fast.recv_json()
    dropped0 = metric(g, "gale_feed_dropped_total")
    line = g.line("dev-flood", tok)
    blob = "x" * 1000
    n, fast_seen, rss = 0, 0, {}
    deadline = time.monotonic() + 90
    # ~90 MB of updates for a viewer that reads nothing. Storage's caches fill up
    # during the first 30k messages; after that gale's memory must stay flat, where
    # an unbounded feed queue would grow by ~60 MB.
    while n < 90000 and time.monotonic() < deadline:
        batch = "".join(json.dumps({"n": n + i, "blob": blob}) + "\n" for i in range(500))
        line.send(batch)
        n += 500
        # the fast viewer keeps up (reads what is there)
        try:
            while True:
                m = fast.recv_msg(timeout=0.001)
                if isinstance(m, str) and '"telemetry"' in m:
                    fast_seen += 1
        except OSError:
            pass
        if n in (30000, 90000):
            line.send_line({"n": n, "seq": n})
            wait_for(lambda: line.read_line() == {"ack": n}, 60, "flood acked")
            rss[n] = g.rss_kb()
    dropped = metric(g, "gale_feed_dropped_total") - dropped0
    check(n >= 90000, "flood sent (%d messages)" % n)
    check(dropped > 1000, "drop counter rose (%d)" % dropped)
    grow = rss.get(90000, 1 << 30) - rss.get(30000, 0)
    check(grow < 24 * 1024, "memory bounded: rss %r kB (+%d kB over the last 60k updates)"
          % (rss, grow))
    print("slow dashboard: sent=%d dropped=%d rss_kb=%r fast_seen=%d"
          % (n, dropped, rss, fast_seen))
    # the fast viewer kept receiving: it sees the last update
    saw_last = False
    end = time.monotonic() + 20
    while time.monotonic() < end and not saw_last:
        m = fast.recv_msg(timeout=10)
        if isinstance(m, str) and '"value":%d}' % n in m:
            saw_last = True
    check(saw_last, "a viewer that keeps up gets the last update")
    # the slow viewer reads again: it is told how many updates it lost
    report = None
    end = time.monotonic() + 30
    while time.monotonic() < end and report is None:
        m = slow.recv_msg(timeout=10)
        if isinstance(m, str) and m.startswith('{"type":"dropped"'):
            report = json.loads(m)
    check(report is not None and report["count"] > 0 and report["total"] >= report["count"],
          "slow viewer gets a dropped report: %r" % (report,))
    check(g.alive(), "gateway alive after the slow dashboard")
    st, _ = g.http("GET", "/api/health")
    check.eq(st, 200, "REST still served")
    line.close()
    slow.close()
    fast.close()


with Gale(args=["--set", "limits.max_send_queue_bytes=262144",
                "--set", "storage.queue_high_rows=5000", "--set", "storage.queue_low_rows=1000",
                "--set", "storage.batch_rows=1000",
                "--set", "storage.hot_max_points=10000",
                "--set", "line.max_line_bytes=65536"]) as g:
    asyncio.run(main(g))
    slow_dashboard(g)

check.done()
