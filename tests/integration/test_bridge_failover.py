"""Failover between the two `addresses` of one upstream, Gale bridged to [first, second],
against two kinds of pair: two Mosquitto brokers (the central store subscribes to both,
persistent sessions), and two RabbitMQ nodes clustered with rabbitmqctl join_cluster (one
subscriber on the second node). While two devices publish QoS 1, the first broker is
killed (SIGKILL): the bridge notices, connects to the second, GET /api/bridges and the
log name it, and traffic goes on through it. Every message a device saw acknowledged
arrives upstream, but what the first broker itself acknowledged and lost as it was killed
(a relay in front of it reads its PUBACKs); first arrivals in order per device (after the
failover one run of paho's queued copies may come ahead); duplicates, the QoS 1 resend
of what was in flight, are counted and reported.

Then a failover while paho's own queue holds PUBLISHes (two Mosquitto brokers): the first
is stopped (SIGSTOP) while the window fills with messages larger than the socket buffers,
so paho queues what it cannot write; the first is killed, the bridge connects to the
second without session, and paho sends what it had queued there and calls back for it.
The gateway lives through it and every acknowledged message arrives.

When the gateway is gone (a crash resets the HTTP connection), the failure names its
exit status or signal and shows the end of its log."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error

from galetest import Check, Gale, wait_for
from upstreams import (Collector, MosquittoUpstream, RabbitUpstream, available, check_delivery,
                       publish_device)

t = Check("test_bridge_failover")
DEVICES = ("fo-1", "fo-2")
RATE, SECONDS = 40, 12
PAD = 64 * 1024  # payload bytes of the stalled scenario's messages
WINDOW = 100     # the bridge's default max_inflight


def gale_state(g):
    """'running', 'exited with N' or 'killed by SIGNAME' (waits a moment for a dying one)."""
    try:
        g.proc.wait(2)
    except subprocess.TimeoutExpired:
        return "running"
    rc = g.proc.returncode
    if rc < 0:
        try:
            return "killed by %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "exited with %d" % rc


def gone(g, what, err):
    """The AssertionError for a request that failed: the gateway's state and log tail."""
    state = gale_state(g)
    tail = "\n".join(g.log().splitlines()[-25:]) if state != "running" else ""
    return AssertionError("%s: %r; gale %s%s" % (what, err, state,
                                                 "; its log ends:\n" + tail if tail else ""))


class Watched(Gale):
    """A Gale whose state (running, exit status, signal) is printed when the test fails
    inside its with-block; Gale prints the log then."""

    def __exit__(self, *exc):
        if exc[0] is not None:
            sys.stderr.write("gale: %s\n" % gale_state(self))
        return super().__exit__(*exc)


class AckTap:
    """A TCP relay in front of an upstream that reads the MQTT it carries, to know which
    telemetry messages (device, k) the upstream acknowledged (PUBACK). A killed upstream
    can lose what it acknowledged and had not handed to its subscriber yet (a subscriber
    slowed down by a busy machine): that loss is the upstream's, not the gateway's."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.uri = "tcp://127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.acked_set = set()
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def acked(self):
        with self.lock:
            return set(self.acked_set)

    def _accept(self):
        while True:
            try:
                down, _ = self.lsock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
                up.settimeout(None)
            except OSError:  # the upstream is gone: so is this connection
                down.close()
                continue
            pubs = {}  # packet id -> (device, k) of this connection's last PUBLISH with it
            with self.lock:
                self.socks += [down, up]
            for src, dst, upward in ((down, up, True), (up, down, False)):
                threading.Thread(target=self._pump, args=(src, dst, pubs, upward),
                                 daemon=True).start()

    def _pump(self, src, dst, pubs, upward):
        buf = b""
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buf = self._packets(buf + data, pubs, upward)  # before it goes on: see acked
            try:
                dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _packets(self, buf, pubs, upward):
        """Reads the complete packets at the head of buf; returns the rest."""
        while len(buf) >= 2:
            n, i = 0, 1
            while True:  # the remaining length: 1..4 bytes, 7 bits each
                if i >= len(buf):
                    return buf
                n += (buf[i] & 0x7f) << (7 * (i - 1))
                i += 1
                if not buf[i - 1] & 0x80 or i > 4:
                    break
            if len(buf) < i + n:
                return buf
            head, body, buf = buf[0], buf[i:i + n], buf[i + n:]
            kind, qos = head >> 4, (head >> 1) & 3
            with self.lock:
                if upward and kind == 3 and qos and len(body) >= 2:  # PUBLISH up
                    tl = int.from_bytes(body[:2], "big")
                    topic = body[2:2 + tl].decode(errors="replace").split("/")
                    pid = int.from_bytes(body[2 + tl:4 + tl], "big")
                    try:
                        pubs[pid] = (topic[-2], json.loads(body[4 + tl:])["n"])
                    except (ValueError, KeyError, TypeError, IndexError):
                        pubs.pop(pid, None)
                elif not upward and kind == 4 and len(body) >= 2:  # PUBACK down
                    pid = int.from_bytes(body[:2], "big")
                    if pid in pubs:
                        self.acked_set.add(pubs[pid])
        return buf

    def close(self):
        self.lsock.close()
        with self.lock:
            for sock in self.socks:
                sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def bridge(g):
    try:
        st, js = g.http("GET", "/api/bridges")
    except (OSError, urllib.error.URLError) as e:  # reset, refused, timed out
        raise gone(g, "GET /api/bridges", e) from None
    assert st == 200, (st, js)
    return js[0]


def firsts(arrivals, device):
    """device's ks in order of first arrival."""
    seen, out = set(), []
    for d, k in arrivals:
        if d == device and k not in seen:
            seen.add(k)
            out.append(k)
    return out


