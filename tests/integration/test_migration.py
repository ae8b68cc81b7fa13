"""Databases written by older layouts upgrade on first start and lose nothing.

The fixtures under tests/fixtures/storage (made by make_fixtures.py with the real old
binaries: v2 = schema version 2, v3 = schema version 3) hold telemetry in both old tiers
(the compacted table and the log), devices with tokens, a retained MQTT message, a
persistent session with queued messages and two commands, plus what the old binary's
REST API answered for them. For each fixture, on a copy: the current binary starts on
it, and every answer equals the old one (raw telemetry exactly: values, types, ts and
order; aggregates exactly for count/min/max/first/last, avg and sum within 1e-9
relative; latest; the devices but for the fields that change with presence); the tokens
still authenticate and a new write is stored; the retained message and the session with
its subscriptions and queued messages survive; a restart keeps all of it and migrates
nothing again. A database newer than the binary is refused (non-zero exit, a log line
with the path and both versions) and left byte for byte as it was.

The fixtures' commands are re-dated to now on the copy before the start (the gateway
loads only the last 7 days of commands and expires them): the only edit to a fixture."""
import json
import os
import queue
import re
import shutil
import sqlite3
import tempfile
import time

import paho.mqtt.client as paho

from galetest import Check, Gale, wait_for

t = Check("test_migration")
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "storage")
PROBE_KEY = "probe_after_upgrade"        # the key the test writes: left out of the comparisons
PROBE_TS = 1710000000000
PRESENCE_FIELDS = ("last_seen", "online", "connections")
REL = 1e-9


# ---- comparing answers ----

