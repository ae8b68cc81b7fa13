"""TLS on every listener, with real clients against a CA made with openssl at test time:
mosquitto_pub/sub --cafile (and --cert/--key), python3-paho-mqtt tls_set, python3-websockets
wss:// (/ws/live with the API key, /ws/device by token and by certificate), curl --cacert
for HTTPS REST and ingest, the line protocol over python ssl. Mutual TLS accepted (the
device authenticated by its certificate, telemetry stored) and refused (no certificate
with client_auth=required, a CN that is no provisioned device, an untrusted CA, an expired
certificate); TLS 1.1 refused; the plain ports still work; reload on SIGHUP (a new
connection sees the new certificate, an old one keeps working, a bad reload keeps the
current one); --check-config rejects bad TLS files with exit 2. Loopback only; every
client is bounded by a timeout; gale is stopped by its PID."""
import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time

import paho.mqtt.client as paho
import websockets

from galetest import GALE_BIN, Check, Gale, LineClient, tls_args, wait_for
from tlscerts import CA, serial_of

t = Check("test_tls")
D = tempfile.mkdtemp(prefix="gale-tls-")
DEV = "dev-tls-1"


def client_ctx(ca, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_sock(port, ca, cert=None, key=None, host="localhost"):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return client_ctx(ca, cert, key).wrap_socket(raw, server_hostname=host)


def tls_line(port, ca, cert=None, key=None):
    c = LineClient.__new__(LineClient)
    c.sock, c.buf = tls_sock(port, ca, cert, key), b""
    return c


def refused(fn):
    """True when fn's TLS connection fails (handshake alert, reset or EOF)."""
    try:
        fn()
    except (ssl.SSLError, ConnectionError, OSError, ValueError):
        return True
    return False


def latest(g, dev, key):
    st, js = g.http("GET", "/api/devices/%s/latest" % dev)
    return js.get(key, {}).get("value") if st == 200 and isinstance(js, dict) else None


def mosq(tool, port, ca, *args, timeout=15):
    cmd = [tool, "-h", "localhost", "-p", str(port), "--cafile", ca] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def paho_connect(port, ca, cid, user=None, pw=None, cert=None, key=None):
    """(client, CONNACK rc) of a paho client over TLS; the client's loop runs."""
    got = []
    c = paho.Client(client_id=cid, protocol=paho.MQTTv311)
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    if user is not None:
        c.username_pw_set(user, pw)
    c.on_connect = lambda cl, ud, fl, rc: got.append(rc)
    c.connect("localhost", port, keepalive=30)
    c.loop_start()
    wait_for(lambda: got, 10, "CONNACK")
    return c, got[0]


def tls11_client_hello():
    """A ClientHello that offers TLS 1.1 at most (built by hand: local clients refuse to
    offer 1.1 at all)."""
    suites = struct.pack(">HHH", 0xc013, 0xc014, 0x002f)
    body = (struct.pack(">H", 0x0302) + os.urandom(32) + b"\x00" +
            struct.pack(">H", len(suites)) + suites + b"\x01\x00")
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def check_config_rc(*sets):
    args = [GALE_BIN, "--data-dir", os.path.join(D, "cc"), "--check-config"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=30).returncode


async def wss_checks(g, ca, tok, dev_cert, dev_key):
    https = g.ports["https"]
    live = "wss://localhost:%d/ws/live?api_key=%s" % (https, g.api_key)
    async with websockets.connect(live, ssl=client_ctx(ca)) as ws:
        t.eq(json.loads(await asyncio.wait_for(ws.recv(), 10)), {"type": "ready"},
             "wss /ws/live with the API key: ready")
    uri = "wss://localhost:%d/ws/device?device=%s&token=%s" % (https, DEV, tok)
    async with websockets.connect(uri, ssl=client_ctx(ca)) as ws:
        await ws.send(json.dumps({"temp": 31, "seq": 1}))
        t.eq(json.loads(await asyncio.wait_for(ws.recv(), 10)), {"ack": 1},
             "wss /ws/device with token: acked")
    uri = "wss://localhost:%d/ws/device" % https
    async with websockets.connect(uri, ssl=client_ctx(ca, dev_cert, dev_key)) as ws:
        await ws.send(json.dumps({"temp": 32, "seq": 7}))
        t.eq(json.loads(await asyncio.wait_for(ws.recv(), 10)), {"ack": 7},
             "wss /ws/device by client certificate, no token: acked")
    t.eq(latest(g, DEV, "temp"), 32, "wss telemetry by certificate stored")


def mqtt_str(b):
    return struct.pack("!H", len(b)) + b


def mqtt_packet(first, body):
    rem, n = b"", len(body)
    while True:
        rem += bytes([(n & 0x7f) | (0x80 if n > 0x7f else 0)])
        n >>= 7
        if not n:
            return bytes([first]) + rem + body


def tls_exchange(port, ca, chunks, want, timeout=10):
    """Sends each chunk as its own TLS record (a pause between them, so each is its own
    read) and reads until want bytes arrived; returns what was read."""
    s = tls_sock(port, ca)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = b""
    try:
        for i, c in enumerate(chunks):
            if i:
                time.sleep(0.002)
            s.sendall(c)
        deadline = time.monotonic() + timeout
        while len(got) < len(want) and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except (ssl.SSLError, OSError):
        pass
    finally:
        s.close()
    return got


def check_tls_input(mq, ca, tok):
    """Plaintext reaches MQTT through the loop-wide read buffer: a CONNECT + QoS 1 PUBLISH
    + PINGREQ split across records at every byte, one byte per record, and a PUBLISH of
    300 kB (many records and reads, its tail kept between them) are all answered."""
    def stream(cid, payload=b"hello"):
        var = mqtt_str(b"MQTT") + bytes([4, 0xc2]) + struct.pack("!H", 60) + mqtt_str(cid)
        var += mqtt_str(DEV.encode()) + mqtt_str(tok.encode())
        pub = mqtt_str(("devices/%s/echo" % DEV).encode()) + struct.pack("!H", 1) + payload
        return mqtt_packet(0x10, var) + mqtt_packet(0x32, pub) + b"\xc0\x00"
    want = b"\x20\x02\x00\x00\x40\x02\x00\x01\xd0\x00"
    bad, n = [], 0
    whole = stream(b"tls-split-000")
    for k in range(1, len(whole)):
        got = tls_exchange(mq, ca, [stream(b"tls-split-%03d" % k)[:k],
                                    stream(b"tls-split-%03d" % k)[k:]], want)
        n += 1
        if got != want:
            bad.append("split at %d: got %r" % (k, got[:64]))
    one = stream(b"tls-bytes")
    got = tls_exchange(mq, ca, [one[i:i + 1] for i in range(len(one))], want)
    n += 1
    if got != want:
        bad.append("a byte per record: got %r" % got[:64])
    t(not bad, "mqtts: %d split streams all answered%s" % (n, "" if not bad else
                                                         ": " + "; ".join(bad[:3])))
    got = tls_exchange(mq, ca, [stream(b"tls-big", b"x" * 300000)], want, timeout=20)
    t.eq(got, want, "mqtts: a 300 kB PUBLISH over many records and reads is acknowledged")


def main():
    ca = CA(D, "ca")
    other = CA(D, "other")
    srv_pem, srv_key = ca.issue("srv", "localhost", server=True, serial=1001)
    dev_pem, dev_key = ca.issue("dev", DEV)
    nope_pem, nope_key = ca.issue("nope", "dev-not-provisioned")
    old_pem, old_key = ca.issue("expired", DEV, days=-1)
    untrusted_pem, untrusted_key = other.issue("untrusted", DEV)
    # the gateway reads its certificate from files the test replaces on reload
    live_pem, live_key = os.path.join(D, "live.pem"), os.path.join(D, "live.key")
    shutil.copy(srv_pem, live_pem)
    shutil.copy(srv_key, live_key)
    cap = ca.pem

    # ---- --check-config validates the files before anything is opened ----
    good = ["tls.cert_file=" + live_pem, "tls.key_file=" + live_key]
    t.eq(check_config_rc(*good), 0, "--check-config: good certificate and key")
    t.eq(check_config_rc("tls.cert_file=" + os.path.join(D, "missing.pem")), 2,
         "--check-config: unreadable certificate exits 2")
    t.eq(check_config_rc("tls.cert_file=" + live_pem, "tls.key_file=" + dev_key), 2,
         "--check-config: key that does not match exits 2")
    junk = os.path.join(D, "junk.pem")
    with open(junk, "w") as f:
        f.write("not a certificate\n")
    t.eq(check_config_rc(*good, "tls.ca_file=" + junk, "tls.client_auth=optional"), 2,
         "--check-config: CA file that does not parse exits 2")
    t.eq(check_config_rc(*good, "tls.client_auth=required"), 2,
         "--check-config: client_auth without a CA file exits 2")
    t(not os.path.exists(os.path.join(D, "cc", "gale.db")), "--check-config opened no database")

    with Gale(args=tls_args(live_pem, live_key, cap, "optional")) as g:
        wait_for(lambda: all(p in g.ports for p in ("https", "lines", "mqtts")),
                 10, "TLS listening lines")
        tok = g.create_device(DEV)
        g.create_device("dev-tls-2")
        mq, ln, hs = g.ports["mqtts"], g.ports["lines"], g.ports["https"]

        # ---- MQTT over TLS ----
        r = mosq("mosquitto_pub", mq, cap, "-i", "pub-tok", "-u", DEV, "-P", tok, "-q", "1",
                 "-t", "devices/%s/telemetry" % DEV, "-m", '{"temp":21}')
        t.eq(r.returncode, 0, "mosquitto_pub --cafile with token (%s)" % r.stderr.strip())
        wait_for(lambda: latest(g, DEV, "temp") == 21, 10, "mqtts telemetry stored")
        r = mosq("mosquitto_pub", mq, cap, "-i", "pub-ret", "-u", DEV, "-P", tok, "-r",
                 "-t", "devices/%s/echo" % DEV, "-m", "hello-tls")
        r = mosq("mosquitto_sub", mq, cap, "-i", "sub-tok", "-u", DEV, "-P", tok, "-C", "1",
                 "-W", "10", "-t", "devices/%s/echo" % DEV)
        t.eq(r.stdout.strip(), "hello-tls", "mosquitto_sub over TLS receives")
        r = mosq("mosquitto_pub", mq, cap, "-i", "pub-cert", "--cert", dev_pem, "--key", dev_key,
                 "-q", "1", "-t", "devices/%s/telemetry" % DEV, "-m", '{"temp":22}')
        t.eq(r.returncode, 0, "mosquitto_pub by client certificate, no credentials (%s)" %
             r.stderr.strip())
        wait_for(lambda: latest(g, DEV, "temp") == 22, 10, "certificate telemetry stored")
        c, rc = paho_connect(mq, cap, "paho-tok", DEV, tok)
        t.eq(rc, 0, "paho tls_set with token: accepted")
        c.publish("devices/%s/telemetry" % DEV, '{"hum":40}', qos=1).wait_for_publish(10)
        c.disconnect()
        c.loop_stop()
        wait_for(lambda: latest(g, DEV, "hum") == 40, 10, "paho telemetry stored")
        c, rc = paho_connect(mq, cap, "paho-cert", DEV, None, dev_pem, dev_key)
        t.eq(rc, 0, "paho by certificate, username = device id, no password: accepted")
        c.publish("devices/%s/telemetry" % DEV, '{"hum":41}', qos=1).wait_for_publish(10)
        c.disconnect()
        c.loop_stop()
        wait_for(lambda: latest(g, DEV, "hum") == 41, 10, "paho certificate telemetry stored")
        check_tls_input(mq, cap, tok)
        c, rc = paho_connect(mq, cap, "paho-other", "dev-tls-2", None, dev_pem, dev_key)
        t(rc != 0, "certificate of one device does not log in another (rc=%d)" % rc)
        c.loop_stop()
        c, rc = paho_connect(mq, cap, "paho-nope", None, None, nope_pem, nope_key)
        t(rc != 0, "certificate CN not provisioned: refused (rc=%d)" % rc)
        c.loop_stop()
        for what, pem, key in (("untrusted CA", untrusted_pem, untrusted_key),
                               ("expired", old_pem, old_key)):
            r = mosq("mosquitto_pub", mq, cap, "-i", "pub-bad", "--cert", pem, "--key", key,
                     "-q", "1", "-t", "devices/%s/telemetry" % DEV, "-m", '{"temp":99}')
            t(r.returncode != 0, "mosquitto_pub with %s certificate refused" % what)
        g.wait_log(r"tls handshake failed reason=\".*certificate has expired")
        t(latest(g, DEV, "temp") == 22, "refused clients stored nothing")

        # ---- line protocol over TLS ----
        lc = tls_line(ln, cap)
        t.eq(lc.auth(DEV, tok), {"ok": True}, "line over TLS with token: ok")
        lc.send_line({"temp": 23, "seq": 1})
        t.eq(lc.read_line(), {"ack": 1}, "line over TLS: acked")
        lc.close()
        lc = tls_line(ln, cap, dev_pem, dev_key)
        lc.send_line({"device": DEV})
        t.eq(lc.read_line(), {"ok": True}, "line by client certificate, no token: ok")
        lc.send_line({"temp": 24, "seq": 2})
        t.eq(lc.read_line(), {"ack": 2}, "line by certificate: acked")
        t.eq(latest(g, DEV, "temp"), 24, "line certificate telemetry stored")
        lc.close()
        lc = tls_line(ln, cap, dev_pem, dev_key)
        lc.send_line({"device": "dev-tls-2"})
        t.eq(lc.read_line().get("code"), "unauthorized", "line: certificate of another device")
        lc.close()
        lc = tls_line(ln, cap, nope_pem, nope_key)
        lc.send_line({"device": "dev-not-provisioned"})
        t.eq(lc.read_line().get("code"), "unauthorized", "line: CN not provisioned refused")
        lc.close()

        def untrusted_line():
            c = tls_line(ln, cap, untrusted_pem, untrusted_key)
            c.send_line({"device": DEV})
            c.read_line(timeout=5)
        t(refused(untrusted_line), "line with an untrusted certificate refused")

        # ---- HTTPS and WSS ----
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", cap,
                            "https://localhost:%d/api/health" % hs], capture_output=True,
                           text=True, timeout=20)
        t(r.returncode == 0 and json.loads(r.stdout or "{}").get("status") == "ok",
          "curl --cacert https /api/health (%s)" % r.stderr.strip())
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", cap, "-H",
                            "Authorization: Bearer " + g.api_key,
                            "https://localhost:%d/api/devices/%s" % (hs, DEV)],
                           capture_output=True, text=True, timeout=20)
        t.eq(json.loads(r.stdout or "{}").get("id"), DEV, "curl https REST with the API key")

        def ingest(*extra):
            return subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", cap, "-o",
                                   "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d",
                                   '{"volt":5}'] + list(extra) +
                                  ["https://localhost:%d/api/devices/%s/telemetry" % (hs, DEV)],
                                  capture_output=True, text=True, timeout=20).stdout
        t.eq(ingest(), "401", "https ingest without credentials: 401")
        t.eq(ingest("--cert", dev_pem, "--key", dev_key), "200",
             "https ingest by client certificate: 200")
        t.eq(latest(g, DEV, "volt"), 5, "https ingest by certificate stored")
        asyncio.run(wss_checks(g, cap, tok, dev_pem, dev_key))

        # ---- TLS 1.1 refused ----
        s = socket.create_connection(("127.0.0.1", mq), timeout=10)
        s.sendall(tls11_client_hello())
        try:
            answer = s.recv(7)
        except ConnectionError:
            answer = b""
        s.close()
        t.eq(answer[:1] + answer[5:7], b"\x15\x02\x46",
             "TLS 1.1 ClientHello answered with a protocol_version alert")
        t(refused(lambda: tls_sock(mq, cap).sendall(b"\x10\x00")) is False, "a TLS 1.2+ client "
          "still connects")

        # ---- the plain ports still work ----
        pl = g.line(DEV, tok)
        pl.send_line({"temp": 25, "seq": 1})
        t.eq(pl.read_line(), {"ack": 1}, "plain line port still served")
        pl.close()
        st, _ = g.http("GET", "/api/health")
        t.eq(st, 200, "plain http port still served")

        # ---- reload on SIGHUP: new connections see the new certificate ----
        old = tls_line(ln, cap)
        t.eq(old.auth(DEV, tok), {"ok": True}, "connection before the reload")
        t.eq(serial_of(old.sock.getpeercert(binary_form=True)), 1001, "old certificate serial")
        new_pem, new_key = ca.issue("srv2", "localhost", server=True, serial=2002)
        before = g.log().count("tls reloaded")
        for src, dst in ((new_key, live_key), (new_pem, live_pem)):
            shutil.copy(src, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
        os.kill(g.proc.pid, signal.SIGHUP)
        wait_for(lambda: g.log().count("tls reloaded") > before, 10, "reload")
        s = tls_sock(hs, cap)
        t.eq(serial_of(s.getpeercert(binary_form=True)), 2002, "new connection: new serial")
        s.close()
        old.send_line({"temp": 26, "seq": 5})
        t.eq(old.read_line(), {"ack": 5}, "connection made before the reload keeps working")
        # a reload that fails keeps the current certificate
        before = g.log().count("tls reload failed")
        shutil.copy(dev_key, live_key + ".tmp")
        os.replace(live_key + ".tmp", live_key)
        os.kill(g.proc.pid, signal.SIGHUP)
        wait_for(lambda: g.log().count("tls reload failed") > before, 10, "failed reload")
        s = tls_sock(mq, cap)
        t.eq(serial_of(s.getpeercert(binary_form=True)), 2002, "failed reload kept the current")
        s.close()
        old.send_line({"temp": 27, "seq": 6})
        t.eq(old.read_line(), {"ack": 6}, "old connection still works after a failed reload")
        old.close()
        t(g.alive(), "gale alive after the TLS checks")

    # ---- client_auth=required: no certificate, no handshake ----
    shutil.copy(srv_pem, live_pem)
    shutil.copy(srv_key, live_key)
    with Gale(args=tls_args(live_pem, live_key, cap, "required")) as g:
        wait_for(lambda: "lines" in g.ports and "mqtts" in g.ports, 10, "TLS listening lines")
        g.create_device(DEV)

        def no_cert_line():
            c = tls_line(g.ports["lines"], cap)
            c.send_line({"device": DEV})
            c.read_line(timeout=5)
        t(refused(no_cert_line), "required: a client without a certificate is refused")
        g.wait_log(r"tls handshake failed reason=\".*certificate")
        r = mosq("mosquitto_pub", g.ports["mqtts"], cap, "-i", "pub-nocert", "-u", DEV, "-P",
                 "x", "-t", "devices/%s/telemetry" % DEV, "-m", '{"temp":1}')
        t(r.returncode != 0, "required: mosquitto_pub without a certificate refused")
        lc = tls_line(g.ports["lines"], cap, dev_pem, dev_key)
        lc.send_line({"device": DEV})
        t.eq(lc.read_line(), {"ok": True}, "required: with the device certificate: ok")
        lc.send_line({"temp": 30, "seq": 1})
        t.eq(lc.read_line(), {"ack": 1}, "required: acked")
        lc.close()
        r = mosq("mosquitto_pub", g.ports["mqtts"], cap, "-i", "pub-c", "--cert", dev_pem,
                 "--key", dev_key, "-q", "1", "-t", "devices/%s/telemetry" % DEV, "-m",
                 '{"temp":33}')
        t.eq(r.returncode, 0, "required: mosquitto_pub with the certificate")
        wait_for(lambda: latest(g, DEV, "temp") == 33, 10, "required: stored")

    # ---- no certificate configured: no TLS listener ----
    with Gale() as g:
        time.sleep(0.3)
        t(not any(p in g.ports for p in ("https", "lines", "mqtts")),
          "TLS listeners off without tls.cert_file")


try:
    t.run(main)
finally:
    shutil.rmtree(D, ignore_errors=True)
