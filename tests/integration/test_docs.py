"""The docs say what the code does, each thing once.

- README.md is at most 300 lines, keeps the quick start, and links every file of docs/;
  every relative link of README.md, CONTRIBUTING.md, tests/README.md and docs/*.md names a
  file that exists and, with a #fragment, a heading of that file.
- Every config key: its reference row (`gale --config-reference`) appears exactly once in
  the docs, and any other table row that gives a key's default gives the same default.
- Every REST route: the OpenAPI document (web/assets/openapi.json) and the route table of
  docs/rest.md name the same routes, each route once; the running gateway answers every
  one of them (not 404 "no such resource", not 405), and every path the router in web/
  compares against is in the OpenAPI document.
- The facts both documents state agree with each other and with the running gateway: which
  routes need no API key, the code of an unknown query parameter, and that PATCH of a
  device's attributes merges.
"""
import json
import os
import re
import subprocess
import sys
import urllib.parse

from galetest import GALE_BIN, Check, Gale, RawWS

t = Check("test_docs")
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "docs"))
import split_readme  # noqa: E402  (the anchors: the same slugs the split writes)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
ROUTE = re.compile(r"`(%s) (/[^`?\s]*)[^`]*`" % "|".join(METHODS))
WS_PATHS = ("/ws/device", "/mqtt", "/ws/live", "/ws/echo")


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def doc_files():
    files = ["README.md", "CONTRIBUTING.md", "tests/README.md"]
    files += sorted("docs/" + f for f in os.listdir(os.path.join(ROOT, "docs"))
                    if f.endswith(".md") and f != "README.head.md")
    return [f for f in files if os.path.exists(os.path.join(ROOT, f))]


def strip_code(text):
    """The text without fenced code blocks (headings and links in them are not ones)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(rel):
    slugger = split_readme.Slugger()
    return {slugger(m.group(2)) for m in re.finditer(r"^(#{1,6})\s+(.*?)\s*$",
                                                   strip_code(read(rel)), re.M)}


def table_rows(text):
    """(header cells, row cells) of every table row in text."""
    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if header is None:
            header = [c.lower() for c in cells]
        elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
            yield header, cells


# ---- README and links ----

def check_readme_and_links():
    readme = read("README.md")
    n = readme.count("\n")
    t(n <= 300, "README.md is at most 300 lines (%d)" % n)
    t(re.search(r"^## Quick start.*?^```sh\n", readme, re.S | re.M) is not None,
      "README.md keeps the quick start block")
    for f in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        if f.endswith(".md") and f != "README.head.md":
            t("](docs/%s)" % f in readme, "README.md links docs/%s" % f)
    bad = []
    for rel in doc_files():
        for m in re.finditer(r"\]\(([^)\s]+)\)", strip_code(read(rel))):
            url = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith("/"):
                continue
            path, _, frag = url.partition("#")
            target = os.path.normpath(os.path.join(os.path.dirname(rel), path)) if path else rel
            if not os.path.exists(os.path.join(ROOT, target)):
                bad.append("%s: %s (no file)" % (rel, url))
            elif frag and target.endswith(".md") and frag not in anchors(target):
                bad.append("%s: %s (no such heading)" % (rel, url))
    t(not bad, "every relative link resolves (%s)" % bad[:5])


# ---- docs/split_readme.py on a small README written whole ----

SAMPLE = """# Gale

```sh
make run
```