def out_of_order_run(ks):
    """(start, length) of the shortest run of ks whose removal leaves the rest ascending;
    (0, 0) when ks ascend."""
    n = len(ks)
    head = [True] * (n + 1)  # head[i]: ks[:i] ascends
    for i in range(2, n + 1):
        head[i] = head[i - 1] and ks[i - 2] < ks[i - 1]
    tail = [True] * (n + 1)  # tail[j]: ks[j:] ascends
    for j in range(n - 2, -1, -1):
        tail[j] = tail[j + 1] and ks[j] < ks[j + 1]
    best = (0, n)
    for i in range(n + 1):
        if not head[i]:
            break
        for j in range(i, n + 1):
            if tail[j] and (i == 0 or j == n or ks[i - 1] < ks[j]):
                if j - i < best[1]:
                    best = (i, j - i)
                break
    return best if best[1] else (0, 0)


def failover(label, first, second, collectors, extra=None, strict=()):
    """Gale bridged to [first, second] (first through an AckTap); devices publish; first
    is killed. collectors see what reached the upstream: together they must hold every
    acked message but what the first acknowledged and lost as it was killed; those in
    strict see only the first upstream's traffic."""
    tap = AckTap(first.port)
    conf = dict({"name": "central", "addresses": [tap.uri, second.uri], "keepalive_s": 2},
                **(extra or {}))
    with tap, Watched(args=["--set", "bridge.upstreams=" + json.dumps([conf])]) as g:
        tokens = {d: g.create_device(d) for d in DEVICES}
        b = wait_for(lambda: bridge(g)["connected"] and bridge(g), 20, "bridge connected")
        t.eq(b["address"], tap.uri, "%s: connected to the first address" % label)
        acked = {}

        def device(d):
            acked[d] = publish_device(g.ports["mqtt"], d, tokens[d], RATE, SECONDS)
        threads = [threading.Thread(target=device, args=(d,)) for d in DEVICES]
        for th in threads:
            th.start()
        time.sleep(3)
        arrived = lambda: sum(len(c.arrivals()) for c in collectors)  # noqa: E731
        before_kill = arrived()
        first.kill()
        t0 = time.monotonic()
        b = wait_for(lambda: (lambda b: b["connected"] and b["reconnects_total"] >= 1 and b)(
            bridge(g)), 30, "%s: bridge reconnected" % label)
        at_failover = arrived()
        print("%s: reconnected %.1f s after the kill" % (label, time.monotonic() - t0))
        t.eq(b["address"], second.uri, "%s: GET /api/bridges names the second address" % label)
        # the log is written by a thread of its own: the line may follow the state a little
        try:
            g.wait_log(re.escape("bridge connected upstream=central address=" + second.uri))
            named = True
        except AssertionError:
            named = False
        t(named, "%s: the log names the second address" % label)
        for th in threads:
            th.join(60)
        wait_for(lambda: bridge(g)["backlog"] == 0, 30, "backlog drained")
        b = bridge(g)
        want = sum(len(v) for v in acked.values())
        union = lambda: [x for c in collectors for x in c.arrivals()]  # noqa: E731
        gone_with_first = lambda: [m for m in check_delivery(acked, union())[0]  # noqa: E731
                                   if m in tap.acked()]
        try:
            wait_for(lambda: len(check_delivery(acked, union())[0]) == len(gone_with_first()),
                     30, "every acked message upstream", interval=0.2)
        except AssertionError:
            pass  # the check below says which
        lost = gone_with_first()
        missing = [m for m in check_delivery(acked, union())[0] if m not in lost]
        dups = check_delivery(acked, union())[2]
        if lost:
            print("%s: %d acknowledged by the first upstream and lost as it was killed: %r"
                  % (label, len(lost), lost[:20]))
        t(not missing, "%s: %d acked messages missing upstream: %r%s" % (
            label, len(missing), missing[:20], "".join(
                "\n  %s near %d: collector %d got %r" % (d, k, i, [
                    x for x in firsts(c.arrivals(), d) if abs(x - k) <= 5])
                for d, k in missing[:3] for i, c in enumerate(collectors))))
        # order per device in each subscriber's stream; where the second upstream's traffic
        # shows, paho's queued copies may come ahead of older messages after the failover
        # (README, Order and duplicates): one run of at most the window
        for i, c in enumerate(collectors):
            for d in DEVICES:
                ks = firsts(c.arrivals(), d)
                at, n = out_of_order_run(ks)
                t(n <= (0 if c in strict else WINDOW),
                  "%s: order of %s at collector %d: %d first arrivals out of order from #%d: %r"
                  % (label, d, i, n, at, ks[max(0, at - 3):at + n + 3]))
                if n:
                    print("%s: %s at collector %d: %d first arrivals ahead of older ones "
                          "(paho's queued copies): %r" % (label, d, i, n, ks[at:at + n]))
        t(before_kill > 0, "%s: traffic went through the first before the kill" % label)
        t(arrived() - at_failover > RATE, "%s: traffic continued through the second: %d"
          % (label, arrived() - at_failover))
        print("%s: acked %d, arrived %d, duplicates %d, resent_total %d, acknowledged by the "
              "first %d" % (label, want, arrived(), dups, b["resent_total"], len(tap.acked())))


