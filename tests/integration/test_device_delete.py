"""A deleted device leaves no presence behind: its retained devices/<id>/status
("online" while connected, "offline" after) is cleared when the device is deleted,
subscribers see the clearing, and it stays cleared after a restart."""
import mqttraw as mr
from galetest import Check, Gale, wait_for

t = Check("test_device_delete")


def status(g, app_tok, dev, timeout=1.0):
    """The retained status a fresh subscriber gets for dev, or None."""
    c = mr.session(g.ports["mqtt"], "viewer", username="app-1", password=app_tok)
    try:
        t.eq(c.sub(1, [("devices/%s/status" % dev, 0)]), [0], "subscribe to status")
        try:
            p = c.recv(timeout)
        except Exception:
            return None
        return p.payload if p.type == mr.PUBLISH and p.retain else None
    finally:
        c.close()


def main():
    g = Gale().start(wait_ports=("http", "line", "mqtt"))
    try:
        app_tok = g.create_device("app-1", role="app")
        on_tok = g.create_device("dev-on")
        off_tok = g.create_device("dev-off")
        on = g.line("dev-on", on_tok)
        off = g.line("dev-off", off_tok)
        off.close()
        wait_for(lambda: status(g, app_tok, "dev-off", 0.3) == b"offline", 5, "offline status")
        t.eq(status(g, app_tok, "dev-on"), b"online", "connected device is retained online")

        watcher = mr.session(g.ports["mqtt"], "watcher", username="app-1", password=app_tok)
        watcher.sub(1, [("devices/dev-on/status", 1)])
        p = watcher.recv_type(mr.PUBLISH)
        t.eq((p.payload, p.retain), (b"online", 1), "watcher sees the retained online")
        st, _ = g.http("DELETE", "/api/devices/dev-on")
        t.eq(st, 200, "delete the connected device")
        t(on.closed(), "its connection is closed")
        p = watcher.recv_type(mr.PUBLISH)
        t.eq((p.topic, p.payload), ("devices/dev-on/status", b""),
             "subscribers see the status cleared")
        watcher.close()
        st, _ = g.http("DELETE", "/api/devices/dev-off")
        t.eq(st, 200, "delete the offline device")
        t.eq(status(g, app_tok, "dev-on"), None, "deleted online device: no retained status")
        t.eq(status(g, app_tok, "dev-off"), None, "deleted offline device: no retained status")
        st, js = g.http("GET", "/api/devices/dev-on/telemetry")
        t.eq(st, 404, "the device is gone")
        t.eq(g.stop(), 0, "clean stop")

        g = Gale(data_dir=g.data_dir).start(wait_ports=("http", "line", "mqtt"))
        t.eq(status(g, app_tok, "dev-on"), None, "cleared status stays cleared after a restart")
        t.eq(status(g, app_tok, "dev-off"), None, "and for the offline one")
        t.eq(g.stop(), 0, "clean stop after restart")
    finally:
        g.stop()
        import shutil
        shutil.rmtree(g.data_dir, ignore_errors=True)


t.run(main)
