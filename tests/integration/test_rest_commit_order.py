"""REST changes memory only once storage has committed the change (README "REST API":
503 storage_error means nothing was stored, and nothing changed). With the storage fault
seam (GALE_TEST_FAIL_COMMITS=4, then SIGUSR2 fails the next batch):
- a token rotation (POST /token and PATCH {"token":"rotate"}) that fails leaves the old
  token working, and its connections open
- a PATCH that fails leaves the old name, metadata and attributes
- a DELETE that fails leaves the device there (and its token working)
- after a restart the registry is what the replies said
and, with storage working, each of them takes effect."""
import shutil
import tempfile

from galetest import Check, Gale, wait_for

t = Check("test_rest_commit_order")
DEV = "co-1"


def token_works(g, tok):
    """Whether tok authenticates DEV on the line protocol."""
    c = g.line()
    try:
        return c.auth(DEV, tok) == {"ok": True}
    finally:
        c.close()


def settle(g, conns):
    """Waits until DEV has conns connections and every write before is durable (the
    failing batch is then the request's own)."""
    wait_for(lambda: g.http("GET", "/api/devices/" + DEV)[1].get("connections") == conns, 10,
             "%d connections" % conns)
    st, js = g.http("PATCH", "/api/devices/%s/attributes" % DEV, {"settle": None})
    assert st == 200, (st, js)


def failed(g, method, path, body=None, conns=1):
    settle(g, conns)
    g.fail_commits(4)
    st, js = g.http(method, path, body)
    t.eq((st, (js or {}).get("code")), (503, "storage_error"),
         "%s %s with a failing commit: 503 storage_error" % (method, path))
    return js


def main():
    data = tempfile.mkdtemp(prefix="gale-co-")
    env = {"GALE_TEST_FAIL_COMMITS": "4"}
    try:
        with Gale(data_dir=data, env=env) as g:
            st, js = g.http("POST", "/api/devices", {"id": DEV, "name": "old-name",
                                                     "metadata": {"m": 1},
                                                     "attributes": {"a": 1}})
            t.eq(st, 201, "created")
            tok = js["token"]
            live = g.line(DEV, tok)

            failed(g, "POST", "/api/devices/%s/token" % DEV)
            t(token_works(g, tok), "a failed rotation (POST /token) leaves the old token working")
            t(not live.closed(0.5), "... and the device's connection open")

            failed(g, "PATCH", "/api/devices/" + DEV, {"token": "rotate"})
            t(token_works(g, tok), "a failed rotation (PATCH) leaves the old token working")

            failed(g, "PATCH", "/api/devices/" + DEV,
                   {"name": "new-name", "metadata": {"m": 2}, "attributes": {"a": 2, "b": 3}})
            st, js = g.http("GET", "/api/devices/" + DEV)
            t.eq((js["name"], js["metadata"], js["attributes"]),
                 ("old-name", {"m": 1}, {"a": 1}), "a failed PATCH leaves the old fields")
            failed(g, "PATCH", "/api/devices/%s/attributes" % DEV, {"a": 9})
            st, js = g.http("GET", "/api/devices/" + DEV)
            t.eq(js["attributes"], {"a": 1},
                 "a failed PATCH of attributes leaves the old ones")

            failed(g, "DELETE", "/api/devices/" + DEV)
            st, js = g.http("GET", "/api/devices/" + DEV)
            t.eq(st, 200, "a failed DELETE leaves the device there")
            t(token_works(g, tok), "... with its token working")
            t(not live.closed(0.5), "... and its connection open")
            live.close()

            # with storage working, each takes effect
            st, js = g.http("PATCH", "/api/devices/" + DEV, {"name": "new-name"})
            t.eq((st, js.get("name")), (200, "new-name"), "a PATCH that commits applies")
            live = g.line(DEV, tok)
            st, js = g.http("POST", "/api/devices/%s/token" % DEV)
            t.eq(st, 200, "a rotation that commits")
            new_tok = js["token"]
            t(live.closed(5), "... closes the connection of the old token")
            t(not token_works(g, tok), "... the old token stops working")
            t(token_works(g, new_tok), "... the new one works")
        with Gale(data_dir=data, env=env) as g:
            st, js = g.http("GET", "/api/devices/" + DEV)
            t.eq((st, js.get("name"), js.get("metadata"), js["attributes"]),
                 (200, "new-name", {"m": 1}, {"a": 1}), "after a restart: what was answered")
            t(token_works(g, new_tok) and not token_works(g, tok),
              "after a restart: the token the rotation answered")
            st, js = g.http("DELETE", "/api/devices/" + DEV)
            t.eq(st, 200, "a DELETE that commits")
            t.eq(g.http("GET", "/api/devices/" + DEV)[0], 404, "... the device is gone")
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    t.run(main)
