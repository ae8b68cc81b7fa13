"""Persistent MQTT sessions (clean session 0) across client disconnects and gateway
restarts (SIGTERM and kill -9): subscriptions, queued QoS 1/2 messages, in-flight QoS 1
resent with DUP and its packet id, QoS 2 after PUBREC resumed with PUBREL only,
retained messages; the per-session queue limit (oldest QoS 0 dropped first, overflow
counted and logged) and a live subscriber that falls too far behind; a subscription is a
storage row of its own, so SUBSCRIBE and UNSUBSCRIBE write only the filters they change."""
import os
import sqlite3
import tempfile
import shutil
import traceback

import mqttraw as mr
from galetest import Check, Gale

t = Check("test_mqtt_persist")
C = {}


def app(port, cid, **kw):
    return mr.session(port, cid, username="backend-1", password=C["backend-1"], **kw)


def dev(port, cid, **kw):
    return mr.session(port, cid, username="dev-1", password=C["dev-1"], **kw)


def drain(c, n):
    """Receives n packets, acknowledging QoS 1 as they come (QoS 2 is left to the caller)."""
    out = []
    for _ in range(n):
        p = c.recv()
        if p.qos == 1:
            c.send(mr.ack(mr.PUBACK, p.pid))
        out.append(p)
    return out


def restart(g, hard=False):
    if hard:
        g.kill9()
    else:
        t.eq(g.stop(), 0, "gateway stopped cleanly")
    g.ports.clear()
    g.log_lines.clear()
    g.start()
    g.wait_log(r"mqtt retained=\d+ sessions=\d+")


def across_restart(data_dir):
    with Gale(data_dir=data_dir) as g:
        C["dev-1"] = g.create_device("dev-1")
        C["backend-1"] = g.create_device("backend-1", role="app")
        port = g.ports["mqtt"]
        h = app(port, "hist", clean=False)
        t.eq(h.sub(1, [("devices/+/telemetry", 1), ("alerts/#", 2), ("plain/#", 0)]),
             [1, 2, 0], "historian subscribed")
        h.send(mr.DISCONNECT_BYTES)
        h.close()
        # in-flight state: a QoS 1 not acknowledged, a QoS 2 released (PUBREC sent) but
        # not completed
        f = app(port, "flight", clean=False)
        f.sub(1, [("inflight/#", 2)])
        a = app(port, "alerter")
        a.send(mr.publish("inflight/q1", b"unacked", qos=1, pid=1))
        a.recv_type(mr.PUBACK)
        a.send(mr.publish("inflight/q2", b"released", qos=2, pid=2))
        a.recv_type(mr.PUBREC)
        a.send(mr.ack(mr.PUBREL, 2))
        a.recv_type(mr.PUBCOMP)
        q1, q2 = f.recv(), f.recv()
        t.eq((q1.payload, q1.qos, q2.payload, q2.qos), (b"unacked", 1, b"released", 2),
             "in-flight messages received")
        f.send(mr.ack(mr.PUBREC, q2.pid))
        t.eq(f.recv().type, mr.PUBREL, "PUBREL before the restart")
        f.abort()
        # while the historian is away
        d = dev(port, "pub")
        base = 1700000000000
        for i in range(3):
            d.send(mr.publish("devices/dev-1/telemetry", b'{"ts":%d,"values":{"k":%d}}' %
                              (base + i, i), qos=1, pid=10 + i))
            d.recv_type(mr.PUBACK)
        d.send(mr.publish("devices/dev-1/cfg", b"retained-v1", qos=1, retain=True, pid=20))
        d.recv_type(mr.PUBACK)
        for i in range(2):
            a.send(mr.publish("alerts/fire", b"alert-%d" % i, qos=2, pid=30 + i))
            a.recv_type(mr.PUBREC)
            a.send(mr.ack(mr.PUBREL, 30 + i))
            a.recv_type(mr.PUBCOMP)
        a.send(mr.publish("plain/x", b"qos0", qos=0))
        a.send(mr.PINGREQ_BYTES)
        a.recv_type(mr.PINGRESP)
        d.close()
        a.close()

        restart(g)
        port = g.ports["mqtt"]
        g.wait_log(r"mqtt retained=\d+ sessions=[1-9]")
        h = app(port, "hist", clean=False)
        t.eq(h.session_present, 1, "session present after the restart")
        got = drain(h, 5)
        t.eq([(p.topic, p.payload, p.qos) for p in got],
             [("devices/dev-1/telemetry", b'{"ts":%d,"values":{"k":%d}}' % (base + i, i), 1)
              for i in range(3)] + [("alerts/fire", b"alert-0", 2), ("alerts/fire", b"alert-1", 2)],
             "queued QoS 1/2 messages survive the restart, in order")
        t.eq([p.dup for p in got], [False] * 5, "never sent before: first attempt, DUP 0")
        for p in got[3:]:
            h.send(mr.ack(mr.PUBREC, p.pid))
            t.eq(h.recv().type, mr.PUBREL, "PUBREL")
            h.send(mr.ack(mr.PUBCOMP, p.pid))
        t(h.nothing(0.3), "QoS 0 messages of an offline session are not kept across a restart")
        # the subscriptions survived too
        d = dev(port, "pub2")
        d.send(mr.publish("devices/dev-1/telemetry", b'{"z":1}', qos=1, pid=1))
        d.recv_type(mr.PUBACK)
        p = h.recv()
        t.eq((p.topic, p.qos), ("devices/dev-1/telemetry", 1), "subscriptions restored")
        h.send(mr.ack(mr.PUBACK, p.pid))
        # in flight before the restart: QoS 1 again with DUP and its packet id; the
        # released QoS 2 continues with PUBREL only (the client already has it)
        f = app(port, "flight", clean=False)
        r1, r2 = f.recv(), f.recv()
        t.eq((r1.type, r1.payload, r1.pid, r1.dup), (mr.PUBLISH, b"unacked", q1.pid, True),
             "unacknowledged QoS 1 resent after the restart with DUP and its packet id")
        t.eq((r2.type, r2.pid), (mr.PUBREL, q2.pid), "released QoS 2: only PUBREL resent")
        f.send(mr.ack(mr.PUBACK, r1.pid))
        f.send(mr.ack(mr.PUBCOMP, r2.pid))
        t(f.nothing(0.3), "nothing more for the in-flight session")
        f.send(mr.DISCONNECT_BYTES)
        f.close()
        # retained messages survive the restart
        n = app(port, "ret-reader")
        n.send(mr.subscribe(1, [("devices/dev-1/cfg", 1)]))
        n.recv_type(mr.SUBACK)
        p = n.recv()
        t.eq((p.payload, p.retain), (b"retained-v1", True), "retained message survives")
        n.close()

        # kill -9 right after the PUBACK: the queued message is already durable
        h.send(mr.DISCONNECT_BYTES)
        h.close()
        a = app(port, "alerter")
        a.send(mr.publish("alerts/crash", b"acked-then-crash", qos=1, pid=7))
        a.recv_type(mr.PUBACK)
        restart(g, hard=True)
        h = app(g.ports["mqtt"], "hist", clean=False)
        p = h.recv()
        t.eq((p.topic, p.payload), ("alerts/crash", b"acked-then-crash"),
             "a message acknowledged before kill -9 is delivered after the restart")
        h.send(mr.ack(mr.PUBACK, p.pid))
        # a clean session discards the stored one, for good
        h.close()
        h = app(g.ports["mqtt"], "hist", clean=True)
        h.close()
        restart(g)
        h = app(g.ports["mqtt"], "hist", clean=False)
        t.eq(h.session_present, 0, "a session discarded by clean session 1 stays gone")
        h.close()