Gale is a gateway (see [Bridge](#bridge)).

## Quick start: a device

```sh
echo hello
```

Then the [dashboard](#dashboard) and [file](docker/compose.yaml).

## MQTT

Broker text, [limits](#limits-and-their-defaults).

### A new MQTT part

```sh
# not a heading
```

## Security

### Limits and their defaults

See [MQTT](#mqtt).

## Dashboard

Pages.

## Bridge

Upstreams.

## Something nobody mapped

Misc.
"""


def check_split_script():
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="gale-split-")
    try:
        os.makedirs(os.path.join(d, "docs"))
        shutil.copy(os.path.join(ROOT, "docs", "README.head.md"), os.path.join(d, "docs"))
        os.makedirs(os.path.join(d, "docker"))
        open(os.path.join(d, "docker", "compose.yaml"), "w").close()
        src = os.path.join(d, "full.md")
        with open(src, "w") as f:
            f.write(SAMPLE)
        p = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "split_readme.py"), src,
                            "--root", d], capture_output=True, text=True, timeout=60)
        t.eq(p.returncode, 0, "split_readme.py runs (%s)" % p.stderr[-300:])

        def get(rel):
            path = os.path.join(d, rel)
            return open(path).read() if os.path.exists(path) else ""
        readme, mqtt, sec = get("README.md"), get("docs/mqtt.md"), get("docs/security.md")
        t("## Quick start: a device\n" in readme and "```sh\necho hello\n```" in readme,
          "the quick start is copied verbatim")
        t("(docs/dashboard.md#dashboard)" in readme and "(docker/compose.yaml)" in readme
          and "(docs/bridge.md#bridge)" in readme, "README's links point into docs/")
        t(mqtt.startswith("# MQTT\n") and "## A new MQTT part" in mqtt
          and "# not a heading" in mqtt and "(security.md#limits-and-their-defaults)" in mqtt,
          "a section follows its parent; links across pages are rewritten")
        t("(mqtt.md#mqtt)" in sec, "a link to a page's title anchor")
        t("Something nobody mapped -> docs/operations.md" in p.stdout
          and "A new MQTT part -> docs/mqtt.md" in p.stdout and "Misc." in get(
              "docs/operations.md"), "unmapped sections are placed and reported (%s)" % p.stdout)
        again = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "split_readme.py"),
                                src, "--root", d, "--check"], capture_output=True, text=True,
                               timeout=60)
        t.eq(again.returncode, 0, "a second run changes nothing (--check)")
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- config keys ----

def size_value(v):
    v = v.strip().strip("`").strip('"')
    m = re.fullmatch(r"(-?\d+)([kmg]?)", v, re.I)
    if not m:
        return v
    return int(m.group(1)) * 1024 ** " kmg".index((m.group(2) or " ").lower())


def check_config():
    p = subprocess.run([GALE_BIN, "--config-reference"], capture_output=True, text=True,
                       timeout=30)
    rows = [l for l in p.stdout.splitlines() if l.startswith("| `")]
    t(p.returncode == 0 and len(rows) > 50, "--config-reference prints the table")
    texts = {rel: read(rel) for rel in doc_files()}
    wrong = []
    for row in rows:
        where = [(rel, txt.splitlines().count(row)) for rel, txt in texts.items()]
        where = [(rel, n) for rel, n in where if n]
        if sum(n for _, n in where) != 1:
            wrong.append("%s in %s" % (row.split("|")[1].strip(), where or "no doc"))
    t(not wrong, "every config key's reference row is in the docs exactly once (%s)"
      % wrong[:3])

    defaults = {}
    for row in rows:
        cells = [c.strip() for c in row.strip().split("|")[1:-1]]
        defaults[cells[0].strip("`")] = size_value(cells[2])
    bad = []
    for rel, txt in texts.items():
        for header, cells in table_rows(txt):
            if "default" not in header or header[0] != "key" or len(cells) != len(header):
                continue
            if header == ["key", "type", "default", "environment", "description"]:
                continue  # the reference table itself
            keys = re.findall(r"`([a-z_]+\.[a-z_.]+)`", cells[0])
            if not keys:
                continue  # a table of something else's fields (bridge.upstreams' objects)
            vals = [v.strip() for v in cells[header.index("default")].split(" / ")]
            if len(keys) != len(vals):
                bad.append("%s: %s has %d keys and %d defaults" % (rel, cells[0], len(keys),
                                                                   len(vals)))
                continue
            for k, v in zip(keys, vals):
                m = re.match(r"`[^`]*`|[-\w.\"]+", v)
                got = size_value(m.group(0)) if m else v
                if k not in defaults:
                    bad.append("%s: %s is not a config key" % (rel, k))
                elif got != defaults[k]:
                    bad.append("%s: %s default %r, the config table says %r"
                               % (rel, k, got, defaults[k]))
    t(not bad, "every default in a docs table is the config table's (%s)" % bad[:4])


# ---- REST routes ----

def openapi_ops(api):
    ops = {}
    for path, item in api["paths"].items():
        for method, op in item.items():
            if method.upper() in METHODS:
                ops[(method.upper(), path)] = op
    return ops


def is_public(api, op):
    sec = op.get("security", api.get("security", []))
    return sec == [] or {} in sec


def documented_routes():
    """{(method, path): [file...]} over the first cells of the route tables (a table whose
    first column is "method and path") of every doc."""
    found = {}
    for rel in doc_files():
        for header, cells in table_rows(read(rel)):
            if header[0] != "method and path":
                continue
            for m in ROUTE.finditer(cells[0] if cells else ""):
                key = (m.group(1), m.group(2))
                found.setdefault(key, []).append(rel)
    return found


def check_routes_static(api):
    ops = openapi_ops(api)
    doc = documented_routes()
    want = set(ops) | {("GET", "/")}  # GET / is the dashboard, not an API route
    t.eq(sorted(set(doc) - want), [], "routes in the docs that the OpenAPI document lacks")
    t.eq(sorted(want - set(doc)), [], "OpenAPI routes missing from docs/rest.md's tables")
    twice = {k: v for k, v in doc.items() if len(v) != 1}
    t(not twice, "every route is in one docs table row only (%s)" % list(twice.items())[:3])
    where = {f for v in doc.values() for f in v}
    t.eq(where, {"docs/rest.md"}, "the route table lives in docs/rest.md")

    # every path the router compares against is an OpenAPI path (or a prefix of one)
    paths = list(api["paths"])
    missing = []
    for name in sorted("web/" + f for f in os.listdir(os.path.join(ROOT, "web"))
                       if f.endswith(".c") and f != "static.c"):  # static.c: the files
        src = read(name)
        for m in re.finditer(r'str(n?)cmp\((?:req->)?path, "(/[^"]*)"', src):
            lit = m.group(2)
            ok = any(p == lit or (m.group(1) and p.startswith(lit)) for p in paths)
            if not ok:
                missing.append("%s: %s" % (name, lit))
    t(not missing, "every path the router knows is in the OpenAPI document (%s)" % missing)

    # the route table of web/rest.c (method, path, role), where there is one, and the
    # OpenAPI document's operations under /api/, /metrics, /healthz and their x-gale-role
    table = re.search(r"struct route routes\[\] = \{(.*?)\n\};", read("web/rest.c"), re.S)
    if table:
        names = {"KEY_ROLE_NONE": "public", "R": "read", "O": "operator", "A": "admin"}
        code = {(m.group(1), m.group(2)): names.get(m.group(3), m.group(3))
                for m in re.finditer(r'\{"([A-Z]+)", "([^"]+)", (\w+),', table.group(1))}
        norm = {(mth, re.sub(r"\{[^}]+\}", "*", p)): op for (mth, p), op in ops.items()
                if p.startswith("/api/") or p in ("/metrics", "/healthz", "/ws/live")}
        t.eq(sorted(set(code) - set(norm)), [], "routes of web/rest.c's table not in OpenAPI")
        t.eq(sorted(set(norm) - set(code)), [], "OpenAPI routes not in web/rest.c's table")
        wrong = ["%s %s: %s in code, %s in OpenAPI" % (k[0], k[1], r, norm[k].get("x-gale-role"))
                 for k, r in sorted(code.items())
                 if k in norm and "x-gale-role" in norm[k] and norm[k]["x-gale-role"] != r]
        t(not wrong, "each route's role is the same in web/rest.c and OpenAPI (%s)" % wrong)

    # public routes: docs/rest.md's sentence, the OpenAPI description and each operation
    public = {k for k, op in ops.items() if is_public(api, op)}
    rest = read("docs/rest.md")
    m = re.search(r"Every request except(.*?)needs `Authorization", rest, re.S)
    t(m is not None, "docs/rest.md says which requests need no API key")
    said = {(a, b) for a, b in ROUTE.findall(m.group(1))} if m else set()
    t.eq(sorted(said), sorted(public),
         "the routes docs/rest.md calls public are the OpenAPI document's")
    m = re.search(r"Every path except(.*?)needs Authorization", api["info"]["description"],
                  re.S)
    if m:  # a description that lists the public paths lists them all
        said = set(re.findall(r"(/[\w/.{}]*)", m.group(1)))
        t.eq(sorted(said), sorted({p for _, p in public}),
             "the public paths the OpenAPI description names are its operations' own")
    roles = {k: op["x-gale-role"] for k, op in ops.items() if "x-gale-role" in op}
    wrong = [k for k, r in roles.items()
             if (r in ("public", "device")) != (ops[k].get("security") == [])]
    t(not wrong, "x-gale-role public/device exactly where security is [] (%s)" % wrong)
    return public


def probe_path(path, dev, cmd):
    return (path.replace("{id}", dev).replace("{cmd}", cmd)
            .replace("{client_id}", "doc-nosuch-client"))


def check_routes_live(api, public):
    ops = openapi_ops(api)
    with Gale(args=["--set", "http.ws_echo=true"]) as g:
        g.create_device("doc-dev")
        st, cmd = g.http("POST", "/api/devices/doc-dev/commands", {"name": "x"})
        cmd_id = cmd.get("id", "1") if isinstance(cmd, dict) else "1"

        def missing(method, path, key="default"):
            body = {} if method in ("POST", "PATCH", "PUT") else None
            st, js = g.http(method, path, body, key=key)
            err = js.get("error", "") if isinstance(js, dict) else ""
            return st, (st == 404 and err == "no such resource") or st == 405

        def ws_missing(path):
            ws = RawWS(g.ports["http"], path, subprotocol="mqtt" if path == "/mqtt" else None,
                       headers={"Authorization": "Bearer " + g.api_key})
            st = ws.status
            ws.close()
            return st, st in (404, 405)

        st, gone = missing("GET", "/api/doc-no-such-route")
        t(gone, "the probe sees a route that does not exist (%d)" % st)
        st, gone = ws_missing("/ws/doc-no-such-route")
        t(gone, "the probe sees a WebSocket route that does not exist (%d)" % st)
        absent = []
        order = sorted(ops, key=lambda k: (k[0] == "DELETE", k))
        for method, path in order:
            dev = "doc-dev"
            if method == "DELETE" and path.startswith("/api/devices/{id}"):
                g.create_device("doc-del")
                dev = "doc-del"
            p = probe_path(path, dev, cmd_id)
            if path.startswith("/api/connections/"):
                p = "/api/connections/999999"
            st, gone = ws_missing(p) if p in WS_PATHS else missing(method, p)
            if gone:
                absent.append("%s %s -> %d" % (method, path, st))
        t(not absent, "the gateway answers every OpenAPI route (%s)" % absent)

        # without a key: public routes answer, the others 401
        wrong = []
        for method, path in sorted(ops):
            if method != "GET" or path in WS_PATHS:
                continue  # a WebSocket route answers a request without Upgrade 426 first
            st, _ = g.http("GET", probe_path(path, "doc-dev", cmd_id), key=None)
            if ((method, path) in public) == (st == 401):
                wrong.append("%s %s -> %d (%s)" % (method, path, st,
                                                   "public" if (method, path) in public
                                                   else "needs the key"))
        t(not wrong, "without the API key exactly the public GET routes answer (%s)" % wrong)

        # /ws/echo: upgraded without a key exactly when public (/ws/live takes its key in
        # the upgrade or in its first message, so it upgrades either way)
        wrong = []
        for path in ("/ws/echo",):
            ws = RawWS(g.ports["http"], path)
            st = ws.status
            ws.close()
            if (("GET", path) in public) != (st == 101):
                wrong.append("%s -> %d without a key" % (path, st))
        t(not wrong, "WebSocket routes need the key as the OpenAPI document says (%s)" % wrong)

        # the code an unknown query parameter gets, on each kind of list and query
        codes = set()
        for path in ("/api/devices", "/api/devices/doc-dev/telemetry", "/api/connections",
                     "/api/mqtt/sessions", "/api/mqtt/retained"):
            st, js = g.http("GET", path + "?doc_no_such_param=1")
            codes.add((st, js.get("code") if isinstance(js, dict) else None))
        t(len(codes) == 1, "one code for an unknown query parameter everywhere (%s)" % codes)
        code = sorted(codes)[0][1]

        # PATCH of attributes merges
        g.http("PATCH", "/api/devices/doc-dev/attributes", {"doc_a": 1})
        g.http("PATCH", "/api/devices/doc-dev/attributes", {"doc_b": 2})
        st, js = g.http("GET", "/api/devices/doc-dev/attributes")
        server = js.get("server", {}) if isinstance(js, dict) else {}
        merges = server.get("doc_a") == 1 and server.get("doc_b") == 2
        t(merges, "PATCH attributes merges (%r)" % (js,))
    return code, merges


def check_facts(api, unknown_code, merges):
    texts = {rel: read(rel) for rel in doc_files()}
    texts["web/assets/openapi.json"] = json.dumps(api)
    said = []
    for rel, txt in texts.items():
        # the first error code after "unknown parameter" or "any other parameter"
        for m in re.finditer(r"(?:[Uu]nknown (?:query )?param|[Aa]ny other param)[^.;]{0,80}?"
                             r"\b([a-z]+_param)\b", txt):
            said.append((rel, m.group(1)))
    t(said, "the docs name the code of an unknown query parameter")
    t.eq(sorted({c for _, c in said}), [unknown_code],
         "the code the docs give an unknown query parameter (%s)" % said)

    rest = read("docs/rest.md")
    row = [c for _, c in table_rows(rest) if c and "`PATCH /api/devices/{id}/attributes" in c[0]]
    op = openapi_ops(api).get(("PATCH", "/api/devices/{id}/attributes"), {})
    optext = (op.get("summary", "") + " " + op.get("description", "")).lower()
    t(len(row) == 1, "docs/rest.md has a row for PATCH /api/devices/{id}/attributes")
    for what, txt in (("docs/rest.md", " ".join(row[0]) if row else ""), ("OpenAPI", optext)):
        txt = txt.lower()
        t(merges and "merge" in txt and "replace" not in txt,
          "%s says PATCH attributes merges, as the gateway does" % what)


def main():
    api = json.loads(read("web/assets/openapi.json"))
    check_readme_and_links()
    check_split_script()
    check_config()
    public = check_routes_static(api)
    code, merges = check_routes_live(api, public)
    check_facts(api, code, merges)


if __name__ == "__main__":
    t.run(main)
