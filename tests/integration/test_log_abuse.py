"""Logs a client cannot abuse: a client id or username that carries a newline and a fake
log line comes out as one escaped line; 200 failed logins from one peer log a bounded
number of lines, summed up per peer with their count, while gale_auth_failures_total counts
all 200; and a fresh client is served afterwards."""
import re

import mqttraw as mr
from galetest import Check, Gale, metric, wait_for

t = Check("test_log_abuse")
FORGED = '"\n2026-01-01T00:00:00.000Z level=error msg=forged'
LOGINS = 200


def main():
    env = {"GALE_TEST_REFUSAL_WINDOW_MS": "1500"}
    with Gale(args=["--set", "log.level=info"], env=env) as g:
        port = g.ports["mqtt"]
        tok = g.create_device("dev-1")

        # a forged client id on an accepted login, a forged username on a refused one
        c = mr.session(port, "evil" + FORGED, username="dev-1", password=tok)
        c.close()
        c = mr.Raw(port)
        t.eq(c.connect("x", username="u" + FORGED, password="p").rc, 4, "forged user refused")
        c.close()
        g.wait_log(r'client="evil\\"\\n2026-01-01T00:00:00\.000Z level=error msg=forged" '
                   r'user="dev-1" connected')
        g.wait_log(r'auth failed device="u\\"\\n2026-01-01T00:00:00\.000Z level=error '
                   r'msg=forged" reason="invalid device id"')
        g.wait_log(r'close reason="bad user name or password"')  # the refused one is gone
        forged = [l for l in g.log_lines if "msg=forged" in l]
        t(all(re.match(r"^\d{4}-\d\d-\d\dT\S+ level=\w+ ", l) for l in g.log_lines),
          "every line starts with its own time and level")
        t(not any(l.startswith("2026-01-01T00:00:00.000Z") for l in g.log_lines),
          "no line is the forged one")
        t(all('\\"\\n2026' in l for l in forged), "the forged text stays inside its value")

        # 200 failed logins from one peer
        before_lines = len(g.log_lines)
        before = metric(g, "gale_auth_failures_total")
        rcs = []
        for i in range(LOGINS):
            c = mr.Raw(port)
            rcs.append(c.connect("bad-%d" % i, username="dev-1", password="wrong").rc)
            c.close()
        t.eq(set(rcs), {4}, "every bad token refused with CONNACK 4")
        wait_for(lambda: metric(g, "gale_auth_failures_total") - before >= LOGINS, 10, "auth failures")
        t.eq(metric(g, "gale_auth_failures_total") - before, LOGINS, "the metric counts every failure")

        def counted():
            lines = g.log_lines[before_lines:]
            single = sum(1 for l in lines if 'auth failed device="dev-1" reason="bad token"' in l)
            summed = sum(int(m.group(1)) for l in lines for m in
                         [re.search(r'peer=127\.0\.0\.1 refusals=(\d+) in last \d+s '
                                    r'reason="bad token"', l)] if m)
            return single, summed, lines
        wait_for(lambda: sum(counted()[:2]) >= LOGINS, 10, "summaries of all refusals")
        single, summed, lines = counted()
        t.eq(single + summed, LOGINS, "logged and summed refusals add up (%d + %d)"
             % (single, summed))
        t(single <= 3, "a few logged one by one (%d)" % single)
        t(len(lines) < 30, "a bounded number of lines for %d refusals (%d)" % (LOGINS, len(lines)))
        t(sum(1 for l in lines if "close reason=" in l) <= single,
          "summarised refusals do not log their close")

        # a fresh client is served
        c = mr.session(port, "fresh", username="dev-1", password=tok)
        c.close()
        t(True, "a fresh client is served")


if __name__ == "__main__":
    t.run(main)
