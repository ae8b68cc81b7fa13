"""Telemetry queries over REST: times (epoch ms, RFC 3339, relative), durations, agg names,
epoch- and time-zone-aligned buckets (a 23-hour DST day in Europe/Berlin), paging raw points
and buckets with the cursor (pages sum to the unpaged answer; no bucket split across pages),
unknown parameters, CSV (parsed back), several devices in one query, and the ts-in-seconds
rule of ingest (a ts below 1e11 is seconds). Expected aggregates are computed here from the points sent.
CSV over more than a page is streamed (chunked): it parses back to the JSON answer, a cut by
limit names the cursor in a trailer, a slow reader does not grow the gateway's memory with the
reply, and a client leaving mid-stream leaves the gateway serving."""
import base64
import csv
import io
import json
import socket
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from galetest import Check, Gale, metric, wait_for

t = Check("test_rest_query")
BASE = 1700000000000  # 2023-11-14T22:13:20Z


def ingest(g, dev, points):
    for i in range(0, len(points), 500):
        st, js = g.http("POST", "/api/devices/%s/telemetry" % dev, points[i:i + 500])
        assert st == 200, (st, js)


def get(g, path, **params):
    return g.http("GET", path + "?" + urllib.parse.urlencode(params))


def walk(g, path, key_of, **params):
    """Every page of a query, following _next; returns (pages, points per key)."""
    out, pages = {}, 0
    st, js = get(g, path, **params)
    while True:
        t.eq(st, 200, "page status")
        pages += 1
        for k, v in key_of(js).items():
            out.setdefault(k, []).extend(v)
        if "_next" not in js or pages > 1000:
            break
        params = dict(params, cursor=js["_next"])
        params.pop("keys", None)
        st, js = get(g, path, **params)
    return pages, out


def buckets(points, start_of):
    """{bucket start: [values]} in ts order."""
    b = {}
    for ts, v in points:
        b.setdefault(start_of(ts), []).append(v)
    return b


def agg(vals, how):
    return {"avg": sum(vals) / len(vals), "min": min(vals), "max": max(vals),
            "sum": sum(vals), "count": len(vals), "first": vals[0], "last": vals[-1]}[how]


def close(a, b):
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def series_eq(got, want, what):
    ok = len(got) == len(want) and all(
        g["ts"] == w[0] and close(g["value"], w[1]) for g, w in zip(got, want))
    t(ok, "%s: got %r..., want %r..." % (what, got[:3], want[:3]))


