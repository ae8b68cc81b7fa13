"""Failover between the two `addresses` of one upstream: two Mosquitto brokers (each with
the central store's persistent subscriber, as a site would subscribe to both halves of
a pair), Gale bridged to [first, second]. While two devices publish QoS 1, the first
broker is killed (SIGKILL): the bridge notices (keepalive 2 s), connects to the second,
GET /api/bridges names it, and traffic goes on through it. Every message a device saw
acknowledged arrives at one of the two subscribers, first arrivals in order per device
(duplicates are counted and reported: the QoS 1 resend of what was in flight)."""
import threading
import time

from galetest import Check, Gale, wait_for
from upstreams import Collector, MosquittoUpstream, available, check_delivery, publish_device

t = Check("test_bridge_failover")
DEVICES = ("fo-1", "fo-2")
RATE, SECONDS = 40, 12


def bridge(g):
    st, js = g.http("GET", "/api/bridges")
    assert st == 200, (st, js)
    return js[0]


def main():
    ok, why = available("mosquitto")
    if not ok:
        print("test_bridge_failover: 0 passed, 0 failed, 1 skipped (%s)" % why)
        return
    with MosquittoUpstream("first") as m1, MosquittoUpstream("second") as m2:
        s1, s2 = Collector(m1), Collector(m2)
        conf = ('[{"name":"central","addresses":["%s","%s"],"keepalive_s":2}]'
                % (m1.uri, m2.uri))
        with Gale(args=["--set", "bridge.upstreams=" + conf]) as g:
            tokens = {d: g.create_device(d) for d in DEVICES}
            b = wait_for(lambda: bridge(g)["connected"] and bridge(g), 20, "bridge connected")
            t.eq(b["address"], m1.uri, "connected to the first address")
            acked = {}

            def device(d):
                acked[d] = publish_device(g.ports["mqtt"], d, tokens[d], RATE, SECONDS)
            threads = [threading.Thread(target=device, args=(d,)) for d in DEVICES]
            for th in threads:
                th.start()
            time.sleep(3)
            before_kill = len(s1.arrivals())
            m1.kill()
            t0 = time.monotonic()
            wait_for(lambda: s2.arrivals(), 30, "traffic through the second broker")
            print("failover: traffic through the second broker %.1f s after the kill"
                  % (time.monotonic() - t0))
            b = bridge(g)
            t(b["connected"] and b["reconnects_total"] >= 1, "reconnected, counted: %r" % b)
            t.eq(b["address"], m2.uri, "GET /api/bridges names the second address")
            t(any("bridge connected upstream=central address=" + m2.uri in l
                  for l in list(g.log_lines)), "the log names the second address")
            for th in threads:
                th.join(60)
            wait_for(lambda: bridge(g)["backlog"] == 0, 30, "backlog drained")
            b = bridge(g)
            want = sum(len(v) for v in acked.values())
            wait_for(lambda: not check_delivery(acked, s1.arrivals() + s2.arrivals())[0],
                     30, "every acked message upstream", interval=0.2)
            a1, a2 = s1.arrivals(), s2.arrivals()
            missing, disorder, dups = check_delivery(acked, a1 + a2)
            t.eq(missing, [], "acked messages missing upstream")
            # order per device holds in each subscriber's stream
            for name, arr in (("first", a1), ("second", a2)):
                t.eq(check_delivery({}, arr)[1], [], "order per device at the %s" % name)
            t(before_kill > 0, "traffic went through the first before the kill")
            t(len(a2) > RATE, "traffic continued through the second: %d" % len(a2))
            print("acked %d, arrived first %d second %d, duplicates %d, resent_total %d"
                  % (want, len(a1), len(a2), dups, b["resent_total"]))
        s1.close()
        s2.close()


t.run(main)
