"""Nothing acknowledged is lost: stream with seq, kill -9 right after the acks,
restart on the same data dir, every acked value is there; replays replace,
never duplicate; backpressure keeps memory bounded."""
import signal
import threading
import time

from galetest import Check, Gale, wait_for

t = Check("test_durability")


def main():
    g = Gale(args=["--set", "storage.compact_rows=5000"]).start()
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


t.run(main)
