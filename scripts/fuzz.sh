#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), one
# at a time on one core, and prints one line per target:
#   fuzz target=<t> secs=<s> execs=<n> exec_per_sec=<n> cov=<n> crashes=<0|1>
# Needs the nightly toolchain and cargo-fuzz. The corpus grows in
# fuzz/corpus/<t> (seeded from fuzz/seeds/<t>); a crash is saved in
# fuzz/artifacts/<t>; full logs go to fuzz/logs/<t>.log.
#
#   scripts/fuzz.sh 180                       # all targets, 3 minutes each
#   FUZZ_TARGETS="sse jws" scripts/fuzz.sh 30  # some targets
#   CARGO_TARGET_DIR=/tmp/fuzz-target scripts/fuzz.sh
set -u

secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
targets=${FUZZ_TARGETS:-"jws chain snapshot delta checkpoint sse admin_json jwk"}
target_dir=${CARGO_TARGET_DIR:-$fuzz/target}

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi

mkdir -p "$fuzz/logs"
status=0
for t in $targets; do
    # Only admin_json needs the registry (and its large dependency tree).
    features=--no-default-features
    [ "$t" = admin_json ] && features=
    mkdir -p "$fuzz/corpus/$t"
    log="$fuzz/logs/$t.log"
    (cd "$fuzz" && cargo +nightly fuzz run -O $features --target-dir "$target_dir" \
        "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048) \
        >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    eps=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    crashes=0
    if [ $rc -ne 0 ]; then
        crashes=1
        status=1
    fi
    echo "fuzz target=$t secs=$secs execs=${execs:-?} exec_per_sec=${eps:-?} cov=${cov:-?} crashes=$crashes"
    if [ $crashes -ne 0 ]; then
        grep -m3 -E 'panicked|ERROR|Test unit written|error' "$log" | sed 's/^/    /'
    fi
done
exit $status
