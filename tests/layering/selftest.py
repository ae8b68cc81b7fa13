#!/usr/bin/python3
"""tests/layering/selftest.py: shows that check_layers.py can fail.

Builds small source trees in a temporary directory, each laid out like Gale's and
each allowed edge used once, runs the check on them and asserts: the clean tree
passes; each tree with one deliberately forbidden include fails, naming that file
and line; gateway/main.c may include anything. Standard library only.
"""
import os
import subprocess
import sys
import tempfile

CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check_layers.py")

CLEAN = {
    "base/alloc.h": "#include <stddef.h>\n",
    "base/alloc.c": '#include "base/alloc.h"\n',
    "config/config.c": '#include "config/config.h"\n#include "base/alloc.h"\n',
    "config/config.h": "\n",
    "gateway/gw.c": '#include "gateway/gw.h"\n#include "config/config.h"\n#include <uv.h>\n',
    "gateway/gw.h": '#include "base/alloc.h"\n',
    "gateway/main.c": '#include "storage/store.h"\n#include "web/rest.h"\n'
                      '#include "protocols/mqtt/broker.h"\n#include "gateway/bridge/bridge.h"\n',
    "storage/store.h": '#include "gateway/gw.h"\n',
    "storage/store.c": '#include "storage/store.h"\n#include <sqlite3.h>\n',
    "protocols/mqtt/broker.h": '#include "gateway/gw.h"\n',
    "protocols/mqtt/codec.c": '#include "protocols/mqtt/mqtt.h"\n#include <string.h>\n',
    "protocols/mqtt/mqtt.h": '#include "base/alloc.h"\n',
    "gateway/bridge/bridge.h": '#include "gateway/gw.h"\n#include "base/alloc.h"\n',
    "gateway/bridge/bridge.c": '#include "gateway/bridge/bridge.h"\n#include <MQTTAsync.h>\n',
    # the one header of protocols/ the bridge may use: the pure MQTT codec's
    "gateway/bridge/bridge_cfg.c": '#include "protocols/mqtt/mqtt.h"\n',
    "web/rest.h": "\n",
    "web/rest.c": '#include "web/rest.h"\n#include "storage/store.h"\n'
                  '#include "protocols/mqtt/broker.h"\n',
}

# (file, line to append, what the failure must name)
BAD = [
    ("gateway/gw.c", '#include "storage/store.h"', "gateway/gw.c:4:"),
    ("storage/store.c", '#include "web/rest.h"', "storage/store.c:3:"),
    ("protocols/mqtt/broker.h", '#include "storage/store.h"', "protocols/mqtt/broker.h:2:"),
    ("config/config.c", '#include "gateway/gw.h"', "config/config.c:3:"),
    ("base/alloc.c", '#include "config/config.h"', "base/alloc.c:2:"),
    ("protocols/mqtt/codec.c", "#include <uv.h>", "protocols/mqtt/codec.c:3:"),
    ("protocols/mqtt/codec.c", "#  include <sqlite3.h>", "protocols/mqtt/codec.c:3:"),
    ("gateway/gw.c", '#include "gateway/bridge/bridge.h"', "gateway/gw.c:4:"),
    ("gateway/bridge/bridge.c", '#include "storage/store.h"', "gateway/bridge/bridge.c:3:"),
    ("gateway/bridge/bridge.c", '#include "web/rest.h"', "gateway/bridge/bridge.c:3:"),
    ("gateway/bridge/bridge.h", '#include "protocols/mqtt/broker.h"', "gateway/bridge/bridge.h:3:"),
    ("web/rest.c", '#include "gateway/bridge/bridge.h"', "web/rest.c:4:"),
]

failures = 0


def expect(cond, what):
    global failures
    print("%s: %s" % ("ok" if cond else "FAIL", what))
    if not cond:
        failures += 1


def make_tree(root, extra=None):
    for rel, text in CLEAN.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
            if extra and extra[0] == rel:
                f.write(extra[1] + "\n")


def run(root):
    p = subprocess.run([sys.executable, CHECK, root], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    return p.returncode, p.stdout


with tempfile.TemporaryDirectory(prefix="gale-layers-") as tmp:
    clean = os.path.join(tmp, "clean")
    make_tree(clean)
    rc, out = run(clean)
    expect(rc == 0, "a tree with only allowed edges passes (rc=%d)" % rc)
    expect("main      -> storage" in out, "the edge list names main -> storage")
    for i, (rel, line, where) in enumerate(BAD):
        root = os.path.join(tmp, "bad%d" % i)
        make_tree(root, (rel, line))
        rc, out = run(root)
        lines = [l for l in out.splitlines() if l.startswith(where)]
        expect(rc == 1 and len(lines) == 1,
               "%s in %s fails naming %s (rc=%d)" % (line.strip(), rel, where, rc))
        if rc != 1 or len(lines) != 1:
            print(out)

print("%d passed, %d failed" % (2 + len(BAD) - failures, failures))
sys.exit(1 if failures else 0)
