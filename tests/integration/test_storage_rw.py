"""Read your writes, before and after chunking; late points in order; no resurrection
after a delete; memory bounded while ingesting fast.

- storage.hot_max_points=1000: every acked write is in the very next REST query, for a
  recent point and, once thousands more have been written (so the older points are in
  chunks), for an overwrite of an old ts: raw, and in max/min/first/last/count/sum
  aggregates over a range that holds it.
- Late points (ts days in the past, sent shuffled) read back in ts order, both orders.
- A deleted device's telemetry stays gone after a kill -9 and a restart (nothing comes
  back from the log), and a new device with the same id starts empty.
- storage.hot_max_points=20000: ~300k points over line protocol as fast as the acks
  allow keep the RSS below the start's + 60 MB, /api/health keeps answering, and every
  point is stored."""
import json
import random
import shutil
import threading
import time

from galetest import Check, Gale

t = Check("test_storage_rw")

BASE = 1700000000000
DAY_MS = 86400000
ONE_BUCKET_MS = 10 ** 13  # wider than any ts here: one bucket from epoch 0
HOT_SMALL = ["--set", "storage.hot_max_points=1000"]
RSS_HEADROOM_KB = 60 * 1024  # generous: the points not yet chunked are bounded at 20000


def send(c, obj):
    """One line in one segment (send_line's two writes let Nagle hold the newline back)."""
    c.send(json.dumps(obj) + "\n")


def write(c, seq, points):
    """points: [(ts, {key: value})]; returns once acked."""
    send(c, {"seq": seq, "batch": [{"ts": ts, "values": v} for ts, v in points]})
    reply = c.read_line(timeout=30)
    assert reply == {"ack": seq}, reply
    return seq + 1


def query(g, dev, q):
    st, js = g.http("GET", "/api/devices/%s/telemetry?%s" % (dev, q), timeout=30)
    assert st == 200, (st, js)
    return js


def series(g, dev, key, lo=0, hi=BASE * 2, order="asc"):
    """Every point of key in [lo, hi], following the cursor."""
    pts, q = [], "to=%d&limit=100000&order=%s" % (hi, order)
    js = query(g, dev, "keys=%s&from=%d&%s" % (key, lo, q))
    for _ in range(100):
        pts.extend((p["ts"], p["value"]) for p in js.get(key, []))
        if "_next" not in js:
            return pts
        js = query(g, dev, "cursor=%s&from=%d&%s" % (js["_next"], lo, q))
    raise AssertionError("cursor did not end")


def agg(g, dev, key, fn, lo, hi):
    js = query(g, dev, "keys=%s&from=%d&to=%d&agg=%s&interval=%d" %
               (key, lo, hi, fn, ONE_BUCKET_MS))
    pts = js.get(key, [])
    assert len(pts) == 1, (fn, lo, hi, js)
    return pts[0]["value"]


