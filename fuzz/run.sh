#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on stable Rust (cargo-fuzz with `-s none`).
#
#   fuzz/run.sh                       # each target for 60 s
#   FUZZ_SECONDS=600 fuzz/run.sh      # longer
#   fuzz/run.sh path_normalize        # one target
#   FUZZ_MERGE=1 fuzz/run.sh          # then merge inputs that add coverage into fuzz/corpus/
#
# libFuzzer reads the committed corpus fuzz/corpus/<target>/ and writes what it finds to
# fuzz/work/<target>/ (ignored by git). A crash stops that target, is saved under
# fuzz/artifacts/<target>/, and makes this script exit 1 after the other targets have run.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir/.."   # cargo-fuzz finds fuzz/ from the repository root; the paths below are relative to it

seconds="${FUZZ_SECONDS:-60}"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(path_normalize key_extraction)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Stable Rust: `-s none` builds without a sanitizer, so no nightly-only `-Zsanitizer` flag is
# passed. cargo-fuzz's defaults otherwise suit stable: release optimizations with debug
# assertions and overflow checks, sancov instrumentation through stable -C flags, no -Zbuild-std.
build_flags=(-s none)

failed=()
summary=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    work="fuzz/work/$target"
    log="fuzz/work/$target.log"
    mkdir -p "$corpus" "$work"
    args=(-max_total_time="$seconds" -max_len=4096 -timeout=10 -print_final_stats=1)
    [ -f "fuzz/dict/$target.dict" ] && args+=(-dict="fuzz/dict/$target.dict")
    echo "==> cargo fuzz run ${build_flags[*]} $target $work $corpus -- ${args[*]}"
    if cargo fuzz run "${build_flags[@]}" "$target" "$work" "$corpus" -- "${args[@]}" 2>&1 | tee "$log"; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
        artifact="$(grep -o 'fuzz/artifacts/[^ ]*' "$log" | tail -n 1 || true)"
        echo "!!! $target: libFuzzer stopped on a failing input: ${artifact:-see $log}" >&2
        [ -n "$artifact" ] && echo "!!! reproduce: cargo fuzz run ${build_flags[*]} $target $artifact" >&2
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | awk '{print $2}' || true)"
    rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -n 1 | awk '{print $2}' || true)"
    summary+=("$target: $status, ${runs:-?} executions, ${rate:-?} exec/s")

    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
        # Adds to the committed corpus a small set of the run's inputs that covers every edge it
        # lacks (greedy set cover, edges only: hit counts would keep hundreds more).
        echo "==> merging new coverage from $work into $corpus"
        cargo fuzz run "${build_flags[@]}" "$target" "$corpus" "$work" -- \
            -set_cover_merge=1 -use_counters=0 -max_len=4096 -timeout=10
    fi
done

echo
echo "== fuzz summary (${seconds}s per target)"
printf '   %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "failing inputs are in fuzz/artifacts/<target>/; logs in fuzz/work/<target>.log" >&2
    exit 1
fi
