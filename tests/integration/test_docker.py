"""The Docker image's recipe, checked without a Docker engine: every file the
Dockerfile copies exists, the setup script knows the modes it is called with,
the config the image starts with is valid under the image's environment, and the
healthcheck script is a runnable shell script that probes /api/health."""
import os
import re
import subprocess

from galetest import GALE_BIN, Check, Gale

t = Check("test_docker")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    df = open(os.path.join(ROOT, "docker", "Dockerfile")).read()
    copies = re.findall(r"^COPY (?!--from)(\S+) ", df, re.M)
    t(len(copies) >= 3, "Dockerfile copies files from the context")
    for src in copies:
        t(src == "." or os.path.exists(os.path.join(ROOT, src)), "COPY source %s exists" % src)
    modes = re.findall(r"^RUN .*?setup\.sh (\w[\w-]*)", df, re.M)
    t(len(modes) >= 2, "both stages run the setup script")
    setup = open(os.path.join(ROOT, ".ci", "setup.sh")).read()
    for m in modes:
        t(re.search(r"^\s*%s\)" % re.escape(m), setup, re.M), "setup.sh has mode %s" % m)
    t("HEALTHCHECK" in df and "USER gale" in df and "VOLUME /data" in df,
      "healthcheck, non-root user and data volume declared")
    # the config and environment the image starts with
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALE_")}
    env["GALE_GATEWAY_DATA_DIR"] = "/data"
    p = subprocess.run([GALE_BIN, "--config", os.path.join(ROOT, "config", "gateway.json"),
                        "--check-config"], env=env, capture_output=True, text=True, timeout=30)
    t.eq(p.returncode, 0, "the image's config is valid (%s)" % p.stderr.strip())
    hc = os.path.join(ROOT, "docker", "healthcheck.sh")
    t(os.access(hc, os.X_OK), "healthcheck script is executable")
    with Gale() as g:
        ok = subprocess.run([hc], env=dict(env, GALE_HTTP_PORT=str(g.ports["http"])),
                            timeout=10).returncode
        t.eq(ok, 0, "healthcheck passes against a running gateway")
    bad = subprocess.run([hc], env=dict(env, GALE_HTTP_PORT="1"), timeout=10).returncode
    t(bad != 0, "healthcheck fails when nothing answers")


t.run(main)
