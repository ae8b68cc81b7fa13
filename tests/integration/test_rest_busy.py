"""POST /api/devices/{id}/telemetry while storage pushes back: 503 busy with
Retry-After, a JSON body whose Content-Length is its length (a client that reads exactly
Content-Length bytes, as http.client does, gets the whole JSON).

Storage is made slow with the fault seam (GALE_TEST_FAIL_COMMITS=n, then SIGUSR2 makes the
next n commit attempts fail, each batch held ~350 ms), and a line-protocol flood fills a
small writer queue (storage.queue_high_rows) until the gateway pauses ingest."""
import http.client
import json
import threading

from galetest import API_KEY, Check, Gale

t = Check("test_rest_busy")
DEV = "busy-1"
FAILS = 96
ARGS = ["--set", "storage.queue_high_rows=400", "--set", "storage.queue_low_rows=20",
        "--set", "storage.batch_rows=20"]


def post(g, body):
    c = http.client.HTTPConnection("127.0.0.1", g.ports["http"], timeout=10)
    c.request("POST", "/api/devices/%s/telemetry" % DEV, body=json.dumps(body),
              headers={"Authorization": "Bearer " + API_KEY,
                       "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()  # exactly Content-Length bytes
    rest = b""
    c.sock.settimeout(0.5)
    try:
        rest = c.sock.recv(4096)  # anything sent past Content-Length
    except OSError:
        pass
    c.close()
    return r.status, r.getheader("Retry-After"), r.getheader("Content-Length"), data, rest


def main():
    with Gale(args=ARGS, env={"GALE_TEST_FAIL_COMMITS": str(FAILS)}) as g:
        tok = g.create_device(DEV)
        line = g.line(DEV, tok)
        g.fail_commits(FAILS)
        flood = b"".join(b'{"ts":%d,"values":{"x":%d}}\n' % (1700000000000 + i, i)
                         for i in range(4000))
        sender = threading.Thread(target=line.send, args=(flood,), daemon=True)
        sender.start()
        g.wait_log(r"pausing ingest reads", 20)
        st, retry, length, data, rest = post(g, {"x": 1})
        t.eq((st, retry), (503, "1"), "telemetry while ingest is paused: 503 with Retry-After")
        t.eq(int(length), len(data), "Content-Length is what was read")
        t.eq(rest, b"", "nothing is sent past Content-Length")
        try:
            js = json.loads(data)
        except ValueError:
            js = None
        t.eq((js or {}).get("code"), "busy", "the body read by Content-Length is whole JSON: %r"
             % data)
        sender.join(30)
        line.close()


if __name__ == "__main__":
    t.run(main)
