"""Podman for the image tests, configured from scratch under a build directory.

configure(dir) writes a containers.conf there and returns the environment that names it
(CONTAINERS_CONF): the runc runtime, cgroupfs (no systemd), the file event logger, and
explicit nofile/nproc ulimits, since a container that inherits limits it may not raise
(no CAP_SYS_RESOURCE in a sandbox) fails to start. base_image(env) makes
debian:bookworm-slim from Debian packages with debootstrap when podman does not have it,
so nothing is pulled from a registry: the mirror is the one the host's apt reads, and the
host's apt sources go into the image. Every command has a deadline."""
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

BASE = "debian:bookworm-slim"

# What Debian's own slim images leave out (debuerreotype's --slimify list).
SLIM_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /var/cache/man/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""

APT_CLEAN = """\
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::Install-Recommends "false";
"""


def log(msg):
    print("image: " + msg, flush=True)


def run(cmd, env=None, timeout=600, check=True, capture=True, input=None):
    """Runs cmd (a list) with a deadline; returns the CompletedProcess."""
    p = subprocess.run(cmd, env=env, timeout=timeout, input=input,
                       stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.STDOUT if capture else None,
                       text=isinstance(input, str) or input is None)
    if check and p.returncode != 0:
        out = p.stdout if capture else ""
        raise RuntimeError("%s exited %d\n%s" % (" ".join(cmd), p.returncode,
                                                 (out or "")[-4000:]))
    return p


def configure(conf_dir):
    """Writes conf_dir/containers.conf; returns os.environ plus CONTAINERS_CONF (an
    absolute path: podman's helpers run in other directories)."""
    conf_dir = os.path.abspath(conf_dir)
    os.makedirs(conf_dir, exist_ok=True)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile == resource.RLIM_INFINITY or nofile > 1048576:
        nofile = 1048576
    path = os.path.join(conf_dir, "containers.conf")
    with open(path + ".tmp", "w") as f:
        f.write('[containers]\n'
                'default_ulimits = ["nofile=%d:%d", "nproc=32768:32768"]\n'
                '[engine]\n'
                'runtime = "runc"\n'
                'cgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n' % (nofile, nofile))
    os.replace(path + ".tmp", path)
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = path
    return env


def apt_mirror():
    """The Debian mirror the host's apt reads (its first bookworm Packages source)."""
    out = run(["apt-get", "indextargets", "--format", "$(REPO_URI)",
               "Identifier: Packages", "Codename: bookworm"], timeout=60).stdout
    for line in out.split():
        if line.startswith(("http://", "https://", "file:")):
            return line
    raise RuntimeError("no bookworm Packages source in the host's apt configuration")


def image_exists(env, name):
    return run(["podman", "image", "exists", name], env=env, timeout=60,
               check=False).returncode == 0


