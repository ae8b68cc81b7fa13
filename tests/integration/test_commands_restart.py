"""A command for a device whose persistent MQTT session is offline survives a
gateway restart: it is delivered when the device comes back, and its status
moves from queued to delivered, then replied."""
import json
import queue

import paho.mqtt.client as paho

from galetest import Check, Gale, wait_for

t = Check("test_commands_restart")


def client(port, tok, clean=False):
    msgs = queue.Queue()
    ready = queue.Queue()
    c = paho.Client(client_id="dev-r-session", clean_session=clean, protocol=paho.MQTTv311)
    c.username_pw_set("dev-r", tok)
    c.on_connect = lambda cl, u, flags, rc: ready.put(rc)
    c.on_message = lambda cl, u, m: msgs.put(m)
    c.connect("127.0.0.1", port, 60)
    c.loop_start()
    t.eq(ready.get(timeout=10), 0, "device connects")
    return c, msgs


def status(g, cid):
    return g.http("GET", "/api/devices/dev-r/commands/" + cid)[1].get("status")


def main():
    g = Gale().start(wait_ports=("http", "mqtt"))
    try:
        tok = g.create_device("dev-r")
        c, _ = client(g.ports["mqtt"], tok)
        sub = c.subscribe("devices/dev-r/commands", 1)
        wait_for(lambda: sub[0] == 0, 5, "subscribed")
        c.disconnect()
        c.loop_stop()
        st, js = g.http("POST", "/api/devices/dev-r/commands", {"name": "update", "params": {"v": 2}})
        t.eq(st, 202, "command accepted while the device is away")
        cid = js["id"]
        t.eq(status(g, cid), "queued", "queued")
        t.eq(g.stop(), 0, "gateway stops cleanly")
        g2 = Gale(data_dir=g.data_dir).start(wait_ports=("http", "mqtt"))
        try:
            t.eq(status(g2, cid), "queued", "still queued after the restart")
            c, msgs = client(g2.ports["mqtt"], tok)
            m = msgs.get(timeout=10)
            body = json.loads(m.payload)
            t.eq((m.topic, body.get("id"), body.get("name")),
                 ("devices/dev-r/commands", cid, "update"), "command delivered after the restart")
            wait_for(lambda: status(g2, cid) == "delivered", 5, "status delivered after PUBACK")
            t.eq(status(g2, cid), "delivered", "status delivered")
            c.publish("devices/dev-r/commands/%s/reply" % cid, '{"done":true}', qos=1)
            wait_for(lambda: status(g2, cid) == "replied", 5, "status replied")
            t.eq(g2.http("GET", "/api/devices/dev-r/commands/" + cid)[1].get("reply"),
                 {"done": True}, "reply kept")
            c.disconnect()
            c.loop_stop()
        finally:
            g2.stop()
    finally:
        if g.alive():
            g.kill9()


t.run(main)
