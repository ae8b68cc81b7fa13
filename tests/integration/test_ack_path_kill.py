"""The acknowledged path under load, killed: with storage.sync=normal an ack stands on the
ack log (one write() per loop iteration), and the writer thread commits behind it while it
also chunks all the time (storage.hot_max_points is small), so a kill leaves acked records
that only the log holds: the restart commits them. In the last round the writer's commits
of acked batches fail from a moment before the kill on (GALE_TEST_FAIL_LOGGED_COMMITS, armed
by SIGUSR2), so that round always leaves acked writes that only the log holds.
20 MQTT publishers (QoS 1, 8 in flight each, 4 keys per message) and 4 line-protocol
clients (seq acks) write unique timestamps; the gateway is killed with SIGKILL at a random
moment under that load, restarted on the same data dir, and every value whose PUBACK or
ack arrived before the kill must be there, exactly once. Three rounds, each killed at a
different moment (GALE_KILL_SEED repeats a run).
The same runs again with storage.sync=full: there an ack waits for the log's fdatasync, the
writer commits with synchronous=NORMAL, and a log file stays until a checkpoint has synced
its records into the database file, so the restart also reads records SQLite already
holds (skipped, never stored twice)."""
import json
import os
import random
import re
import signal
import socket
import threading
import time

import mqttraw as R
from galetest import Check, Gale

t = Check("test_ack_path_kill")
SEED = int(os.environ.get("GALE_KILL_SEED", str(int(time.time()))))
ROUNDS = 3
MQTT_PUBS, LINE_PUBS, WINDOW = 20, 4, 8
ARGS = ["--set", "storage.hot_max_points=2000", "--set", "mqtt.allow_anonymous=true"]


def mqtt_publisher(g, dev, token, base, acked, stop):
    """Publishes QoS 1 telemetry with WINDOW in flight; records the ts of each PUBACK."""
    try:
        c = R.session(g.ports["mqtt"], "kill-" + dev, username=dev, password=token)
        pending, i = {}, 0
        while not stop.is_set():
            while len(pending) < WINDOW:
                i += 1
                ts = base + i
                pid = i % 65535 + 1
                body = json.dumps({"ts": ts, "values": {"a": i, "b": i * 0.5, "c": i % 2 == 0,
                                                        "d": "s%d" % i}})
                c.send(R.publish("devices/%s/telemetry" % dev, body, qos=1, pid=pid))
                pending[pid] = ts
            p = c.recv(10)
            if p.type == R.PUBACK and p.pid in pending:
                acked.append(pending.pop(p.pid))
    except (OSError, ConnectionError, AssertionError):
        pass  # the kill


def line_publisher(g, dev, token, base, acked, stop):
    try:
        c = g.line(dev, token)
        i = 0
        sent = {}
        while not stop.is_set():
            for _ in range(WINDOW):
                i += 1
                sent[i] = base + i
                c.send_line({"ts": base + i, "values": {"a": i}, "seq": i})
            for _ in range(WINDOW):
                ack = c.read_line(timeout=10)
                if isinstance(ack, dict) and "ack" in ack:
                    acked.append(sent.pop(ack["ack"]))
    except (OSError, ConnectionError, ValueError, AssertionError, socket.timeout):
        pass


def read_all(g, dev):
    """Every ts of key a, following the cursor."""
    got, cursor = [], None
    while True:
        q = "/api/devices/%s/telemetry?keys=a&limit=100000&from=%d" % (dev, 1800000000000)
        if cursor:
            q = "/api/devices/%s/telemetry?cursor=%s" % (dev, cursor)
        st, js = g.http("GET", q)
        assert st == 200, (st, js)
        got += [p["ts"] for p in js.get("a", [])]
        cursor = js.get("_next")
        if not cursor:
            return got


def main():
    rnd = random.Random(SEED)
    print("test_ack_path_kill: GALE_KILL_SEED=%d" % SEED)
    for mode in ("normal", "full"):
        run_mode(rnd, mode)


def run_mode(rnd, mode):
    print("storage.sync=%s" % mode)
    g = Gale(args=ARGS + ["--set", "storage.sync=" + mode],
             env={"GALE_TEST_FAIL_LOGGED_COMMITS": "1000000000"})
    g.start(wait_ports=("http", "line", "mqtt"))
    tokens = {}
    for i in range(MQTT_PUBS):
        tokens["m%d" % i] = g.create_device("m%d" % i)
    for i in range(LINE_PUBS):
        tokens["l%d" % i] = g.create_device("l%d" % i)
    acked = {d: [] for d in tokens}
    replayed_before = 0
    try:
        for rnd_no in range(ROUNDS):
            base = 1800000000000 + rnd_no * 10000000
            stop = threading.Event()
            threads = [threading.Thread(target=mqtt_publisher if d[0] == "m" else line_publisher,
                                        args=(g, d, tok, base, acked[d], stop), daemon=True)
                       for d, tok in tokens.items()]
            for th in threads:
                th.start()
            time.sleep(1.0 + rnd.random() * 2.0)
            if rnd_no == ROUNDS - 1:
                os.kill(g.proc.pid, signal.SIGUSR2)
                g.wait_log(r"test seam: the next \d+ commit attempts of acked batches fail")
                g.wait_log(r"acked through the ack log failed to commit")
            g.kill9()
            stop.set()
            for th in threads:
                th.join(15)
            g.ports = {}
            g.start(wait_ports=("http", "line", "mqtt"))
            replays = len(re.findall(r"store: ack log replayed batches=[1-9]", g.log()))
            print("%s round %d: restarts that committed the ack log so far: %d"
                  % (mode, rnd_no, replays))
            if rnd_no == ROUNDS - 1:
                t(replays > replayed_before, "%s: the last round's restart committed acked"
                  " writes only the ack log held" % mode)
            replayed_before = replays
            missing = dup = total = 0
            for d in tokens:
                want = set(acked[d])
                total += len(want)
                got = read_all(g, d)
                dup += len(got) - len(set(got))
                missing += len(want - set(got))
            print("%s round %d: acked=%d missing=%d duplicated=%d" % (mode, rnd_no, total,
                                                                     missing, dup))
            t(total > 0, "%s round %d: values were acked before the kill" % (mode, rnd_no))
            t.eq(missing, 0, "%s round %d: every acked value survives kill -9" % (mode, rnd_no))
            t.eq(dup, 0, "%s round %d: nothing stored twice" % (mode, rnd_no))
    finally:
        g.__exit__(None, None, None)


t.run(main)
