"""Disk is bounded: under steady ingest checkpoints complete and the write-ahead log stays
below storage.wal_max_bytes; a reader that holds an old snapshot is logged and, once it
is gone, the log starts over and is cut back to the bound; a clean stop (SIGTERM)
leaves a checkpointed database (no WAL, or an empty one) holding every point.

Four line-protocol connections send 4 keys per line at a bounded rate (about 6000
lines/s in all) for 30 s of steady ingest, 4 s with an outside reader holding a read
transaction open on gale.db, and 4 s after it let go. A sampler stats gale.db-wal and
gale.db every 50 ms."""
import os
import re
import shutil
import sqlite3
import threading
import time
import urllib.request

from galetest import Check, Gale

t = Check("test_wal")

BOUND = 4 << 20                 # storage.wal_max_bytes of the run
MARGIN = 256 << 10              # one transaction's frames past the point the writer acts
NDEV = 4
LINES_PER_TICK = 30             # per connection every 20 ms: 1500 lines/s each
TICK_S = 0.02
STEADY_S = 30.0
PIN_S = 4.0
AFTER_S = 4.0
BASE_TS = 1700006400000         # a day boundary: every point falls in one 1d bucket


def file_size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def metric(g, name):
    url = "http://127.0.0.1:%d/metrics" % g.ports["http"]
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else None


