#!/usr/bin/python3
"""tests/bench/flood.py: unauthenticated MQTT connections for the pre-auth bench cases.

usage: flood.py PORT N KIND SECONDS ADDR[,ADDR...]
  KIND slow: each connection sends one byte of a CONNECT, then a byte a second
  KIND big:  each connection sends a CONNECT whose header declares 1 MB, then as much of
             that megabyte as the server takes
Connections are opened from the given local addresses in turn (loopback range), kept for
SECONDS, then closed. Prints "flood opened=N refused=N closed_by_server=N". Standard
library only; one process holds at most N sockets (the driver splits 10,000 over several).
"""
import selectors
import socket
import sys
import time


def main():
    port, n, kind, secs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    addrs = sys.argv[5].split(",")
    big = bytes([0x10, 0xC0, 0x84, 0x3D]) + b"\x00\x04MQTT\x04\x02\x00\x3c"  # 1,000,000
    chunk = b"\x00" * 65536
    sel = selectors.DefaultSelector()
    socks, sent = [], {}
    refused = closed = 0
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((addrs[i % len(addrs)], 0))
            s.connect_ex(("127.0.0.1", port))
        except OSError:
            refused += 1
            s.close()
            continue
        socks.append(s)
        sent[s] = 0
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + secs
    last_drip = 0.0
    while time.monotonic() < deadline:
        for key, ev in sel.select(timeout=0.2):
            s = key.fileobj
            if ev & selectors.EVENT_READ:
                try:
                    if not s.recv(65536):
                        raise ConnectionError
                except BlockingIOError:
                    pass
                except OSError:
                    sel.unregister(s)
                    closed += 1
                    continue
            if ev & selectors.EVENT_WRITE:
                try:
                    if kind == "big":
                        data = big if sent[s] == 0 else chunk
                        sent[s] += s.send(data[:max(0, 1000012 - sent[s])] or b"\x00")
                        if sent[s] >= 1000012:
                            sel.modify(s, selectors.EVENT_READ)
                    else:
                        if sent[s] == 0:
                            sent[s] = s.send(b"\x10")
                        sel.modify(s, selectors.EVENT_READ)
                except BlockingIOError:
                    pass
                except OSError:
                    sel.unregister(s)
                    closed += 1
        if kind == "slow" and time.monotonic() - last_drip >= 1.0:
            last_drip = time.monotonic()
            for s in socks:
                try:
                    s.send(b"\x00")
                except OSError:
                    pass
    for s in socks:
        s.close()
    print("flood opened=%d refused=%d closed_by_server=%d" % (len(socks), refused, closed))


if __name__ == "__main__":
    main()
