#!/bin/sh
# tests/fuzz/run.sh BUILD_DIR SECONDS: runs every libFuzzer target named in
# tests/fuzz/targets.cmake (built in BUILD_DIR/tests/fuzz) for SECONDS each, under the
# ASan+UBSan the fuzz build links, one after the other.
#
# Each target starts from a scratch copy of its committed corpus (tests/fuzz/corpus/<name>):
# what a run discovers stays out of the repository. Crash, leak, timeout and OOM inputs
# are kept in BUILD_DIR/tests/fuzz/artifacts/, each target's log in
# BUILD_DIR/tests/fuzz/logs/. Prints one line per target and last
# "fuzz: N passed, N failed"; exits 1 when any target failed.
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 BUILD_DIR SECONDS" >&2
    exit 2
fi
build=$(cd "$1" && pwd)
secs=$2
src=$(cd "$(dirname "$0")" && pwd)
bindir="$build/tests/fuzz"
logs="$bindir/logs"
artifacts="$bindir/artifacts"
mkdir -p "$logs" "$artifacts"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/gale-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM

# UBSan in the fuzz build is recoverable by default: halt, so libFuzzer keeps the input.
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export ASAN_OPTIONS UBSAN_OPTIONS

passed=0
failed=0
for name in $(sed -n 's/^gale_fuzz_target(\([A-Za-z0-9_]*\) .*/\1/p' "$src/targets.cmake"); do
    bin="$bindir/fuzz_$name"
    log="$logs/$name.log"
    corpus="$scratch/$name"
    mkdir -p "$corpus"
    if [ ! -x "$bin" ]; then
        echo "fuzz: $name FAILED: $bin not built"
        failed=$((failed + 1))
        continue
    fi
    [ -d "$src/corpus/$name" ] && cp -R "$src/corpus/$name/." "$corpus/"
    rm -f "$artifacts/$name"-*
    "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/$name-" "$corpus" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    seeds=$(ls "$src/corpus/$name" 2>/dev/null | wc -l)
    if [ "$rc" -eq 0 ]; then
        echo "fuzz: $name ok: ${runs:-?} runs in ${secs}s, cov ${cov:-?}, $seeds seeds"
        passed=$((passed + 1))
    else
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        echo "fuzz: $name FAILED (exit $rc): input ${artifact:-none written}, log $log"
        # the sanitizer's report (or the log's end): what CI shows of the failure
        report=$(sed -n '/==ERROR\|runtime error\|deadly signal\|ALARM\|out-of-memory/,$p' "$log")
        [ -n "$report" ] || report=$(tail -n 20 "$log")
        printf '%s\n' "$report" | head -n 80 | sed 's/^/  | /'
        failed=$((failed + 1))
    fi
    rm -rf "$corpus"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