def read_your_writes():
    with Gale(args=HOT_SMALL) as g:
        c = g.line("rw", g.create_device("rw"))
        model, seq = {}, 1

        # recent points: each visible to the query right after its ack
        for i in range(200):
            ts, v = BASE + i * 1000, i * 1.5
            seq = write(c, seq, [(ts, {"v": v, "s": "s%d" % i})])
            model[ts] = v
            js = query(g, "rw", "keys=v,s&from=%d&to=%d" % (ts, ts))
            t.eq((js.get("v"), js.get("s")), ([{"ts": ts, "value": v}],
                                              [{"ts": ts, "value": "s%d" % i}]),
                 "point %d read right after its ack" % i)

        # 20 times the bound after them: the early points are chunked by now
        for b in range(40):
            pts = [(BASE + 200000 + (b * 500 + j) * 10, {"v": b * 500 + j}) for j in range(500)]
            seq = write(c, seq, pts)
            model.update((ts, v["v"]) for ts, v in pts)

        # overwrite old, chunked ts: the next queries see the new value, raw and aggregated
        rng = random.Random(9)
        old = sorted(model)[:200] + rng.sample(sorted(model)[200:10000], 100)
        for j, ts in enumerate(old):
            v = (1e9 + j) if j % 2 == 0 else -(1e9 + j)
            seq = write(c, seq, [(ts, {"v": v})])
            model[ts] = v
            js = query(g, "rw", "keys=v&from=%d&to=%d" % (ts, ts))
            t.eq(js.get("v"), [{"ts": ts, "value": v}], "overwrite %d of ts %d read back" % (j, ts))
            if j % 10:
                continue  # the aggregates on every tenth overwrite
            lo, hi = ts - 20000, ts + 20000
            inside = [model[x] for x in model if lo <= x <= hi]
            extreme = "max" if v > 0 else "min"
            t.eq(agg(g, "rw", "v", extreme, lo, hi), v, "%s over a bucket with overwrite %d" %
                 (extreme, j))
            t.eq(agg(g, "rw", "v", "last", ts - 20000, ts), v, "last ends at overwrite %d" % j)
            t.eq(agg(g, "rw", "v", "first", ts, ts + 20000), v, "first starts at overwrite %d" % j)
            t.eq(agg(g, "rw", "v", "count", lo, hi), len(inside), "count around overwrite %d" % j)
            got = agg(g, "rw", "v", "sum", lo, hi)
            t(abs(got - sum(inside)) <= 1e-9 * sum(abs(x) for x in inside),
              "sum around overwrite %d: got %r, want %r" % (j, got, sum(inside)))

        want = sorted(model.items())
        t.eq(series(g, "rw", "v"), want, "the whole series once, with every overwrite")
        c.close()
        g.stop()
        g2 = Gale(data_dir=g.data_dir, args=HOT_SMALL).start()
        try:
            t.eq(series(g2, "rw", "v"), want, "the same after a restart")
        finally:
            g2.stop()


def late_points():
    with Gale(args=HOT_SMALL) as g:
        c = g.line("late", g.create_device("late"))
        rng = random.Random(7)
        model, seq = {}, 1
        seq = write(c, seq, [(BASE + i, {"v": i}) for i in range(100)])
        model.update((BASE + i, i) for i in range(100))
        # ~3000 points spread over 30 days before, shuffled: late and out of order
        late = sorted(set(BASE - rng.randrange(DAY_MS, 30 * DAY_MS) for _ in range(3000)))
        rng.shuffle(late)
        for k in range(0, len(late), 100):
            pts = [(ts, {"v": -j}) for j, ts in enumerate(late[k:k + 100], k)]
            seq = write(c, seq, pts)
            model.update((ts, v["v"]) for ts, v in pts)
        want = sorted(model.items())
        t.eq(series(g, "late", "v"), want, "late points read back in ts order")
        t.eq(series(g, "late", "v", order="desc"), want[::-1], "and in descending order")
        lo, hi = min(late), BASE - DAY_MS
        t.eq(series(g, "late", "v", lo, hi), [p for p in want if lo <= p[0] <= hi],
             "a range of late points only")
        c.close()


def delete_no_resurrection():
    g = Gale(args=HOT_SMALL).start()
    procs = [g]
    try:
        c = g.line("gone", g.create_device("gone"))
        seq = 1
        for b in range(6):  # chunked points and a few recent ones
            seq = write(c, seq, [(BASE + (b * 500 + j) * 10, {"v": j, "s": "old"})
                                 for j in range(500)])
        seq = write(c, seq, [(BASE + 100000 + j, {"v": j, "s": "old"}) for j in range(10)])
        t.eq(len(series(g, "gone", "v")), 3010, "points stored before the delete")
        c.close()
        st, _ = g.http("DELETE", "/api/devices/gone")
        t.eq(st, 200, "device deleted")
        st, _ = g.http("GET", "/api/devices/gone/telemetry?keys=v")
        t.eq(st, 404, "no telemetry for a deleted device")
        g.kill9()

        g2 = Gale(data_dir=g.data_dir, args=HOT_SMALL).start()
        procs.append(g2)
        st, _ = g2.http("GET", "/api/devices/gone")
        t.eq(st, 404, "still deleted after kill -9 and a restart")
        token = g2.create_device("gone")
        t.eq(series(g2, "gone", "v") + series(g2, "gone", "s"), [],
             "a new device with the same id starts empty")
        t.eq(query(g2, "gone", "from=0"), {}, "no key at all")
        st, js = g2.http("GET", "/api/devices/gone/latest")
        t.eq((st, js), (200, {}), "its latest is empty")
        c = g2.line("gone", token)
        new = [(BASE + j * 10, {"v": 1000 + j}) for j in range(5)]  # old ts, new values
        write(c, 1, new)
        want = [(ts, v["v"]) for ts, v in new]
        t.eq(series(g2, "gone", "v"), want, "only the new device's points")
        c.close()
        g2.kill9()

        g3 = Gale(data_dir=g.data_dir, args=HOT_SMALL).start()
        procs.append(g3)
        t.eq(series(g3, "gone", "v"), want, "only the new points after another kill -9")
        t.eq(series(g3, "gone", "s"), [], "and none of the old keys")
        t.eq(g3.stop(), 0, "clean stop")
    except BaseException:
        print("---- gale log ----\n" + procs[-1].log()[-8000:])
        raise
    finally:
        for p in procs:
            if p.alive():
                p.kill9()
        shutil.rmtree(g.data_dir, ignore_errors=True)


