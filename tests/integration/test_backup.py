"""Online backup (POST /api/backup, gale --backup):
- under ingest (MQTT QoS 1 publishers, each PUBACK recorded with its time) a snapshot is
  taken; it opens with sqlite3, PRAGMA integrity_check says ok, it is one file (rollback
  journal mode), and a second Gale started on a copy of it (the README's restore) holds
  every value acked before the backup began;
- one backup at a time: a second POST while one runs gets 409 backup_running; an
  existing name 409 backup_exists; a bad name or field 400; no key or a wrong one 401, a
  read or operator key 403 (backups need admin);
- metrics of the last backup (gale_backups_total, gale_backup_last_bytes) and GET;
- gale --backup DEST against the running instance moves the snapshot to DEST;
- a client that resets its connection while its backup runs: the backup finishes;
- SIGTERM during a backup stops cleanly and leaves no partial file;
- a destination that cannot be written (storage.backup_dir under a regular file) gets a
  JSON 500 backup_failed, a full disk (storage.backup_dir on a small tmpfs this test
  mounts; skipped, saying why, where mount is not allowed) 507 disk_full with no partial
  file left; either way the gateway goes on taking data.
Prints the ingest rate around the backup and the backup's size and time."""
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import struct
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt

from galetest import API_KEY, GALE_BIN, Check, Gale, wait_for

t = Check("test_backup")
BASE = 1700000000000
DEVICES = ["bk-%d" % i for i in range(3)]


def metric(g, name):
    st, text = g.http("GET", "/metrics")
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else None


def prefill(g, dev, token, points):
    """points values of 8 keys with random floats (they compress badly: a bigger file)."""
    c = g.line(dev, token)
    lines = []
    for start in range(0, points, 100):  # 800 values a line (limits.max_points_per_message)
        batch = [{"ts": BASE - 10**9 + start + i,
                  "values": {"k%d" % k: random.random() for k in range(8)}}
                 for i in range(min(100, points - start))]
        lines.append(json.dumps({"seq": len(lines) + 1, "batch": batch}))
    for i in range(0, len(lines), 20):  # 20 lines in flight
        for l in lines[i:i + 20]:
            c.send_line(l)
        for l in lines[i:i + 20]:
            t(c.read_line() == {"ack": json.loads(l)["seq"]}, "prefill batch acked")
    c.close()


class Publisher(threading.Thread):
    """MQTT QoS 1: {"ts":BASE+n,"values":{"n":n}}, at most 100 unacked; records when each
    n was acked (time.monotonic()). Bounded: at most max_n messages, until stop is set."""

    def __init__(self, g, dev, token, stop, max_n=200000):
        super().__init__(daemon=True)
        self.dev, self.stop, self.max_n = dev, stop, max_n
        self.acked = {}   # n -> monotonic time of its PUBACK
        self.mids = {}    # mid -> n, published and not yet acked
        self.early = {}   # mid -> time: acked before publish() returned its mid
        self.sent = 0
        self.lock = threading.Lock()
        self.c = mqtt.Client(client_id=dev)
        self.c.username_pw_set(dev, token)
        self.c.max_inflight_messages_set(100)
        self.c.on_publish = self.on_publish
        self.c.connect("127.0.0.1", g.ports["mqtt"])
        self.c.loop_start()

    def on_publish(self, c, ud, mid):
        now = time.monotonic()
        with self.lock:
            n = self.mids.pop(mid, None)
            if n is None:
                self.early[mid] = now
            else:
                self.acked[n] = now

    def run(self):
        n = 0
        while not self.stop.is_set() and n < self.max_n:
            with self.lock:
                waiting = len(self.mids)
            if waiting >= 100:
                time.sleep(0.001)
                continue
            # (paho calls on_publish holding its own lock: never publish holding ours)
            info = self.c.publish("devices/%s/telemetry" % self.dev,
                                  json.dumps({"ts": BASE + n, "values": {"n": n}}), qos=1)
            with self.lock:
                at = self.early.pop(info.mid, None)
                if at is None:
                    self.mids[info.mid] = n
                else:
                    self.acked[n] = at
            n += 1
            self.sent = n

    def finish(self):
        wait_for(lambda: not self.mids, 20, "%s's acks" % self.dev)
        self.c.loop_stop()
        self.c.disconnect()


