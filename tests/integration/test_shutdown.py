"""Orderly stop with live connections of every kind: SIGTERM makes Gale stop
accepting, acknowledge what it received, say goodbye (WebSocket close 1001) and
exit 0 with everything acknowledged on disk."""
import signal
import socket

from galetest import API_KEY, Check, Gale, RawWS

t = Check("test_shutdown")


def main():
    g = Gale().start(wait_ports=("http", "line", "mqtt"))
    try:
        tok = g.create_device("dev-s")
        line = g.line("dev-s", tok)
        line.send_line({"v": 1, "seq": 1})
        t.eq(line.read_line(), {"ack": 1}, "line acked before stop")
        live = RawWS(g.ports["http"], "/ws/live?api_key=" + API_KEY)
        t.eq(live.recv_json(), {"type": "ready"}, "live viewer ready")
        mq = socket.create_connection(("127.0.0.1", g.ports["mqtt"]), timeout=5)
        # the last burst before the signal: every line here must be acked or stored
        line.send("".join('{"ts":%d,"values":{"v":%d},"seq":%d}\n' % (1700000000000 + i, i, i)
                            for i in range(2, 2002)))
        g.proc.send_signal(signal.SIGTERM)
        code, _ = live.read_close(timeout=10)
        t.eq(code, 1001, "WebSocket viewers get close 1001 (going away)")
        acks = []
        try:
            while True:
                acks.append(line.read_line(timeout=10)["ack"])
        except Exception:
            pass
        t(line.closed(), "line connection closed")
        t.eq(g.proc.wait(20), 0, "exit 0")
        t(all(b - a == 1 for a, b in zip(acks, acks[1:])), "acks in order")
        mq.close()
        g2 = Gale(data_dir=g.data_dir).start()
        try:
            st, js = g2.http("GET", "/api/devices/dev-s/telemetry?keys=v&limit=100000")
            stored = {p["value"] for p in js.get("v", [])}
            missing = [a for a in acks if a not in stored]
            t(not missing, "every acked value is on disk after the stop (%d acked, %d stored, missing %r)" % (len(acks), len(stored), missing[:5]))
        finally:
            g2.stop()
    finally:
        if g.alive():
            g.kill9()


t.run(main)