def diff(got, want, rel=0.0, where="$"):
    """The first difference between two JSON values, or None. Booleans never equal numbers;
    numbers compare as doubles (exactly, or within rel when rel is set)."""
    if isinstance(want, bool) or isinstance(got, bool):
        ok = type(got) is type(want) and got == want
    elif isinstance(want, (int, float)) and isinstance(got, (int, float)):
        g, w = float(got), float(want)
        ok = g == w or (rel > 0 and abs(g - w) <= rel * max(abs(g), abs(w)))
    elif isinstance(want, dict) and isinstance(got, dict):
        if sorted(got) != sorted(want):
            return "%s: keys %s, want %s" % (where, sorted(got), sorted(want))
        for k in want:
            d = diff(got[k], want[k], rel, "%s.%s" % (where, k))
            if d:
                return d
        return None
    elif isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return "%s: %d items, want %d" % (where, len(got), len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            d = diff(g, w, rel, "%s[%d]" % (where, i))
            if d:
                return d
        return None
    else:
        ok = type(got) is type(want) and got == want
    return None if ok else "%s: got %r, want %r" % (where, got, want)


def diff_series(got, want, rel):
    """Telemetry bodies {key: [{ts, value}]}: ts exact and in order, values within rel."""
    if sorted(got) != sorted(want):
        return "keys %s, want %s" % (sorted(got), sorted(want))
    for k in want:
        g, w = got[k], want[k]
        if [p["ts"] for p in g] != [p["ts"] for p in w]:
            return "%s: ts %s..., want %s..." % (k, [p["ts"] for p in g][:8],
                                                 [p["ts"] for p in w][:8])
        d = diff([p["value"] for p in g], [p["value"] for p in w], rel, k)
        if d:
            return d
    return None


def agg_of(path):
    m = re.search(r"[?&]agg=(\w+)", path)
    return m.group(1) if m else None


def without_probe(body):
    return {k: v for k, v in body.items() if k != PROBE_KEY}


def device_view(dev, ignore):
    return {k: v for k, v in dev.items() if k not in ignore}


def fetch_paged(g, path):
    """Follows the cursors to the end: (merged body, largest series in one page)."""
    merged, most, cursor = {}, 0, None
    for _ in range(1000):
        st, js = g.http("GET", path + ("&cursor=" + cursor if cursor else ""))
        if st != 200:
            return None, (st, js)
        cursor = js.pop("_next", None)
        for k, pts in js.items():
            merged.setdefault(k, []).extend(pts)
            most = max(most, len(pts))
        if not cursor:
            return merged, most
    return None, "cursor loop"


def compare(g, exp, label, ignore_device=PRESENCE_FIELDS):
    """Asks the running gateway every question of the fixture; counts each answer."""
    by_path = {a["path"]: a for a in exp["answers"]}
    bad = 0
    for a in exp["answers"]:
        path, kind = a["path"], a["kind"]
        what = "%s %s %s" % (label, kind, path)
        if kind == "paged":
            body, most = fetch_paged(g, path)
            if body is None:
                t(False, "%s: %r" % (what, most))
                bad += 1
                continue
            limit = int(re.search(r"limit=(\d+)", path).group(1))
            d = diff_series(without_probe(body), by_path[a["same_as"]]["body"], 0.0)
            if d is None and most > limit:
                d = "a page holds %d points, limit %d" % (most, limit)
        else:
            st, got = g.http("GET", path)
            if st != a["status"]:
                t(False, "%s: status %s %r" % (what, st, got))
                bad += 1
                continue
            want = a["body"]
            if kind == "devices":
                d = diff([device_view(x, ignore_device) for x in got["devices"]],
                         [device_view(x, ignore_device) for x in want["devices"]])
                d = d or diff(got["count"], want["count"])
            elif kind == "device":
                d = diff(device_view(got, ignore_device), device_view(want, ignore_device))
            elif kind == "latest":
                d = diff(without_probe(got), want)
            elif kind == "raw":
                got, want = dict(got), dict(want)
                has_next = (got.pop("_next", None) is not None, want.pop("_next", None) is not None)
                d = diff_series(without_probe(got), want, 0.0)
                if d is None and has_next[0] != has_next[1]:
                    d = "cursor present %s, want %s" % has_next
            else:  # agg: avg and sum may differ in the last bits with the summation order
                d = diff_series(got, want, REL if agg_of(path) in ("avg", "sum") else 0.0)
        if d:
            bad += 1
        t(d is None, "%s: %s" % (what, d))
    t.eq(bad, 0, "%s: answers that differ from the old binary's (of %d)" % (
        label, len(exp["answers"])))


# ---- the fixture's other state ----

def redate_commands(db):
    """Shifts the commands' times so the newest is now (see the module comment)."""
    con = sqlite3.connect(db)
    newest = con.execute("SELECT max(created_ms) FROM commands").fetchone()[0]
    delta = int(time.time() * 1000) - newest
    con.execute("UPDATE commands SET created_ms = created_ms + ?1, updated_ms = updated_ms + ?1,"
                " expires_ms = expires_ms + ?1", (delta,))
    con.commit()
    con.close()
    return delta


def user_version(db):
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA user_version").fetchone()[0]
    finally:
        con.close()


def check_commands(g, exp, delta, label, delivered=()):
    """Each command as the old binary showed it (times re-dated); those of the devices in
    delivered have since been delivered (their updated time is the delivery's)."""
    for want in exp["commands"]:
        st, got = g.http("GET", "/api/devices/%s/commands/%s" % (want["device"], want["id"]))
        want = dict(want)
        for k in ("created", "updated", "expires"):
            want[k] += delta
        if want["device"] in delivered:
            want["status"] = "delivered"
            got.pop("updated", None)
            want.pop("updated")
        t.eq((st, diff(got, want)), (200, None), "%s: command %s %s" % (label, want["name"],
                                                                           want["status"]))


def probe_tokens(g, exp, label, n):
    """Every device logs in with its fixture token and stores a new point (ack, then read
    back); a wrong token is refused."""
    for dev, tok in sorted(exp["tokens"].items()):
        c = g.line()
        try:
            t.eq(c.auth(dev, tok), {"ok": True}, "%s: %s logs in with its old token" % (label, dev))
            c.send_line({"seq": 7, "ts": PROBE_TS + n, "values": {PROBE_KEY: n}})
            line = c.read_line()
            while "command" in line:  # a queued command may be delivered on login
                line = c.read_line()
            t.eq(line, {"ack": 7}, "%s: %s's new write is acked" % (label, dev))
        finally:
            c.close()
        c = g.line()
        try:
            t("ok" not in c.auth(dev, tok[::-1]), "%s: %s with a wrong token is refused"
              % (label, dev))
        finally:
            c.close()


def check_probes(g, exp, label, upto):
    for dev in exp["tokens"]:
        st, js = g.http("GET", "/api/devices/%s/telemetry?keys=%s&from=0&to=%d" % (
            dev, PROBE_KEY, PROBE_TS + 100))
        t.eq((st, js), (200, {PROBE_KEY: [{"ts": PROBE_TS + n, "value": n} for n in upto]}),
             "%s: %s's new writes are stored" % (label, dev))


def mqtt(port, exp, client_id, user, clean):
    msgs, ready = queue.Queue(), queue.Queue()
    c = paho.Client(client_id=client_id, clean_session=clean, protocol=paho.MQTTv311)
    c.username_pw_set(user, exp["tokens"][user])
    c.on_connect = lambda cl, u, flags, rc: ready.put((rc, flags.get("session present")))
    c.on_message = lambda cl, u, m: msgs.put(m)
    c.on_subscribe = lambda cl, u, mid, qos: ready.put(("suback", qos))
    c.connect("127.0.0.1", port, 60)
    c.loop_start()
    return c, msgs, ready.get(timeout=10), ready


def gather(msgs, want, timeout=10):
    """Messages until every (topic, payload-test) of want has been seen; returns the rest."""
    seen, deadline = [], time.monotonic() + timeout
    while want and time.monotonic() < deadline:
        try:
            m = msgs.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append((m.topic, m.payload))
        want = [w for w in want if not (w[0] == m.topic and w[1](m.payload))]
    return want, seen


def check_retained(g, exp, label):
    r = exp["retained"]
    c, msgs, conn, ready = mqtt(g.ports["mqtt"], exp, "retained-check", "dev-b", True)
    try:
        t.eq(conn[0], 0, "%s: dev-b connects over MQTT with its old token" % label)
        c.subscribe(r["topic"], 1)
        m = msgs.get(timeout=10)
        t.eq((m.topic, m.payload.decode(), m.retain, m.qos), (r["topic"], r["payload"], True, 1),
             "%s: the retained message survives" % label)
    finally:
        c.disconnect()
        c.loop_stop()


def check_session(g, exp, label, first):
    """The persistent session: present, its queued messages (on the first start) and every
    filter delivering a new message."""
    s = exp["session"]
    port = g.ports["mqtt"]
    c, msgs, conn, _ = mqtt(port, exp, s["client_id"], s["username"], False)
    try:
        t.eq(conn, (0, 1), "%s: the persistent session is present" % label)
        if first:
            cmd = [x for x in exp["commands"] if x["device"] == s["username"]][0]
            q = s["queued"]
            missing, seen = gather(msgs, [
                (q["topic"], lambda p: p.decode() == q["payload"]),
                ("devices/%s/commands" % s["username"], lambda p: json.loads(p)["id"] == cmd["id"])])
            t.eq(missing, [], "%s: the session's queued message and command arrive (got %r)"
                 % (label, seen))
        p, pmsgs, pconn, _ = mqtt(port, exp, s["username"] + "-probe", s["username"], True)
        try:
            want = []
            for filt, _qos in s["filters"]:
                topic = filt.replace("#", "probe").replace("+", "probe")
                payload = "%s after %s" % (topic, label)
                p.publish(topic, payload, qos=1)
                want.append((topic, lambda b, payload=payload: b.decode() == payload))
            missing, seen = gather(msgs, want)
            t.eq(missing, [], "%s: every subscription of the session delivers (got %r)"
                 % (label, seen))
        finally:
            p.disconnect()
            p.loop_stop()
    finally:
        c.disconnect()
        c.loop_stop()


# ---- the runs ----

def check_fixture(name):
    with open(os.path.join(FIXTURES, name, "expected.json")) as f:
        exp = json.load(f)
    data = tempfile.mkdtemp(prefix="gale-upgrade-%s-" % name)
    try:
        for f in ("gale.db", "token.key"):
            shutil.copy(os.path.join(FIXTURES, name, f), data)
        db = os.path.join(data, "gale.db")
        t.eq(user_version(db), exp["schema_version"], "%s: the fixture's schema version" % name)
        delta = redate_commands(db)

        g = Gale(data_dir=data).start(wait_ports=("http", "line", "mqtt"))
        try:
            label = name + " first start"
            compare(g, exp, label)
            check_commands(g, exp, delta, label)
            probe_tokens(g, exp, label, 0)
            check_probes(g, exp, label, [0])
            check_retained(g, exp, label)
            check_session(g, exp, label, True)
            cmd = [x for x in exp["commands"] if x["device"] == exp["session"]["username"]][0]
            wait_for(lambda: g.http("GET", "/api/devices/%s/commands/%s" % (
                cmd["device"], cmd["id"]))[1].get("status") == "delivered", 10,
                "the session's command marked delivered")
        finally:
            t.eq(g.stop(), 0, "%s: first start stops cleanly" % name)
        migrated = user_version(db)
        t(migrated >= exp["schema_version"], "%s: schema version %d after the first start"
          % (name, migrated))
        if exp["schema_version"] < 3:
            t(re.search(r"migrat", g.log().replace(data, "<data>"), re.I),
              "%s: the first start logs its migration" % name)

        g = Gale(data_dir=data).start(wait_ports=("http", "line", "mqtt"))
        try:
            label = name + " restart"
            # the probes logged every device in over the line protocol: protocol changed too
            compare(g, exp, label, PRESENCE_FIELDS + ("protocol",))
            check_commands(g, exp, delta, label, delivered=(exp["session"]["username"],))
            check_probes(g, exp, label, [0])
            probe_tokens(g, exp, label, 1)
            check_probes(g, exp, label, [0, 1])
            check_retained(g, exp, label)
            check_session(g, exp, label, False)
            again = [l for l in g.log().replace(data, "<data>").splitlines()
                     if re.search(r"migrat", l, re.I)]
            t(not again, "%s: nothing is migrated again: %r" % (label, again))
        finally:
            t.eq(g.stop(), 0, "%s: restart stops cleanly" % name)
        t.eq(user_version(db), migrated, "%s: the schema version stays after the restart" % name)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def check_newer_refused():
    """A database from a newer version: refused before anything listens, left untouched."""
    data = tempfile.mkdtemp(prefix="gale-upgrade-newer-")
    try:
        for f in ("gale.db", "token.key"):
            shutil.copy(os.path.join(FIXTURES, "v3", f), data)
        db = os.path.join(data, "gale.db")
        con = sqlite3.connect(db)
        con.execute("PRAGMA user_version = 99")
        con.commit()
        con.close()
        t(not os.path.exists(db + "-wal"), "the newer database is checkpointed")
        with open(db, "rb") as f:
            before = f.read()
        g = Gale(data_dir=data)
        try:
            g.start()
        except AssertionError:
            pass  # it is meant to exit early
        try:
            g.proc.wait(15)
        except Exception:
            g.kill9()
        rc = g.proc.returncode
        t(rc is not None and rc > 0, "a newer schema makes gale exit non-zero (rc=%r)" % rc)
        wait_for(lambda: "stopped" in g.log() or not g.alive(), 5, "the last log lines")
        time.sleep(0.2)  # the reader thread drains the pipe after the exit
        log = g.log()
        lines = [l for l in log.splitlines() if db in l and re.search(r"\b99\b", l)]
        versions = [int(v) for l in lines for v in re.findall(r"\b(\d+)\b", l)
                    if 3 <= int(v) < 99]
        t(lines and versions, "the refusal names the path, version 99 and the build's: %r"
          % (lines or log[-2000:]))
        t(not g.ports, "nothing listened: %r" % g.ports)
        with open(db, "rb") as f:
            t(f.read() == before, "the newer database is left byte for byte as it was")
        t.eq(user_version(db), 99, "its schema version is still 99")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main():
    for name in ("v2", "v3"):
        check_fixture(name)
    check_newer_refused()


t.run(main)
