"""Storage backpressure holds ingest, never subscribers, and closes nobody for keep-alive.

Storage is made slow with the fault seam (GALE_TEST_FAIL_COMMITS=n, then SIGUSR2 makes the
next n commit attempts fail; a batch is tried 4 times, 50/100/200 ms apart, so each of the
next n/4 batches holds the writer ~350 ms and fails). A flood of QoS 0 telemetry fills a
small writer queue (storage.queue_high_rows) in batches of storage.batch_rows, so storage
pushes back for seconds. Meanwhile, with one message in flight per session:
- a subscriber with keepalive 1 s (closed after 1.5 s of silence) keeps receiving QoS 1
  messages (its PUBACKs are read) and PINGRESPs, and stays connected;
- a publisher that also subscribes, its own PUBLISH waiting for storage, still gets its
  deliveries and PINGRESPs (pings and acks go ahead of the waiting PUBLISH), while its
  SUBSCRIBE sent after that PUBLISH keeps its place behind it;
- the flooding publisher (keepalive 1 s), held far longer than 1.5 s, is not closed for
  keep-alive and is served again, in order, once storage catches up."""
import socket
import threading
import time

import mqttraw as mr
from galetest import Check, Gale, metric

t = Check("test_mqtt_backpressure")
DEV = "bp"
TELEMETRY = "devices/bp/telemetry"
EVENTS = "devices/bp/events"  # routed only: publishing there writes nothing to storage
BASE = 1700000000000
FLOOD = 20000
FAILS = 96  # 24 failing batches of 20 rows: ~8 s of a slow writer


def value(i):
    return ('{"ts":%d,"values":{"v":%d}}' % (BASE + i, i)).encode()


def arm(g):
    g.fail_commits(FAILS)


def ping(c, what, timeout=2):
    """PINGREQ, then packets until PINGRESP; a SUBACK met on the way is kept in c.subacks."""
    c.send(mr.PINGREQ_BYTES)
    while True:
        p = c.recv(timeout=timeout)
        if p.type != mr.SUBACK:
            break
        c.subacks.append(p.pid)
    t.eq(p.type, mr.PINGRESP, what)


def delivered(c, i, what):
    p = c.recv_type(mr.PUBLISH, timeout=2)
    t.eq(p.payload, b"e%d" % i, what)
    c.send(mr.ack(mr.PUBACK, p.pid))


def main():
    args = ["--set", "storage.queue_high_rows=400", "--set", "storage.queue_low_rows=20",
            "--set", "storage.batch_rows=20", "--set", "mqtt.max_inflight=1"]
    with Gale(args=args, env={"GALE_TEST_FAIL_COMMITS": str(FAILS)}) as g:
        token = g.create_device(DEV)
        port = g.ports["mqtt"]
        creds = dict(username=DEV, password=token)

        sub = mr.session(port, "bp-sub", keepalive=1, **creds)
        sub.subacks = []
        t.eq(sub.sub(1, [(EVENTS, 1)]), [1], "subscriber subscribed")
        mixed = mr.session(port, "bp-mixed", keepalive=1, **creds)
        t.eq(mixed.sub(1, [(EVENTS, 1)]), [1], "publishing subscriber subscribed")
        mixed.send(mr.publish(TELEMETRY, value(0), qos=1, pid=1))
        t.eq(mixed.recv_type(mr.PUBACK).pid, 1, "its first telemetry is stored")
        router = mr.session(port, "bp-route", keepalive=60, **creds)
        flood = mr.session(port, "bp-flood", keepalive=1, **creds)
        flood.send(mr.publish(TELEMETRY, value(1), qos=1, pid=1))
        t.eq(flood.recv_type(mr.PUBACK).pid, 1, "the flooder's first telemetry is stored")

        arm(g)
        data = b"".join(mr.publish(TELEMETRY, value(10 + i)) for i in range(FLOOD))
        sender = threading.Thread(target=flood.send, args=(data,), daemon=True)
        sender.start()
        g.wait_log(r"pausing ingest reads")

        # while storage pushes back: a QoS 0 telemetry PUBLISH of the publishing subscriber
        # waits; everything else keeps flowing for twice its keep-alive (1.5 s)
        mixed.subacks = []
        mixed.send(mr.publish(TELEMETRY, value(2)) + mr.subscribe(2, [("devices/bp/x", 0)]))
        start = time.monotonic()
        for i in range(12):
            router.send(mr.publish(EVENTS, b"e%d" % i, qos=1, pid=i + 1))
            t.eq(router.recv_type(mr.PUBACK, timeout=2).pid, i + 1, "routed publish acked")
            delivered(sub, i, "subscriber receives message %d" % i)
            delivered(mixed, i, "publishing subscriber receives message %d" % i)
            if i % 2:
                ping(sub, "subscriber gets PINGRESP")
                ping(mixed, "publishing subscriber gets PINGRESP")
            time.sleep(0.25)
        t(time.monotonic() - start > 3.0, "the window lasted 2x the keep-alive timeout")
        t.eq(metric(g, "gale_storage_ingest_paused"), 1.0, "storage still pushes back")
        t.eq(mixed.subacks, [], "a SUBSCRIBE after the waiting PUBLISH waits too (order kept)")
        t.eq(metric(g, "gale_storage_ingest_pauses_total"), 1.0, "in one episode")

        # the flooder's PINGREQ comes after its whole flood; meanwhile the others keep talking
        deadline = time.monotonic() + 60
        pinged = False
        while True:
            if not pinged and not sender.is_alive():
                flood.send(mr.PINGREQ_BYTES)
                pinged = True
            try:
                if pinged:
                    t.eq(flood.recv(timeout=0.3).type, mr.PINGRESP, "the flooder is served")
                    break
                time.sleep(0.3)
            except socket.timeout:
                pass
            assert time.monotonic() < deadline, "the flood is not read within 60 s"
            ping(sub, "subscriber gets PINGRESP until the flood is read")
            ping(mixed, "publishing subscriber gets PINGRESP until the flood is read")
        flood.send(mr.publish(TELEMETRY, value(3), qos=1, pid=2))
        t.eq(flood.recv_type(mr.PUBACK, timeout=30).pid, 2, "and its telemetry is stored")
        ping(sub, "subscriber still connected")
        ping(mixed, "publishing subscriber still connected")
        t.eq(mixed.subacks, [2], "the SUBSCRIBE was answered once storage caught up")
        t.eq([l for l in list(g.log_lines) if "timeout" in l], [], "nobody closed for timeout")
        for c in (sub, mixed, router, flood):
            c.send(mr.DISCONNECT_BYTES)
            c.close()


t.run(main)
