"""WebSocket RFC 6455 conformance on /ws/echo with a raw-socket client: every bad
frame is answered with a close frame carrying its code (1002 protocol error, 1007
invalid UTF-8, 1009 too big) and the gateway keeps serving; fragmentation,
interleaved control frames, the close handshake, handshake refusals (400/426/404),
idle pings (dead peers dropped, live ones kept), and permessage-deflate with
python3-websockets."""
import asyncio
import struct
import time

import websockets

from galetest import Check, Gale, RawWS

TEXT, BIN, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
MAX = 4096  # http.ws_max_message_bytes for this run

check = Check("ws_frames")


def echo(port, path="/ws/echo"):
    c = RawWS(port, path)
    assert c.status == 101, c.status
    return c


def still_serving(port, what):
    c = echo(port)
    c.send_text("still here")
    check.eq(c.recv_msg(), "still here", "echo after " + what)
    c.send(CLOSE, struct.pack(">H", 1000))
    check.eq(c.read_close()[0], 1000, "normal close after " + what)
    c.close()


def bad(port, what, frames, want_code):
    c = echo(port)
    for f in frames:
        c.sock.sendall(f)
    code, reason = c.read_close()
    check.eq(code, want_code, what + " (reason %r)" % reason)
    try:  # answer like a real client; after a framing error gale no longer parses
        c.send(CLOSE, struct.pack(">H", code or 1000))
    except OSError:
        pass
    check(c.closed(5), what + ": TCP connection closed")
    c.close()
    still_serving(port, what)


F = RawWS.frame

