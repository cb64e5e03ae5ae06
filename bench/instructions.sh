#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind: the ceiling and one or
# more idemgate binaries, one mode. A count does not move with the machine's other load, so a
# change of a few percent shows on this shared VM, where rps and CPU time swing by 20-30% between
# runs (bench/ab.sh). It counts instructions, not time, and not the kernel's work (system calls,
# TCP, scheduling: about half of a replay's CPU here): a change that moves work into the kernel, or
# that waits, must still be timed with bench/ab.sh.
#
#   bench/instructions.sh MODE BINARY...     e.g. bench/instructions.sh dup target/release/idemgate
#
# Each target runs under callgrind with instrumentation off; after a warm-up (the hot keys of
# webhook.lua stored), instrumentation is switched on for a wrk run of DURATION (default 10s) at
# CONNS connections (default 2; callgrind serializes threads, so more only queue), then off, and
# the profile is dumped. Prints one line per target:
#   RESULT target=... requests=... instructions_per_request=... profile=<callgrind file>
# and, with TOP=N (default 15), the N functions with the most instructions (self) per request.
# Read a profile further with: callgrind_annotate --inclusive=yes <file> | less
# Env: DURATION, CONNS, TOP, BENCH_DIR, PORT_BASE (default 29000). Needs valgrind and the release
# binaries bench/compare.sh builds.
set -Eeuo pipefail
trap 'echo "[instructions] failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-}"
shift || true
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-2}"
TOP="${TOP:-15}"
PORT_BASE="${PORT_BASE:-29000}"

BENCH_TAG=instructions
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
one_target_layout
[[ "$MODE" =~ ^(new|dup|mix)$ ]] || die "usage: bench/instructions.sh new|dup|mix BINARY..."
(($# > 0)) || die "name at least one idemgate binary"
[[ "$TOP" =~ ^[0-9]+$ ]] || die "TOP must be a number"
for tool in valgrind callgrind_control callgrind_annotate wrk curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install valgrind wrk curl)"
done
for b in "$UP_BIN" "$CEIL_BIN" "$@"; do [[ -x "$b" ]] || die "missing $b (run bench/compare.sh once, or build it)"; done

WORKDIR="${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/idemgate-instructions.XXXXXX")}"
PIDS=()
NAMES=()
start_one_target_bench

run() { # name cmd...
    local name=$1 pid res n total out="$WORKDIR/callgrind-$1-$MODE.out"
    shift
    rm -rf "${WORKDIR:?}/db/"* "$out"*
    start_bg "$name" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$@"
    pid=$LAST_PID
    # Under valgrind a start takes seconds.
    wait_http "$name" "$pid" "http://$TGT_ADDR/healthz" 600
    timeout 60 wrk -t1 -c"$CONNS" -d3s -s "$LUA" "http://$TGT_ADDR" -- warm hot=hot run=warm >/dev/null 2>&1 || true
    callgrind_control -i on "$pid" >/dev/null
    res=$(timeout 120 wrk -t1 -c"$CONNS" -d"$DURATION" -s "$LUA" "http://$TGT_ADDR" -- "$MODE" hot=hot run="in$$-$RANDOM" 2>&1 | grep '^RESULT' || true)
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    stop_pid "$pid" "$name"
    forget_pid "$pid"
    [[ -n "$res" ]] || die "$name: no wrk result (log: $WORKDIR/$name.log)"
    n=$(field "$res" requests)
    # The dump asked for above is part 1; part 2 is what ran after it, until the stop.
    [[ -s "$out.1" ]] || die "$name: callgrind wrote no profile ($out.1)"
    total=$(callgrind_annotate "$out.1" | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }')
    echo "RESULT target=$name requests=$n instructions_per_request=$((total / n)) profile=$out.1"
    if ((TOP > 0)); then
        callgrind_annotate "$out.1" | sed -n '/file:function/,$p' | sed -n "3,$((TOP + 2))p" |
            awk -v n="$n" '{ c = $1; gsub(",", "", c); $1 = ""; $2 = ""; sub(/^ +/, ""); printf "  %7d  %s\n", c / n, substr($0, 1, 140) }'
    fi
}

run ceiling "$CEIL_BIN" "$TGT_ADDR" "$UP_ADDR" "$WORKDIR/db/ceiling.db"
i=0
for bin in "$@"; do
    i=$((i + 1))
    run "idemgate$i" "$bin" serve --config "$WORKDIR/idemgate.yaml"
done
