"""The Docker image's recipe, checked without a container engine (tests/image/ builds and
runs the image itself): every file the Dockerfile copies exists, the setup script knows
the modes it is called with, the config the image starts with is valid under the image's
environment; the HEALTHCHECK's `gale --health` is healthy against a running gateway (also
one whose port only a --set flag chose, read from <data_dir>/listeners, which lists every
bound listener and is gone after a clean stop), unhealthy when nothing answers and when
the gateway is stopped (SIGSTOP) within its 2 s deadline; a data dir
the process may not write fails with a message naming both uids and the fix. And the
image build's uPlot fetch without npm (setup.sh deps, from a registry on loopback):
the tarball the lock file's sha512 names is unpacked, a different one or an unreachable
registry fails the setup (so the image build) and leaves nothing behind."""
import base64
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time

from galetest import GALE_BIN, Check, Gale

t = Check("test_docker")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def health(data_dir, *args, env=None):
    p = subprocess.run([GALE_BIN, "--data-dir", data_dir] + list(args) + ["--health"],
                       env=env, capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout.strip() + p.stderr.strip()


def main():
    df = open(os.path.join(ROOT, "docker", "Dockerfile")).read()
    copies = re.findall(r"^COPY (?!--from)(\S+) ", df, re.M)
    t(len(copies) >= 3, "Dockerfile copies files from the context")
    for src in copies:
        t(src == "." or os.path.exists(os.path.join(ROOT, src)), "COPY source %s exists" % src)
    modes = re.findall(r"^(?!\s*#)\s*(?:RUN )?.*?setup\.sh (\w[\w-]*)", df, re.M)
    t(len(modes) >= 2, "both stages run the setup script")
    setup = open(os.path.join(ROOT, ".ci", "setup.sh")).read()
    for m in modes:
        t(re.search(r"^\s*%s\)" % re.escape(m), setup, re.M), "setup.sh has mode %s" % m)
    t(re.search(r'^HEALTHCHECK .*\n.*"--health"\]', df, re.M) and "USER 10001:10001" in df
      and "VOLUME /data" in df, "healthcheck (gale --health), uid 10001 and data volume")
    t("groupadd --system --gid 10001 gale" in df and "--uid 10001 --gid 10001" in df,
      "user gale is uid 10001 in group gid 10001")
    # the config and environment the image starts with
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALE_")}
    env["GALE_GATEWAY_DATA_DIR"] = "/data"
    p = subprocess.run([GALE_BIN, "--config", os.path.join(ROOT, "config", "gateway.json"),
                        "--check-config"], env=env, capture_output=True, text=True, timeout=30)
    t.eq(p.returncode, 0, "the image's config is valid (%s)" % p.stderr.strip())

    env = {k: v for k, v in os.environ.items() if not k.startswith("GALE_")}
    empty = tempfile.mkdtemp(prefix="gale-test-")
    try:
        # nothing recorded, nothing answering on the configured port
        with Gale() as g:
            port = g.ports["http"]
        rc, out = health(empty, "--set", "http.port=%d" % port, env=env)
        t(rc == 1 and "unhealthy" in out and "refused" in out, "nothing answers: %d %s"
          % (rc, out))
    finally:
        shutil.rmtree(empty, ignore_errors=True)

    with Gale() as g:
        listeners = open(os.path.join(g.data_dir, "listeners")).read().splitlines()
        t.eq(listeners, ["%s 127.0.0.1 %d" % (p, g.ports[p]) for p in ("http", "line", "mqtt")],
             "the listeners file")
        # the port came from --set http.port=0: only the listeners file knows it
        rc, out = health(g.data_dir, env=env)
        t(rc == 0 and "healthy" in out and str(g.ports["http"]) in out,
          "healthy, port from the listeners file: %d %s" % (rc, out))
        # the same through the environment, as the image's HEALTHCHECK runs it
        rc, out = health(g.data_dir, env=dict(env, GALE_HTTP_PORT="1"))
        t.eq(rc, 0, "the recorded port beats a stale config port (%s)" % out)
        os.kill(g.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            rc, out = health(g.data_dir, env=env)
            took = time.monotonic() - t0
        finally:
            os.kill(g.proc.pid, signal.SIGCONT)
        t(rc == 1 and "no answer in time" in out, "stopped gateway: unhealthy (%d %s)"
          % (rc, out))
        t(took < 10, "the probe gave up within its deadline (%.1f s)" % took)
        rc, out = health(g.data_dir, env=env)
        t.eq(rc, 0, "healthy again after SIGCONT (%s)" % out)
        t.eq(open(os.path.join(g.data_dir, "gale.lock")).read(), "%d\n" % g.proc.pid,
             "gale.lock holds the pid alone")
        data_dir = g.data_dir
        g.own_dir = False  # kept for the check below
        g.stop()
    try:
        t(not os.path.exists(os.path.join(data_dir, "listeners")),
          "a clean stop removes the listeners file")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    # a data dir this uid may not write: the message names both uids and the fix
    if os.getuid() == 0:
        d = tempfile.mkdtemp(prefix="gale-test-")
        os.chmod(d, 0o755)
        try:
            p = subprocess.run([GALE_BIN, "--data-dir", d], env=env, capture_output=True,
                               text=True, timeout=30, user=65534, group=65534)
            t.eq(p.returncode, 1, "unwritable data dir: exit 1")
            t("not writable by uid 65534 gid 65534 (it belongs to uid 0 gid 0, mode 0755)"
              in p.stderr and "chown -R 65534:65534" in p.stderr,
              "message names the uids and the fix: %s" % p.stderr.strip()[-300:])
            t(not os.path.exists(os.path.join(d, "gale.db")), "nothing created")
        finally:
            shutil.rmtree(d, ignore_errors=True)

    check_fetch()


def tarball(js):
    """An npm-style package tarball (package/...) holding uPlot's two dist files."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        for name, data in (("package/package.json", b'{"name":"uplot"}'),
                           ("package/dist/uPlot.iife.min.js", js),
                           ("package/dist/uPlot.min.css", b".u{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def check_fetch():
    """setup.sh deps on a machine without npm: curl + openssl against the lock file."""
    good, bad = tarball(b"/*good*/"), tarball(b"/*tampered*/")
    served = {"body": good}

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/uplot/-/uplot-9.9.9.tgz":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(served["body"])))
            self.end_headers()
            self.wfile.write(served["body"])

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Registry)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    tree = tempfile.mkdtemp(prefix="gale-test-setup-")
    try:
        os.makedirs(os.path.join(tree, ".ci"))
        shutil.copy(os.path.join(ROOT, ".ci", "setup.sh"), os.path.join(tree, ".ci"))
        lock = {"name": "gale-dashboard", "lockfileVersion": 3, "requires": True,
                "packages": {"": {"dependencies": {"uplot": "9.9.9"}},
                             "node_modules/uplot": {
                                 "version": "9.9.9",
                                 "integrity": "sha512-" + base64.b64encode(
                                     hashlib.sha512(good).digest()).decode(),
                                 "license": "MIT"}}}
        with open(os.path.join(tree, "package-lock.json"), "w") as f:
            json.dump(lock, f, indent=2)
        # a PATH with every command of this machine but npm
        bindir = os.path.join(tree, "bin")
        os.makedirs(bindir)
        for d in ("/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin"):
            for name in os.listdir(d) if os.path.isdir(d) else []:
                if name not in ("npm", "npx") and not os.path.exists(os.path.join(bindir, name)):
                    os.symlink(os.path.join(d, name), os.path.join(bindir, name))
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_")}
        env["PATH"] = bindir
        dist = os.path.join(tree, "node_modules", "uplot", "dist", "uPlot.iife.min.js")

        def setup(registry):
            p = subprocess.run(["sh", os.path.join(tree, ".ci", "setup.sh"), "deps"],
                               env=dict(env, npm_config_registry=registry),
                               capture_output=True, text=True, timeout=120)
            return p.returncode, p.stdout + p.stderr

        url = "http://127.0.0.1:%d/" % srv.server_address[1]
        served["body"] = bad
        rc, out = setup(url)
        t(rc != 0 and "does not match package-lock.json" in out and not os.path.exists(dist),
          "a tarball other than the lock file's fails the setup (%d %s)" % (rc, out[-300:]))
        rc, out = setup("http://127.0.0.1:1/")
        t(rc != 0 and "cannot fetch" in out and not os.path.exists(dist),
          "an unreachable registry fails the setup (%d %s)" % (rc, out[-300:]))
        served["body"] = good
        rc, out = setup(url)
        t(rc == 0 and os.path.exists(dist) and open(dist, "rb").read() == b"/*good*/",
          "the lock file's tarball is unpacked into node_modules (%d %s)" % (rc, out[-300:]))
    finally:
        srv.shutdown()
        srv.server_close()
        shutil.rmtree(tree, ignore_errors=True)


t.run(main)
