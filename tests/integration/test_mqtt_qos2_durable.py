"""QoS 2 acknowledgement integrity when storage fails or is slow (the storage fault seam:
GALE_TEST_FAIL_COMMITS=n, then SIGUSR2 makes the next n commit attempts fail; the writer
tries a batch 4 times, 50/100/200 ms apart, so n=4 fails a batch and n=3 delays it).
- The first copy of a QoS 2 PUBLISH whose commit failed is not PUBREC'd; its packet id is
  forgotten, so the resend (DUP) is stored, and PUBREC'd only then.
- A resend (DUP, on a new connection or the same one) while the first copy is still being
  committed is PUBREC'd only once that copy is durable, and stored once.
- A first copy whose connection closed before its commit failed is remembered as failed by
  its session, however many other batches fail after it: the resend is stored, and only
  then PUBREC'd."""
import socket

import mqttraw as mr
from galetest import Check, Gale, metric, wait_for

t = Check("test_mqtt_qos2_durable")
TOPIC = "devices/dev-q/telemetry"
BASE = 1700000000000


def arm(g, n):
    g.fail_commits(n)


def barrier(c, pid):
    """A stored QoS 1 PUBLISH and its PUBACK: it is committed with (or after) every write
    before it, so everything written before it is durable (a write nobody awaits, such as
    presence, may otherwise wait storage.batch_delay_ms for company)."""
    c.send(mr.publish(TOPIC, ('{"barrier":%d}' % pid).encode(), qos=1, pid=pid))
    t.eq(c.recv_type(mr.PUBACK).pid, pid, "barrier acknowledged")


def stored(g, key):
    st, js = g.http("GET", "/api/devices/dev-q/telemetry?keys=%s" % key)
    assert st == 200, (st, js)
    return js.get(key, [])


def value(key, i):
    return ('{"ts":%d,"values":{"%s":%d}}' % (BASE + i, key, i)).encode()


def packets_until_closed(c, timeout=10):
    out = []
    try:
        while True:
            out.append(c.recv(timeout))
    except (ConnectionError, OSError):
        return out, True
    except socket.timeout:
        return out, False


def failed_first_copy():
    with Gale(env={"GALE_TEST_FAIL_COMMITS": "4"}) as g:
        token = g.create_device("dev-q")
        port = g.ports["mqtt"]
        c = mr.session(port, "q2-fail", clean=False, username="dev-q", password=token)
        barrier(c, 1)
        arm(g, 4)
        c.send(mr.publish(TOPIC, value("a", 1), qos=2, pid=7))
        got, closed = packets_until_closed(c)
        t(closed, "a QoS 2 PUBLISH whose commit failed closes the connection")
        t.eq([p for p in got if p.type == mr.PUBREC], [], "and gets no PUBREC")
        t.eq(stored(g, "a"), [], "the first copy is not stored")
        c.close()

        c = mr.session(port, "q2-fail", clean=False, username="dev-q", password=token)
        t.eq(c.session_present, 1, "the session is resumed")
        c.send(mr.publish(TOPIC, value("a", 1), qos=2, dup=True, pid=7))
        t.eq(c.recv_type(mr.PUBREC).pid, 7, "the resend is acknowledged")
        t.eq(stored(g, "a"), [{"ts": BASE + 1, "value": 1}],
             "the resend is stored before its PUBREC")
        c.send(mr.ack(mr.PUBREL, 7))
        t.eq(c.recv_type(mr.PUBCOMP).pid, 7, "PUBREL completes the flow")
        c.send(mr.DISCONNECT_BYTES)
        c.close()


def pending_first_copy():
    with Gale(env={"GALE_TEST_FAIL_COMMITS": "3"}) as g:
        token = g.create_device("dev-q")
        port = g.ports["mqtt"]

        # resent on a new connection while the first copy is still being committed
        c = mr.session(port, "q2-slow", clean=False, username="dev-q", password=token)
        barrier(c, 1)
        arm(g, 3)
        c.send(mr.publish(TOPIC, value("b", 2), qos=2, pid=8))
        c.close()  # no DISCONNECT; the gateway reads the PUBLISH, then the end of stream
        c = mr.session(port, "q2-slow", clean=False, username="dev-q", password=token)
        c.send(mr.publish(TOPIC, value("b", 2), qos=2, dup=True, pid=8))
        t.eq(c.recv_type(mr.PUBREC).pid, 8, "the resend on a new connection is acknowledged")
        t.eq(stored(g, "b"), [{"ts": BASE + 2, "value": 2}],
             "only once the first copy is durable, stored once")
        c.send(mr.ack(mr.PUBREL, 8))
        t.eq(c.recv_type(mr.PUBCOMP).pid, 8, "PUBREL completes the flow")

        # resent on the same connection: both PUBRECs wait for the first copy
        barrier(c, 2)
        arm(g, 3)
        c.send(mr.publish(TOPIC, value("c", 3), qos=2, pid=9) +
               mr.publish(TOPIC, value("c", 3), qos=2, dup=True, pid=9))
        t.eq(c.recv_type(mr.PUBREC).pid, 9, "first PUBREC")
        t.eq(stored(g, "c"), [{"ts": BASE + 3, "value": 3}], "sent once the copy is durable")
        t.eq(c.recv_type(mr.PUBREC).pid, 9, "the resend is acknowledged too")
        c.send(mr.ack(mr.PUBREL, 9))
        t.eq(c.recv_type(mr.PUBCOMP).pid, 9, "PUBREL completes the flow")
        t.eq(stored(g, "c"), [{"ts": BASE + 3, "value": 3}], "the resend is not stored again")
        c.send(mr.DISCONNECT_BYTES)
        c.close()


def failed_after_close_in_outage():
    with Gale(env={"GALE_TEST_FAIL_COMMITS": "4"}) as g:
        token = g.create_device("dev-q")
        port = g.ports["mqtt"]
        c = mr.session(port, "q2-outage", clean=False, username="dev-q", password=token)
        barrier(c, 1)
        arm(g, 4)
        c.send(mr.publish(TOPIC, value("e", 5), qos=2, pid=11))
        c.close()  # gone before its batch fails: no connection hears of the failure
        wait_for(lambda: metric(g, "gale_storage_failures_total") >= 1, 10, "the batch failed")
        # the outage goes on: 18 more failed batches, each a QoS 1 publish of another client
        for i in range(18):
            o = mr.session(port, "filler", clean=True, username="dev-q", password=token)
            barrier(o, 2)
            arm(g, 4)
            o.send(mr.publish(TOPIC, value("f", 100 + i), qos=1, pid=3))
            wait_for(lambda: metric(g, "gale_storage_failures_total") >= 2 + i, 10,
                     "failed batch %d" % i)
            o.close()
        t.eq(stored(g, "f"), [], "nothing of the outage stored")
        c = mr.session(port, "q2-outage", clean=False, username="dev-q", password=token)
        t.eq(c.session_present, 1, "the session is resumed after the outage")
        c.send(mr.publish(TOPIC, value("e", 5), qos=2, dup=True, pid=11))
        t.eq(c.recv_type(mr.PUBREC).pid, 11, "the resend is acknowledged")
        t.eq(stored(g, "e"), [{"ts": BASE + 5, "value": 5}],
             "the resend is stored before its PUBREC, though 18 failures came after the first")
        c.send(mr.ack(mr.PUBREL, 11))
        t.eq(c.recv_type(mr.PUBCOMP).pid, 11, "PUBREL completes the flow")
        c.send(mr.DISCONNECT_BYTES)
        c.close()


def main():
    failed_first_copy()
    pending_first_copy()
    failed_after_close_in_outage()


t.run(main)