def acks_between(pubs, a, b):
    return sum(1 for p in pubs for at in p.acked.values() if a <= at < b)


def stored_ns(g, dev, upto):
    """Every n stored for dev with BASE <= ts <= BASE + upto (paged)."""
    got, cursor = set(), None
    while True:
        q = "/api/devices/%s/telemetry?keys=n&from=%d&to=%d&limit=100000" % (dev, BASE, BASE + upto)
        if cursor:
            q += "&cursor=" + cursor
        st, js = g.http("GET", q)
        assert st == 200, (st, js)
        got.update(p["value"] for p in js.get("n", []))
        cursor = js.get("_next")
        if not cursor:
            return got


def snapshot_under_load(g, tokens):
    stop = threading.Event()
    pubs = [Publisher(g, d, tokens[d], stop) for d in DEVICES]
    for p in pubs:
        p.start()
    try:
        time.sleep(1.5)
        t_b = time.monotonic()
        st, js = g.http("POST", "/api/backup", {"name": "under-load.db"}, timeout=120)
        t_done = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        for p in pubs:
            p.join(10)
    for p in pubs:
        p.finish()
    t(st == 200, "backup under load answered 200 (%s %s)" % (st, js))
    if st != 200:
        return None
    before = {p.dev: {n for n, at in p.acked.items() if at < t_b} for p in pubs}
    t(all(len(v) > 100 for v in before.values()),
      "values were acked before the backup began (%s)" % {d: len(v) for d, v in before.items()})
    path = js["path"] if os.path.isabs(js["path"]) else os.path.join(os.getcwd(), js["path"])
    t(os.path.basename(path) == "under-load.db" and
      os.path.dirname(path) == os.path.join(os.path.abspath(g.data_dir), "backups"),
      "the snapshot is in <data_dir>/backups (%s)" % js["path"])
    t(js["bytes"] == os.path.getsize(path), "the reply gives its size (%s)" % js["bytes"])
    took = js["seconds"]
    pre = acks_between(pubs, t_b - 1.0, t_b)
    during = acks_between(pubs, t_b, t_done) / max(t_done - t_b, 1e-3)
    print("test_backup: snapshot of %d bytes in %.3f s (request %.3f s) under load; acks/s: "
          "%.0f in the second before, %.0f during" % (js["bytes"], took, t_done - t_b, pre, during))

    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    t.eq(db.execute("PRAGMA integrity_check").fetchall(), [("ok",)], "integrity_check")
    t.eq(db.execute("PRAGMA journal_mode").fetchall(), [("delete",)], "one file, rollback mode")
    db.close()
    t(not os.path.exists(path + "-wal"), "no -wal beside the snapshot")

    # restore: a second Gale on a copy of it
    restore = tempfile.mkdtemp(prefix="gale-restore-")
    shutil.copy(path, os.path.join(restore, "gale.db"))
    with Gale(data_dir=restore) as g2:
        for p in pubs:
            have = stored_ns(g2, p.dev, p.sent)
            missing = sorted(before[p.dev] - have)
            t(not missing, "%s: every value acked before the backup is in it (%d acked, "
              "%d stored, missing %s)" % (p.dev, len(before[p.dev]), len(have), missing[:5]))
    shutil.rmtree(restore, ignore_errors=True)
    return js


