#!/usr/bin/python3
"""The Docker image, built and run with podman the way the README says.

Makes the base image when podman lacks it (tests/image/podman.py), builds
docker/Dockerfile with the README's build command, then runs the README's `docker run`
one-liner (ports published on 127.0.0.1 only, names made unique: the only changes made
to it) and checks from outside the container: health and readiness, the generated API
key read the README's way, a device provisioned over REST, telemetry over MQTT
(mosquitto_pub) and the line protocol, read back over REST; the HEALTHCHECK healthy, then
unhealthy while the gateway is stopped (SIGSTOP) and healthy again after SIGCONT; the
process is uid 10001 on a read-only root; `podman stop` ends it with a clean SIGTERM exit
within 10 s; the same volume in a new container (with an API key set the README's way)
keeps the device, its token and its data. Also: a root-owned directory or another --user
on /data fails with a message naming uid 10001 and the fix, and the HEALTHCHECK finds a
port set by a flag. The image must stay within 96 MB.

usage: test_image.py [--work DIR] [--tag NAME]
Removes every container and volume it made; keeps the image (the next build reuses its
layers). Prints the build time, image size and the whole test's time."""
import argparse
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import podman  # noqa: E402
import tlscerts  # noqa: E402
from galetest import Check, LineClient, wait_for  # noqa: E402

MAX_IMAGE_BYTES = 96 * 1000 * 1000
t = Check("test_image")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """The test's podman: remembers every container and volume it made."""

    def __init__(self, env, tag):
        self.env = env
        self.tag = tag
        self.suffix = "%d-%d" % (os.getpid(), int(time.time()))
        self.containers = []
        self.volumes = []
        self.dirs = []

    def podman(self, *args, timeout=120, check=True):
        return podman.run(["podman"] + list(args), env=self.env, timeout=timeout, check=check)

    def adapt_run(self, argv, extra_env=(), args=(), dirs=None):
        """The README's `docker run` argv for this test: podman, unique container and
        volume names, published ports on 127.0.0.1 (free ones), the test's image tag,
        host directories as dirs maps them. Returns (argv, name, {container port: host
        port})."""
        assert argv[:2] == ["docker", "run"], argv
        out, ports, name = ["podman", "run"], {}, None
        i = 2
        image_seen = False
        while i < len(argv):
            a = argv[i]
            if a == "--name":
                name = "gale-test-%s-%d" % (self.suffix, len(self.containers))
                out += [a, name]
                i += 2
                continue
            if a == "-p":
                cport = int(argv[i + 1].split(":")[-1])
                ports[cport] = free_port()
                out += [a, "127.0.0.1:%d:%d" % (ports[cport], cport)]
                i += 2
                continue
            if a == "-v" and argv[i + 1].startswith("/"):
                host, _, rest = argv[i + 1].partition(":")
                out += [a, "%s:%s" % ((dirs or {}).get(host, host), rest)]
                i += 2
                continue
            if a == "-v":
                vol, _, rest = argv[i + 1].partition(":")
                vname = "%s-%s" % (vol, self.suffix)
                if vname not in self.volumes:
                    self.volumes.append(vname)
                out += [a, "%s:%s" % (vname, rest)]
                i += 2
                continue
            if not a.startswith("-") and not image_seen and out[-1] not in (
                    "-e", "--tmpfs", "-v", "--user", "--name", "-p"):
                image_seen = True
                for e in extra_env:
                    out += ["-e", e]
                out.append(self.tag)
                out += argv[i + 1:]
                break
            out.append(a)
            i += 1
        assert image_seen and name, "one-liner names the image and the container: %r" % argv
        out += list(args)
        self.containers.append(name)
        return out, name, ports

    def cleanup(self):
        for c in self.containers:
            self.podman("rm", "-f", "-t", "0", c, check=False, timeout=60)
        for v in self.volumes:
            self.podman("volume", "rm", "-f", v, check=False, timeout=60)
        for d in self.dirs:
            subprocess.run(["rm", "-rf", d], timeout=60)


def http(port, method, path, key=None, body=None, timeout=5):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    if key:
        req.add_header("Authorization", "Bearer " + key)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ValueError) as e:
        return 0, str(e)


