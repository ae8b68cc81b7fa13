"""Observability: /metrics without the key by default and only with it under
http.metrics_auth=true; process metrics present and sane; gale_build_info; every
protocol's gauge present at 0; auth failures labelled by protocol and reason; the ack,
commit and HTTP latency histograms well-formed and growing; the HTTP access log in its
common and JSON formats (credentials redacted) and off by default."""
import json
import os
import re
import time

import mqttraw as mr
from galetest import Check, Gale, metric, wait_for

t = Check("test_metrics")
PROTOCOLS = ("http", "line", "mqtt", "ws-device", "ws-live")


def scrape(g, key=None):
    st, text = g.http("GET", "/metrics", key=key)
    return st, text


def samples(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(None, 1)
            out[name] = float(value)
    return out


def histogram_ok(t, s, name):
    buckets = sorted(((float(k.split('le="')[1].rstrip('"}')) if "+Inf" not in k else float("inf")), v)
                     for k, v in s.items() if k.startswith(name + "_bucket{"))
    t(len(buckets) == 17, "%s: 16 buckets and +Inf" % name)
    counts = [v for _, v in buckets]
    t(counts == sorted(counts), "%s: buckets are cumulative" % name)
    t.eq(counts[-1], s[name + "_count"], "%s: +Inf equals _count" % name)
    t(s[name + "_sum"] >= 0, "%s: _sum present" % name)
    return s[name + "_count"]


def default_gateway(t):
    with Gale() as g:
        st, text = scrape(g)
        t.eq(st, 200, "/metrics readable without the key by default")
        s = samples(text)
        t(0 < s["process_cpu_seconds_total"] < 600, "process CPU seconds sane")
        t(1 << 20 < s["process_resident_memory_bytes"] < 4 << 30, "RSS sane")
        t(s["process_virtual_memory_bytes"] >= s["process_resident_memory_bytes"], "virtual >= RSS")
        t(3 < s["process_open_fds"] < 1000, "open fds sane")
        t(abs(s["process_start_time_seconds"] - time.time()) < 120, "start time is now-ish")
        t(any(k.startswith('gale_build_info{version="') and v == 1 for k, v in s.items()),
          "gale_build_info with the version")
        for p in PROTOCOLS:
            t('gale_connections_by_protocol{protocol="%s"}' % p in s, "gauge for %s present" % p)
        t.eq(s['gale_connections_by_protocol{protocol="ws-live"}'], 0, "at 0 when none is connected")
        t(re.search(r"^gale_uptime_seconds \d+(\.\d{1,3})?$", text, re.M), "uptime not printed to 17 digits")
        st, js = g.http("GET", "/metrics", key="wrong")
        t.eq(st, 200, "a wrong key does not matter either")
        err = g.http("POST", "/metrics", {})
        t.eq(err[0], 405, "POST /metrics: 405")

        # histograms grow
        h0 = histogram_ok(t, s, "gale_http_request_seconds")
        a0 = histogram_ok(t, s, "gale_ack_seconds")
        c0 = histogram_ok(t, s, "gale_storage_commit_seconds")
        tok = g.create_device("dev-1")
        c = g.line("dev-1", tok)
        for i in range(5):
            c.send_line({"seq": i + 1, "temp": i})
            t.eq(c.read_line(), {"ack": i + 1}, "acked %d" % (i + 1))
        c.close()
        s = samples(scrape(g)[1])
        t(histogram_ok(t, s, "gale_http_request_seconds") > h0, "HTTP latency count grows")
        t(histogram_ok(t, s, "gale_ack_seconds") >= a0 + 5, "ack latency counts every ack")
        t(histogram_ok(t, s, "gale_storage_commit_seconds") > c0, "commit latency count grows")

        # auth failures by protocol and reason
        bad = mr.Raw(g.ports["mqtt"])
        t.eq(bad.connect("x", username="dev-1", password="wrong").rc, 4, "bad MQTT token refused")
        bad.close()
        g.http("GET", "/api/devices", key="wrong")
        wait_for(lambda: metric(g, 'gale_auth_failures_total{protocol="mqtt",reason="bad_token"}') == 1,
                 5, "mqtt failure counted")
        t.eq(metric(g, 'gale_auth_failures_total{protocol="http",reason="bad_api_key"}'), 1,
             "http failure counted apart")
        t.eq(metric(g, "gale_auth_failures_total"), 2, "the family sums both")
        t(not any("access" in l and "GET /metrics" in l for l in g.log_lines),
          "no access log by default")


def metrics_auth(t):
    with Gale(args=["--set", "http.metrics_auth=true"]) as g:
        st, js = g.http("GET", "/metrics", key=None)
        t.eq((st, js.get("code")), (401, "unauthorized"), "metrics_auth=true: 401 without the key")
        t.eq(g.http("GET", "/metrics", key="wrong")[0], 401, "and with a wrong one")
        t.eq(g.http("GET", "/metrics")[0], 200, "200 with the key")


def access_log(t):
    with Gale(args=["--set", "http.access_log=common"]) as g:
        g.http("GET", "/api/health?token=secret1&x=1", headers={"User-Agent": "probe/1.0",
                                                                "Referer": "http://r/"})
        g.http("GET", "/api/nothing-here")
        line = g.wait_log(r'"GET /api/health\?token=REDACTED&x=1 HTTP/1\.1" 200')
        # the user field names the API key the request carried (galetest sends the default)
        t(re.search(r'level=info 127\.0\.0\.1 - default \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                    r'"GET /api/health\?token=REDACTED&x=1 HTTP/1\.1" 200 \d+ "http://r/" '
                    r'"probe/1\.0" \d+\.\d{6}', g.log()), "combined format line")
        g.wait_log(r'"GET /api/nothing-here HTTP/1\.1" 404')
        t("secret1" not in g.log(), "the token never reaches the log")
    with Gale(args=["--set", "http.access_log=json"]) as g:
        g.http("POST", "/api/devices", {"id": "dev-j"}, headers={"User-Agent": "probe/2"})
        g.wait_log(r'"type":"access"')
        lines = [l for l in g.log_lines if '"type":"access"' in l]
        js = json.loads(lines[0][lines[0].index("{"):])
        t.eq((js["method"], js["target"], js["status"], js["user_agent"], js["remote"]),
             ("POST", "/api/devices", 201, "probe/2", "127.0.0.1"), "JSON access line fields")
        t(js["bytes"] > 0 and js["duration_ms"] >= 0, "bytes and duration")


def main():
    default_gateway(t)
    metrics_auth(t)
    access_log(t)


t.run(main)
