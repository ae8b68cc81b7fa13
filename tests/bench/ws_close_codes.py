#!/usr/bin/python3
"""tests/bench/ws_close_codes.py: the RFC 6455 error table, Gale vs Tornado 6.

Sends each bad frame of tests/integration/test_ws_frames.py to Gale's /ws/echo and
to a Tornado echo server (Debian's python3-tornado, default settings,
websocket_max_message_size set to the same limit), and prints which close code each
server answered with (or "-" when it dropped the connection without a close frame,
"open" when it did neither within 3 s). RFC 6455 wants 1002 for protocol errors,
1007 for invalid UTF-8 and 1009 for messages over the limit.

    /usr/bin/python3 tests/bench/ws_close_codes.py --build build-rel"""
import argparse
import os
import socket
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import galetest  # noqa: E402
from galetest import RawWS  # noqa: E402

MAX = 4096
TEXT, BIN, CLOSE, PING, CONT = 0x1, 0x2, 0x8, 0x9, 0x0
F = RawWS.frame
CASES = [
    ("unmasked frame", [F(TEXT, "hi", mask=False)], 1002),
    ("RSV1 without deflate", [F(TEXT, "hi", rsv=4)], 1002),
    ("RSV2 set", [F(TEXT, "hi", rsv=2)], 1002),
    ("reserved opcode 3", [F(0x3, "hi")], 1002),
    ("reserved opcode 0xB", [F(0xB, "hi")], 1002),
    ("fragmented ping", [F(PING, "hi", fin=False)], 1002),
    ("ping of 126 bytes", [F(PING, b"p" * 126)], 1002),
    ("continuation without message", [F(CONT, "x")], 1002),
    ("new message inside fragmented", [F(TEXT, "a", fin=False), F(TEXT, "b")], 1002),
    ("invalid UTF-8", [F(TEXT, b"ok\xff")], 1007),
    ("invalid UTF-8 across fragments", [F(TEXT, b"ab\xe2\x82", fin=False), F(CONT, b"(x")], 1007),
    ("invalid UTF-8 in close reason", [F(CLOSE, struct.pack(">H", 1000) + b"\xff")], 1007),
    ("message too big", [F(BIN, b"x" * (MAX + 1))], 1009),
    ("fragmented message too big", [F(BIN, b"x" * MAX, fin=False), F(CONT, b"x")], 1009),
    ("close code 1005", [F(CLOSE, struct.pack(">H", 1005))], 1002),
    ("close code 999", [F(CLOSE, struct.pack(">H", 999))], 1002),
    ("close with 1-byte payload", [F(CLOSE, b"\x03")], 1002),
]

TORNADO_ECHO = r'''
import tornado.ioloop, tornado.web, tornado.websocket, tornado.netutil, tornado.httpserver, sys
class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, m):
        self.write_message(m, binary=isinstance(m, bytes))
app = tornado.web.Application([(r"/ws/echo", Echo)], websocket_max_message_size=%d)
s = tornado.netutil.bind_sockets(0, "127.0.0.1")
tornado.httpserver.HTTPServer(app).add_sockets(s)
print("port=%%d" %% s[0].getsockname()[1], flush=True)
tornado.ioloop.IOLoop.current().start()
''' % MAX


def outcome(port, frames):
    c = RawWS(port, "/ws/echo", timeout=3)
    try:
        for f in frames:
            c.sock.sendall(f)
        while True:
            fin, rsv, op, p = c.recv_frame(timeout=3)
            if op == CLOSE:
                return int.from_bytes(p[:2], "big") if len(p) >= 2 else 1005
    except socket.timeout:
        return "open"
    except (ConnectionError, OSError):
        return "-"
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    a = ap.parse_args()
    galetest.GALE_BIN = os.path.abspath(os.path.join(a.build, "gale"))
    t = subprocess.Popen(["/usr/bin/python3", "-c", TORNADO_ECHO], stdout=subprocess.PIPE,
                         text=True)
    try:
        tport = int(t.stdout.readline().split("=")[1])
        with galetest.Gale(args=["--set", "http.ws_echo=true",
                                 "--set", "http.ws_max_message_bytes=%d" % MAX]) as g:
            print("| bad input | RFC 6455 | Gale | Tornado 6 |\n|---|---|---|---|")
            score = {"gale": 0, "tornado": 0}
            for name, frames, want in CASES:
                gr, tr = outcome(g.ports["http"], frames), outcome(tport, frames)
                score["gale"] += gr == want
                score["tornado"] += tr == want
                print("| %s | %d | %s | %s |" % (name, want, gr, tr))
            print("\nright close code: Gale %d/%d, Tornado %d/%d"
                  % (score["gale"], len(CASES), score["tornado"], len(CASES)))
    finally:
        t.kill()
        t.wait()


if __name__ == "__main__":
    main()