def socket_buffers():
    """Most bytes one loopback TCP connection to a receiver that never reads can hold in
    the kernel: the sender's send buffer at its autotuning maximum and the receiver's
    receive buffer at its default (it grows only as the receiver reads)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            wmem = int(f.read().split()[2])
        with open("/proc/sys/net/ipv4/tcp_rmem") as f:
            rmem = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 16 << 20
    return wmem + rmem


def kernel_bytes(port):
    """Bytes queued in the kernel on the IPv4 TCP connections from or to port (both ends:
    send and receive queues), from /proc/net/tcp."""
    total = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            ports = {int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)}
            if port in ports:
                tx, rx = fields[4].split(":")
                total += int(tx, 16) + int(rx, 16)
    return total


def stalled_failover():
    """The first upstream stops reading (SIGSTOP) while the bridge fills a window of twice
    the socket buffers: paho writes what fits and queues the rest. The first is killed;
    the bridge connects to the second, which has no session for it: paho fails what it
    had in flight, sends what it had queued and calls back for each. The gateway must go
    on (a send context freed at that connect while paho still held it was a
    use-after-free on paho's thread: the gateway died right after "bridge connected"),
    and every message the API acknowledged arrives."""
    window = socket_buffers() * 2 // PAD + 16
    with MosquittoUpstream("stall-first") as m1, MosquittoUpstream("stall-second") as m2:
        central = Collector(m2, client_id="gale-test-central-stall")
        conf = {"name": "central", "addresses": [m1.uri, m2.uri], "keepalive_s": 60,
                "max_inflight": window}
        with Watched(args=["--set", "bridge.upstreams=" + json.dumps([conf])]) as g:
            wait_for(lambda: bridge(g)["connected"], 20, "stalled: bridge connected")
            os.kill(m1.proc.pid, signal.SIGSTOP)
            acked, refused = {"stall-1": []}, []
            pad = "x" * PAD
            for k in range(window + 20):
                st, js = g.http("POST", "/api/publish",
                                {"topic": "devices/stall-1/telemetry", "qos": 1,
                                 "payload": '{"n":%d,"pad":"%s"}' % (k, pad)})
                (acked["stall-1"] if st == 200 else refused).append(k)
            t.eq(refused, [], "stalled: POST /api/publish refused")
            wait_for(lambda: bridge(g)["inflight"] >= window, 30, "stalled: the window full")
            # what the bridge handed to paho and is not in the kernel is still in paho:
            # more than one message (one may be half written) means a queued PUBLISH
            held = lambda: window * PAD - kernel_bytes(m1.port)  # noqa: E731
            try:
                wait_for(lambda: held() >= 2 * PAD, 10, "paho holding messages")
            except AssertionError:
                pass
            t(held() >= 2 * PAD, "stalled: paho holds messages it could not write: %d bytes "
              "of %d (window %d, kernel %d)" % (held(), window * PAD, window,
                                                kernel_bytes(m1.port)))
            print("stalled: window %d (%d MB), paho holds %d MB" % (window, window * PAD >> 20,
                                                                 held() >> 20))
            m1.kill()  # SIGKILL ends a stopped process too
            b = wait_for(lambda: (lambda b: b["connected"] and b["reconnects_total"] >= 1 and b)(
                bridge(g)), 30, "stalled: bridge reconnected")
            t.eq(b["address"], m2.uri, "stalled: connected to the second address")
            wait_for(lambda: bridge(g)["backlog"] == 0, 60, "stalled: backlog drained")
            wait_for(lambda: not check_delivery(acked, central.arrivals())[0], 30,
                     "stalled: every acked message upstream", interval=0.2)
            missing, disorder, dups = check_delivery(acked, central.arrivals())
            t.eq(missing, [], "stalled: acked messages missing upstream")
            at, n = out_of_order_run(firsts(central.arrivals(), "stall-1"))
            t(n <= window, "stalled: out of order: %d first arrivals from #%d" % (n, at))
            t(g.alive(), "stalled: gale alive after the failover (%s)" % gale_state(g))
            b = bridge(g)
            print("stalled: acked %d, duplicates %d, %d first arrivals ahead of older ones "
                  "(paho's queued copies), acked_total %d, resent_total %d"
                  % (len(acked["stall-1"]), dups, n, b["acked_total"], b["resent_total"]))
        central.close()


def main():
    ok, why = available("mosquitto")
    # CI installs both brokers (.ci/setup.sh test-deps): a missing one fails there
    t(ok or not os.environ.get("CI"), "mosquitto available under CI: %s" % why)
    if not ok:
        print("mosquitto: skipped (%s)" % why)
    else:
        # two independent brokers: the central store subscribes to both
        with MosquittoUpstream("first") as m1, MosquittoUpstream("second") as m2:
            s1, s2 = Collector(m1), Collector(m2)
            failover("mosquitto", m1, m2, [s1, s2], strict=[s1])
            t(len(s2.arrivals()) > RATE, "mosquitto: the second broker got the traffic")
            s1.close()
            s2.close()
        stalled_failover()
    ran = ok
    ok, why = available("rabbitmq")
    t(ok or not os.environ.get("CI"), "rabbitmq available under CI: %s" % why)
    if not ok:
        print("rabbitmq: skipped (%s)" % why)
        if not ran and not os.environ.get("CI"):
            sys.exit(77)
        return
    # two RabbitMQ nodes clustered (rabbitmqctl join_cluster): one subscriber on the
    # second node sees what either node accepted. The bridge subscribes to nothing here:
    # a persistent session's queue lives on the node that made it and is gone with it.
    r1 = RabbitUpstream("rabbit-1")
    r2 = RabbitUpstream("rabbit-2", cluster_with=r1)
    try:
        t0 = time.monotonic()
        r1.start()
        r2.start()
        r2.join(r1)
        print("rabbitmq: two-node cluster up in %.1f s" % (time.monotonic() - t0))
        central = Collector(r2)
        failover("rabbitmq", r1, r2, [central], {"subscribe": []})
        central.close()
    finally:
        r2.close()
        r1.close()


t.run(main)
