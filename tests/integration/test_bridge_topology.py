"""Two Gale sites and one central broker, each site in its own network namespace joined
to the host by a veth pair (ip netns + veth; needs root, skipped with the reason when
the machine does not allow it):

    [netns site-a: devices -> Gale A] --veth A-- host: Mosquitto <- central subscriber
    [netns site-b: devices -> Gale B] --veth B--/

Devices publish QoS 1 to their site's Gale on the namespace's loopback (the device link
is never cut). While they publish, site A's uplink is cut (ip link set down) for a few
seconds and restored: Gale A notices (keepalive 2 s), keeps acking its devices into the
outbox, reconnects and drains; Gale B is not disturbed. Every message a device saw
acknowledged arrives at the central subscriber, first arrivals in order per device;
duplicates (QoS 1 resends) are counted and reported."""
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

import galetest
from galetest import API_KEY, Check, Gale, wait_for
from upstreams import Collector, MosquittoUpstream, available, check_delivery

t = Check("test_bridge_topology")
HERE = os.path.dirname(os.path.abspath(__file__))
RATE, SECONDS = 25, 14          # per device
CUT_AT, CUT_FOR = 3, 6          # seconds after the devices start; how long the link is down


def sh(*argv, check=True):
    r = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), r.stdout.strip()))
    return r