def wait_ready(r, name, port, timeout=30):
    def ready():
        st = r.podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout
        if "exited" in st:
            raise AssertionError("container exited:\n" + r.podman("logs", name).stdout)
        return http(port, "GET", "/api/ready")[0] == 200
    wait_for(ready, timeout, "GET /api/ready 200 from the container", interval=0.2)


def healthcheck(r, name):
    p = r.podman("healthcheck", "run", name, check=False, timeout=30)
    return p.returncode, p.stdout.strip()


def latest(port, key, dev):
    st, js = http(port, "GET", "/api/devices/%s/latest" % dev, key)
    return js if st == 200 and isinstance(js, dict) else {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "image"))
    ap.add_argument("--tag", default="localhost/gale:test")
    opts = ap.parse_args()
    t_start = time.monotonic()
    env = podman.configure(opts.work)
    podman.base_image(env, opts.work)

    cmds = podman.readme_commands(podman.readme_section("Docker"))
    r = Run(env, opts.tag)

    # ---- build: the README's command
    p, build_s = podman.build_gale(env, opts.tag)
    if p.returncode != 0:
        print(p.stdout[-6000:])
    t.eq(p.returncode, 0, "podman build -f docker/Dockerfile")
    if p.returncode != 0:
        return
    t("without charts" not in p.stdout, "the build found uPlot (the dashboard has charts)")
    size = podman.image_size(env, opts.tag)
    print("image: built in %.0f s, %.1f MB" % (build_s, size / 1e6), flush=True)
    t(size <= MAX_IMAGE_BYTES, "image %.1f MB within %d MB" % (size / 1e6, MAX_IMAGE_BYTES / 1e6))
    hc = json.loads(r.podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}",
                             opts.tag).stdout)
    t(hc and "--health" in hc.get("Test", []), "the image keeps its HEALTHCHECK (%s)" % hc)

    try:
        run_checks(r, cmds)
    finally:
        r.cleanup()
    print("image: test done in %.0f s (build %.0f s)" % (time.monotonic() - t_start, build_s),
          flush=True)


