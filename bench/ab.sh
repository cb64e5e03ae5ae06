#!/usr/bin/env bash
# Two or more idemgate binaries, and the ceiling, in alternating runs of one mode: the most direct
# way to see what a change is worth on a shared machine, where separate bench/compare.sh runs
# drift by 0.05x between hours.
#
#   bench/ab.sh MODE ROUNDS BINARY...    e.g. bench/ab.sh dup 3 /tmp/idemgate-before target/release/idemgate
#
# Each round starts the ceiling, then each binary in turn, each on a fresh database with the
# default bench config (JSON request logs at info, metrics on, SQLite), warms the hot keys, and
# runs wrk -t2 -c32 for DURATION (default 4s) in MODE (new | dup | mix). Prints one line per run:
# RESULT target=... rps=... cpu_us=... user_us=... (the process's CPU per request, and the user-space
# part of it: the kernel's TCP work, about half, swings most between runs).
# With PERF_STAT=1 each line also gives the process's system calls (futex among them), context switches and page faults per request
# (`perf stat` software events): counts, so far steadier than rps on a shared VM.
# Env: DURATION, BENCH_DIR, PERF_STAT, PORT_BASE (default 27000: below the ephemeral port range, which an
# outgoing connection may hold a port of). Needs the binaries bench/compare.sh builds.
set -Eeuo pipefail
trap 'echo "[ab] failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-}"
ROUNDS="${2:-}"
shift 2 || true
DURATION="${DURATION:-4s}"
PORT_BASE="${PORT_BASE:-27000}"

BENCH_TAG=ab
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
one_target_layout
[[ "$MODE" =~ ^(new|dup|mix)$ ]] || die "usage: bench/ab.sh new|dup|mix ROUNDS BINARY..."
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
(($# > 0)) || die "name at least one idemgate binary"
for b in "$UP_BIN" "$CEIL_BIN" "$@"; do [[ -x "$b" ]] || die "missing $b (run bench/compare.sh once, or build it)"; done

WORKDIR="${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/idemgate-ab.XXXXXX")}"
PIDS=()
NAMES=()
start_one_target_bench

run() { # name cmd...
    local name=$1 pid res n perf_pid="" counts=""
    shift
    rm -rf "${WORKDIR:?}/db/"*
    start_bg "$name" "$@"
    pid=$LAST_PID
    wait_http "$name" "$pid" "http://$TGT_ADDR/healthz"
    warm_hot_keys "http://$TGT_ADDR"
    if [[ "${PERF_STAT:-0}" == 1 ]]; then
        perf stat -x, -e raw_syscalls:sys_enter,syscalls:sys_enter_futex,context-switches,page-faults -p "$pid" -o "$WORKDIR/$name.perf" &
        perf_pid=$!
    fi
    res=$(measured_wrk "$pid" "http://$TGT_ADDR" "$MODE" "ab$$-$RANDOM")
    if [[ -n "$perf_pid" ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
    fi
    stop_pid "$pid" "$name"
    forget_pid "$pid"
    [[ -n "$res" ]] || die "$name: no wrk result (log: $WORKDIR/$name.log)"
    n=$(field "$res" requests)
    if [[ -n "$perf_pid" ]]; then
        counts=$(awk -F, -v n="$n" '$3 ~ /raw_syscalls:sys_enter/ { s = $1 } $3 ~ /sys_enter_futex/ { f = $1 }
            $3 ~ /context-switches/ { c = $1 } $3 ~ /page-faults/ { p = $1 }
            END { printf " syscalls_per_req=%.2f futex_per_req=%.2f switches_per_req=%.2f faults_per_req=%.3f", s / n, f / n, c / n, p / n }' "$WORKDIR/$name.perf")
    fi
    echo "RESULT target=$name rps=$(field "$res" rps) cpu_us=$(field "$res" cpu_us) user_us=$(field "$res" user_us)$counts"
}

for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS, $MODE"
    run ceiling "$CEIL_BIN" "$TGT_ADDR" "$UP_ADDR" "$WORKDIR/db/ceiling.db"
    i=0
    for bin in "$@"; do
        i=$((i + 1))
        run "idemgate$i" "$bin" serve --config "$WORKDIR/idemgate.yaml"
    done
done
