#!/usr/bin/python3
"""docs/split_readme.py: split a monolithic README into the short README.md and docs/.

usage: split_readme.py FULL_README [--root DIR] [--gale GALE_BIN] [--check]

Reads FULL_README (one Markdown file holding every section: "# Gale", the two commands,
"## Quick start ...", then "## Running it", "## Configuration reference", ...) and writes,
under ROOT (default: the repository holding this script):

  README.md            docs/README.head.md with its placeholders filled: {{INTRO}} (what
                       stands between "# Gale" and the first "##"), {{QUICKSTART}} (the
                       "## Quick start" section, verbatim but for its links) and {{MAP}}
                       (every docs file with its sections, generated)
  docs/<file>.md       one file per entry of FILES: its title, a list of its sections,
                       then every section the mapping sends there, in source order
  tests/README.md      the same, for the "Development" section (renamed by RENAME), after
                       docs/heads/tests_README.md

Each "##" or "###" section (a heading and the text up to the next heading of that level
or above; headings inside ``` fences are text) goes to the file SECTIONS names for its
heading text. A "###" the table does not name goes where its "##" parent went; a "##"
the table does not name goes by KEYWORDS (first match), else to FALLBACK. Every placement
by fallback is printed, so sections that other changes add to the source land somewhere
sensible and can then be named in SECTIONS.

Links: "(#anchor)" is rewritten to point at the file that now holds that anchor
("(rest.md#telemetry-queries)" from docs/, "(docs/rest.md#...)" from README.md); a
relative link to a repository file ("(docker/compose.yaml)") gets the prefix the new
file's directory needs. With --gale, the configuration table (the rows starting "| `")
is regenerated from `GALE_BIN --config-reference` instead of copied from the source.
--check writes nothing and exits 1 when a generated file differs from the one on disk.

Standard library only.
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# target file -> title (the order here is the order of the docs map in README.md)
FILES = [
    ("docs/operations.md", "Running and operating Gale"),
    ("docs/configuration.md", None),
    ("docs/protocols.md", "Device protocols: line, WebSocket, HTTP"),
    ("docs/mqtt.md", None),
    ("docs/rest.md", None),
    ("docs/dashboard.md", None),
    ("docs/security.md", None),
    ("docs/bridge.md", None),
    ("docs/durability.md", None),
    ("docs/architecture.md", None),
    ("docs/performance.md", None),
    ("docs/deployment.md", None),
    ("docs/simulator.md", None),
    ("tests/README.md", "Tests"),
]

# heading text (as written after the #s, exact) -> target file
SECTIONS = {
    "Running it": "docs/operations.md",
    "Observability": "docs/operations.md",
    "Configuration reference": "docs/configuration.md",
    "Line protocol (raw TCP, port 7000)": "docs/protocols.md",
    "WebSocket": "docs/protocols.md",
    "MQTT": "docs/mqtt.md",
    "REST API (port 8080)": "docs/rest.md",
    "Dashboard": "docs/dashboard.md",
    "Security": "docs/security.md",
    "Bridge": "docs/bridge.md",
    "Durability": "docs/durability.md",
    "Architecture": "docs/architecture.md",
    "Performance": "docs/performance.md",
    "Deployment": "docs/deployment.md",
    "Development": "tests/README.md",
    "API keys": "docs/security.md",
    "Backup and restore": "docs/operations.md",
    "Docker Compose": "docs/deployment.md",
    "Device simulator (gale-sim)": "docs/simulator.md",
    "HTTP devices": "docs/protocols.md",
    "Shared subscriptions": "docs/mqtt.md",
    # the "###" sections (each would follow its "##" anyway; named so that only new
    # ones are reported)
    "Telemetry queries": "docs/rest.md",
    "Device lists": "docs/rest.md",
    "Identity": "docs/mqtt.md",
    "Topics": "docs/mqtt.md",
    "Access rules (ACL)": "docs/mqtt.md",
    "Anonymous mode": "docs/mqtt.md",
    "Sessions, QoS and delivery": "docs/mqtt.md",
    "Retained messages": "docs/mqtt.md",
    "Commands": "docs/mqtt.md",
    "Presence": "docs/mqtt.md",
    "$SYS": "docs/mqtt.md",
    "Limits": "docs/mqtt.md",
    "Conformance notes": "docs/mqtt.md",
    "MQTT 5.0": "docs/mqtt.md",
    "Protocol behaviour (all endpoints)": "docs/protocols.md",
    "/ws/device": "docs/protocols.md",
    "/mqtt (MQTT over WebSocket)": "docs/protocols.md",
    "/ws/live (dashboards)": "docs/protocols.md",
    "/ws/echo": "docs/protocols.md",
    "Live feed fan-out, measured": "docs/protocols.md",
    "Threat model": "docs/security.md",
    "TLS": "docs/security.md",
    "Limits and their defaults": "docs/security.md",
    "Access rules": "docs/security.md",
    "Tokens and the API key": "docs/security.md",
    "Modules and the edges between them": "docs/architecture.md",
    "Threads": "docs/architecture.md",
    "Connection lifetime": "docs/architecture.md",
    "Durability tickets": "docs/architecture.md",
    "The path of one telemetry value": "docs/architecture.md",
    "Storage layout": "docs/architecture.md",
    "Disk use, measured from the files": "docs/performance.md",
    "TLS, measured": "docs/performance.md",
    "Bridge cases": "docs/performance.md",
    "Soak": "docs/performance.md",
    "An idle connection, structure by structure": "docs/performance.md",
    "Docker": "docs/deployment.md",
    "Scaling out": "docs/deployment.md",
}

# a "##" heading SECTIONS does not name: the first keyword it contains (any case) decides
KEYWORDS = [
    ("rest", "docs/rest.md"), ("api", "docs/rest.md"), ("route", "docs/rest.md"),
    ("mqtt", "docs/mqtt.md"), ("websocket", "docs/protocols.md"),
    ("line protocol", "docs/protocols.md"), ("http device", "docs/protocols.md"),
    ("dashboard", "docs/dashboard.md"), ("security", "docs/security.md"),
    ("tls", "docs/security.md"), ("key", "docs/security.md"), ("token", "docs/security.md"),
    ("bridge", "docs/bridge.md"), ("scal", "docs/deployment.md"),
    ("docker", "docs/deployment.md"), ("deploy", "docs/deployment.md"),
    ("backup", "docs/operations.md"), ("config", "docs/configuration.md"),
    ("storage", "docs/durability.md"), ("durab", "docs/durability.md"),
    ("perform", "docs/performance.md"), ("bench", "docs/performance.md"),
    ("test", "tests/README.md"), ("develop", "tests/README.md"),
    ("simulat", "docs/operations.md"),
]
FALLBACK = "docs/operations.md"

# headings written differently in their new place (source heading -> new heading)
RENAME = {"Development": "Make targets: the suites, fuzzing, chaos, benchmarks, soak"}

README_HEAD = "docs/README.head.md"
HEADS_DIR = "docs/heads"  # optional hand-written text put after a file's title
QUICKSTART = re.compile(r"^Quick start\b")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(text):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`|\*\*?|_(?=\w)|(?<=\w)_", "", text.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


class Slugger:
    """Anchors of one file, with GitHub's -1, -2 suffixes for repeats."""

    def __init__(self):
        self.seen = {}

    def __call__(self, text):
        s = slug(text)
        n = self.seen.get(s, 0)
        self.seen[s] = n + 1
        return s if n == 0 else "%s-%d" % (s, n)


