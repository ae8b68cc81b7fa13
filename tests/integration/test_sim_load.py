"""gale-sim as a load tool, a quick smoke: 2000 devices (the four protocols in turn) at
one message a second each for 5 s against one Gale: provisioning creates them all,
every device connects (the progress line reaches connected=2000/2000), nothing fails
and every message is acked; the run ends by itself. About 2,100 sockets on each side,
well under the 20,000 open-file limit. Prints what it measured."""
import json
import os
import subprocess
import time

from galetest import API_KEY, Check, Gale, wait_for

t = Check("test_sim_load")
SIM = os.environ.get("GALE_SIM_BIN", os.path.join(os.getcwd(), "gale-sim"))
N = 2000


def main():
    with Gale() as g:
        wait_for(lambda: "mqtt" in g.ports, 10, "the mqtt listener")
        t0 = time.monotonic()
        p = subprocess.run([SIM, "--http-port", str(g.ports["http"]),
                            "--mqtt-port", str(g.ports["mqtt"]),
                            "--line-port", str(g.ports["line"]),
                            "--devices", str(N), "--rate", "1", "--duration", "5",
                            "--key", API_KEY, "--prefix", "load-"],
                           capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
        summary = json.loads(p.stdout.strip().splitlines()[-1])
        t(p.returncode == 0, "exit 0 (%s): %s" % (p.returncode, p.stderr[-600:]))
        t("connected=%d/%d" % (N, N) in p.stderr, "every device connected")
        t(summary["errors"] == 0, "no errors (%s)" % summary)
        # 5 s at 1/s: each device sends from about one period after it connected, 2 % gaps
        t(summary["sent"] >= 3 * N, "sent at the rate (%d)" % summary["sent"])
        t(summary["acked"] == summary["sent"], "every message acked (%d of %d)"
          % (summary["acked"], summary["sent"]))
        st, js = g.http("GET", "/api/devices?prefix=load-&limit=1")
        t(js["total"] == N, "provisioned %d devices (%s)" % (N, js["total"]))
        last = [l for l in p.stderr.splitlines() if " t=" in l][-1:]
        print("test_sim_load: %d devices, %d sent, %d acked in %.1f s wall (provisioning "
              "included); last progress: %s" % (N, summary["sent"], summary["acked"], took, last))


t.run(main)
