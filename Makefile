# Thin wrapper over CMake. `make run` and `make test` set up a fresh Debian 12
# machine themselves (apt-get of missing packages) before building.
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all gale configure setup setup-test run test test-asan test-tsan test-image fuzz fuzz-run chaos bench soak clean

all: gale

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

gale: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

configure:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

# build dependencies and the clients the README's quick start uses (curl, mosquitto_pub, nc)
setup:
	sh .ci/setup.sh run-deps

setup-test:
	sh .ci/setup.sh test-deps

# Run the gateway on its embedded defaults (data in ./data).
run: setup
	$(MAKE) configure
	cmake --build $(BUILD) -j$(JOBS) --target gale
	./$(BUILD)/gale --data-dir ./data

# Set up, build and run the whole test suite.
test: setup-test
	$(MAKE) configure CMAKE_FLAGS="-DGALE_WERROR=ON -DGALE_TESTS=ON"
	cmake --build $(BUILD) -j$(JOBS)
	cd $(BUILD) && ctest --output-on-failure --no-tests=error -j2 --timeout 600

# The same suite under AddressSanitizer + UndefinedBehaviorSanitizer. A small quarantine
# keeps freed memory from inflating RSS, which the bounded-memory tests measure.
test-asan: setup-test
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DGALE_SANITIZE=ON -DGALE_WERROR=ON
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:quarantine_size_mb=16 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure --no-tests=error -j2 --timeout 900

# The storage writer hand-off (loop <-> writer thread <-> read pool, the hot points'
# lock, the checkpointer) under ThreadSanitizer; the property test with fewer steps.
test-tsan: setup-test
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DGALE_TSAN=ON -DGALE_WERROR=ON
	cmake --build build-tsan -j$(JOBS) --target test_store test_store_prop test_outbox
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1 GALE_PROP_ITERS=300 ctest --output-on-failure \
	  --no-tests=error -R '^unit\.test_(store(_prop)?|outbox)$$'

# The Docker image, built and run with podman (tests/image/): installs podman, runc,
# debootstrap and podman-compose when missing (setup.sh image-deps), configures podman under
# $(BUILD)/image (containers.conf), makes the debian:bookworm-slim base from Debian packages
# when podman lacks it, builds docker/Dockerfile with the README's command and runs the
# README's recipe against it; then docker/compose.yaml with podman-compose.
test-image: setup-test
	sh .ci/setup.sh image-deps
	/usr/bin/python3 tests/image/test_image.py --work $(BUILD)/image
	/usr/bin/python3 tests/image/test_compose.py --work $(BUILD)/image

# libFuzzer targets (clang, ASan+UBSan), one per parser (tests/fuzz/targets.cmake):
# make fuzz builds them in build-fuzz; make fuzz-run also runs each for FUZZ_SECONDS on a
# scratch copy of its corpus and fails on any crash (inputs kept in
# build-fuzz/tests/fuzz/artifacts/). One target by hand: build-fuzz/tests/fuzz/fuzz_<name> DIR
FUZZ_SECONDS ?= 30
FUZZ_TARGETS = $(shell sed -n 's/^gale_fuzz_target.\([A-Za-z0-9_]*\) .*/fuzz_\1/p' tests/fuzz/targets.cmake)
fuzz: setup-test
	CC=clang cmake -S . -B build-fuzz -DGALE_FUZZ=ON -DGALE_TESTS=ON
	cmake --build build-fuzz -j$(JOBS) --target $(FUZZ_TARGETS)

fuzz-run: fuzz
	sh tests/fuzz/run.sh build-fuzz $(FUZZ_SECONDS)

# The chaos run (tests/chaos/chaos.py): Gale with every listener, plain and TLS, against a few
# hundred concurrent clients mixing valid sessions with truncations, bit flips, huge lengths,
# byte-by-byte pacing, resets at random offsets, deflate bombs, half-open TLS, while an MQTT
# QoS 1 probe is timed and read back. Fails on a sanitizer report, a lost or doubled acked
# value, an ack slower than 1 s, RSS over its bound, an unclean SIGTERM exit. Builds the ASan
# binary unless CHAOS_BIN names one; CHAOS_ARGS passes options (e.g. --seed S, --only KINDS).
CHAOS_SECONDS ?= 60
CHAOS_BIN ?=
CHAOS_ARGS ?=
chaos:
	@if [ -z "$(CHAOS_BIN)" ]; then \
	  sh .ci/setup.sh test-deps && \
	  cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DGALE_SANITIZE=ON -DGALE_WERROR=ON && \
	  cmake --build $(ASAN_BUILD) -j$(JOBS) --target gale; \
	fi
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:quarantine_size_mb=16 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 /usr/bin/python3 tests/chaos/chaos.py \
	  --gale-bin $(or $(CHAOS_BIN),$(ASAN_BUILD)/gale) --seconds $(CHAOS_SECONDS) $(CHAOS_ARGS)

# Every benchmark case against its reference (Mosquitto, nginx, Tornado, raw SQLite),
# interleaved over 3 rounds, into one table (also $(BUILD)/bench/last.md); about 5 minutes.
# BENCH_ARGS passes options to tests/bench/run.py, e.g. BENCH_ARGS=--smoke or
# BENCH_ARGS="--cases mqtt --gale-bin $(BUILD)/gale --gale-bin /tmp/gale-before".
BENCH_TOOLS = gale bench_mqtt bench_conn bench_feed bench_storage paho_pub
bench:
	sh .ci/setup.sh bench-deps
	[ -f $(BUILD)/CMakeCache.txt ] || cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)
	cmake -S . -B $(BUILD) -DGALE_TESTS=ON >/dev/null
	cmake --build $(BUILD) -j$(JOBS) --target $(BENCH_TOOLS)
	/usr/bin/python3 tests/bench/run.py --build $(BUILD) $(BENCH_ARGS)

# The soak (tests/soak/soak.py): 1000 devices (MQTT QoS 0, QoS 1, line protocol) at a
# steady 10k msg/s for SOAK_SECONDS, a '#' subscriber, a /ws/live viewer and REST reads;
# RSS, WAL and database size and ack latency every second into $(BUILD)/soak/soak.csv and
# soak.png; every acked value read back; fails on a bound passed (README "Soak").
# SOAK_ARGS passes options, e.g. SOAK_ARGS="--set storage.sync=normal --rss-bound-mib 128".
SOAK_SECONDS ?= 60
SOAK_ARGS ?=
soak:
	sh .ci/setup.sh soak-deps
	[ -f $(BUILD)/CMakeCache.txt ] || cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)
	cmake -S . -B $(BUILD) -DGALE_TESTS=ON >/dev/null
	cmake --build $(BUILD) -j$(JOBS) --target gale soak_load
	/usr/bin/python3 tests/soak/soak.py --build $(BUILD) --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-tsan build-fuzz