def run_checks(r, cmds):
    run_cmd = podman.find_command(cmds, "docker", "run")
    key_cmd = podman.find_command(cmds, "docker", "exec")
    t(key_cmd[-2:] == ["cat", "/data/api_key"], "README reads the key from the volume")
    t("--read-only" in run_cmd and "--tmpfs" in run_cmd, "README runs it read-only")

    # ---- the one-liner
    argv, name, ports = r.adapt_run(run_cmd)
    t(set(ports) >= {8080, 1883, 7000}, "one-liner publishes HTTP, MQTT and line ports")
    r.podman(*argv[1:])
    http_port, mqtt_port, line_port = ports[8080], ports[1883], ports[7000]
    t0 = time.monotonic()
    wait_ready(r, name, http_port)
    print("image: ready %.1f s after podman run" % (time.monotonic() - t0), flush=True)
    st, js = http(http_port, "GET", "/api/health")
    t(st == 200 and js.get("status") == "ok", "GET /api/health: %s %s" % (st, js))

    key = r.podman(*(["exec", name] + key_cmd[3:])).stdout.strip()
    t(re.fullmatch(r"gk_[0-9a-f]{48}", key) is not None, "generated API key read: %r" % key)
    st, js = http(http_port, "POST", "/api/devices", key, {"id": "img-1"})
    t.eq(st, 201, "device provisioned over REST (%s)" % js)
    token = js["token"] if st == 201 else ""

    p = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-i", "img-1",
                        "-u", "img-1", "-P", token, "-q", "1", "-t", "devices/img-1/telemetry",
                        "-m", '{"temp":21.5}'], capture_output=True, text=True, timeout=30)
    t.eq(p.returncode, 0, "mosquitto_pub QoS 1 (%s)" % p.stderr.strip())
    c = LineClient(line_port)
    try:
        t.eq(c.auth("img-1", token), {"ok": True}, "line protocol hello")
        c.send_line({"seq": 1, "hum": 40, "door": "open"})
        t.eq(c.read_line(), {"ack": 1}, "line protocol value acked")
    finally:
        c.close()
    v = latest(http_port, key, "img-1")
    t(v.get("temp", {}).get("value") == 21.5 and v.get("hum", {}).get("value") == 40
      and v.get("door", {}).get("value") == "open", "read back over REST: %s" % v)
    st, js = http(http_port, "GET", "/api/devices/img-1/telemetry?keys=temp", key)
    t(st == 200 and [x["value"] for x in js.get("temp", [])] == [21.5],
      "history over REST: %s %s" % (st, js))

    # ---- the HEALTHCHECK, healthy and wedged
    rc, out = healthcheck(r, name)
    t(rc == 0 and "unhealthy" not in out, "podman healthcheck run: healthy (%d %s)" % (rc, out))
    r.podman("kill", "--signal", "STOP", name)
    try:
        t0 = time.monotonic()
        rc, out = healthcheck(r, name)
        t(rc != 0 and "unhealthy" in out,
          "healthcheck while the gateway is stopped: unhealthy (%d %s)" % (rc, out))
        t(time.monotonic() - t0 < 10, "the wedged healthcheck returned within its timeout")
    finally:
        r.podman("kill", "--signal", "CONT", name)
    rc, out = healthcheck(r, name)
    t(rc == 0, "healthy again after SIGCONT (%d %s)" % (rc, out))

    # ---- non-root, read-only
    status = r.podman("exec", name, "cat", "/proc/1/status").stdout
    uids = re.search(r"^Uid:\s+(\d+)", status, re.M)
    gids = re.search(r"^Gid:\s+(\d+)", status, re.M)
    t(uids and uids.group(1) == "10001" and gids and gids.group(1) == "10001",
      "PID 1 runs as uid 10001 gid 10001")
    t("gale" in r.podman("exec", name, "cat", "/proc/1/comm").stdout, "PID 1 is gale")
    t(r.podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip()
      == "true", "root file system is read-only")
    p = r.podman("exec", name, "touch", "/etc/gale/x", check=False)
    t(p.returncode != 0, "writing outside /data and /tmp fails")

    # ---- podman stop: SIGTERM to PID 1, clean exit
    t0 = time.monotonic()
    r.podman("stop", "-t", "10", name, timeout=60)
    stop_s = time.monotonic() - t0
    code = r.podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    logs = r.podman("logs", name).stdout
    print("image: podman stop took %.2f s" % stop_s, flush=True)
    t(stop_s < 10, "podman stop within 10 s (%.1f s)" % stop_s)
    t.eq(code, "0", "exit code after SIGTERM")
    t("stopped code=0" in logs, "log says stopped code=0")

    # ---- the same volume, a new container, an API key chosen by the environment
    r.podman("rm", name)
    chosen = "chosen-key-0123456789"
    argv, name2, ports = r.adapt_run(run_cmd, extra_env=["GALE_HTTP_API_KEY=" + chosen])
    r.podman(*argv[1:])
    wait_ready(r, name2, ports[8080])
    v = latest(ports[8080], chosen, "img-1")
    t(v.get("temp", {}).get("value") == 21.5 and v.get("hum", {}).get("value") == 40,
      "data kept across containers on the volume, key from GALE_HTTP_API_KEY: %s" % v)
    t(http(ports[8080], "GET", "/api/devices", key)[0] == 401, "the generated key is not used")
    p = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(ports[1883]), "-i", "img-1",
                        "-u", "img-1", "-P", token, "-q", "1", "-t", "devices/img-1/telemetry",
                        "-m", '{"temp":22.5}'], capture_output=True, text=True, timeout=30)
    t.eq(p.returncode, 0, "the device's token still works (%s)" % p.stderr.strip())
    t(latest(ports[8080], chosen, "img-1").get("temp", {}).get("value") == 22.5,
      "new value stored")
    r.podman("stop", "-t", "10", name2, timeout=60)

    # ---- the HEALTHCHECK finds a port only a flag set
    argv, name3, ports = r.adapt_run(run_cmd, args=["--set", "http.port=9191"])
    argv = [a.replace(":8080", ":9191") if a.startswith("127.0.0.1:") else a for a in argv]
    r.podman(*argv[1:])
    wait_ready(r, name3, ports[8080])
    rc, out = healthcheck(r, name3)
    t(rc == 0, "healthcheck healthy with http.port from --set (%d %s)" % (rc, out))
    r.podman("rm", "-f", "-t", "0", name3)

    check_tls(r, cmds)

    # ---- /data not writable by uid 10001: a root-owned directory, another --user
    d = tempfile.mkdtemp(prefix="gale-root-data-")
    r.dirs.append(d)
    os.chmod(d, 0o755)
    for what, extra in (("a root-owned directory", ["-v", d + ":/data"]),
                        ("--user 4321", ["--user", "4321"])):
        argv, n, _ = r.adapt_run(run_cmd)
        i = argv.index(r.tag)
        if extra[0] == "-v":  # replaces the named volume
            j = [k for k, a in enumerate(argv) if a.endswith(":/data")][0]
            argv[j] = extra[1]
        else:
            argv[i:i] = extra
        argv.remove("-d")
        p = podman.run(argv, env=r.env, timeout=60, check=False)
        t.eq(p.returncode, 1, "%s on /data: exit 1" % what)
        t("10001" in p.stdout and "chown" in p.stdout and "not writable" in p.stdout,
          "%s: the message names uid 10001 and the fix: %s" % (what, p.stdout.strip()[-400:]))