def main():
    g = Gale(args=["--set", "storage.wal_max_bytes=%d" % BOUND]).start()
    db = os.path.join(g.data_dir, "gale.db")
    wal = db + "-wal"
    phase = {"name": "steady"}
    peak = {}                   # phase -> largest WAL file seen in it
    stop = threading.Event()
    sent = [0] * NDEV
    errors = []

    def sampler():
        while not stop.is_set():
            n = file_size(wal)
            p = phase["name"]
            peak[p] = max(peak.get(p, 0), n)
            time.sleep(0.05)

    def sender(i, client):
        try:
            k = 0
            next_t = time.monotonic()
            while not stop.is_set():
                lines = []
                for _ in range(LINES_PER_TICK):
                    lines.append('{"ts":%d,"values":{"a":%d,"b":%.2f,"c":%d,"d":%s}}\n' % (
                        BASE_TS + k, k, k * 0.25, k % 1000, "true" if k & 1 else "false"))
                    k += 1
                client.send("".join(lines))
                sent[i] = k
                next_t += TICK_S
                time.sleep(max(0.0, next_t - time.monotonic()))
            client.send_line({"ts": BASE_TS + k, "values": {"a": k}, "seq": 1})
            sent[i] = k + 1
            got = client.read_line(timeout=60)
            if got != {"ack": 1}:
                errors.append("dev%d: %r" % (i, got))
        except Exception as e:  # reported below as a failed check
            errors.append("dev%d: %r" % (i, e))

    try:
        clients = []
        for i in range(NDEV):
            token = g.create_device("wal%d" % i)
            clients.append(g.line("wal%d" % i, token))
        threads = [threading.Thread(target=sampler)]
        threads += [threading.Thread(target=sender, args=(i, c)) for i, c in enumerate(clients)]
        for th in threads:
            th.start()

        time.sleep(STEADY_S)
        db_steady = file_size(db)
        ckpts = metric(g, "gale_storage_wal_checkpoints_total")
        copied = metric(g, "gale_storage_wal_frames_copied_total")
        wal_metric = metric(g, "gale_storage_wal_bytes")

        # an outside reader holds one snapshot: the log cannot start over meanwhile
        phase["name"] = "pinned"
        ro = sqlite3.connect("file:%s?mode=ro" % db, uri=True, isolation_level=None)
        ro.execute("BEGIN")
        ro.execute("SELECT count(*) FROM segments").fetchone()
        pinned_log = True
        try:
            g.wait_log(r"store: wal cannot restart: a reader holds an older snapshot", PIN_S + 4)
        except AssertionError:
            pinned_log = False
        time.sleep(max(0.0, PIN_S - 1))
        ro.execute("ROLLBACK")
        ro.close()
        phase["name"] = "release"
        released_log = True
        try:
            g.wait_log(r"store: wal restarts again after ms=\d+", 5)
        except AssertionError:
            released_log = False
        time.sleep(1.0)         # the next commits start the log over and cut the file back
        phase["name"] = "after"
        time.sleep(AFTER_S)
        stop.set()
        for th in threads:
            th.join(90)
        for c in clients:
            c.close()
        print("steady: %d lines/s, WAL peak %d bytes (bound %d), gale.db %d bytes; "
              "pinned peak %d; after peak %d; checkpoints=%s frames_copied=%s" % (
                  sum(sent) / (STEADY_S + PIN_S + AFTER_S + 1), peak.get("steady", 0), BOUND,
                  db_steady, peak.get("pinned", 0), peak.get("after", 0), ckpts, copied),
              flush=True)

        t.eq(errors, [], "every sender's last line acknowledged")
        t(peak.get("steady", 0) > 0, "the WAL was sampled during steady ingest")
        t(peak.get("steady", 0) <= BOUND + MARGIN,
          "WAL at most the bound (+%d) during steady ingest: peak %d, bound %d"
          % (MARGIN, peak.get("steady", 0), BOUND))
        t(db_steady > 256 << 10,
          "checkpoints copied the log into gale.db: %d bytes after %ds" % (db_steady, STEADY_S))
        t(ckpts is not None and ckpts >= 1, "gale_storage_wal_checkpoints_total >= 1: %r" % ckpts)
        t(copied is not None and copied * 4096 >= db_steady / 2,
          "gale_storage_wal_frames_copied_total counts the copies: %r" % copied)
        t(wal_metric is not None and 0 < wal_metric <= BOUND + MARGIN,
          "gale_storage_wal_bytes within the bound: %r" % wal_metric)
        t(pinned_log, "a reader holding an old snapshot is logged")
        t(released_log, "the log starts over once the reader is gone (logged)")
        t(peak.get("after", 0) <= BOUND + MARGIN,
          "WAL back within the bound after the reader let go: %d" % peak.get("after", 0))
        busy = metric(g, "gale_storage_wal_checkpoint_busy_total")
        t(busy is not None and busy >= 1, "gale_storage_wal_checkpoint_busy_total >= 1: %r" % busy)
        n_lines = len([l for l in g.log_lines if "wal cannot restart" in l])
        t.eq(n_lines, 1, "the pinned episode is logged once")

        rc = g.stop()
        t.eq(rc, 0, "clean stop")
        t(file_size(wal) == 0, "no WAL left after SIGTERM: %d bytes" % file_size(wal))
        t(any("store: wal checkpointed at close" in l for l in g.log_lines),
          "the close checkpoint is logged")
        t(file_size(db) >= db_steady, "gale.db holds the data: %d bytes" % file_size(db))
    finally:
        stop.set()
        if g.alive():
            g.kill9()

    g2 = Gale(data_dir=g.data_dir).start()
    try:
        for i in range(NDEV):
            st, js = g2.http("GET", "/api/devices/wal%d/telemetry?keys=a,d&from=%d&to=%d"
                             "&agg=count&interval=1d" % (i, BASE_TS, BASE_TS + 86400000 - 1))
            t.eq(st, 200, "count query wal%d" % i)
            a = js.get("a", [{}])[0].get("value") if st == 200 else None
            d = js.get("d", [{}])[0].get("value") if st == 200 else None
            t.eq(a, sent[i], "every point of key a of wal%d is stored" % i)
            t.eq(d, sent[i] - 1, "every point of key d of wal%d is stored" % i)
    finally:
        g2.stop()
        shutil.rmtree(g.data_dir, ignore_errors=True)


t.run(main)