def base_image(env, work_dir):
    """Makes debian:bookworm-slim with debootstrap unless podman has it already."""
    if image_exists(env, BASE):
        return False
    t0 = time.monotonic()
    mirror = apt_mirror()
    log("making %s with debootstrap from %s" % (BASE, mirror))
    os.makedirs(work_dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix="rootfs-", dir=work_dir)
    try:
        # the excludes in place before debootstrap unpacks most packages
        os.makedirs(os.path.join(root, "etc/dpkg/dpkg.cfg.d"))
        with open(os.path.join(root, "etc/dpkg/dpkg.cfg.d/slim"), "w") as f:
            f.write(SLIM_EXCLUDES)
        run(["debootstrap", "--variant=minbase", "bookworm", root, mirror], timeout=900)
        # what debootstrap's first stage unpacked before the excludes applied
        for d in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                  "usr/share/groff", "usr/share/lintian", "var/cache/man"):
            p = os.path.join(root, d)
            if not os.path.isdir(p):
                continue
            for name in os.listdir(p):
                q = os.path.join(p, name)
                if d == "usr/share/locale" and name == "locale.alias":
                    continue
                if d == "usr/share/doc" and os.path.isdir(q):
                    for sub in os.listdir(q):
                        if sub != "copyright":
                            s = os.path.join(q, sub)
                            shutil.rmtree(s) if os.path.isdir(s) and not os.path.islink(s) \
                                else os.unlink(s)
                    continue
                shutil.rmtree(q) if os.path.isdir(q) and not os.path.islink(q) else os.unlink(q)
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            p = os.path.join(root, d)
            for name in os.listdir(p):
                q = os.path.join(p, name)
                if os.path.isfile(q) and name != "lock":
                    os.unlink(q)
        with open(os.path.join(root, "etc/apt/apt.conf.d/docker-clean"), "w") as f:
            f.write(APT_CLEAN)
        # the host's apt sources, so apt-get in a build reads the same mirror
        apt = os.path.join(root, "etc/apt")
        if os.path.exists("/etc/apt/sources.list"):
            shutil.copy("/etc/apt/sources.list", os.path.join(apt, "sources.list"))
        else:
            open(os.path.join(apt, "sources.list"), "w").close()
        src_d = "/etc/apt/sources.list.d"
        for name in sorted(os.listdir(src_d)) if os.path.isdir(src_d) else []:
            if name.endswith((".list", ".sources")):
                shutil.copy(os.path.join(src_d, name), os.path.join(apt, "sources.list.d", name))
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", root, "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            p = subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, env=env,
                               timeout=600, capture_output=True, text=True)
        finally:
            tar.stdout.close()
            tar.wait(timeout=60)
        if p.returncode != 0 or tar.returncode != 0:
            raise RuntimeError("podman import failed: %s" % p.stderr[-2000:])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log("%s made in %.0f s" % (BASE, time.monotonic() - t0))
    return True


ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def readme_section(title):
    """The text of the `## <title>` section of docs/deployment.md (Docker, Docker Compose)."""
    text = open(os.path.join(ROOT, "docs", "deployment.md")).read()
    m = re.search(r"^##+ %s\n(.*?)^##+ " % re.escape(title), text, re.M | re.S)
    assert m, "docs/deployment.md has a ## %s section" % title
    return m.group(1)


def readme_commands(section):
    """The shell commands of the section's ```sh blocks, continuation lines joined,
    comments dropped: a list of argv lists."""
    cmds = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                cmds.append(shlex.split(line))
    return cmds


def find_command(cmds, *prefix):
    for c in cmds:
        if c[:len(prefix)] == list(prefix):
            return c
    raise AssertionError("README has no `%s ...`" % " ".join(prefix))


def build_gale(env, tag):
    """The README's `docker build` with podman, tagged tag: --format docker (the default
    OCI format drops HEALTHCHECK) and the host's CA bundle as the build secret the
    README names (for a proxy that inspects TLS). Returns (CompletedProcess, seconds)."""
    build = find_command(readme_commands(readme_section("Docker")), "docker", "build")
    argv = ["podman", "build", "--format", "docker"]
    ca = "/etc/ssl/certs/ca-certificates.crt"
    if os.path.exists(ca):
        argv += ["--secret", "id=cacert,src=" + ca]
    rest = build[2:]
    rest[rest.index("-t") + 1] = tag
    argv += rest
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=ROOT, env=env, timeout=1500, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    took = time.monotonic() - t0
    # untagged images (build stages, replaced tags) stay a day as the next builds' cache
    run(["podman", "image", "prune", "-f", "--filter", "until=24h"], env=env, timeout=300,
        check=False)
    return p, took


def image_size(env, name):
    out = run(["podman", "image", "inspect", "--format", "{{.Size}}", name], env=env,
              timeout=60).stdout.strip()
    return int(out)


if __name__ == "__main__":
    e = configure(sys.argv[1] if len(sys.argv) > 1 else "build/image")
    base_image(e, sys.argv[1] if len(sys.argv) > 1 else "build/image")