# Triggers that log every write to the session tables (added while the gateway is stopped;
# they fire in its writer connection like any other).
WRITE_LOG_SQL = """
CREATE TABLE IF NOT EXISTS test_writes(n INTEGER PRIMARY KEY, tbl TEXT, op TEXT, what TEXT);
CREATE TRIGGER IF NOT EXISTS test_subs_ins AFTER INSERT ON session_subs
  BEGIN INSERT INTO test_writes(tbl, op, what) VALUES ('subs', 'insert', NEW.filter); END;
CREATE TRIGGER IF NOT EXISTS test_subs_upd AFTER UPDATE ON session_subs
  BEGIN INSERT INTO test_writes(tbl, op, what) VALUES ('subs', 'update', NEW.filter); END;
CREATE TRIGGER IF NOT EXISTS test_subs_del AFTER DELETE ON session_subs
  BEGIN INSERT INTO test_writes(tbl, op, what) VALUES ('subs', 'delete', OLD.filter); END;
CREATE TRIGGER IF NOT EXISTS test_sessions_ins AFTER INSERT ON sessions
  BEGIN INSERT INTO test_writes(tbl, op, what) VALUES ('sessions', 'insert', NEW.client_id); END;
CREATE TRIGGER IF NOT EXISTS test_sessions_upd AFTER UPDATE ON sessions
  BEGIN INSERT INTO test_writes(tbl, op, what) VALUES ('sessions', 'update', NEW.client_id); END;
"""


def db_query(data_dir, sql, script=False):
    db = sqlite3.connect(os.path.join(data_dir, "gale.db"))
    try:
        if script:
            db.executescript(sql)
            return None
        return db.execute(sql).fetchall()
    finally:
        db.close()


