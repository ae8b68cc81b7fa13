"""Nothing acknowledged is lost: stream with seq, kill -9 right after the acks,
restart on the same data dir, every acked value is there; replays replace,
never duplicate; backpressure keeps memory bounded.
`latest` follows the commits (the storage fault seam: GALE_TEST_FAIL_COMMITS=n, then
SIGUSR2 makes the next n commit attempts fail; the writer tries a batch 4 times, 50/100/200
ms apart, so n=4 fails a batch and n=3 delays it): a value is in `latest` as soon as its
{"ack":N} is out (read-your-writes), never while its commit is pending, never when it
failed, and not on a device deleted and created again while it was pending."""
import json
import socket
import threading
import time

from galetest import Check, Gale, wait_for

t = Check("test_durability")


def main():
    g = Gale(args=["--set", "storage.hot_max_points=5000"]).start()
    try:
        token = g.create_device("dev-k")
        c = g.line("dev-k", token)
        base = 1700000000000
        n = 20000
        acked = []

        def reader():
            try:
                while len(acked) < n:
                    acked.append(c.read_line(timeout=30)["ack"])
            except Exception:
                pass

        th = threading.Thread(target=reader)
        th.start()
        batch = []
        for i in range(n):
            batch.append('{"ts":%d,"values":{"a":%d,"b":%d},"seq":%d}\n' % (base + i, i, -i, i))
            if len(batch) == 500:
                c.send("".join(batch))
                batch = []
        c.send("".join(batch))
        th.join(60)
        t.eq(len(acked), n, "every line acknowledged")
        t.eq(acked, sorted(acked), "acks in order")
        g.kill9()
        g2 = Gale(data_dir=g.data_dir).start()
        try:
            st, js = g2.http("GET", "/api/devices/dev-k/telemetry?keys=a,b&limit=100000")
            t.eq(len(js.get("a", [])), n, "all acked 'a' points survive kill -9")
            t.eq(len(js.get("b", [])), n, "all acked 'b' points survive kill -9")
            t.eq(js["a"][-1], {"ts": base + n - 1, "value": n - 1}, "last acked point intact")
            st, js = g2.http("GET", "/api/devices/dev-k/latest")
            t.eq(js.get("a"), {"ts": base + n - 1, "value": n - 1}, "latest rebuilt after restart")

            # replay: same (device, key, ts) replaces, never duplicates
            c = g2.line("dev-k", token)
            c.send_line({"ts": base + 5, "values": {"a": 555}, "seq": 1})
            t.eq(c.read_line(), {"ack": 1}, "replay acked")
            st, js = g2.http("GET", "/api/devices/dev-k/telemetry?keys=a&from=%d&to=%d" %
                             (base + 5, base + 5))
            t.eq(js["a"], [{"ts": base + 5, "value": 555}], "replay replaced the old value")
            st, js = g2.http("GET", "/api/devices/dev-k/telemetry?keys=a&limit=100000")
            t.eq(len(js["a"]), n, "no duplicate after replay")
        finally:
            g2.stop()
        t.eq(g2.proc.returncode, 0, "clean stop")
    finally:
        if g.alive():
            g.kill9()

    # backpressure: a tiny queue pauses ingest reads instead of growing memory
    with Gale(args=["--set", "storage.queue_high_rows=200", "--set", "storage.queue_low_rows=50",
                    "--set", "storage.batch_rows=1"]) as g:
        token = g.create_device("fast")
        c = g.line("fast", token)
        n = 60000
        lines = "".join('{"ts":%d,"values":{"v":%d}}\n' % (1700000000000 + i, i) for i in range(n))
        lines += '{"done":1,"seq":1}\n'
        c.send(lines)
        t.eq(c.read_line(timeout=60), {"ack": 1}, "final ack after a burst")
        st, js = g.http("GET", "/api/devices/fast/telemetry?keys=v&limit=100000")
        t.eq(len(js.get("v", [])), n, "burst fully stored")
        st, body, _ = g.http("GET", "/metrics", raw=True)
        m = [l for l in body.decode().splitlines()
             if l.startswith("gale_storage_ingest_pauses_total")]
        t(m and int(m[0].split()[1]) >= 1, "backpressure engaged (%s)" % m)
        g.wait_log(r"pausing ingest reads")


BASE = 1700000000000


def arm(g, n):
    g.fail_commits(n)


def latest(g, dev):
    st, js = g.http("GET", "/api/devices/%s/latest" % dev)
    assert st == 200, (st, js)
    return js


def send(c, obj):
    """One line in one segment (send_line's two writes let Nagle hold the newline back)."""
    c.send(json.dumps(obj) + "\n")


def point(i):
    return {"ts": BASE + i, "value": i}