def served_serial(port):
    """The serial of the certificate a TLS listener on 127.0.0.1:port presents."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s) as tls:
            return tlscerts.serial_of(tls.getpeercert(binary_form=True))


def check_tls(r, cmds):
    """The README's TLS one-liner: a certificate directory mounted read-only, the key
    readable by uid 10001; HTTPS and MQTTS answer with it; after the files are replaced,
    the README's `docker kill -s HUP` makes new connections get the new one."""
    tls_cmd = [c for c in cmds if c[:2] == ["docker", "run"] and
               any("GALE_TLS_CERT_FILE" in a for a in c)]
    t(len(tls_cmd) == 1, "README has the TLS one-liner")
    hup = podman.find_command(cmds, "docker", "kill")
    if not tls_cmd:
        return
    work = tempfile.mkdtemp(prefix="gale-tls-")
    r.dirs.append(work)
    tls_dir = os.path.join(work, "tls")
    os.makedirs(tls_dir)
    os.chmod(work, 0o755)
    os.chmod(tls_dir, 0o755)
    ca = tlscerts.CA(work)

    def install(name):
        pem, key = ca.issue(name, "localhost", server=True)
        for src, dst in ((pem, "server.pem"), (key, "server.key")):
            tmp = os.path.join(tls_dir, dst + ".new")
            shutil.copy(src, tmp)
            os.chown(tmp, 10001, 10001)  # the README: the key readable by uid 10001
            os.chmod(tmp, 0o600 if dst.endswith(".key") else 0o644)
            os.replace(tmp, os.path.join(tls_dir, dst))
        return tlscerts.serial_of(open(pem).read())

    serial1 = install("one")
    host_dir = [a.split(":")[0] for a in tls_cmd[0] if a.endswith(":/etc/gale/tls:ro")]
    t(len(host_dir) == 1, "the TLS one-liner mounts a certificate directory")
    argv, name, ports = r.adapt_run(tls_cmd[0], dirs={host_dir[0]: tls_dir} if host_dir else {})
    t(set(ports) >= {8883, 8443, 7443}, "TLS one-liner publishes 8883, 8443 and 7443")
    r.podman(*argv[1:])
    wait_ready(r, name, ports[8080])
    t.eq(served_serial(ports[8443]), serial1, "HTTPS presents the mounted certificate")
    t.eq(served_serial(ports[8883]), serial1, "MQTTS presents the mounted certificate")
    ctx = ssl.create_default_context(cafile=ca.pem)
    with urllib.request.urlopen("https://127.0.0.1:%d/api/health" % ports[8443], context=ctx,
                                timeout=5) as resp:
        t.eq(resp.status, 200, "GET /api/health over HTTPS, verified against the CA")
    serial2 = install("two")
    hup_argv = ["podman"] + [name if a == "gale" else a for a in hup[1:]]
    r.podman(*hup_argv[1:])
    wait_for(lambda: served_serial(ports[8443]) == serial2, 15,
             "the new certificate after SIGHUP", interval=0.3)
    t.eq(served_serial(ports[8883]), serial2, "MQTTS presents the new certificate after HUP")
    r.podman("rm", "-f", "-t", "0", name)


if __name__ == "__main__":
    t.run(main)