def subs_per_filter(data_dir):
    """A persistent session's SUBSCRIBE writes one row per new or changed filter and its
    UNSUBSCRIBE deletes one row per removed filter; the identity record is not rewritten.
    The subscriptions as left by both survive a restart."""
    with Gale(data_dir=data_dir) as g:
        C["backend-1"] = g.create_device("backend-1", role="app")
        h = app(g.ports["mqtt"], "rows", clean=False)
        t.eq(h.sub(1, [("rows/a", 1)]), [1], "first subscription")
        h.send(mr.DISCONNECT_BYTES)
        h.close()
        t.eq(g.stop(), 0, "gateway stopped cleanly")
        db_query(data_dir, WRITE_LOG_SQL, script=True)
        g.ports.clear()
        g.log_lines.clear()
        g.start()
        g.wait_log(r"mqtt retained=\d+ sessions=[1-9]")
        h = app(g.ports["mqtt"], "rows", clean=False)
        t.eq(h.session_present, 1, "session present after the restart")
        t.eq(h.sub(2, [("rows/a", 1)]), [1], "the same subscription again")
        t.eq(h.sub(3, [("rows/b", 1)]), [1], "a second filter")
        t.eq(h.sub(4, [("rows/a", 1), ("rows/b", 1), ("rows/c", 0), ("rows/b", 2)]),
             [1, 1, 0, 2], "two unchanged, one new, one new QoS")
        h.send(mr.unsubscribe(5, ["rows/a", "rows/never"]))
        t.eq(h.recv_type(mr.UNSUBACK).pid, 5, "UNSUBACK")
        h.send(mr.DISCONNECT_BYTES)
        h.close()
        t.eq(g.stop(), 0, "gateway stopped cleanly (writes committed)")
        writes = db_query(data_dir, "SELECT tbl, op, what FROM test_writes ORDER BY n")
        t.eq(writes, [("subs", "insert", "rows/b"), ("subs", "insert", "rows/c"),
                      ("subs", "update", "rows/b"), ("subs", "delete", "rows/a")],
             "one row per new or changed filter, one delete per removed filter, "
             "no identity rewrite")
        t.eq(db_query(data_dir, "SELECT filter, qos FROM session_subs WHERE client_id = 'rows'"
                                " ORDER BY filter"),
             [("rows/b", 2), ("rows/c", 0)], "the session's subscription rows")
        db_query(data_dir, "DROP TABLE test_writes; DROP TRIGGER test_subs_ins;"
                           " DROP TRIGGER test_subs_upd; DROP TRIGGER test_subs_del;"
                           " DROP TRIGGER test_sessions_ins; DROP TRIGGER test_sessions_upd;",
                 script=True)
        g.ports.clear()
        g.log_lines.clear()
        g.start()
        g.wait_log(r"mqtt retained=\d+ sessions=[1-9]")
        port = g.ports["mqtt"]
        h = app(port, "rows", clean=False)
        t.eq(h.session_present, 1, "session present after the second restart")
        a = app(port, "rows-pub")
        for i, topic in enumerate(("rows/a", "rows/b", "rows/c")):
            a.send(mr.publish(topic, topic.encode(), qos=2, pid=i + 1))
            a.recv_type(mr.PUBREC)
            a.send(mr.ack(mr.PUBREL, i + 1))
            a.recv_type(mr.PUBCOMP)
        got, released = [], 0
        while len(got) < 2 or released < 1:  # the QoS 0 one may overtake the QoS 2 flow
            p = h.recv()
            if p.type == mr.PUBREL:
                h.send(mr.ack(mr.PUBCOMP, p.pid))
                released += 1
                continue
            if p.qos == 2:
                h.send(mr.ack(mr.PUBREC, p.pid))
            got.append((p.topic, p.qos))
        t.eq(got, [("rows/b", 2), ("rows/c", 0)],
             "after the restart: the unsubscribed filter is gone, the others kept their QoS")
        t(h.nothing(0.3), "nothing for the unsubscribed filter")
        a.close()
        h.close()


