"""mqtt.max_subscriptions: a session past its limit gets SUBACK 0x80 for new
filters (logged once), may still re-subscribe to a filter it holds, and gets
room back when it unsubscribes. mqtt.max_retained: past it, a new retained topic
is delivered but not kept, while kept topics can still be replaced."""
import queue
import subprocess

import paho.mqtt.client as paho

from galetest import Check, Gale

t = Check("test_mqtt_limits")


def main():
    with Gale(args=["--set", "mqtt.max_subscriptions=3", "--set", "mqtt.max_retained=3"]) as g:
        tok = g.create_device("app-l", role="app")
        acks = queue.Queue()
        ready = queue.Queue()
        c = paho.Client(client_id="lim", clean_session=True, protocol=paho.MQTTv311)
        c.username_pw_set("app-l", tok)
        c.on_connect = lambda cl, u, f, rc: ready.put(rc)
        c.on_subscribe = lambda cl, u, mid, granted: acks.put(list(granted))
        c.on_unsubscribe = lambda cl, u, mid: acks.put("unsub")
        c.connect("127.0.0.1", g.ports["mqtt"], 60)
        c.loop_start()
        t.eq(ready.get(timeout=10), 0, "connected")
        c.subscribe([("a/#", 1), ("b/#", 1), ("c/#", 0), ("d/#", 1)])
        t.eq(acks.get(timeout=10), [1, 1, 0, 128], "fourth filter refused at the limit")
        c.subscribe("a/#", 0)
        t.eq(acks.get(timeout=10), [0], "re-subscribing a held filter is allowed at the limit")
        c.unsubscribe("b/#")
        t.eq(acks.get(timeout=10), "unsub", "unsubscribed")
        c.subscribe("d/#", 1)
        t.eq(acks.get(timeout=10), [1], "room again after an unsubscribe")
        g.wait_log(r"subscribe refused reason=\"mqtt.max_subscriptions reached\" limit=3")
        # mqtt.max_retained=3: devices/app-l/status (presence) and two more topics fit
        for i in range(3):
            c.publish("a/r%d" % i, "v%d" % i, qos=1, retain=True).wait_for_publish()
        c.publish("a/r0", "v0b", qos=1, retain=True).wait_for_publish()
        g.wait_log(r"retained message not kept topic=\"a/r2\"")
        got = subprocess.run(["mosquitto_sub", "-p", str(g.ports["mqtt"]), "-u", "app-l", "-P", tok,
                              "-t", "a/#", "-v", "-W", "2"], capture_output=True, text=True)
        lines = sorted(got.stdout.split())
        t.eq(lines, ["a/r0", "a/r1", "v0b", "v1"], "two retained topics kept, the first replaced")
        c.disconnect()
        c.loop_stop()


t.run(main)