def latest_follows_commits():
    with Gale(env={"GALE_TEST_FAIL_COMMITS": "4"}) as g:
        token = g.create_device("dev-l")
        c = g.line("dev-l", token)

        # read-your-writes: the value is there the moment its ack is
        seen = []
        for i in range(1, 51):
            send(c, {"ts": BASE + i, "values": {"x": i}, "seq": i})
            t.eq(c.read_line(), {"ack": i}, "value %d acknowledged" % i)
            seen.append(latest(g, "dev-l").get("x"))
        t.eq(seen, [point(i) for i in range(1, 51)], "each value in latest right after its ack")

        # a value whose commit failed never shows
        arm(g, 4)
        send(c, {"ts": BASE + 100, "values": {"x": 100, "lost": 100}, "seq": 100})
        reply = c.read_line()
        t.eq((reply.get("code"), reply.get("seq")), ("storage_error", 100),
             "a failed commit is answered with storage_error (%r)" % reply)
        js = latest(g, "dev-l")
        t.eq(js.get("x"), point(50), "latest keeps the last committed value, not the failed one")
        t("lost" not in js, "a key only the failed value had is not in latest (%r)" % js)

        # the next value shows right after its ack
        send(c, {"ts": BASE + 101, "values": {"x": 101}, "seq": 101})
        t.eq(c.read_line(), {"ack": 101}, "a value after the failure is acknowledged")
        t.eq(latest(g, "dev-l").get("x"), point(101), "and is in latest right after its ack")

        # a restart rebuilds latest from storage: the same picture. dev-l goes offline
        # first, and its offline writes are durable before the seam is armed below (they
        # come before dev-r's creation, which is awaited): else their batch, sealed by the
        # delay timer, may meet the failing commits instead of dev-r's value
        c.close()
        wait_for(lambda: not g.http("GET", "/api/devices/dev-l")[1].get("online"), 10,
                 "dev-l offline")
        token = g.create_device("dev-r")
        c = g.line("dev-r", token)
        send(c, {"ts": BASE + 1, "values": {"y": 1}, "seq": 1})
        t.eq(c.read_line(), {"ack": 1}, "dev-r value acknowledged")
        arm(g, 4)
        send(c, {"ts": BASE + 2, "values": {"y": 2}, "seq": 2})
        t.eq(c.read_line().get("code"), "storage_error", "dev-r second value fails")
        t.eq(latest(g, "dev-r"), {"y": point(1)}, "dev-r latest without the failed value")
        c.close()
        g.stop()
        g2 = Gale(data_dir=g.data_dir).start()
        try:
            t.eq(latest(g2, "dev-r"), {"y": point(1)}, "the same latest after a restart")
        finally:
            g2.stop()


def latest_waits_for_commit():
    with Gale(env={"GALE_TEST_FAIL_COMMITS": "3"}) as g:
        token = g.create_device("dev-l")
        c = g.line("dev-l", token)
        send(c, {"ts": BASE + 101, "values": {"x": 101}, "seq": 101})
        t.eq(c.read_line(), {"ack": 101}, "a first value is acknowledged")
        # while a commit is pending (delayed ~350 ms) its value is not in latest; once it
        # is, the ack was sent before the answer (both leave the loop in that order)
        arm(g, 3)
        send(c, {"ts": BASE + 102, "values": {"x": 102}, "seq": 102})
        if latest(g, "dev-l").get("x") == point(102):
            try:
                got = c.read_line(timeout=0.1)
            except socket.timeout:
                got = c.read_line()
                t(False, "a value in latest before its ack (%r came later)" % got)
            t.eq(got, {"ack": 102}, "a value in latest is already acked")
        else:
            t.eq(c.read_line(), {"ack": 102}, "the delayed value is acknowledged")
        t.eq(latest(g, "dev-l").get("x"), point(102), "the delayed value is in latest now")

        # deleted and created again while a value was pending: the new device starts empty
        arm(g, 3)
        send(c, {"ts": BASE + 103, "values": {"x": 103}, "seq": 103})
        deleted = []
        th = threading.Thread(
            target=lambda: deleted.append(g.http("DELETE", "/api/devices/dev-l")[0]))
        th.start()  # answered once the delete is durable, after the pending value
        wait_for(lambda: g.http("POST", "/api/devices", {"id": "dev-l"})[0] == 201, 10,
                 "dev-l created again")
        th.join(20)
        t.eq(deleted, [200], "dev-l deleted")
        t.eq(latest(g, "dev-l"), {}, "a value pending at the delete is not on the new device")
        c.close()


def all_tests():
    main()
    latest_follows_commits()
    latest_waits_for_commit()


t.run(all_tests)
