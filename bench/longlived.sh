#!/usr/bin/env bash
# Targets that stay up, measured run after run: what bench/ab.sh (a fresh process and database per
# run) cannot see, such as a cache that fills, a database that grows, memory that fragments.
#
#   bench/longlived.sh MODE RUNS TARGET...
#   e.g. bench/longlived.sh new 5 ceiling target/release/idemgate target/release/idemgate:2MiB
#
# TARGET is `ceiling` or an idemgate binary, optionally with `:SIZE` for its store.cache.max_bytes
# (default: the config's default, 64MiB). Every target is started once, on a database of its own,
# with the default bench config (JSON request logs at info, metrics on, SQLite); then RUNS rounds
# of wrk -t2 -c32 for DURATION (default 5s) in MODE (new | dup | mix) go to each target in turn,
# so neighbouring minutes are compared. Prints one line per run:
#   RESULT target=... run=N rps=... cpu_us=... user_us=... rss_mib=...
# (the process's CPU per request, its user-space part, and its resident memory after the run).
# Env: DURATION, BENCH_DIR, PORT_BASE (default 26000; targets on PORT_BASE+101.., admins on
# PORT_BASE+201..). Needs the binaries bench/compare.sh builds.
set -Eeuo pipefail
trap 'echo "[longlived] failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-}"
RUNS="${2:-}"
shift 2 || true
DURATION="${DURATION:-5s}"
PORT_BASE="${PORT_BASE:-26000}"

BENCH_TAG=longlived
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
one_target_layout
[[ "$MODE" =~ ^(new|dup|mix)$ ]] || die "usage: bench/longlived.sh new|dup|mix RUNS TARGET..."
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
(($# > 0)) || die "name at least one target: ceiling, or an idemgate binary[:cache size]"
dur_secs "$DURATION" >/dev/null

WORKDIR="${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/idemgate-longlived.XXXXXX")}"
PIDS=()
NAMES=()
start_one_target_bench

declare -a T_PID T_ADDR T_NAME
n=0
for target in "$@"; do
    n=$((n + 1))
    addr="127.0.0.1:$((PORT_BASE + 100 + n))"
    admin="127.0.0.1:$((PORT_BASE + 200 + n))"
    port_in_use "$addr" && die "$addr is already in use (set PORT_BASE)"
    mkdir -p "$WORKDIR/db/$n"
    if [[ "$target" == ceiling ]]; then
        [[ -x "$CEIL_BIN" ]] || die "missing $CEIL_BIN (run bench/compare.sh once, or build it)"
        start_bg "ceiling-$n" "$CEIL_BIN" "$addr" "$UP_ADDR" "$WORKDIR/db/$n/ceiling.db"
        T_NAME[n]="ceiling"
    else
        bin="${target%%:*}"
        [[ -x "$bin" ]] || die "missing $bin"
        cfg="$WORKDIR/target-$n.yaml"
        (
            TGT_ADDR=$addr ADMIN_ADDR=$admin
            write_bench_config "$cfg" info "$WORKDIR/db/$n/idemgate.db"
        )
        if [[ "$target" == *:* ]]; then
            # The store section the bench config wrote, with the cache bound added.
            sed -i "s#^store: { sqlite: { path: \(.*\) } }#store: { sqlite: { path: \1 }, cache: { max_bytes: ${target##*:} } }#" "$cfg"
        fi
        start_bg "idemgate-$n" "$bin" serve --config "$cfg"
        T_NAME[n]="$target"
    fi
    T_PID[n]=$LAST_PID
    T_ADDR[n]=$addr
    wait_http "${T_NAME[n]}" "$LAST_PID" "http://$addr/healthz"
    warm_hot_keys "http://$addr"
done

for ((r = 1; r <= RUNS; r++)); do
    log "run $r/$RUNS, $MODE"
    for ((i = 1; i <= n; i++)); do
        res=$(measured_wrk "${T_PID[i]}" "http://${T_ADDR[i]}" "$MODE" "ll$$-$r-$i")
        [[ -n "$res" ]] || die "${T_NAME[i]}: no wrk result (logs in $WORKDIR)"
        rss=$(awk -v k="$(proc_kib "${T_PID[i]}" VmRSS)" 'BEGIN { printf "%.1f", k / 1024 }')
        echo "RESULT target=${T_NAME[i]} run=$r rps=$(field "$res" rps) cpu_us=$(field "$res" cpu_us) user_us=$(field "$res" user_us) rss_mib=$rss"
    done
done
log "work dir (logs, configs): $WORKDIR"