def memory_bound():
    with Gale(args=["--set", "storage.hot_max_points=20000"]) as g:
        conns = [g.line("mem-%d" % i, g.create_device("mem-%d" % i)) for i in range(2)]
        st, _ = g.http("GET", "/api/health")
        t.eq(st, 200, "health before the load")
        base_kb = g.rss_kb()
        per_conn, per_msg, window = 150, 250, 16 # messages of 250 ts x 4 keys = 1000 points
        done, peak, health, errors = threading.Event(), [base_kb], [], []

        def load(i, c):
            try:
                msgs = [json.dumps({"seq": m + 1, "batch": [
                    {"ts": BASE + (m * per_msg + j) * 10,
                     "values": {"a": j * 0.25, "b": m, "c": j % 2 == 0, "d": "x%d" % j}}
                    for j in range(per_msg)]}) + "\n" for m in range(per_conn)]
                sent = acked = 0
                while acked < per_conn:
                    while sent < per_conn and sent - acked < window:
                        c.send(msgs[sent])
                        sent += 1
                    reply = c.read_line(timeout=60)
                    if reply != {"ack": acked + 1}:
                        raise AssertionError("conn %d: %r" % (i, reply))
                    acked += 1
            except Exception as e:
                errors.append(repr(e))

        def monitor():
            n = 0
            while not done.is_set():
                peak[0] = max(peak[0], g.rss_kb())
                if n % 4 == 0:
                    try:
                        health.append(g.http("GET", "/api/health", timeout=10)[0])
                    except OSError as e:
                        health.append(repr(e))
                n += 1
                time.sleep(0.05)

        ths = [threading.Thread(target=load, args=(i, c)) for i, c in enumerate(conns)]
        mon = threading.Thread(target=monitor)
        mon.start()
        t0 = time.monotonic()
        for th in ths:
            th.start()
        for th in ths:
            th.join(240)
        secs = time.monotonic() - t0
        done.set()
        mon.join(30)
        peak[0] = max(peak[0], g.rss_kb())
        t.eq(errors, [], "every message acked in order")
        t(not any(th.is_alive() for th in ths), "the load ended")
        t(peak[0] < base_kb + RSS_HEADROOM_KB, "RSS peak %d kB < start %d kB + %d kB" %
          (peak[0], base_kb, RSS_HEADROOM_KB))
        t(health and all(s == 200 for s in health), "health answered during the load (%d: %r)" %
          (len(health), sorted(set(health))))
        n = per_conn * per_msg
        for i in range(len(conns)):
            for key in ("a", "b", "c"):
                t.eq(agg(g, "mem-%d" % i, key, "count", 0, BASE * 2), n,
                     "mem-%d.%s: every point stored" % (i, key))
        print("memory: %d points in %.1f s, RSS %d -> peak %d kB, %d health checks" %
              (2 * n * 4, secs, base_kb, peak[0], len(health)), flush=True)
        for c in conns:
            c.close()


def all_tests():
    read_your_writes()
    late_points()
    delete_no_resurrection()
    memory_bound()


t.run(all_tests)
