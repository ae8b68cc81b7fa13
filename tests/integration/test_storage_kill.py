"""kill -9 at any moment loses nothing acked and duplicates nothing, also during chunking.

With storage.hot_max_points=1000 the writer chunks (compacts) all the time. Each round,
one line-protocol client per device streams telemetry with "seq" acks: numbers, bools,
strings and a key whose type changes, in single messages and batch envelopes, mostly at
a rising ts, some late (out of order) and some overwriting a ts written before, in this
round or an earlier one (so in a chunk by now). The gateway is killed with SIGKILL at a
random moment, restarted on the same data dir (storage.sync alternates full / normal per
process) and every series is read back over REST, following the cursor, against the
test's own model:
- every (device, key, ts) appears at most once, in ts order, and only if it was written;
- a ts whose last acked write is w holds w's value or that of a write sent after w;
- a ts with no acked write since the last check holds what the last check saw (absent
  included: nothing resurrects) or the value of a write sent since;
- what a check saw is durable: it becomes the model's known state for the next rounds.
The model is updated before a line is sent, so a kill in the middle of a send only
leaves unacked writes behind. Acks already sent before the kill are read to the end of
the stream. Each round starts where the last left off, so later rounds replay and chunk
the older data again. GALE_KILL_ROUNDS (default 8) and GALE_KILL_SEED repeat a run."""
import json
import os
import random
import shutil
import socket
import tempfile
import threading
import time

from galetest import Check, Gale

t = Check("test_storage_kill")

ROUNDS = int(os.environ.get("GALE_KILL_ROUNDS", "8"))
SEED = int(os.environ.get("GALE_KILL_SEED", str(int(time.time() * 1000) % (1 << 31))))
BASE = 1700000000000
KEYS = ("t", "c", "on", "s", "x")  # float, integer, bool, string, any of those
ABSENT = ("absent",)
STRINGS = ("ok", "", "warn \"quoted\"", "back\\slash", "caf\u00e9 \u2713", "tab\there",
           "line\nbreak", "{\"not\":\"json\"}")
LOAD_MAX_S = 1.5  # kill at a random moment 0.05..LOAD_MAX_S s into the load
ROUND_JOIN_S = 30  # writers end once the gateway is gone; this bounds a stuck one


def norm(v):
    """A value as the model compares it: REST prints integral doubles as integers."""
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, (int, float)):
        return ("n", float(v))
    return ("s", v)


def gen_value(key, rng):
    if key == "x":
        key = rng.choice(("t", "c", "on", "s"))
    if key == "t":
        return round(rng.uniform(-100, 100), rng.choice((0, 1, 2, 6)))
    if key == "c":
        return rng.randrange(-(1 << 53) + 1, 1 << 53)
    if key == "on":
        return rng.random() < 0.5
    if rng.random() < 0.5:
        return rng.choice(STRINGS)
    return "%x" % rng.getrandbits(rng.randrange(1, 160))


