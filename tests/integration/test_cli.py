"""Command line and config: --help, --version, --check-config, precedence, and
invalid config -> one clear message naming the key, exit code 2."""
import json
import os
import socket
import subprocess
import tempfile

from galetest import GALE_BIN, Check, Gale

t = Check("test_cli")


def run(args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("GALE_")}
    e.update(env or {})
    p = subprocess.run([GALE_BIN] + args, capture_output=True, text=True, env=e, timeout=30)
    return p.returncode, p.stdout, p.stderr


def main():
    rc, out, _ = run(["--version"])
    t(rc == 0 and out.startswith("gale "), "--version")
    rc, out, _ = run(["--config-reference"])
    readme = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                               "README.md")).read()
    missing = [l for l in out.splitlines() if l.startswith("| `") and l not in readme]
    t(rc == 0 and not missing, "README's config reference matches the binary (%s)" % missing[:2])
    rc, out, _ = run(["--help"])
    t(rc == 0 and "GALE_HTTP_PORT" in out and "http.port" in out, "--help names keys and env")
    t(len(out.splitlines()) <= 40 and "--config-reference" in out and
      "limits.max_retained_bytes_per_device" not in out,
      "--help is short (%d lines) and points to --config-reference for the table"
      % len(out.splitlines()))

    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "g.json")
        with open(cfg, "w") as f:
            json.dump({"http": {"port": 9001}, "line": {"port": 9002}}, f)
        rc, out, err = run(["--config", cfg, "--check-config"], env={"GALE_HTTP_PORT": "9003"})
        t.eq(rc, 0, "--check-config exits 0")
        js = json.loads(out)
        t.eq(js["http"]["port"], 9003, "env beats file")
        t.eq(js["line"]["port"], 9002, "file beats default")
        rc, out, err = run(["--config", cfg, "--set", "http.port=9004", "--check-config"],
                           env={"GALE_HTTP_PORT": "9003"})
        t.eq(json.loads(out)["http"]["port"], 9004, "--set beats env")
        rc, out, err = run(["--data-dir", d, "--check-config"])
        t.eq(json.loads(out)["gateway"]["data_dir"], d, "--data-dir")

        cases = [
            (["--set", "http.port=70000"], "http.port"),
            (["--set", "http.port=abc"], "http.port"),
            (["--set", "http.prot=1"], "http.prot"),
            (["--set", "log.level=loud"], "log.level"),
            (["--config", os.path.join(d, "missing.json")], "missing.json"),
        ]
        with open(os.path.join(d, "bad.json"), "w") as f:
            f.write('{"http": {"port": "eighty"}}')
        cases.append((["--config", os.path.join(d, "bad.json")], "http.port"))
        with open(os.path.join(d, "unknown.json"), "w") as f:
            f.write('{"http": {"colour": 1}}')
        cases.append((["--config", os.path.join(d, "unknown.json")], "http.colour"))
        with open(os.path.join(d, "broken.json"), "w") as f:
            f.write('{"http": ')
        cases.append((["--config", os.path.join(d, "broken.json")], "broken.json"))
        for args, key in cases:
            rc, out, err = run(args + ["--check-config"])
            t(rc == 2 and key in err and len(err.strip().splitlines()) == 1,
              "%s -> exit 2 naming %s (rc=%d, err=%r)" % (args, key, rc, err))
        # what a start would reject later is rejected by --check-config, and a start with it
        # exits 2 before the database exists
        acl_cases = [
            (["--set", 'mqtt.acl=[{"topic":"a/#"}]'], "mqtt.acl[0]"),
            (["--set", 'mqtt.acl=[{"topic":"a/#","allow":true,"acton":"publish"}]'], "acton"),
            (["--set", 'mqtt.acl=[{"topic":"a/#","allow":true,"action":"pub"}]'], "mqtt.acl[0]"),
            (["--set", 'mqtt.acl=[{"topic":"a/#/b","allow":true}]'], "mqtt.acl[0]"),
            (["--set", "mqtt.acl={}"], "mqtt.acl"),
            (["--set", "http.bind=999.1.1.1"], "http.bind"),
            (["--set", "mqtt.bind=localhost"], "mqtt.bind"),
            (["--set", "line.bind=::1::2"], "line.bind"),
        ]
        for i, (args, key) in enumerate(acl_cases):
            rc, out, err = run(args + ["--check-config"])
            t(rc == 2 and key in err and len(err.strip().splitlines()) == 1,
              "--check-config %s -> exit 2 naming %s (rc=%d, err=%r)" % (args, key, rc, err))
            fresh = os.path.join(d, "fresh%d" % i)
            rc, out, err = run(args + ["--data-dir", fresh, "--set", "http.port=0",
                                       "--set", "line.port=0", "--set", "mqtt.port=0"])
            t(rc == 2 and key in err and not os.path.exists(os.path.join(fresh, "gale.db")),
              "start with %s -> exit 2 before the database (rc=%d, err=%r)" % (args, rc, err))
        rc, out, err = run(["--set", "line.enabled=false", "--set", "line.bind=nowhere",
                            "--check-config"])
        t.eq(rc, 0, "a disabled listener's bind is not checked")
        rc, out, err = run(["--check-config"], env={"GALE_HTTP_PORT": "-5"})
        t(rc == 2 and "http.port" in err, "bad env value names the key")
        rc, out, err = run(["--check-config"], env={"GALE_LINE_PORTT": "5"})
        t(rc == 2 and "GALE_LINE_PORTT" in err, "unknown GALE_ env key is an error")
        rc, out, err = run(["--bogus"])
        t.eq(rc, 2, "unknown flag exits 2")

        # start-up failures exit 1 with the reason, without crashing
        base = ["--data-dir", d, "--set", "http.bind=127.0.0.1", "--set", "line.port=0",
                "--set", "mqtt.port=0"]
        rc, out, err = run(base + ["--set", "http.port=0",
                                   "--set", "storage.path=/nonexistent/dir/x.db"])
        t(rc == 1 and "unable to open database file" in err, "unopenable database -> exit 1")
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rc, out, err = run(base + ["--set", "http.port=%d" % busy.getsockname()[1]])
        busy.close()
        t(rc == 1 and "address already in use" in err, "port in use -> exit 1 with the reason")

    # one gale per data dir: a second exits 2 naming the dir and the holder's pid; the lock
    # goes with the process, so a restart after kill -9 works
    with tempfile.TemporaryDirectory() as d:
        g = Gale(data_dir=d).start()
        try:
            rc, out, err = run(["--data-dir", d, "--set", "http.port=0",
                                "--set", "line.port=0", "--set", "mqtt.port=0"])
            t(rc == 2 and d in err and ("pid %d" % g.proc.pid) in err,
              "second gale on the data dir -> exit 2 naming it and the pid (rc=%d, err=%r)"
              % (rc, err))
            st, _ = g.http("GET", "/api/health")
            t.eq(st, 200, "the first gale keeps serving")
        finally:
            g.kill9()
        with Gale(data_dir=d) as g2:
            st, _ = g2.http("GET", "/api/health")
            t.eq(st, 200, "restart after kill -9 takes the lock")

    # JSON logs, generated API key kept in the data dir
    with Gale(args=["--log-format", "json"], api_key=None) as g:
        line = g.wait_log(r'"listening"|listening')
        first = [l for l in g.log_lines if "listening" in l][0]
        js = json.loads(first)
        t(js.get("level") == "info" and "port" in js, "JSON log lines are JSON objects")
        key_file = os.path.join(g.data_dir, "api_key")
        t(os.path.exists(key_file), "generated API key kept in the data dir")
        key = open(key_file).read().strip()
        st, _ = g.http("GET", "/api/devices", key=key)
        t.eq(st, 200, "generated key works")
        g.stop()
        t.eq(g.proc.returncode, 0, "SIGTERM -> exit 0")
        g2 = Gale(data_dir=g.data_dir, args=["--log-format", "json"], api_key=None).start()
        st, _ = g2.http("GET", "/api/devices", key=key)
        t.eq(st, 200, "same key after restart")
        g2.stop()
        t.eq(g2.proc.returncode, 0, "SIGINT/SIGTERM exit 0")