def one_at_a_time(g):
    outcome = None
    for attempt in range(20):
        res = [None, None]

        def post(i):
            res[i] = g.http("POST", "/api/backup", {"name": "race-%d-%d.db" % (attempt, i)},
                            timeout=120)
        ths = [threading.Thread(target=post, args=(i,)) for i in range(2)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(130)
        codes = sorted(r[0] for r in res)
        if codes == [200, 409]:
            outcome = [r for r in res if r[0] == 409][0][1]
            break
        t(codes == [200, 200], "two backups: each answered 200 or one 409 (%s)" % codes)
    t(outcome is not None and outcome.get("code") == "backup_running",
      "a backup asked for while one runs gets 409 backup_running (%s)" % outcome)
    st, js = g.http("POST", "/api/backup", {"name": "under-load.db"})
    t(st == 409 and js.get("code") == "backup_exists", "an existing name: 409 backup_exists (%s %s)"
      % (st, js))
    for body, what in (({"name": "../evil.db"}, "a path"), ({"name": ".hidden"}, "a dot name"),
                       ({"dir": "/tmp"}, "an unknown field"), ({"name": 5}, "a number")):
        st, js = g.http("POST", "/api/backup", body)
        t(st == 400, "%s as name: 400 (%s %s)" % (what, st, js))
    st, js = g.http("POST", "/api/backup", key=None)
    t(st == 401 and js.get("code") == "unauthorized", "no key: 401 (%s)" % st)
    st, js = g.http("POST", "/api/backup", key="wrong")
    t(st == 401, "a wrong key: 401 (%s)" % st)
    for role in ("read", "operator"):
        st, js = g.http("POST", "/api/keys", {"name": "bk-" + role, "role": role})
        t(st == 201, "a %s key made (%s)" % (role, st))
        st, js = g.http("POST", "/api/backup", key=js["key"])
        t(st == 403 and js.get("role_needed") == "admin",
          "a %s key: 403, backups need admin (%s %s)" % (role, st, js))
    st, js = g.http("GET", "/api/backup")
    t(st == 200 and js["running"] is False and js["last"] and js["last"]["bytes"] > 0,
      "GET /api/backup: not running, the last one (%s)" % js)
    t(metric(g, 'gale_backups_total{result="ok"}') >= 2, "gale_backups_total counts them")
    t(metric(g, "gale_backup_last_bytes") == js["last"]["bytes"], "gale_backup_last_bytes")
    t(metric(g, "gale_backup_running") == 0, "gale_backup_running 0")


def cli(g):
    dest = os.path.join(tempfile.mkdtemp(prefix="gale-bk-"), "cli.db")
    env = dict(os.environ, GALE_HTTP_API_KEY=API_KEY)
    p = subprocess.run([GALE_BIN, "--data-dir", g.data_dir, "--set",
                        "http.port=%d" % g.ports["http"], "--backup", dest],
                       capture_output=True, text=True, env=env, timeout=120)
    t(p.returncode == 0, "gale --backup exits 0 (%s): %s" % (p.returncode, p.stderr))
    if p.returncode == 0:
        js = json.loads(p.stdout)
        t(js["path"] == dest and os.path.getsize(dest) == js["bytes"],
          "gale --backup prints where the snapshot is (%s)" % js)
        db = sqlite3.connect("file:%s?mode=ro" % dest, uri=True)
        t.eq(db.execute("PRAGMA integrity_check").fetchall(), [("ok",)], "cli snapshot integrity")
        db.close()
        t(not os.path.exists(os.path.join(g.data_dir, "backups", js["name"])),
          "moved out of the backup directory")
    p = subprocess.run([GALE_BIN, "--data-dir", g.data_dir, "--set",
                        "http.port=%d" % g.ports["http"], "--backup", dest],
                       capture_output=True, text=True, env=env, timeout=60)
    t(p.returncode == 1 and "exists" in p.stderr, "gale --backup never replaces a file (%s)"
      % p.stderr)
    shutil.rmtree(os.path.dirname(dest), ignore_errors=True)


def reset_while_waiting(g):
    """The client resets its connection while its backup runs: the backup still finishes
    (logged), nobody is answered, the gateway goes on."""
    s = socket.create_connection(("127.0.0.1", g.ports["http"]))
    body = b'{"name":"reset.db"}'
    s.sendall(b"POST /api/backup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              API_KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    wait_for(lambda: any("backup started" in l and "reset.db" in l for l in list(g.log_lines)),
             10, "backup started")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_for(lambda: any("backup done" in l and "reset.db" in l for l in list(g.log_lines)),
             30, "the backup done after the reset")
    st, js = g.http("GET", "/api/backup")
    t(st == 200 and js["running"] is False and js["last"]["path"].endswith("reset.db"),
      "after a reset the backup completed and the gateway answers (%s)" % js)


def shutdown_during_backup(g):
    """SIGTERM while a backup runs: a clean stop; the copy is cut short (no partial file
    is left) or, when it was quicker, complete."""
    def post():
        try:
            g.http("POST", "/api/backup", {"name": "cut.db"}, timeout=30)
        except Exception:
            pass  # the connection closes with the gateway
    th = threading.Thread(target=post, daemon=True)
    th.start()
    wait_for(lambda: any("backup started" in l and "cut.db" in l for l in list(g.log_lines)), 10,
             "backup started")
    rc = g.stop()
    th.join(30)
    t(rc == 0, "a stop during a backup is clean (exit %s)" % rc)
    bdir = os.path.join(g.data_dir, "backups")
    t(not [f for f in os.listdir(bdir) if f.endswith(".partial")], "no partial file left (%s)"
      % os.listdir(bdir))
    cut = "stopped by the shutdown" in g.log()  # (g.log() reads what is left in the pipe)
    if os.path.exists(os.path.join(bdir, "cut.db")):
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(bdir, "cut.db"), uri=True)
        t.eq(db.execute("PRAGMA integrity_check").fetchall(), [("ok",)], "a finished copy is whole")
        db.close()
    else:
        t(cut, "a backup that left no file was stopped by the shutdown (logged): %s"
          % [l for l in g.log().splitlines() if "backup" in l or "stop" in l][-8:])
    print("test_backup: the stop %s the backup" % ("cut short" if cut else "came after"))