class Device:
    """One device's model. Owned by its writer thread during a round's load, by the
    main thread while checking."""

    def __init__(self, dev_id, token):
        self.id = dev_id
        self.token = token
        self.known = {k: {} for k in KEYS}  # key -> ts -> value seen by the last check
        self.sent = {k: {} for k in KEYS}   # key -> ts -> [[value, acked], ...] since then
        self.frontier = BASE
        self.ts_list = []                   # every ts written, to pick overwrites from
        self.ts_set = set()
        self.msgs = {}                      # seq -> the [value, acked] entries it carries
        self.next_seq = 1
        self.acked = 0
        self.errors = []

    def pick_ts(self, rng):
        r = rng.random()
        if r < 0.1 and self.ts_list:
            ts = rng.choice(self.ts_list)                    # overwrite, maybe chunked
        elif r < 0.2:
            ts = self.frontier - rng.randrange(1, 200000)    # late, out of order
        else:
            self.frontier += rng.randrange(1, 20)
            ts = self.frontier
        if ts not in self.ts_set:
            self.ts_set.add(ts)
            self.ts_list.append(ts)
        return ts

    def message(self, rng):
        """One line; its writes enter the model (unacked) before it is sent."""
        seq = self.next_seq
        self.next_seq += 1
        entries = []

        def point(ts):
            keys = rng.sample(KEYS, rng.randint(1, len(KEYS)))
            values = {k: gen_value(k, rng) for k in keys}
            for k, v in values.items():
                e = [norm(v), False]
                self.sent[k].setdefault(ts, []).append(e)
                entries.append(e)
            return {"ts": ts, "values": values}

        if rng.random() < 0.7:
            obj = point(self.pick_ts(rng))
            obj["seq"] = seq
        else:
            tss = []
            for _ in range(rng.randint(2, 20)):
                ts = self.pick_ts(rng)
                if ts not in tss:  # one write per (key, ts) and message
                    tss.append(ts)
            obj = {"seq": seq, "batch": [point(ts) for ts in tss]}
        self.msgs[seq] = entries
        return json.dumps(obj) + "\n"

    def on_reply(self, reply):
        seq = reply.get("ack") if isinstance(reply, dict) and len(reply) == 1 else None
        entries = self.msgs.pop(seq, None) if isinstance(seq, int) else None
        if entries is None:
            self.errors.append("unexpected reply %r" % (reply,))
            return
        for e in entries:
            e[1] = True
        self.acked += 1


def writer(g, dev, rng, started):
    """Streams windows of 1..30 lines and reads their acks until the gateway is gone."""
    try:
        c = g.line(dev.id, dev.token)
    except Exception as e:
        dev.errors.append("connect: %r" % e)
        started.set()
        return
    started.set()
    try:
        while True:
            n = rng.randint(1, 30)
            c.send("".join(dev.message(rng) for _ in range(n)))
            for _ in range(n):
                dev.on_reply(c.read_line(timeout=ROUND_JOIN_S))
    except (ConnectionError, OSError, socket.timeout):
        pass
    # acks sent before the kill may still be queued behind a failed send
    try:
        while True:
            dev.on_reply(c.read_line(timeout=2))
    except (ConnectionError, OSError, socket.timeout, ValueError):
        pass
    c.close()


def allowed(dev, key, ts):
    entries = dev.sent[key].get(ts, [])
    last = max((i for i, e in enumerate(entries) if e[1]), default=None)
    if last is not None:
        return {e[0] for e in entries[last:]}
    return {dev.known[key].get(ts, ABSENT)} | {e[0] for e in entries}