def parse(text):
    """(title line, intro lines, [section]) where a section is a dict with level,
    heading, lines (heading line included) and parent (its "##" heading)."""
    lines = text.splitlines()
    fence = None
    title, intro, sections, cur, parent = None, [], [], None, None
    for line in lines:
        m = None if fence else HEADING.match(line)
        stripped = line.lstrip()
        if stripped.startswith("```") or stripped.startswith("~~~"):
            mark = stripped[:3]
            if fence is None:
                fence = mark
            elif mark == fence:
                fence = None
        if m and len(m.group(1)) == 1 and title is None:
            title = line
            continue
        if m and len(m.group(1)) in (2, 3):
            level, heading = len(m.group(1)), m.group(2)
            if level == 2:
                parent = heading
            cur = {"level": level, "heading": heading, "lines": [line],
                   "parent": parent if level == 3 else None}
            sections.append(cur)
            continue
        if cur is None:
            intro.append(line)
        else:
            cur["lines"].append(line)
    if title is None:
        sys.exit("split_readme: no '# ' title line in the source")
    return title, intro, sections


def place(sections):
    """Sets s["file"] on every section; returns the fallback placements as text lines."""
    notes = []
    by_parent = {}
    for s in sections:
        if QUICKSTART.match(s["heading"]) and s["level"] == 2:
            s["file"] = "README.md"
        elif s["heading"] in SECTIONS:
            s["file"] = SECTIONS[s["heading"]]
        elif s["level"] == 3 and s["parent"] in by_parent:
            s["file"] = by_parent[s["parent"]]
            notes.append("  ### %s -> %s (with its parent %s)" % (s["heading"], s["file"],
                                                                s["parent"]))
        else:
            low = s["heading"].lower()
            s["file"] = next((f for k, f in KEYWORDS if k in low), FALLBACK)
            notes.append("  %s %s -> %s (by %s)" % ("#" * s["level"], s["heading"], s["file"],
                                                    "keyword" if s["file"] != FALLBACK or
                                                    any(k in low for k, _ in KEYWORDS)
                                                    else "fallback"))
        if s["level"] == 2:
            by_parent[s["heading"]] = s["file"]
    return notes