def all_errors_at_once():
    """Every error of every source is reported in one run, each with its source, and an
    unknown key with the one it probably meant; exit 2."""
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "g.json")
        with open(cfg, "w") as f:
            json.dump({"htpp": {"port": 1}, "http": {"prot": 5, "port": "x"},
                       "mqtt": {"max_connections": 3}}, f)
        rc, out, err = run(["--config", cfg, "--set", "log.levle=debug",
                            "--set", "http.port=99999", "--log-level", "loud", "--check-config"],
                           env={"GALE_LINE_PORTT": "5", "GALE_HTTP_WS_ECHO": "maybe"})
        lines = err.strip().splitlines()
        t.eq(rc, 2, "bad config from every source exits 2")
        want = [
            ('unknown section "htpp" (did you mean http?) (in %s)' % cfg),
            ('unknown key "http.prot" (did you mean http.port?) (in %s)' % cfg),
            ("http.port: must be an integer in 0..65535 (got a string) (in %s)" % cfg),
            ('unknown key "mqtt.max_connections" (did you mean limits.max_connections?) (in %s)'
             % cfg),
            ('http.ws_echo: must be true, false, 1, 0, yes, no, on or off (got "maybe") '
             '(from environment variable "GALE_HTTP_WS_ECHO")'),
            ('unknown key "line.portt" (did you mean line.port?) '
             '(from environment variable "GALE_LINE_PORTT")'),
            'unknown key "log.levle" (did you mean log.level?) (from --set)',
            'http.port: must be an integer in 0..65535 (got "99999") (from --set)',
            'log.level: must be one of debug|info|warn|error (got "loud") (from --log-level)',
        ]
        for w in want:
            t(any(l == "gale: config: " + w for l in lines), "reported: %s" % w)
        t.eq(lines[-1], "gale: %d errors in the configuration" % len(want),
             "the count closes the list")
        # cross-key checks report all of theirs too
        rc, out, err = run(["--set", "storage.queue_low_rows=300000",
                            "--set", "storage.queue_low_bytes=1g", "--check-config"])
        t(rc == 2 and "queue_low_rows" in err and "queue_low_bytes" in err,
          "every cross-key error at once (%r)" % err)
        # a start with them creates nothing
        fresh = os.path.join(d, "fresh")
        rc, out, err = run(["--data-dir", fresh, "--set", "http.prot=0"])
        t(rc == 2 and not os.path.exists(fresh), "a bad config creates no data dir")