def queue_limit():
    with Gale(args=["--set", "mqtt.max_queued=5", "--set", "mqtt.max_inflight=2"]) as g:
        C["dev-1"] = g.create_device("dev-1")
        C["backend-1"] = g.create_device("backend-1", role="app")
        port = g.ports["mqtt"]
        s = app(port, "slowpoke", clean=False)
        s.sub(1, [("q/#", 1)])
        s.send(mr.DISCONNECT_BYTES)
        s.close()
        a = app(port, "filler")
        for i in range(3):
            a.send(mr.publish("q/x", b"zero-%d" % i, qos=0))
        for i in range(6):
            a.send(mr.publish("q/x", b"one-%d" % i, qos=1, pid=i + 1))
            a.recv_type(mr.PUBACK)
        s = app(port, "slowpoke", clean=False)
        got = drain(s, 5)
        t.eq([p.payload for p in got], [b"one-%d" % i for i in range(5)],
             "max_queued=5: the QoS 0 messages went first, then the newest QoS 1 overflowed")
        t(s.nothing(0.3), "nothing beyond the limit")
        g.wait_log(r'mqtt client="slowpoke" dropping messages reason="session queue full" '
                   r'queued=5 limit=5')
        st, body, _ = g.http("GET", "/metrics", raw=True)
        t(b"gale_mqtt_dropped_total 4" in body, "4 drops counted in /metrics")
        s.close()
        # a live subscriber that lets QoS 1 pile up past in-flight + queue is cut off
        live = app(port, "live-slow")
        live.sub(1, [("q/#", 1)])
        for i in range(8):
            a.send(mr.publish("q/y", b"m%d" % i, qos=1, pid=100 + i))
            a.recv_type(mr.PUBACK)
        t(live.closed(), "subscriber too slow is disconnected")
        g.wait_log(r'close reason="subscriber too slow: session queue full"')
        a.send(mr.PINGREQ_BYTES)
        t.eq(a.recv().type, mr.PINGRESP, "publisher unaffected")
        a.close()
        # cut off in the middle of its own PUBLISH: a client subscribed to what it publishes
        # and never acknowledging, with a will that lands on another such client (whose will
        # lands back): closes happen while messages are being routed
        w = app(port, "loop-watch")
        w.sub(1, [("loop/will/#", 0)])
        others = []
        for name in ("loop-a", "loop-b"):
            o = app(port, name, will=("loop/x", name.encode(), 1, False))
            o.sub(1, [("loop/#", 1)])
            others.append(o)
        selfish = app(port, "loop-self", will=("loop/will/self", b"gone", 0, False))
        selfish.sub(1, [("loop/#", 1)])
        for i in range(12):
            try:
                selfish.send(mr.publish("loop/x", b"m%d" % i, qos=1, pid=i + 1))
            except (BrokenPipeError, ConnectionResetError):
                break  # cut off already: what the next check asserts
        t(selfish.closed(), "a publisher too slow for its own subscription is cut off")
        for o in others:
            t(o.closed(), "slow subscribers cut off by the same messages and by wills")
        p = w.recv()
        t.eq((p.topic, p.payload), ("loop/will/self", b"gone"), "its will is published")
        fresh = app(port, "after-loop")
        fresh.send(mr.PINGREQ_BYTES)
        t.eq(fresh.recv().type, mr.PINGRESP, "server serves after the cascade")
        fresh.close()
        w.close()


def acked_telemetry_survives_kill9():
    """QoS 1/2 telemetry is acknowledged only once its batch is committed: kill -9 right
    after the last PUBACK / PUBREC loses nothing."""
    d = tempfile.mkdtemp(prefix="gale-mqtt-durable-")
    try:
        # 2500 QoS 2 ids are left without PUBREL: past the default mqtt.max_qos2_pending
        g = Gale(data_dir=d, args=["--set", "mqtt.max_qos2_pending=65535"]).start()
        try:
            C["dev-1"] = g.create_device("dev-1")
            c = dev(g.ports["mqtt"], "durable")
            base, n = 1700000000000, 5000
            data = b"".join(mr.publish("devices/dev-1/telemetry", b'{"ts":%d,"values":{"d":%d}}'
                                       % (base + i, i), qos=1 if i % 2 else 2,
                                       pid=i % 60000 + 1) for i in range(n))
            c.send(data)
            acks = [c.recv() for _ in range(n)]
            t.eq(sum(1 for p in acks if p.type in (mr.PUBACK, mr.PUBREC)), n,
                 "every QoS 1/2 telemetry message acknowledged")
            g.kill9()
        finally:
            if g.alive():
                g.kill9()
        with Gale(data_dir=d) as g2:
            st, js = g2.http("GET", "/api/devices/dev-1/telemetry?keys=d&limit=100000")
            t.eq(len(js.get("d", [])), n, "all acknowledged MQTT telemetry survives kill -9")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    try:
        acked_telemetry_survives_kill9()
    except Exception:
        traceback.print_exc()
        t(False, "exception in acked_telemetry_survives_kill9")
    d = tempfile.mkdtemp(prefix="gale-mqtt-persist-")
    try:
        across_restart(d)
    except Exception:
        traceback.print_exc()
        t(False, "exception in across_restart")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    d = tempfile.mkdtemp(prefix="gale-mqtt-subs-")
    try:
        subs_per_filter(d)
    except Exception:
        traceback.print_exc()
        t(False, "exception in subs_per_filter")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    try:
        queue_limit()
    except Exception:
        traceback.print_exc()
        t(False, "exception in queue_limit")


main()
t.done()