def rel(target, frm):
    """The link from file frm to file target (both repository-relative)."""
    r = os.path.relpath(target, os.path.dirname(frm) or ".")
    return r.replace(os.sep, "/")


def rewrite_links(lines, here, anchors, root):
    """Rewrites (#a) and relative repository links of lines that now live in file here."""
    out, fence = [], False
    for line in lines:
        if line.lstrip().startswith("```"):
            fence = not fence
        if fence or "](" not in line:
            out.append(line)
            continue

        def sub(m):
            url = m.group(1)
            if url.startswith("#"):
                target = anchors.get(url[1:])
                if target is None:
                    print("split_readme: warning: link to unknown anchor %s in %s" % (url, here))
                    return m.group(0)
                f, a = target
                return "](%s)" % ("#" + a if f == here else rel(f, here) + "#" + a)
            if re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith("/"):
                return m.group(0)
            path, _, frag = url.partition("#")
            if os.path.exists(os.path.join(root, path)) or "/" in path:
                return "](%s%s)" % (rel(path, here), "#" + frag if frag else "")
            return m.group(0)

        out.append(LINK.sub(sub, line))
    return out


def config_rows(gale):
    out = subprocess.run([gale, "--config-reference"], capture_output=True, text=True,
                         check=True).stdout
    return [l for l in out.splitlines() if l.startswith("| `")]


def regen_config(lines, rows):
    """Replaces the block of "| `" rows of the configuration table by rows."""
    idx = [i for i, l in enumerate(lines) if l.startswith("| `")]
    if not idx:
        return lines
    return lines[:idx[0]] + rows + lines[idx[-1] + 1:]


