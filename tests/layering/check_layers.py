#!/usr/bin/python3
"""tests/layering/check_layers.py: the layering check (DESIGN.md "Code layers").

Reads every #include line of the C sources and headers under base/, config/,
gateway/, storage/, protocols/ and web/ of a source tree and fails, naming file and
line, when one crosses a forbidden edge:

  base/      -> anything of the project outside base/
  config/    -> anything of the project but base/
  gateway/   -> protocols/, web/, storage/ or gateway/bridge/   (gateway/main.c, the
                wiring, excepted)
  gateway/bridge/ (module "bridge") -> anything of the project but gateway/ and base/,
                except protocols/mqtt/mqtt.h: the pure MQTT codec (topic filters)
  storage/   -> protocols/ or web/
  protocols/ -> web/ or storage/
  any codec.c -> <uv.h> or <sqlite3.h>         (a codec is a pure function of its input)

A quoted include names a project file by its path from the tree's root
("gateway/log.h"); one that does not start with a module directory is resolved
against the including file's directory. The check then prints the module edges it
saw ("from -> to: count", gateway/main.c counted as the module "main").

usage: check_layers.py [ROOT]    (ROOT defaults to the repository holding this script)
Exit status: 0 when no include crosses a forbidden edge, 1 when one does, 2 on bad use.
Standard library only.
"""
import collections
import os
import re
import sys

MODULES = ("base", "config", "gateway", "storage", "protocols", "web")
MAIN = "gateway/main.c"
BRIDGE = "gateway/bridge/"  # a module of its own inside gateway/
SUFFIXES = (".c", ".h")

# module -> the project modules it must not include
FORBIDDEN = {
    "base": ("config", "gateway", "storage", "protocols", "web", "main"),
    "config": ("gateway", "storage", "protocols", "web", "main"),
    "gateway": ("protocols", "web", "storage", "bridge", "main"),
    "bridge": ("config", "protocols", "web", "storage", "main"),
    "storage": ("protocols", "web", "main"),
    "protocols": ("web", "storage", "main"),
    "web": ("bridge", "main"),
    "main": (),
}
# headers a module may include across a forbidden edge: pure codecs on base/ alone
ALLOWED = {"bridge": ("protocols/mqtt/mqtt.h",)}
CODEC_FORBIDDEN_SYSTEM = ("uv.h", "sqlite3.h")

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


def module_of(relpath):
    """The module of a tree-relative path ("gateway/main.c" is "main"), or None."""
    relpath = relpath.replace(os.sep, "/")
    if relpath == MAIN:
        return "main"
    if relpath.startswith(BRIDGE):
        return "bridge"
    top = relpath.split("/", 1)[0]
    return top if top in MODULES else None


def sources(root):
    for top in MODULES:
        base = os.path.join(root, top)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(SUFFIXES):
                    path = os.path.join(dirpath, name)
                    yield os.path.relpath(path, root).replace(os.sep, "/")


def resolve(root, relfile, target):
    """The tree-relative path a quoted include names, or None for a file outside the
    project (a dependency's header included with quotes)."""
    if module_of(target) is not None:
        return target
    local = os.path.normpath(os.path.join(os.path.dirname(relfile), target))
    if os.path.exists(os.path.join(root, local)) and module_of(local) is not None:
        return local.replace(os.sep, "/")
    return None


def check(root):
    violations = []
    edges = collections.Counter()
    for relfile in sources(root):
        src_mod = module_of(relfile)
        is_codec = os.path.basename(relfile) == "codec.c"
        with open(os.path.join(root, relfile), encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                kind, target = m.group(1), m.group(2).strip()
                if is_codec and os.path.basename(target) in CODEC_FORBIDDEN_SYSTEM:
                    violations.append("%s:%d: a codec includes %s%s%s (codecs stay pure: no "
                                      "libuv, no SQLite)" % (relfile, lineno, kind, target,
                                                             ">" if kind == "<" else '"'))
                if kind != '"':
                    continue
                dest = resolve(root, relfile, target)
                if dest is None:
                    continue
                dst_mod = module_of(dest)
                edges[(src_mod, dst_mod)] += 1
                if dst_mod in FORBIDDEN[src_mod] and dest not in ALLOWED.get(src_mod, ()):
                    violations.append('%s:%d: forbidden include "%s" (%s -> %s)'
                                      % (relfile, lineno, target, src_mod, dst_mod))
    return violations, edges


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        sys.stderr.write("usage: check_layers.py [ROOT]\n")
        return 2
    root = argv[1] if len(argv) == 2 else os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "..", "..")
    root = os.path.abspath(root)
    if not all(os.path.isdir(os.path.join(root, m)) for m in ("base", "gateway")):
        sys.stderr.write("check_layers: %s is not a Gale source tree\n" % root)
        return 2
    violations, edges = check(root)
    print("module edges (from -> to: #include lines):")
    for (src, dst), n in sorted(edges.items()):
        print("  %-9s -> %-9s %5d%s" % (src, dst, n, "" if src != dst else "  (within)"))
    for v in violations:
        print(v)
    if violations:
        print("layering: FAILED, %d forbidden include(s)" % len(violations))
        return 1
    print("layering: ok, no forbidden include")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
