#!/usr/bin/env bash
# Where idemgate's CPU goes on the replay path, next to the ceiling (bench/ceiling): `perf record`
# on each process during a wrk run of all duplicates (or MODE=new / mix), then a per-stage split.
# One command: bench/profile.sh   (see docs/performance.md; needs the release binaries that
# bench/compare.sh builds, and perf: `apt-get install linux-perf`)
#
# Env: MODE (dup | mix | new, default dup), DURATION (perf seconds, default 5), FREQ (samples/s,
#      default 499), TARGETS (default "idemgate ceiling"), BENCH_DIR, PORT_BASE (default 48000),
#      IDEMGATE_LOG_LEVEL (default info).
# Output in the work dir: perf-<target>.data, report-<target>-self.txt (flat, by symbol),
# report-<target>-children.txt (inclusive), stages-<target>.txt (self time grouped by stage).
set -Eeuo pipefail
trap 'echo "[profile] failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE="${MODE:-dup}"
DURATION="${DURATION:-5}"
FREQ="${FREQ:-499}"
TARGETS="${TARGETS:-idemgate ceiling}"
PORT_BASE="${PORT_BASE:-48000}"
LOG_LEVEL="${IDEMGATE_LOG_LEVEL:-info}"
IDG_BIN="${BENCH_IDEMGATE_BIN:-$ROOT/target/release/idemgate}"

BENCH_TAG=profile
# shellcheck source=bench/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
one_target_layout
command -v perf >/dev/null 2>&1 || die "perf is missing: apt-get install -y linux-perf"
for b in "$UP_BIN" "$IDG_BIN" "$CEIL_BIN"; do [[ -x "$b" ]] || die "missing $b (run bench/compare.sh once, or build it)"; done
[[ "$MODE" =~ ^(dup|mix|new)$ ]] || die "MODE must be dup, mix or new"

WORKDIR="${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/idemgate-profile.XXXXXX")}"
mkdir -p "$WORKDIR/config" "$WORKDIR/db"
PIDS=()
NAMES=()
scratch_cleanup() {
    rm -rf "$WORKDIR/db"
}
cleanup_on_exit
for a in "$UP_ADDR" "$TGT_ADDR" "$ADMIN_ADDR"; do
    if port_in_use "$a"; then die "$a is already in use (set PORT_BASE)"; fi
done
clear_idemgate_env

start_bg upstream "$UP_BIN" "$UP_ADDR"
UP_PID=$LAST_PID
wait_http upstream "$UP_PID" "http://$UP_ADDR/healthz"

# Self time by stage: each sampled symbol is put in the first stage whose pattern it matches.
stages() { # report-self.txt
    awk -f - "$1" <<'AWK'
BEGIN {
    n = split("logging (tracing, JSON)|metrics (prometheus-client)|cache (moka)|hyper HTTP/1 (parse, encode, dispatch)|headers (http crate)|idemgate's own code|tokio runtime (tasks, wakers, I/O driver)|sqlite|allocator (malloc/free)|memcpy/memmove/memset|std fmt (formatting)|hashing|kernel: syscalls, TCP, scheduling|other", S, "|")
    P[1] = "tracing|serde_json|json|Json|valuable|sharded_slab|thread_local|itoa|ryu|time::format|chrono"
    P[2] = "prometheus|metrics|Counter|Histogram|Family"
    P[3] = "moka|crossbeam|quanta|tagptr"
    P[4] = "hyper::|httparse|h1::|hyper_util"
    P[5] = "http::header|HeaderMap|HeaderValue|HeaderName|http::uri|http::method|http::status"
    P[6] = "idemgate"
    P[7] = "tokio::|mio::|parking_lot|futures_util|futures_core|std::sync|std::thread"
    P[8] = "sqlite|rusqlite"
    P[9] = "malloc|free|realloc|_int_|tcache|arena|calloc|cfree|__libc_"
    P[10] = "memcpy|memmove|memset|memcmp|__memcpy|__memmove"
    P[11] = "core::fmt|alloc::fmt|fmt::"
    P[12] = "hash|Hash|sha2|foldhash|siphasher"
}
/^ *[0-9.]+%/ {
    pct = $1; sub(/%/, "", pct)
    line = $0
    k = (line ~ /\[k\]/)
    s = 0
    if (k) s = 13
    else for (i = 1; i <= 12; i++) if (line ~ P[i]) { s = i; break }
    if (s == 0) s = 14
    T[s] += pct; total += pct
}
END {
    for (i = 1; i <= n; i++) printf "%6.1f%%  %s\n", T[i], S[i]
    printf "%6.1f%%  total sampled\n", total
}
AWK
}

for t in $TARGETS; do
    case "$t" in
        idemgate)
            write_bench_config "$WORKDIR/config/idemgate.yaml" "$LOG_LEVEL" "$WORKDIR/db/idemgate.db"
            start_bg idemgate "$IDG_BIN" serve --config "$WORKDIR/config/idemgate.yaml"
            ;;
        ceiling) start_bg ceiling "$CEIL_BIN" "$TGT_ADDR" "$UP_ADDR" "$WORKDIR/db/ceiling.db" ;;
        *) die "unknown target $t" ;;
    esac
    PID=$LAST_PID
    wait_http "$t" "$PID" "http://$TGT_ADDR/healthz"
    timeout 20 wrk -t1 -c1 -d5s -s "$LUA" "http://$TGT_ADDR" -- warm hot=hot run=warm >/dev/null 2>&1 || true
    log "$t: wrk -t2 -c32 $MODE for $((DURATION + 2))s, perf record -F $FREQ --call-graph dwarf for ${DURATION}s"
    timeout $((DURATION + 30)) wrk -t2 -c32 -d$((DURATION + 2))s --latency -s "$LUA" "http://$TGT_ADDR" \
        -- "$MODE" hot=hot run="p$t$$" >"$WORKDIR/wrk-$t.txt" 2>&1 &
    WRK=$!
    sleep 1
    perf record -q -F "$FREQ" --call-graph dwarf,16384 -p "$PID" -o "$WORKDIR/perf-$t.data" -- sleep "$DURATION" \
        >"$WORKDIR/perf-record-$t.log" 2>&1 || log "WARNING: perf record failed, see $WORKDIR/perf-record-$t.log"
    wait "$WRK" || true
    grep '^RESULT' "$WORKDIR/wrk-$t.txt" >&2 || true
    perf report -i "$WORKDIR/perf-$t.data" --no-children --sort sym --percent-limit 0.05 -g none --stdio \
        >"$WORKDIR/report-$t-self.txt" 2>/dev/null
    perf report -i "$WORKDIR/perf-$t.data" --children --sort sym --percent-limit 1 -g none --stdio \
        >"$WORKDIR/report-$t-children.txt" 2>/dev/null
    stages "$WORKDIR/report-$t-self.txt" >"$WORKDIR/stages-$t.txt"
    echo "== $t ($MODE): self time by stage"
    cat "$WORKDIR/stages-$t.txt"
    echo "== $t: top 15 symbols (self)"
    grep -E '^ *[0-9.]+%' "$WORKDIR/report-$t-self.txt" | sed -n '1,15p'
    stop_pid "$PID" "$t"
    PIDS=("${PIDS[@]:0:${#PIDS[@]}-1}")
    NAMES=("${NAMES[@]:0:${#NAMES[@]}-1}")
done
