"""limits.max_connections_per_device: one device's token cannot open connections without
bound over the line protocol and /ws/device (its MQTT connections count too). The login
past the cap is answered too_many_connections and closed, counted in
gale_device_refused_total and logged; a connection closing makes room again; other devices
are not affected. Loopback only; gale is stopped by its PID."""
from galetest import Check, Gale, LineClient, RawWS, metric, wait_for

t = Check("test_device_limits")
CAP = 3


def main():
    with Gale(args=["--set", "limits.max_connections_per_device=%d" % CAP]) as g:
        tok = g.create_device("capped")
        other = g.create_device("other")
        conns = [g.line("capped", tok) for _ in range(CAP)]
        c = LineClient(g.ports["line"])
        resp = c.auth("capped", tok)
        t.eq(resp.get("code") if isinstance(resp, dict) else resp, "too_many_connections",
             "line login past the cap refused")
        t(c.closed(), "refused line connection closed")
        ws = RawWS(g.ports["http"], "/ws/device?device=capped&token=%s" % tok)
        if ws.status == 101:
            msg = ws.recv_json()
            t.eq(msg.get("code"), "too_many_connections", "/ws/device past the cap refused")
        else:
            t(ws.status in (401, 403, 429, 503), "/ws/device past the cap refused: %r" % ws.status)
        t(ws.closed(), "refused /ws/device connection closed")
        wait_for(lambda: metric(g, 'gale_device_refused_total{limit="limits.max_connections_per_device"}') == 2,
                 10, "two refusals counted")
        g.wait_log(r"device=capped refused reason=\"limits.max_connections_per_device reached\"")
        o = g.line("other", other)  # another device is not affected
        o.send_line({"seq": 1, "v": 1})
        t.eq(o.read_line(), {"ack": 1}, "another device served")
        conns[0].close()
        def login_ok():
            c2 = LineClient(g.ports["line"])
            r = c2.auth("capped", tok)
            if r == {"ok": True}:
                return c2
            c2.close()
            return None
        c2 = wait_for(login_ok, 10, "room after a close")
        c2.send_line({"seq": 2, "v": 2})
        t.eq(c2.read_line(), {"ack": 2}, "login after a close served")
    with Gale() as g:  # the default (32) lets a handful through
        tok = g.create_device("d")
        cs = [g.line("d", tok) for _ in range(8)]
        t.eq(len(cs), 8, "eight connections of one device under the default cap")


t.run(main)