def fetch(g, dev, lo, hi, limit, order="asc"):
    """Every point of every key in [lo, hi], following the cursor."""
    got = {k: [] for k in KEYS}
    q = "&to=%d&limit=%d&order=%s" % (hi, limit, order)
    path = "/api/devices/%s/telemetry?keys=%s&from=%d%s" % (dev.id, ",".join(KEYS), lo, q)
    total = sum(len(dev.known[k]) + len(dev.sent[k]) for k in KEYS)
    # a page holds `limit` points of each cut key, or fills the send budget (> 10000)
    for _ in range(total // min(limit, 10000) + 2 * len(KEYS) + 2):
        st, js = g.http("GET", path, timeout=30)
        assert st == 200, (st, js)
        cur = js.pop("_next", None)
        for k, pts in js.items():
            assert k in got, "key %r never written (%r)" % (k, pts[:3])
            got[k].extend(pts)
        if not cur:
            return got
        path = "/api/devices/%s/telemetry?cursor=%s&from=%d%s" % (dev.id, cur, lo, q)
    raise AssertionError("%s: the cursor did not end after %d points" % (dev.id, total))


def check(g, devs, rnd, rng):
    for dev in devs:
        limit = rng.choice((97, 1000, 5000, 100000))
        got = fetch(g, dev, 0, BASE * 2, limit)
        bad = []
        for k in KEYS:
            pts = got[k]
            tss = [p["ts"] for p in pts]
            t(all(a < b for a, b in zip(tss, tss[1:])),
              "round %d %s.%s: ts strictly rising, no duplicate (limit %d)" %
              (rnd, dev.id, k, limit))
            seen = {p["ts"]: norm(p["value"]) for p in pts}
            for ts in set(dev.known[k]) | set(dev.sent[k]) | set(seen):
                v = seen.get(ts, ABSENT)
                if v not in allowed(dev, k, ts):
                    bad.append("%s ts=%d got %r, allowed %r" %
                               (k, ts, v, sorted(allowed(dev, k, ts), key=repr)))
            dev.known[k] = seen
            dev.sent[k] = {}
        t(not bad, "round %d %s: %d points wrong, e.g. %s" % (rnd, dev.id, len(bad), bad[:5]))
        t(not dev.errors, "round %d %s: %s" % (rnd, dev.id, dev.errors[:5]))
        dev.errors = []
        dev.msgs = {}

    # a sub-range, and the same in descending order, agree with the full read
    dev = rng.choice(devs)
    tss = sorted({ts for k in KEYS for ts in dev.known[k]})
    if tss:
        lo, hi = sorted(rng.sample(tss, 2)) if len(tss) > 1 else (tss[0], tss[0])
        want = {k: sorted((ts, v) for ts, v in dev.known[k].items() if lo <= ts <= hi)
                for k in KEYS}
        for order in ("asc", "desc"):
            got = fetch(g, dev, lo, hi, rng.choice((50, 1000)), order)
            got = {k: [(p["ts"], norm(p["value"])) for p in got[k]] for k in KEYS}
            if order == "desc":
                got = {k: got[k][::-1] for k in KEYS}
            t.eq(got, want, "round %d %s [%d, %d] %s" % (rnd, dev.id, lo, hi, order))


def start(data_dir, rnd):
    sync = ("full", "normal")[rnd % 2]
    return Gale(data_dir=data_dir, args=["--set", "storage.hot_max_points=1000",
                                         "--set", "storage.sync=" + sync]).start()


def main():
    rng = random.Random(SEED)
    print("test_storage_kill: seed %d (GALE_KILL_SEED), %d rounds" % (SEED, ROUNDS), flush=True)
    data_dir = tempfile.mkdtemp(prefix="gale-kill-")
    g = None
    try:
        g = start(data_dir, 0)
        devs = []
        for i in range(rng.randint(8, 20)):
            dev_id = "kill-%02d" % i
            devs.append(Device(dev_id, g.create_device(dev_id)))
        total_acked = 0
        for rnd in range(ROUNDS):
            t0 = time.monotonic()
            started = [threading.Event() for _ in devs]
            ths = [threading.Thread(target=writer,
                                    args=(g, d, random.Random(rng.getrandbits(64)), s))
                   for d, s in zip(devs, started)]
            for th in ths:
                th.start()
            for s in started:
                s.wait(15)
            delay = rng.uniform(0.05, LOAD_MAX_S)
            time.sleep(delay)
            g.kill9()
            for th in ths:
                th.join(ROUND_JOIN_S)
            t(not any(th.is_alive() for th in ths), "round %d: writers ended" % rnd)
            acked = sum(d.acked for d in devs) - total_acked
            total_acked += acked
            unacked = sum(len(d.msgs) for d in devs)
            g = start(data_dir, rnd + 1)
            check(g, devs, rnd, rng)
            print("round %d: killed after %.2f s, %d messages acked, %d unacked, round took "
                  "%.1f s" % (rnd, delay, acked, unacked, time.monotonic() - t0), flush=True)
        t(total_acked > 0, "some messages were acked (%d)" % total_acked)

        # a clean stop and start keeps the same picture
        t.eq(g.stop(), 0, "clean stop")
        g = start(data_dir, ROUNDS + 1)
        check(g, devs, ROUNDS, rng)
        t.eq(g.stop(), 0, "clean stop after the last check")
    except BaseException:
        if g is not None:
            print("---- gale log ----\n" + g.log()[-8000:])
        raise
    finally:
        if g is not None and g.alive():
            g.kill9()
        shutil.rmtree(data_dir, ignore_errors=True)


t.run(main)