def strip_blank(lines):
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def build(text, root, gale=None):
    """{path: content} of every generated file, and the fallback notes."""
    title, intro, sections = parse(text)
    notes = place(sections)
    for s in sections:
        s["src_heading"] = s["heading"]
        if s["heading"] in RENAME:
            s["heading"] = RENAME[s["heading"]]
            s["lines"][0] = "#" * s["level"] + " " + s["heading"]
    files = [f for f, _ in FILES]
    for s in sections:
        if s["file"] not in files and s["file"] != "README.md":
            files.append(s["file"])
    titles = dict(FILES)

    # A "###" placed apart from its "##" (a "foreign" one) comes after the file's own
    # sections, as a "##". A file that holds one "##" section and its "###"s and has no
    # title of its own in FILES takes that heading as its title, and its "###"s become "##"s.
    home = {s["heading"]: s["file"] for s in sections if s["level"] == 2}
    for s in sections:
        s["foreign"] = s["level"] == 3 and home.get(s["parent"]) != s["file"]
    sections.sort(key=lambda s: s["foreign"])  # stable: source order otherwise
    for f in files:
        mine = [s for s in sections if s["file"] == f]
        tops = [s for s in mine if s["level"] == 2]
        promote = not titles.get(f) and len(tops) == 1 and mine[0] is tops[0]
        for s in mine:
            s["promoted"] = promote
            s["shown"] = 2 if s["foreign"] else s["level"] - 1 if promote else s["level"]
        if mine and not titles.get(f):
            titles[f] = tops[0]["heading"] if promote else \
                os.path.splitext(os.path.basename(f))[0].title()

    # anchors: source anchor -> (file, anchor in that file)
    src_slug, per_file = Slugger(), {}
    anchors = {}
    for f in files + ["README.md"]:
        per_file[f] = Slugger()
    for s in sections:
        if s["file"] != "README.md" and not per_file[s["file"]].seen:
            per_file[s["file"]](titles[s["file"]])
            if s.get("shown") == 1:
                s["anchor"] = slug(titles[s["file"]])
                anchors.setdefault(src_slug(s["src_heading"]), (s["file"], s["anchor"]))
                continue
        s["anchor"] = per_file[s["file"]](s["heading"])
        anchors.setdefault(src_slug(s["src_heading"]), (s["file"], s["anchor"]))

    out = {}
    for f in files:
        mine = [s for s in sections if s["file"] == f]
        if not mine:
            continue
        body = ["# " + titles[f], ""]
        head = os.path.join(root, HEADS_DIR, f.replace("/", "_"))
        if os.path.exists(head):
            body += strip_blank(open(head).read().splitlines()) + [""]
        listed = [s for s in mine if s["shown"] > 1]
        if len(listed) > 2:
            body.append("Contents:")
            body.append("")
            top = min(s["shown"] for s in listed)
            for s in listed:
                body.append("%s- [%s](#%s)" % ("  " * (s["shown"] - top),
                                               s["heading"].replace("`", ""), s["anchor"]))
            body.append("")
        for s in mine:
            lines = rewrite_links(s["lines"], f, anchors, root)
            if s["shown"] == 1:
                lines = lines[1:]
            elif s["shown"] != s["level"]:
                lines = ["#" * s["shown"] + lines[0][s["level"]:]] + lines[1:]
            if f == "docs/configuration.md" and gale:
                lines = regen_config(lines, config_rows(gale))
            body += strip_blank(lines) + [""]
        out[f] = "\n".join(body).rstrip("\n") + "\n"

    # README.md
    qs = [s for s in sections if s["file"] == "README.md"]
    if not qs:
        sys.exit("split_readme: no '## Quick start' section in the source")
    quick = []
    for s in qs:
        quick += strip_blank(rewrite_links(s["lines"], "README.md", anchors, root)) + [""]
    dmap = []
    for f in files:
        if f not in out:
            continue
        tops = [s["heading"] for s in sections if s["file"] == f and s["shown"] == 2]
        dmap.append("- [%s](%s)%s" % (titles[f], f, ": " + "; ".join(
            h.replace("`", "") for h in tops) if tops else ""))
    tpl = open(os.path.join(root, README_HEAD)).read()
    readme = (tpl.replace("{{TITLE}}", title)
              .replace("{{INTRO}}", "\n".join(strip_blank(
                  rewrite_links(intro, "README.md", anchors, root))))
              .replace("{{QUICKSTART}}", "\n".join(strip_blank(quick)))
              .replace("{{MAP}}", "\n".join(dmap)))
    out["README.md"] = readme.rstrip("\n") + "\n"
    return out, notes, sections


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="the monolithic README (e.g. git show REV:README.md)")
    ap.add_argument("--root", default=ROOT)
    ap.add_argument("--gale", help="a gale binary: regenerate the configuration table")
    ap.add_argument("--check", action="store_true", help="compare only, write nothing")
    a = ap.parse_args()
    text = open(a.source).read()
    out, notes, sections = build(text, a.root, a.gale)
    differ = []
    for path, content in out.items():
        full = os.path.join(a.root, path)
        old = open(full).read() if os.path.exists(full) else None
        if old != content:
            differ.append(path)
            if not a.check:
                os.makedirs(os.path.dirname(full) or ".", exist_ok=True)
                with open(full, "w") as fh:
                    fh.write(content)
    for path in out:
        n = out[path].count("\n")
        print("%-24s %5d lines%s" % (path, n, "  (changed)" if path in differ else ""))
    placed = {}
    for s in sections:
        placed.setdefault(s["file"], []).append(s["heading"])
    if notes:
        print("sections SECTIONS does not name (add an entry to choose their file):")
        print("\n".join(notes))
    if out["README.md"].count("\n") > 300:
        print("split_readme: README.md has %d lines (more than 300)"
              % out["README.md"].count("\n"))
        return 1
    if a.check and differ:
        print("split_readme: out of date: %s" % ", ".join(differ))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
