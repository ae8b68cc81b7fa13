"""A will is published only as the client's own PUBLISH would be: through the ACL, the
anonymous clients' exclusion from provisioned devices' namespaces and the retained quotas
of a device (and the device rate). Refused wills are counted in
gale_mqtt_wills_dropped_total and logged; a will within the rules is still published."""
import json
import urllib.parse

import mqttraw as mr
from galetest import Check, Gale, metric

t = Check("test_mqtt_will_checks")


def closes(g):
    return sum(1 for l in g.log().splitlines() if "proto=mqtt" in l and " close reason=" in l)


def wait_closes(g, n):
    from galetest import wait_for
    wait_for(lambda: closes(g) >= n, 10, "%d MQTT connections closed" % n)


def anonymous_will_on_commands():
    with Gale(args=["--set", "mqtt.allow_anonymous=true"]) as g:
        port = g.ports["mqtt"]
        tok = g.create_device("dev-w")
        app_tok = g.create_device("app-w", role="app")
        dev = mr.session(port, "dev-w-c", clean=True, username="dev-w", password=tok)
        t.eq(dev.sub(1, [("devices/dev-w/commands", 1)]), [1], "the device subscribes")
        watcher = mr.session(port, "watch", username="app-w", password=app_tok)
        t.eq(watcher.sub(1, [("devices/dev-w/lastwill", 0)]), [0], "an application watches")
        n = closes(g)
        forged = json.dumps({"id": "forged", "name": "unlock", "params": {}}).encode()
        a = mr.Raw(port)
        t.eq(a.connect("anon-w", will=("devices/dev-w/commands", forged, 1, False)).rc, 0,
             "an anonymous client connects with a will on the device's commands")
        a.abort()
        wait_closes(g, n + 1)
        st, js = g.http("POST", "/api/devices/dev-w/commands", {"name": "reboot"})
        t.eq(st, 202, "a real command is queued")
        p = dev.recv_type(mr.PUBLISH)
        t.eq(json.loads(p.payload).get("name"), "reboot",
             "the device's first command is the real one, never the anonymous will")
        dev.send(mr.ack(mr.PUBACK, p.pid))
        t(dev.nothing(0.5), "and nothing else")
        t.eq(metric(g, "gale_mqtt_wills_dropped_total"), 1, "the will is counted as dropped")
        g.wait_log(r'client="anon-w" will not published topic="devices/dev-w/commands"')

        # a will within the rules is published as before
        d2 = mr.session(port, "dev-w-2", username="dev-w", password=tok,
                        will=("devices/dev-w/lastwill", b"bye", 0, False))
        d2.abort()
        p = watcher.recv_type(mr.PUBLISH)
        t.eq((p.topic, p.payload), ("devices/dev-w/lastwill", b"bye"), "a device's own will")
        dev.close()
        watcher.close()


def retained_quota_of_wills():
    with Gale(args=["--set", "limits.max_retained_per_device=5"]) as g:
        port = g.ports["mqtt"]
        tok = g.create_device("dev-r")
        d = mr.session(port, "dev-r-main", username="dev-r", password=tok)
        # its status (presence) and four more: five, the limit
        for i in range(1, 5):
            d.send(mr.publish("devices/dev-r/r%d" % i, b"v", qos=1, retain=True, pid=i))
            t.eq(d.recv_type(mr.PUBACK).pid, i, "retained %d" % i)
        n = closes(g)
        for i in range(3):
            w = mr.session(port, "dev-r-w%d" % i, username="dev-r", password=tok,
                           will=("devices/dev-r/will%d" % i, b"gone", 1, True))
            w.abort()
        wait_closes(g, n + 3)
        st, js = g.http("GET", "/api/mqtt/retained?topic=" +
                        urllib.parse.quote("devices/dev-r/#", safe=""))
        t.eq(st, 200, "retained listed")
        topics = sorted(r["topic"] for r in js.get("retained", js.get("messages", [])))
        t.eq(topics, ["devices/dev-r/r1", "devices/dev-r/r2", "devices/dev-r/r3",
                      "devices/dev-r/r4", "devices/dev-r/status"],
             "retained wills past limits.max_retained_per_device are not kept")
        t.eq(metric(g, "gale_mqtt_wills_dropped_total"), 3, "three wills dropped")
        d.close()


def main():
    anonymous_will_on_commands()
    retained_quota_of_wills()


t.run(main)