def still_takes_data(g, dev, token, seq):
    c = g.line(dev, token)
    c.send_line({"seq": seq, "ts": BASE + 10**9 + seq, "values": {"after": seq}})
    t.eq(c.read_line(), {"ack": seq}, "the gateway still acks data after the failed backup")
    c.close()
    st, js = g.http("GET", "/api/health")
    t(st == 200 and js["status"] == "ok", "health ok after the failed backup")


def unwritable():
    tmp = tempfile.mkdtemp(prefix="gale-bk-")
    afile = os.path.join(tmp, "afile")
    open(afile, "w").close()
    with Gale(args=["--set", "storage.backup_dir=%s/backups" % afile]) as g:
        token = g.create_device("uw")
        st, js = g.http("POST", "/api/backup")
        t(st == 500 and js.get("code") == "backup_failed" and
          "Not a directory" in js.get("error", ""),
          "an unwritable destination: 500 backup_failed saying why (%s %s)" % (st, js))
        t(metric(g, 'gale_backups_total{result="failed"}') == 1, "the failure is counted")
        still_takes_data(g, "uw", token, 1)
    shutil.rmtree(tmp, ignore_errors=True)


def disk_full():
    mnt = tempfile.mkdtemp(prefix="gale-bkfull-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        why = "mount refused: %s" % r.stderr.strip()
        if os.environ.get("CI"):
            t(False, "disk-full case cannot run under CI: " + why)
        else:
            print("test_backup: the disk-full case is skipped (%s)" % why)
        os.rmdir(mnt)
        return
    try:
        with Gale(args=["--set", "storage.backup_dir=%s" % mnt]) as g:
            token = g.create_device("full")
            prefill(g, "full", token, 20000)
            st, js = g.http("POST", "/api/backup", {"name": "full.db"})
            t(st == 507 and js.get("code") == "disk_full",
              "a full disk: 507 disk_full (%s %s)" % (st, js))
            t(os.listdir(mnt) == [], "no partial file left (%s)" % os.listdir(mnt))
            still_takes_data(g, "full", token, 1000)
    finally:
        subprocess.run(["umount", mnt])
        os.rmdir(mnt)


def main():
    with Gale() as g:
        wait_for(lambda: "mqtt" in g.ports, 10, "the mqtt listener")  # Gale() waits for http, line
        tokens = {d: g.create_device(d) for d in DEVICES}
        filler = g.create_device("filler")
        prefill(g, "filler", filler, 30000)
        snapshot_under_load(g, tokens)
        one_at_a_time(g)
        cli(g)
        reset_while_waiting(g)
        shutdown_during_backup(g)
    unwritable()
    disk_full()


t.run(main)