def bind_first():
    """The listeners bind before anything is created on disk: a port in use ends the start
    with exit 1, and no data dir, key, lock or database is left behind."""
    with tempfile.TemporaryDirectory() as d:
        for proto in ("http", "line", "mqtt"):
            busy = socket.socket()
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            fresh = os.path.join(d, "data-" + proto)
            args = ["--data-dir", fresh]
            for p in ("http", "line", "mqtt"):
                args += ["--set", "%s.bind=127.0.0.1" % p,
                         "--set", "%s.port=%d" % (p, busy.getsockname()[1] if p == proto else 0)]
            rc, out, err = run(args)
            busy.close()
            t(rc == 1 and "address already in use" in err,
              "%s port in use -> exit 1 with the reason (rc=%d)" % (proto, rc))
            t(not os.path.exists(fresh), "%s port in use -> no data dir created (%s)"
              % (proto, os.listdir(fresh) if os.path.exists(fresh) else "absent"))


def banner():
    """After the listeners are up the log says where the dashboard and the key file are,
    with one example per protocol on the ports actually bound; the key is never logged."""
    with Gale(api_key=None) as g:
        g.wait_log(r"try: HTTP:")
        log = g.log()
        http, line, mqtt = g.ports["http"], g.ports["line"], g.ports["mqtt"]
        key = open(os.path.join(g.data_dir, "api_key")).read().strip()
        t("dashboard url=http://127.0.0.1:%d/ api_key_file=%s/api_key" % (http, g.data_dir)
          in log, "the banner names the dashboard URL and the key file")
        t(key not in log, "the API key itself is not logged")
        t("mosquitto_pub -h 127.0.0.1 -p %d " % mqtt in log, "an MQTT example on the MQTT port")
        t("nc 127.0.0.1 %d, then type" % line in log, "a line protocol example on the line port")
        t("ws://127.0.0.1:%d/ws/device" % http in log, "a WebSocket URL on the HTTP port")
        t("http://127.0.0.1:%d/api/devices/dev-1/telemetry" % http in log,
          "an HTTP ingest example")
        order = [i for i, l in enumerate(g.log_lines) if "listening protocol=" in l or
                 "dashboard url=" in l]
        t(order and "dashboard url=" in g.log_lines[order[-1]],
          "the banner comes after every listening line")
    with Gale(args=["--log-format", "json"]) as g:
        g.wait_log(r"try: HTTP:")
        for l in g.log_lines:
            if "try:" in l or "dashboard" in l:
                js = json.loads(l)
                t("msg" in js, "banner lines are JSON objects in JSON logs: %s" % l[:60])


def api_key_private():
    """The generated api_key file is 0600 from the moment it is created (it holds the
    key to everything): every open that creates it asks for no group or other bits (seen
    with strace), and the file is 0600 after the start."""
    import re
    import shutil
    import signal
    import time
    d = tempfile.mkdtemp(prefix="gale-key-")
    trace, data = os.path.join(d, "trace"), os.path.join(d, "data")
    env = {k: v for k, v in os.environ.items() if k != "GALE_HTTP_API_KEY"}
    cmd = ["strace", "-f", "-qq", "-e", "trace=open,openat,creat", "-o", trace, GALE_BIN,
           "--data-dir", data, "--set", "http.port=0", "--set", "line.port=0",
           "--set", "mqtt.port=0", "--set", "http.bind=127.0.0.1",
           "--set", "line.bind=127.0.0.1", "--set", "mqtt.bind=127.0.0.1"]
    old_umask = os.umask(0)  # the most permissive: only the mode asked for protects it
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    finally:
        os.umask(old_umask)
    key_file = os.path.join(data, "api_key")
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(key_file) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        time.sleep(0.2)
        t(os.path.exists(key_file), "the api_key file is written at the first start")
        mode = os.stat(key_file).st_mode & 0o777
        t.eq(oct(mode), oct(0o600), "api_key is 0600 after the start")
        with open(trace) as f:
            lines = f.read().splitlines()
        creates = [l for l in lines if "api_key" in l and "api_key.bin" not in l and "O_CREAT" in l]
        modes = [int(re.search(r", (0[0-7]+)\)", l).group(1), 8) for l in creates]
        t(modes and all(m & 0o077 == 0 for m in modes),
          "every open creating api_key asks for mode 0600 or less: %r" % creates)
    finally:
        gale_pid = None
        try:
            with open(trace) as f:
                gale_pid = int(f.readline().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        if gale_pid:
            try:
                os.kill(gale_pid, signal.SIGTERM)
            except OSError:
                pass
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def all_tests():
    main()
    all_errors_at_once()
    bind_first()
    banner()
    api_key_private()


t.run(all_tests)
