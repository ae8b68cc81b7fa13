"""Gale's MQTT server with the Eclipse Paho C client: runs mqtt_paho_c (built next to
this test) against a fresh gateway as a device and an application client, then checks
over REST that the telemetry it published was stored."""
import os
import subprocess

from galetest import Check, Gale

t = Check("test_mqtt_paho_c")
CLIENT = os.path.join(os.getcwd(), "tests", "integration", "mqtt_paho_c")


def main():
    with Gale() as g:
        tok = g.create_device("dev-c")
        app_tok = g.create_device("app-c", role="app")
        r = subprocess.run([CLIENT, str(g.ports["mqtt"]), "dev-c", tok, "app-c", app_tok],
                           capture_output=True, text=True, timeout=120)
        print(r.stdout, end="")
        t.eq(r.returncode, 0, "paho C client: every step passed (%s)" % r.stderr.strip())
        for step in ["bad token refused with CONNACK 4",
                     "device publishes telemetry with QoS 0, 1 and 2",
                     "application receives each with its QoS, in order",
                     "retained message reaches a later subscriber with the retained flag",
                     "message sent while the application is away waits in its session",
                     "unsubscribe stops delivery"]:
            t("ok " + step in r.stdout, step)
        st, js = g.http("GET", "/api/devices/dev-c/telemetry?keys=paho_q")
        t.eq([p["value"] for p in js.get("paho_q", [])], [0, 1, 2],
             "telemetry from the paho C client stored")
        t(g.alive(), "gateway alive")


t.run(main)
