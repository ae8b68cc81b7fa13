#!/bin/sh
# .ci/setup.sh: installs what Gale needs on Debian 12 (bookworm), then builds.
#   .ci/setup.sh deps        build dependencies only (used by docker/Dockerfile)
#   .ci/setup.sh run-deps    build dependencies + the clients the README's quick start
#                            uses (curl, mosquitto_pub, nc): make run, make setup
#   .ci/setup.sh test-deps   build + test dependencies (clients, browser, sanitizers)
#   .ci/setup.sh runtime     runtime libraries only (the Docker image's final stage)
#   .ci/setup.sh bench-deps  test dependencies + the benchmark references and load
#                            generators (make bench: mosquitto, Tornado, nginx, wrk)
#   .ci/setup.sh soak-deps   test dependencies + matplotlib for the soak's chart (make soak)
# Installs only what is missing; safe to run again. Needs root (or sudo) for apt-get.
set -eu

BUILD_PKGS="build-essential cmake pkg-config libuv1-dev libsqlite3-dev libcjson-dev
  libssl-dev libpaho-mqtt-dev node-llhttp zlib1g-dev gzip"
CLIENT_PKGS="curl mosquitto-clients netcat-openbsd"
TEST_PKGS="libcmocka-dev mosquitto $CLIENT_PKGS openssl python3 python3-paho-mqtt
  python3-websockets python3-tornado clang libclang-rt-14-dev sqlite3 procps
  chromium rabbitmq-server strace haproxy"
BENCH_PKGS="wrk"
# any nginx flavour will do; nginx-light is the smallest
[ -x /usr/sbin/nginx ] || BENCH_PKGS="$BENCH_PKGS nginx-light"
SOAK_PKGS="python3-matplotlib"
RUNTIME_PKGS="libuv1 libsqlite3-0 libcjson1 libssl3 libpaho-mqtt1.3 zlib1g ca-certificates curl"

case "${1:-deps}" in
    deps) want="$BUILD_PKGS" ;;
    run-deps) want="$BUILD_PKGS $CLIENT_PKGS" ;;
    test-deps) want="$BUILD_PKGS $TEST_PKGS" ;;
    bench-deps) want="$BUILD_PKGS $TEST_PKGS $BENCH_PKGS" ;;
    soak-deps) want="$BUILD_PKGS $TEST_PKGS $SOAK_PKGS" ;;
    runtime) want="$RUNTIME_PKGS" ;;
    *) echo "usage: $0 deps|run-deps|test-deps|bench-deps|soak-deps|runtime" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
# npm fetches uPlot (below); any npm will do, e.g. the one a nodejs package brings
case "${1:-deps}" in deps|run-deps|test-deps|bench-deps|soak-deps)
    command -v npm >/dev/null 2>&1 || missing="$missing npm" ;;
esac
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# Debian starts Mosquitto and RabbitMQ services when the packages are installed; the
# tests run their own brokers on free ports, Gale wants 1883 for itself, and a system
# RabbitMQ would hold 5672 and epmd's 4369.
case "${1:-deps}" in test-deps|bench-deps|soak-deps) with_tests=1 ;; *) with_tests=0 ;; esac
if [ "$with_tests" = 1 ] && command -v systemctl >/dev/null 2>&1; then
    for svc in mosquitto rabbitmq-server haproxy; do
        if systemctl is-enabled --quiet "$svc" 2>/dev/null ||
            systemctl is-active --quiet "$svc" 2>/dev/null; then
            echo "setup: stopping and disabling the $svc service (the tests run their own)"
            ${SUDO:-} systemctl disable --now "$svc" >/dev/null 2>&1 || true
        fi
    done
fi

# uPlot for the dashboard's charts (npm registry, the version package-lock.json pins):
# the build embeds node_modules/uplot/dist into the binary, offline from then on.
root="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-deps}" in deps|run-deps|test-deps|bench-deps|soak-deps)
    if [ -f "$root/package-lock.json" ] && [ ! -f "$root/node_modules/uplot/dist/uPlot.iife.min.js" ]; then
        (cd "$root" && npm ci --no-audit --no-fund >/dev/null) ||
            echo "setup: npm ci failed; the dashboard will be built without charts"
    fi ;;
esac

# MQTT.js for the MQTT-over-WebSocket client test (npm registry; skipped without npm)
if [ "${1:-deps}" = test-deps ] && command -v npm >/dev/null 2>&1; then
    dir="$(cd "$(dirname "$0")/.." && pwd)/tests/integration"
    if [ ! -d "$dir/node_modules/mqtt" ]; then
        npm install --prefix "$dir" --no-save --no-audit --no-fund mqtt@5 >/dev/null 2>&1 ||
            echo "setup: npm install mqtt@5 failed; the MQTT.js test will be skipped"
    fi
fi