with Gale(args=["--set", "http.ws_echo=true", "--set", "http.ws_max_message_bytes=%d" % MAX,
                "--set", "limits.idle_timeout_ms=1500"]) as g:
    port = g.ports["http"]

    # ---- good traffic ----
    c = echo(port)
    c.send_text("héllo")
    check.eq(c.recv_msg(), "héllo", "text echoed as text")
    c.send(BIN, b"\x00\xff\x10")
    check.eq(c.recv_msg(), b"\x00\xff\x10", "binary echoed as binary")
    c.send(TEXT, "", fin=True)
    check.eq(c.recv_msg(), "", "empty text message")
    # fragmented, with a ping and a pong between the fragments; UTF-8 split across them
    euro = "€".encode()
    c.sock.sendall(F(TEXT, b"ab" + euro[:1], fin=False) + F(PING, b"p1") +
                   F(CONT, euro[1:2], fin=False) + F(PONG, b"x") + F(CONT, euro[2:] + b"cd"))
    fin, rsv, op, p = c.recv_frame()
    check.eq((op, p), (PONG, b"p1"), "ping inside a fragmented message answered")
    check.eq(c.recv_msg(), "ab€cd", "fragmented text with UTF-8 split across fragments")
    c.send(BIN, b"x" * MAX)
    check.eq(len(c.recv_msg()), MAX, "message of exactly the maximum size")
    c.sock.sendall(F(BIN, b"y" * (MAX // 2), fin=False) + F(CONT, b"y" * (MAX // 2)))
    check.eq(len(c.recv_msg()), MAX, "fragmented message of exactly the maximum size")
    c.send(PING, b"z" * 125)
    check.eq(c.recv_frame()[2:], (PONG, b"z" * 125), "125-byte ping answered")
    c.send(CLOSE, struct.pack(">H", 4001) + b"bye")
    check.eq(c.read_close(), (4001, ""), "close handshake echoes the code")
    check(c.closed(5), "server closes TCP after the close handshake")
    c.close()
    # an empty close is answered with an empty close
    c = echo(port)
    c.send(CLOSE, b"")
    check.eq(c.read_close()[0], 1005, "empty close answered with empty close")
    c.close()
    # a frame in the same packet as the upgrade request
    c = RawWS(port, "/ws/echo", extra=F(TEXT, "early"))
    check.eq(c.recv_msg(), "early", "frame sent together with the upgrade request")
    c.close()

    # ---- bad frames: each closed with its code, then a fresh client is served ----
    bad(port, "unmasked frame", [F(TEXT, "hi", mask=False)], 1002)
    bad(port, "RSV1 without permessage-deflate", [F(TEXT, "hi", rsv=4)], 1002)
    bad(port, "RSV2 set", [F(TEXT, "hi", rsv=2)], 1002)
    bad(port, "RSV3 set", [F(TEXT, "hi", rsv=1)], 1002)
    bad(port, "reserved data opcode 3", [F(0x3, "hi")], 1002)
    bad(port, "reserved control opcode 0xB", [F(0xB, "hi")], 1002)
    bad(port, "fragmented ping", [F(PING, "hi", fin=False)], 1002)
    bad(port, "ping of 126 bytes", [F(PING, b"p" * 126)], 1002)
    bad(port, "close of 126 bytes", [F(CLOSE, struct.pack(">H", 1000) + b"r" * 124)], 1002)
    bad(port, "continuation without a message", [F(CONT, "x")], 1002)
    bad(port, "new message inside a fragmented one",
        [F(TEXT, "a", fin=False), F(TEXT, "b")], 1002)
    bad(port, "invalid UTF-8 in a text message", [F(TEXT, b"ok\xff")], 1007)
    bad(port, "overlong UTF-8", [F(TEXT, b"\xc0\xaf")], 1007)
    bad(port, "UTF-16 surrogate in UTF-8", [F(TEXT, b"\xed\xa0\x80")], 1007)
    bad(port, "invalid UTF-8 across fragments",
        [F(TEXT, b"ab\xe2\x82", fin=False), F(CONT, b"(x")], 1007)
    bad(port, "truncated UTF-8 at the end of a message",
        [F(TEXT, b"ab\xe2", fin=False), F(CONT, b"\x82")], 1007)
    bad(port, "invalid UTF-8 in a close reason", [F(CLOSE, struct.pack(">H", 1000) + b"\xff")],
        1007)
    bad(port, "message too big", [F(BIN, b"x" * (MAX + 1))], 1009)
    bad(port, "declared length too big, no payload", [F(BIN, length=1 << 40)], 1009)
    bad(port, "fragmented message too big",
        [F(BIN, b"x" * MAX, fin=False), F(CONT, b"x")], 1009)
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000):
        bad(port, "close code %d" % code, [F(CLOSE, struct.pack(">H", code))], 1002)
    bad(port, "close with a 1-byte payload", [F(CLOSE, b"\x03")], 1002)

    # ---- handshake refusals (JSON error bodies) ----
    c = RawWS(port, "/ws/echo", headers={"Sec-WebSocket-Version": "8"}, handshake=False)
    c.sock.sendall(("GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                    "Sec-WebSocket-Version: 8\r\n\r\n" % c.key).encode())
    check.eq(c.read_head(), 426, "version 8 refused with 426")
    check.eq(c.headers.get("sec-websocket-version"), "13", "426 names version 13")
    check(b'"code":"upgrade_required"' in c.body, "426 JSON body")
    c.close()
    c = RawWS(port, "/ws/echo", handshake=False)
    c.sock.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
    check.eq(c.read_head(), 400, "missing Sec-WebSocket-Key refused with 400")
    check(b'"code":"bad_upgrade"' in c.body, "400 JSON body")
    c.close()
    c = RawWS(port, "/nowhere")
    check.eq(c.status, 404, "upgrade to an unknown path: 404")
    c.close()
    c = RawWS(port, "/api/health")
    check.eq(c.status, 200, "upgrade header on a REST path: served as plain HTTP")
    c.close()

    # ---- idle pings: a silent peer is pinged and dropped, a live one kept ----
    c = echo(port)
    t0 = time.monotonic()
    fin, rsv, op, p = c.recv_frame(timeout=3)
    check.eq(op, PING, "idle peer is pinged")
    code, reason = c.read_close(timeout=5)
    check.eq(code, 1011, "peer that never answers pings is dropped with 1011")
    check(time.monotonic() - t0 < 1.5, "dropped before the idle timeout")
    c.close()
    c = echo(port)
    deadline = time.monotonic() + 2.5
    pings = 0
    while time.monotonic() < deadline:
        try:
            fin, rsv, op, p = c.recv_frame(timeout=0.2)
        except OSError:
            continue
        if op == PING:
            pings += 1
            c.send(PONG, p)
    check(pings >= 2, "pinged repeatedly while idle (%d)" % pings)
    c.send_text("alive")
    check.eq(c.recv_msg(), "alive", "peer answering pings outlives the idle timeout")
    c.close()

    # ---- python3-websockets: permessage-deflate both ways ----
    async def deflate_echo():
        uri = "ws://127.0.0.1:%d/ws/echo" % port
        async with websockets.connect(uri, max_size=MAX) as ws:
            ext = ws.response_headers.get("Sec-WebSocket-Extensions", "")
            check("permessage-deflate" in ext, "permessage-deflate negotiated (%r)" % ext)
            for i in range(3):
                msg = ("reading %d " % i) * 200
                msg = msg[:MAX - 10]
                await ws.send(msg)
                check.eq(await ws.recv(), msg, "compressed echo %d" % i)
            await ws.send(b"\x01\x02" * 100)
            check.eq(await ws.recv(), b"\x01\x02" * 100, "compressed binary echo")
        async with websockets.connect(uri, compression=None) as ws:
            check.eq(ws.response_headers.get("Sec-WebSocket-Extensions"), None,
                     "no extension when none offered")
            await ws.send("plain")
            check.eq(await ws.recv(), "plain", "uncompressed echo")

    asyncio.run(deflate_echo())
    still_serving(port, "everything")
    check(g.alive(), "gateway alive at the end")

# /ws/echo is off unless configured; http.ws_deflate=false declines compression
with Gale(args=["--set", "http.ws_deflate=false"]) as g:
    c = RawWS(g.ports["http"], "/ws/echo")
    check.eq(c.status, 404, "/ws/echo off by default")
    c.close()

    async def no_deflate():
        uri = "ws://127.0.0.1:%d/ws/live" % g.ports["http"]
        async with websockets.connect(uri, extra_headers={"Authorization":
                                                          "Bearer " + g.api_key}) as ws:
            check.eq(ws.response_headers.get("Sec-WebSocket-Extensions"), None,
                     "http.ws_deflate=false: no permessage-deflate")

    asyncio.run(no_deflate())

check.done()