def raw_request(g, target, version="1.1", method="GET", rcvbuf=None):
    """A connected socket that has sent one request (no body)."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", g.ports["http"]))
    s.sendall(("%s %s HTTP/%s\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
               % (method, target, version, g.api_key)).encode())
    s.settimeout(30)
    return s


class Reader:
    """Reads an HTTP reply off a socket: head, chunked body (with trailers) or a body that
    the close ends."""

    def __init__(self, s, pace=None):
        self.s, self.buf, self.pace = s, b"", pace

    def _more(self):
        if self.pace:
            self.pace()
        d = self.s.recv(16384 if self.pace else 1 << 20)
        if not d:
            raise EOFError
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self._more()
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l.decode()

    def take(self, n):
        while len(self.buf) < n:
            self._more()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def head(self):
        status = int(self.line().split()[1])
        hdrs = {}
        while True:
            l = self.line()
            if not l:
                return status, hdrs
            k, v = l.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()

    def chunked(self):
        """(body, trailers)"""
        parts = []
        while True:
            n = int(self.line().split(";")[0], 16)
            if n == 0:
                break
            parts.append(self.take(n))
            self.take(2)
        trailers = {}
        while True:
            l = self.line()
            if not l:
                return b"".join(parts), trailers
            k, v = l.split(":", 1)
            trailers[k.strip().lower()] = v.strip()

    def to_close(self):
        try:
            while True:
                self._more()
        except EOFError:
            return self.buf


def csv_streaming():
    """CSV of long ranges: streamed page by page, bounded, and a disconnect is harmless."""
    long_key = "temperature_of_the_third_sensor_on_the_north_wall"  # long rows, cheap storage
    n = 50000
    with Gale(args=["--set", "limits.max_points_per_message=20000"]) as g:
        g.create_device("big")
        pts = [(BASE + i * 100, (i * 13) % 1000 / 8) for i in range(n)]
        for i in range(0, n, 5000):
            st, js = g.http("POST", "/api/devices/big/telemetry",
                            [{"ts": ts, "values": {"v": v, "w": i % 2 == 0}}
                             for ts, v in pts[i:i + 5000]])
            assert st == 200, (st, js)
        P = "/api/devices/big/telemetry"
        _, js = walk(g, P, lambda j: {k: j[k] for k in ("v", "w") if k in j}, keys="v,w",
                     limit=100000)
        t.eq((len(js["v"]), len(js["w"])), (n, n), "JSON answer (paged): every point")
        s = raw_request(g, P + "?keys=v,w&limit=100000&format=csv")
        r = Reader(s)
        st, hdrs = r.head()
        t.eq((st, hdrs.get("transfer-encoding"), "content-length" in hdrs),
             (200, "chunked", False), "a long CSV is streamed in chunks")
        body, trailers = r.chunked()
        rows = list(csv.reader(io.StringIO(body.decode())))
        want = [(p["ts"], k, p["value"]) for k in ("v", "w") for p in js[k]]
        t.eq(rows[0], ["ts", "key", "value"], "streamed CSV header")
        t([(int(ts), k, {"true": True, "false": False}.get(v) if k == "w" else float(v))
           for ts, k, v in rows[1:]] == want,
          "multi-page CSV parses back to exactly the JSON answer")
        t("x-gale-next-cursor" not in trailers, "nothing cut: no cursor")
        # keep-alive: the next request on the same connection is answered
        s.sendall(("GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n").encode())
        st, hdrs = r.head()
        t.eq(st, 200, "the connection serves the next request after a streamed reply")
        s.close()

        # limit cuts a streamed reply: the cursor comes in the X-Gale-Next-Cursor trailer
        s = raw_request(g, P + "?keys=v&limit=30000&format=csv")
        r = Reader(s)
        st, hdrs = r.head()
        t("x-gale-next-cursor" in hdrs.get("trailer", "").lower(), "Trailer header announced")
        body, trailers = r.chunked()
        s.close()
        rows = list(csv.reader(io.StringIO(body.decode())))[1:]
        t.eq(len(rows), 30000, "limit caps a streamed CSV")
        t("x-gale-next-cursor" in trailers, "a cut streamed CSV names its cursor in a trailer")
        st, body, hdrs = g.http("GET", P + "?" + urllib.parse.urlencode(
            {"limit": 100000, "format": "csv", "cursor": trailers.get("x-gale-next-cursor", "")}),
            raw=True)
        rows += list(csv.reader(io.StringIO(body.decode())))[1:]
        t.eq([int(x[0]) for x in rows], [p["ts"] for p in js["v"]],
             "the trailer's cursor resumes exactly where the stream stopped")
        # HTTP/1.0: no chunks, the close ends the body
        s = raw_request(g, P + "?keys=v&limit=100000&format=csv", version="1.0")
        r = Reader(s)
        st, hdrs = r.head()
        body = r.to_close()
        s.close()
        t.eq((st, "transfer-encoding" in hdrs), (200, False), "HTTP/1.0: not chunked")
        t(body.startswith(b"ts,key,value\n"), "HTTP/1.0: CSV body")

        # a slow reader: the gateway holds about a page and the send budget, not the reply
        for i in range(0, 4 * n, 5000):
            st, _ = g.http("POST", "/api/devices/big/telemetry",
                           [{"ts": BASE + 10 ** 9 + (i + k) * 10, "values": {long_key: k}}
                            for k in range(5000)])
            assert st == 200
        g.http("GET", P + "?keys=v&limit=2000&format=csv", raw=True)  # warm the reader pool
        before = g.rss_kb()
        peak = [before]
        s = raw_request(g, P + "?keys=%s&limit=100000&from=%d&format=csv"
                        % (long_key, BASE + 10 ** 9), rcvbuf=16384)

        def pace():
            peak[0] = max(peak[0], g.rss_kb())
            time.sleep(0.001)
        r = Reader(s, pace)
        st, hdrs = r.head()
        body, _ = r.chunked()
        s.close()
        lines = body.count(b"\n") - 1
        t.eq(lines, 100000, "slow reader: every row arrives")
        t(len(body) > 6 * 1024 * 1024, "the reply is large (%d bytes)" % len(body))
        t((peak[0] - before) * 1024 < len(body) / 3,
          "slow reader: RSS grew %d kB for a %d kB reply" % (peak[0] - before, len(body) // 1024))

        # clients leaving mid-stream: the paging stops, the gateway goes on serving
        for i in range(5):
            s = raw_request(g, P + "?keys=%s&limit=100000&from=%d&format=csv"
                            % (long_key, BASE + 10 ** 9), rcvbuf=8192)
            Reader(s).head()
            s.recv(4096)
            s.close()
        st, body, _ = g.http("GET", P + "?keys=v,w&limit=100000&format=csv", raw=True)
        t.eq(body.count(b"\n") - 1, 2 * n, "after disconnects mid-stream: a full CSV again")
        t.eq(g.http("GET", "/api/health")[0], 200, "and health answers")
        wait_for(lambda: metric(g, "gale_connections") <= 1, 10, "streams closed")
        t(g.alive(), "alive")


def main():
    with Gale() as g:
        g.create_device("q1")
        g.create_device("q2")
        # 1 Hz for 30 minutes, values that make every aggregate differ
        pts = [(BASE + i * 1000, (i * 7) % 101 + i / 1000) for i in range(1800)]
        ingest(g, "q1", [{"ts": ts, "values": {"v": v}} for ts, v in pts])
        ingest(g, "q2", [{"ts": ts, "values": {"v": -v, "w": 1}} for ts, v in pts[:600]])

        # ---- raw points: unpaged vs paged walk ----
        st, js = get(g, "/api/devices/q1/telemetry", keys="v", limit=100000)
        t.eq((st, len(js["v"]), "_next" in js), (200, 1800, False), "unpaged raw: all points")
        pages, got = walk(g, "/api/devices/q1/telemetry", lambda j: {"v": j.get("v", [])},
                          keys="v", limit=77)
        t.eq([p["ts"] for p in got["v"]], [ts for ts, _ in pts], "raw pages give each point once")
        t.eq(pages, -(-1800 // 77), "raw page count")
        pages, got = walk(g, "/api/devices/q1/telemetry", lambda j: {"v": j.get("v", [])},
                          keys="v", limit=500, order="desc")
        t.eq([p["ts"] for p in got["v"]], [ts for ts, _ in reversed(pts)], "desc raw pages")

        # ---- buckets: every agg against values computed here; epoch alignment ----
        for how in ["avg", "min", "max", "sum", "count", "first", "last"]:
            want = buckets(pts, lambda ts: ts - ts % 60000)
            st, js = get(g, "/api/devices/q1/telemetry", keys="v", agg=how.upper(),
                         interval="1m", limit=1000)
            t.eq(st, 200, "agg=%s status" % how.upper())
            series_eq(js["v"], [(b, agg(v, how)) for b, v in sorted(want.items())],
                      "agg=%s over 1m buckets" % how)
        st, a = get(g, "/api/devices/q1/telemetry", keys="v", agg="avg", interval="60000")
        st, b = get(g, "/api/devices/q1/telemetry", keys="v", agg="avg", interval="60s")
        t.eq(a, b, "interval in ms and as a duration agree")
        t(all(p["ts"] % 60000 == 0 for p in a["v"]), "buckets start at epoch multiples")
        st, js = get(g, "/api/devices/q1/telemetry", keys="v", agg="none", limit=5)
        t.eq(len(js["v"]), 5, "agg=none is raw")

        # ---- bucket paging: whole buckets only, cursor = next bucket's start ----
        for iv, lim in [(60000, 4), (7000, 13), (300000, 1)]:
            st, whole = get(g, "/api/devices/q1/telemetry", keys="v", agg="avg",
                            interval=str(iv), limit=100000)
            pages, got = walk(g, "/api/devices/q1/telemetry", lambda j: {"v": j.get("v", [])},
                              keys="v", agg="avg", interval=str(iv), limit=lim)
            t.eq(got["v"], whole["v"], "interval %d limit %d: pages == unpaged" % (iv, lim))
            t.eq(pages, -(-len(whole["v"]) // lim), "interval %d: page count" % iv)
            st, cnt = get(g, "/api/devices/q1/telemetry", keys="v", agg="count",
                          interval=str(iv), limit=lim)
            t(all(p["value"] == iv // 1000 for p in cnt["v"][1:]),
              "interval %d: no partial bucket on the first page" % iv)
            pages, got = walk(g, "/api/devices/q1/telemetry", lambda j: {"v": j.get("v", [])},
                              keys="v", agg="count", interval=str(iv), limit=lim)
            t.eq(sum(p["value"] for p in got["v"]), 1800, "interval %d: counts sum" % iv)
        st, js = get(g, "/api/devices/q1/telemetry", keys="v", agg="sum", interval="1m",
                     limit=2)
        cur = json.loads(base64.urlsafe_b64decode(js["_next"] + "=="))
        t.eq(cur, {"v": js["v"][-1]["ts"] + 60000}, "bucket cursor is the next bucket's start")
        pages, got = walk(g, "/api/devices/q1/telemetry", lambda j: {"v": j.get("v", [])},
                          keys="v", agg="sum", interval="1m", limit=4, order="desc")
        st, whole = get(g, "/api/devices/q1/telemetry", keys="v", agg="sum", interval="1m",
                        order="desc")
        t.eq(got["v"], whole["v"], "desc bucket pages == unpaged")

        # ---- times ----
        iso = lambda ms: datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()
        st, js = get(g, "/api/devices/q1/telemetry", keys="v",
                     **{"from": iso(BASE + 10000), "to": iso(BASE + 12000)})
        t.eq([p["ts"] - BASE for p in js["v"]], [10000, 11000, 12000], "RFC 3339 from/to")
        st, js = get(g, "/api/devices/q1/telemetry", keys="v",
                     **{"from": "2023-11-14T23:13:30.000+01:00", "to": "2023-11-14T22:13:31Z"})
        t.eq([p["ts"] - BASE for p in js["v"]], [10000, 11000], "RFC 3339 with an offset")
        now = int(time.time() * 1000)
        ingest(g, "q2", [{"ts": now - 2 * 3600 * 1000, "values": {"r": 1}},
                         {"ts": now - 30 * 60 * 1000, "values": {"r": 2}},
                         {"ts": now - 5 * 60 * 1000, "values": {"r": 3}}])
        st, js = get(g, "/api/devices/q2/telemetry", keys="r", **{"from": "-1h"})
        t.eq([p["value"] for p in js["r"]], [2, 3], "from=-1h")
        st, js = get(g, "/api/devices/q2/telemetry", keys="r", **{"from": "now-3h", "to": "-15m"})
        t.eq([p["value"] for p in js["r"]], [1, 2], "from=now-3h&to=-15m")
        st, js = get(g, "/api/devices/q2/telemetry", keys="r", **{"from": "now"})
        t.eq(js["r"], [], "from=now: nothing yet")

        # ---- errors ----
        P = "/api/devices/q1/telemetry"
        for params, code, what in [
                ({"startTs": 1, "endTs": 2}, "unknown_param", "ThingsBoard names"),
                ({"keys": "v", "limt": 5}, "unknown_param", "a typo"),
                ({"interval": "1m"}, "bad_param", "interval without agg"),
                ({"agg": "avg"}, "bad_param", "agg without interval"),
                ({"agg": "median", "interval": "1m"}, "bad_param", "unknown agg"),
                ({"agg": "avg", "interval": "1x"}, "bad_param", "bad duration"),
                ({"agg": "avg", "interval": "0"}, "bad_param", "zero interval"),
                ({"from": "yesterday"}, "bad_param", "bad from"),
                ({"from": "2026-13-01T00:00:00Z"}, "bad_param", "bad month"),
                ({"agg": "avg", "interval": "1h", "tz": "Europe/Berlin"}, "bad_param",
                 "tz with sub-day buckets"),
                ({"agg": "avg", "interval": "1d", "tz": "Mars/Olympus"}, "bad_param",
                 "unknown tz"),
                ({"agg": "avg", "interval": "1d", "tz": "../../etc/passwd"}, "bad_param",
                 "tz path"),
                ({"tz": "UTC"}, "bad_param", "tz without agg"),
                ({"format": "xml"}, "bad_param", "bad format"),
                ({"order": "up"}, "bad_param", "bad order")]:
            st, js = get(g, P, **params)
            t.eq((st, js.get("code")), (400, code), what + " -> 400 " + code)
        st, js = get(g, P, startTs=1, keys="v")
        t("startTs" in js["error"], "the error names the unknown parameter")

        # ---- CSV ----
        st, body, hdrs = g.http("GET", P + "?keys=v&limit=100000&format=csv", raw=True)
        t("text/csv" in hdrs.get("Content-Type", ""), "format=csv: text/csv")
        rows = list(csv.reader(io.StringIO(body.decode())))
        t.eq(rows[0], ["ts", "key", "value"], "CSV header")
        t.eq([(int(r[0]), r[1], float(r[2])) for r in rows[1:]], [(ts, "v", v) for ts, v in pts],
             "CSV rows parse back to the points")
        st, body2, hdrs = g.http("GET", P + "?keys=v&limit=100000", raw=True,
                                 headers={"Accept": "text/csv"})
        t.eq(body2, body, "Accept: text/csv gives the same CSV")
        # paged CSV: the cursor comes as a header
        rows, params, pages = [], {"keys": "v", "limit": 700, "format": "csv"}, 0
        while True:
            st, body, hdrs = g.http("GET", P + "?" + urllib.parse.urlencode(params), raw=True)
            rows += list(csv.reader(io.StringIO(body.decode())))[1:]
            pages += 1
            if "X-Gale-Next-Cursor" not in hdrs:
                break
            params = {"limit": 700, "format": "csv", "cursor": hdrs["X-Gale-Next-Cursor"]}
        t.eq((pages, len(rows)), (3, 1800), "CSV pages via X-Gale-Next-Cursor")
        ingest(g, "q2", [{"ts": BASE, "values": {"s": 'a,"b"\nc', "j": {"x": [1, 2]}}}])
        st, body, _ = g.http("GET", "/api/devices/q2/telemetry?keys=s,j&format=csv", raw=True)
        rows = list(csv.reader(io.StringIO(body.decode())))
        t.eq(rows[1:], [[str(BASE), "s", 'a,"b"\nc'], [str(BASE), "j", '{"x":[1,2]}']],
             "CSV quotes strings and JSON values")

        # ---- several devices ----
        st, js = get(g, "/api/telemetry", devices="q1,q2", keys="v", limit=100000)
        t.eq(st, 200, "multi-device status")
        t.eq(sorted(js["devices"]), ["q1", "q2"], "both devices answered")
        t.eq(len(js["devices"]["q1"]["v"]), 1800, "q1 points")
        t.eq([p["value"] for p in js["devices"]["q2"]["v"]], [-v for _, v in pts[:600]],
             "q2 points")
        pages, got = walk(g, "/api/telemetry",
                          lambda j: {d + "/" + k: v for d, ks in j["devices"].items()
                                     for k, v in ks.items()},
                          devices="q1,q2", keys="v,w", limit=250, agg="count", interval="10s")
        t.eq((sum(p["value"] for p in got["q1/v"]), sum(p["value"] for p in got["q2/w"])),
             (1800, 600), "multi-device bucket pages sum up")
        st, body, _ = g.http("GET", "/api/telemetry?devices=q1,q2&keys=w&format=csv", raw=True)
        rows = list(csv.reader(io.StringIO(body.decode())))
        t.eq((rows[0], len(rows) - 1, rows[1][1]), (["ts", "device", "key", "value"], 600, "q2"),
             "multi-device CSV")
        st, js = get(g, "/api/telemetry", devices="q1,nope", keys="v")
        t.eq((st, js.get("code")), (404, "not_found"), "unknown device in the list -> 404")
        st, js = get(g, "/api/telemetry", keys="v")
        t.eq((st, js.get("code")), (400, "bad_param"), "devices missing -> 400")
        st, js = g.http("POST", "/api/telemetry", {})
        t.eq(st, 405, "POST /api/telemetry -> 405")

        # ---- a DST day: local calendar days in Europe/Berlin ----
        g.create_device("dst")
        berlin = ZoneInfo("Europe/Berlin")
        start = datetime(2026, 3, 27, tzinfo=berlin)
        end = datetime(2026, 4, 1, tzinfo=berlin)
        step = 600000
        t0, t1 = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        dpts = [(ts, (ts // step) % 17) for ts in range(t0, t1, step)]
        ingest(g, "dst", [{"ts": ts, "values": {"v": v}} for ts, v in dpts])

        def local_day(ts):
            d = datetime.fromtimestamp(ts / 1000, berlin).date()
            return int(datetime(d.year, d.month, d.day, tzinfo=berlin).timestamp() * 1000)
        want = buckets(dpts, local_day)
        st, js = get(g, "/api/devices/dst/telemetry", keys="v", agg="count", interval="1d",
                     tz="Europe/Berlin")
        t.eq([(p["ts"], p["value"]) for p in js["v"]],
             [(b, len(v)) for b, v in sorted(want.items())], "count per Berlin day")
        day29 = int(datetime(2026, 3, 29, tzinfo=berlin).timestamp() * 1000)
        t.eq(dict((p["ts"], p["value"]) for p in js["v"])[day29], 23 * 6,
             "2026-03-29 has 23 hours of points")
        st, js = get(g, "/api/devices/dst/telemetry", keys="v", agg="avg", interval="1d",
                     tz="Europe/Berlin")
        series_eq(js["v"], [(b, agg(v, "avg")) for b, v in sorted(want.items())],
                  "avg per Berlin day")
        pages, got = walk(g, "/api/devices/dst/telemetry", lambda j: {"v": j.get("v", [])},
                          keys="v", agg="avg", interval="1d", tz="Europe/Berlin", limit=2)
        t.eq(got["v"], js["v"], "Berlin day buckets paged == unpaged")
        st, js = get(g, "/api/devices/dst/telemetry", keys="v", agg="count", interval="1d")
        utc = buckets(dpts, lambda ts: ts - ts % 86400000)
        t.eq([(p["ts"], p["value"]) for p in js["v"]],
             [(b, len(v)) for b, v in sorted(utc.items())], "without tz: UTC days")

        # ---- ingest: a ts below 1e11 is taken for seconds ----
        g.create_device("sec")
        st, js = g.http("POST", "/api/devices/sec/telemetry",
                        [{"ts": 1700000000, "values": {"v": 1}},
                         {"ts": 99999999999, "values": {"v": 2}},
                         {"ts": 100000000000, "values": {"v": 3}}])
        t.eq(st, 200, "ts in seconds accepted")
        st, js = get(g, "/api/devices/sec/telemetry", keys="v")
        t.eq([(p["ts"], p["value"]) for p in js["v"]],
             [(100000000000, 3), (1700000000000, 1), (99999999999000, 2)],
             "below 1e11: seconds, converted to ms; 1e11 and above: ms")
        c = g.line("sec", g.http("POST", "/api/devices/sec/token")[1]["token"])
        c.send_line({"ts": 1700000001, "values": {"l": 1}, "seq": 1})
        t.eq(c.read_line(), {"ack": 1}, "line protocol: seconds acked")
        st, js = get(g, "/api/devices/sec/telemetry", keys="l")
        t.eq(js["l"], [{"ts": 1700000001000, "value": 1}], "line protocol: seconds converted")
        t(g.alive(), "alive")
    csv_streaming()


t.run(main)