class Site:
    """A network namespace with a veth pair to the host (/30: host .1, site .2)."""

    def __init__(self, tag, subnet):
        self.ns = "gale-%d-%s" % (os.getpid(), tag)
        self.host_if = "gh%d%s" % (os.getpid() % 100000, tag)   # <= 15 characters
        self.site_if = "gs%d%s" % (os.getpid() % 100000, tag)
        self.host_ip, self.site_ip = subnet + ".1", subnet + ".2"
        self.made = False

    def create(self):
        sh("ip", "netns", "add", self.ns)
        self.made = True
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.site_if)
        sh("ip", "link", "set", self.site_if, "netns", self.ns)
        sh("ip", "addr", "add", self.host_ip + "/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        self.run("ip", "addr", "add", self.site_ip + "/30", "dev", self.site_if)
        self.run("ip", "link", "set", self.site_if, "up")
        self.run("ip", "link", "set", "lo", "up")
        return self

    def run(self, *argv, check=True):
        return sh("ip", "netns", "exec", self.ns, *argv, check=check)

    def link(self, up):
        sh("ip", "link", "set", self.host_if, "up" if up else "down")

    def destroy(self):
        sh("ip", "link", "del", self.host_if, check=False)
        if self.made:
            sh("ip", "netns", "del", self.ns, check=False)


def netns_usable():
    """(ok, reason): can this machine make a namespace and a veth pair?"""
    if os.geteuid() != 0:
        return False, "not root"
    if not shutil.which("ip"):
        return False, "no ip(8)"
    probe = Site("p", "10.253.255")
    try:
        probe.create()
        probe.run("true")
        return True, ""
    except (RuntimeError, OSError) as e:
        return False, "ip netns + veth not allowed here: %s" % str(e).splitlines()[0]
    finally:
        probe.destroy()


class SiteGale(Gale):
    """A Gale started inside a site's namespace (through a wrapper that enters it), its
    ports on the namespace's loopback: reached with curl and clients run there too."""

    def __init__(self, site, **kw):
        super().__init__(**kw)
        self.site = site
        self.wrapper = os.path.join(self.data_dir, "gale-in-netns")
        with open(self.wrapper, "w") as f:
            f.write('#!/bin/sh\nexec ip netns exec %s %s "$@"\n' % (site.ns, galetest.GALE_BIN))
        os.chmod(self.wrapper, 0o755)

    def start(self, wait_ports=("http", "line")):
        real, galetest.GALE_BIN = galetest.GALE_BIN, self.wrapper
        try:
            return super().start(wait_ports)
        finally:
            galetest.GALE_BIN = real

    def http(self, method, path, body=None, key="default", headers=None, raw=False, timeout=10):
        cmd = ["curl", "-s", "-m", str(timeout), "-X", method, "-w", "\n%{http_code}",
               "-H", "Authorization: Bearer " + API_KEY]
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        out = self.site.run(*cmd, "http://127.0.0.1:%d%s" % (self.ports["http"], path),
                            check=False).stdout
        text, _, code = out.rpartition("\n")
        return int(code or 0), json.loads(text) if text.strip() else None

    def bridge(self):
        st, js = self.http("GET", "/api/bridges")
        assert st == 200, (st, js)
        return js[0]


def devices(g, names, acked):
    """Starts one publisher per device inside g's namespace (upstreams.py publish);
    returns the threads, which fill acked[name] with the acknowledged ks."""
    tokens = {d: g.create_device(d) for d in names}

    def one(d):
        r = g.site.run(sys.executable, os.path.join(HERE, "upstreams.py"), "publish",
                       str(g.ports["mqtt"]), d, tokens[d], str(RATE), str(SECONDS), check=False)
        try:
            acked[d] = json.loads(r.stdout.strip().splitlines()[-1])["acked"]
        except (ValueError, IndexError, KeyError):
            print("device %s failed: %s" % (d, r.stdout[-2000:]))
            acked[d] = None
    th = [threading.Thread(target=one, args=(d,)) for d in names]
    for x in th:
        x.start()
    return th


def main():
    ok, why = available("mosquitto")
    if ok:
        ok, why = netns_usable()
    if not ok:
        print("test_bridge_topology: 0 passed, 0 failed, 1 skipped (%s)" % why)
        sys.exit(77)
    n = random.randrange(0, 250)
    a, b = Site("a", "10.253.%d" % n), Site("b", "10.254.%d" % n)
    try:
        a.create()
        b.create()
        with MosquittoUpstream("central", binds=(a.host_ip, b.host_ip)) as up:
            central = Collector(up)
            gales = []
            for site, tag in ((a, "a"), (b, "b")):
                conf = json.dumps([{"name": "central", "client_id": "gale-site-" + tag,
                                    "addresses": ["tcp://%s:%d" % (site.host_ip, up.port)],
                                    "keepalive_s": 2}])
                gales.append(SiteGale(site, args=["--set", "bridge.upstreams=" + conf]))
            with gales[0] as ga, gales[1] as gb:
                for g in (ga, gb):
                    wait_for(lambda: g.bridge()["connected"], 20, "site bridge connected")
                acked = {}
                th = devices(ga, ["site-a-1", "site-a-2"], acked)
                th += devices(gb, ["site-b-1", "site-b-2"], acked)
                time.sleep(CUT_AT)
                a.link(False)
                t_cut = time.monotonic()
                wait_for(lambda: not ga.bridge()["connected"], 15, "site A sees the cut")
                print("site A lost its uplink %.1f s after the cut" % (time.monotonic() - t_cut))
                time.sleep(max(0.0, CUT_FOR - (time.monotonic() - t_cut)))
                cut_backlog = ga.bridge()["backlog"]
                t(cut_backlog > 0, "site A kept acking into its outbox while cut: %d"
                  % cut_backlog)
                t(gb.bridge()["connected"], "site B stayed connected")
                a.link(True)
                t_up = time.monotonic()
                wait_for(lambda: ga.bridge()["connected"], 45, "site A reconnected")
                print("site A reconnected %.1f s after the link came back"
                      % (time.monotonic() - t_up))
                for x in th:
                    x.join(SECONDS + 60)
                t(all(v is not None for v in acked.values()), "every device ran")
                acked = {d: v for d, v in acked.items() if v is not None}
                for g in (ga, gb):
                    wait_for(lambda: g.bridge()["backlog"] == 0, 60, "outbox drained")
                wait_for(lambda: not check_delivery(acked, central.arrivals())[0], 30,
                         "every acked message at the central subscriber", interval=0.2)
                missing, disorder, dups = check_delivery(acked, central.arrivals())
                t.eq(missing, [], "acked messages missing upstream")
                t.eq(disorder, [], "devices whose messages arrived out of order")
                sa, sb = ga.bridge(), gb.bridge()
                t(sa["reconnects_total"] >= 1, "site A reconnect counted: %r" % sa)
                t.eq(sb["reconnects_total"], 0, "site B reconnects")
                print("acked %d; arrived %d; duplicates %d; site A backlog at the cut %d, "
                      "resent %d" % (sum(len(v) for v in acked.values()),
                                     len(central.arrivals()), dups, cut_backlog,
                                     sa["resent_total"]))
            central.close()
    finally:
        a.destroy()
        b.destroy()


t.run(main)
