#!/usr/bin/env bash
# idemgate memory-and-scale benchmark. One command: bench/scale/run.sh   (see bench/scale/README.md)
#
# Measures: idle RSS on an empty database; database bytes per stored key (10k and 1M keys, built
# directly with sqlite3); throughput (cold replay, warm replay, new keys) at 10k vs 1M stored keys;
# RSS after the 1M runs; the cost of sweeping 1M expired records while serving new keys.
# With CURVE="N1 N2 ..." (CURVE=1: 0 100000 250000 500000 1000000) it measures only the growth
# curve instead: first-seen keys per second on a store already holding each N completed keys.
#
# Env: DURATION (wrk -d per run, default 5s), QUICK=1 (N=100,000 and 2s runs), SWEEP_DURATION
#      (wrk -d during the sweep, default 10s), SWEEP_TIMEOUT (s, default 120), CACHE_MAX_MIB
#      (cache.max_bytes in MiB, default 64), SKIP_BUILD=1, BENCH_DIR (work dir, default a new
#      mktemp dir), KEEP_DB=1, PORT_BASE (default 28000: upstream PORT_BASE, proxy PORT_BASE+81,
#      admin PORT_BASE+1091).
# All traffic stays on 127.0.0.1; every step is bounded in time; every process started here is
# stopped on exit. Exit 0: finished and every correctness check held (targets may still FAIL);
# exit 1: a step failed or a check did not hold (listed under "problems").
set -Eeuo pipefail
trap 'echo "[scale] failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

QUICK="${QUICK:-0}"
if [[ "$QUICK" == "1" ]]; then
    DURATION="${DURATION:-2s}"
    SWEEP_DURATION="${SWEEP_DURATION:-4s}"
    N_SMALL=10000
    N_LARGE=100000
else
    N_SMALL=10000
    N_LARGE=1000000
fi
DURATION="${DURATION:-5s}"
SWEEP_DURATION="${SWEEP_DURATION:-10s}"
SWEEP_TIMEOUT="${SWEEP_TIMEOUT:-120}"
CACHE_MAX_MIB="${CACHE_MAX_MIB:-64}"
SKIP_BUILD="${SKIP_BUILD:-0}"
CURVE="${CURVE:-}"
[[ "$CURVE" == "1" ]] && CURVE="0 100000 250000 500000 1000000"
KEEP_DB="${KEEP_DB:-0}"
PORT_BASE="${PORT_BASE:-28000}"
THREADS=2
CONNS=32
TTL_MS=$((7 * 24 * 3600 * 1000))

IDG_BIN="$ROOT/target/release/idemgate"
UP_BIN="$ROOT/target/release/examples/bench_upstream"
LUA="$ROOT/bench/scale/scale.lua"

UP_ADDR="127.0.0.1:$PORT_BASE"
IDG_ADDR="127.0.0.1:$((PORT_BASE + 81))"
ADMIN_ADDR="127.0.0.1:$((PORT_BASE + 1091))"

BENCH_TAG=scale
# shellcheck source=bench/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../lib.sh"
PROBLEMS=()
problem() {
    log "PROBLEM: $*"
    PROBLEMS+=("$*")
}

dur_secs "$DURATION" >/dev/null
dur_secs "$SWEEP_DURATION" >/dev/null
[[ "$SWEEP_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "SWEEP_TIMEOUT must be a positive integer (seconds)"
[[ "$CACHE_MAX_MIB" =~ ^[1-9][0-9]*$ ]] || die "CACHE_MAX_MIB must be a positive integer"
if ! [[ "$PORT_BASE" =~ ^[0-9]+$ ]] || ((PORT_BASE < 1024 || PORT_BASE > 64000)); then
    die "PORT_BASE must be in 1024..64000"
fi

# ------------------------------------------------------------------------- tools
as_root=()
if [[ "$(id -u)" -ne 0 ]]; then as_root=(sudo); fi
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
    log "installing: ${need[*]}"
    timeout 600 "${as_root[@]}" apt-get update -qq
    timeout 900 "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# ------------------------------------------------------------------------- build
if [[ "$SKIP_BUILD" != "1" ]]; then
    log "building (release): idemgate + bench_upstream"
    timeout 3600 cargo build --release --bin idemgate --example bench_upstream
fi
[[ -x "$UP_BIN" ]] || die "missing $UP_BIN (build it, or unset SKIP_BUILD)"
[[ -x "$IDG_BIN" ]] || die "missing $IDG_BIN (build it, or unset SKIP_BUILD)"

# ------------------------------------------------------------------------- work dir, cleanup
WORKDIR="${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/idemgate-scale.XXXXXX")}"
mkdir -p "$WORKDIR"
RUN_TAG="s$(date +%s)$$"

PIDS=()
NAMES=()
UP_PID=""
IDG_PID=""


WORK_DIR_NOTE="logs, configs, wrk outputs, summary.txt"
scratch_cleanup() {
    if [[ "$KEEP_DB" != "1" ]]; then
        rm -f "$WORKDIR"/*.db "$WORKDIR"/*.db-wal "$WORKDIR"/*.db-shm
    fi
}
cleanup_on_exit

for a in "$UP_ADDR" "$IDG_ADDR" "$ADMIN_ADDR"; do
    if port_in_use "$a"; then die "$a is already in use (a previous run still alive? set PORT_BASE)"; fi
done





metric() { # series name (no labels) -> value, or empty
    curl -fsS --max-time 5 "http://$ADMIN_ADDR/metrics" 2>/dev/null |
        awk -v m="$1" '$1 == m { printf "%d\n", $2; exit }' || true
}

now_ms() { date +%s%3N; }

file_bytes() { # total size of a database file with its WAL
    local total=0 f
    for f in "$1" "$1-wal"; do
        if [[ -f "$f" ]]; then total=$((total + $(stat -c %s "$f"))); fi
    done
    echo "$total"
}

# ------------------------------------------------------------------------- databases
# idemgate itself creates the database (started once on the empty path and stopped), so the
# schema here is always the one the binary uses; then N completed rows go in with one sqlite3
# transaction. Expired rows (EXPIRED=1) were created 8 days ago and expired 1 day ago.
make_db() { # path n expired(0|1)
    local db=$1 n=$2 expired=$3 now created expires
    now=$(now_ms)
    if [[ "$expired" == "1" ]]; then
        created=$((now - 8 * 24 * 3600 * 1000))
        expires=$((now - 24 * 3600 * 1000))
    else
        created=$now
        expires=$((now + TTL_MS))
    fi
    rm -f "$db" "$db-wal" "$db-shm"
    start_idemgate "schema-$(basename "$db" .db)" "$db"
    stop_idemgate
    ((n > 0)) || return 0
    timeout 900 sqlite3 -batch -bail "$db" >/dev/null <<EOF
PRAGMA synchronous=OFF;
BEGIN;
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < $n)
INSERT INTO records (route, scope, key, state, token, fingerprint, created_ms, expires_ms,
                     status, headers, body, body_omitted)
SELECT 'bench', '', 'fill-' || i, 1, i, NULL, $created, $expires, 200,
       CAST('content-type:application/json' || char(10) AS BLOB),
       CAST(printf('{"ok":true,"id":"evt_fill_%07d","type":"invoice.paid","padding":"%s"}',
                   i, 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') AS BLOB),
       0
FROM seq;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
EOF
    local got
    got=$(sqlite3 -batch "$db" "SELECT count(*) FROM records WHERE route = 'bench'; PRAGMA journal_mode;" | tr '\n' ' ')
    [[ "$got" == "$n wal " ]] || die "database $db: expected '$n wal', got '$got'"
}

declare -A DBN DBBYTES DBFILL
build_db() { # label path n expired
    local label=$1 db=$2 n=$3 expired=$4 t0 t1
    log "building $label: $n $([[ $expired == 1 ]] && echo expired || echo completed) rows in $db"
    t0=$(now_ms)
    make_db "$db" "$n" "$expired"
    t1=$(now_ms)
    DBN[$label]=$n
    DBBYTES[$label]=$(file_bytes "$db")
    DBFILL[$label]=$((t1 - t0))
}

# ------------------------------------------------------------------------- idemgate
clear_idemgate_env

start_idemgate() { # name db ; sets IDG_PID, IDG_T0 (ms, at launch)
    local name=$1 db=$2 cfg="$WORKDIR/$1.yaml"
    cat >"$cfg" <<EOF
# generated by bench/scale/run.sh
listen: $IDG_ADDR
log: { format: json, level: warn }
admin: { listen: $ADMIN_ADDR }
upstream: { url: http://$UP_ADDR }
store: { sqlite: { path: $db }, cache: { max_bytes: ${CACHE_MAX_MIB}MiB } }
routes:
  - name: bench
    match: { path_prefix: /webhooks/ }
    key: { header: Idempotency-Key }
EOF
    IDG_T0=$(now_ms)
    start_bg "$name" "$IDG_BIN" serve --config "$cfg"
    IDG_PID=$LAST_PID
    wait_http "$name" "$IDG_PID" "http://$ADMIN_ADDR/readyz" 600
}

stop_idemgate() {
    stop_pid "$IDG_PID" idemgate
    forget_pid "$IDG_PID"
    IDG_PID=""
}

alive_check() {
    kill -0 "$UP_PID" 2>/dev/null || die "bench_upstream died (log: $WORKDIR/upstream.log)"
    kill -0 "$IDG_PID" 2>/dev/null || die "idemgate died (log: $WORKDIR/$1.log)"
}

# A stored key must come back as a replay of exactly the stored body, or the schema written above
# is not the one idemgate reads and every number after this is meaningless.
sanity_replay() { # n
    local n=$1 k h body want
    k=$((n / 2 + 1))
    want=$(printf '{"ok":true,"id":"evt_fill_%07d","type":"invoice.paid","padding":"%s"}' "$k" 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx')
    h=$(curl -sS --max-time 10 -D "$WORKDIR/sanity.headers" -o "$WORKDIR/sanity.body" -X POST \
        "http://$IDG_ADDR/webhooks/bench" -H 'Content-Type: application/json' \
        -H "Idempotency-Key: fill-$k" --data '{"id":"evt_sanity"}' -w '%{http_code}') || die "sanity request failed"
    body=$(cat "$WORKDIR/sanity.body")
    [[ "$h" == "200" ]] || die "stored key fill-$k answered $h, not 200 (body: $body)"
    grep -qi '^idempotent-replayed: *true' "$WORKDIR/sanity.headers" ||
        die "stored key fill-$k was not replayed (no 'Idempotent-Replayed: true'): the generated schema/rows are not read as completed records"
    [[ "$body" == "$want" ]] || die "stored key fill-$k replayed another body: '$body' (want '$want')"
    grep -qi '^content-type: *application/json' "$WORKDIR/sanity.headers" ||
        die "stored key fill-$k replayed without its stored content-type header"
    # A key that is not stored is forwarded, then replayed.
    h=$(curl -sS --max-time 10 -D "$WORKDIR/sanity2.headers" -o /dev/null -X POST "http://$IDG_ADDR/webhooks/bench" \
        -H 'Content-Type: application/json' -H "Idempotency-Key: sanity-$RUN_TAG-$n" --data '{}' -w '%{http_code}') || die "sanity request failed"
    if [[ "$h" != "200" ]] || grep -qi '^idempotent-replayed' "$WORKDIR/sanity2.headers"; then
        die "a new key was not forwarded (status $h)"
    fi
}

# ------------------------------------------------------------------------- wrk
declare -A RPS P50 P99 NON2XX ERRS REQS REPL HIT RSS_BEFORE RSS_AFTER

# run_wrk LABEL MODE DURATION N PHASE: stores the parsed RESULT under LABEL
run_wrk() {
    local label=$1 mode=$2 d=$3 n=$4 phase=$5 secs out line h0 m0 h1 m1
    secs=$(dur_secs "$d")
    out="$WORKDIR/wrk-$label.txt"
    h0=$(metric idemgate_cache_hits_total)
    m0=$(metric idemgate_cache_misses_total)
    RSS_BEFORE[$label]=$(proc_kib "$IDG_PID" VmRSS)
    log "wrk $label: $mode, -t$THREADS -c$CONNS -d$d"
    if ! timeout $((secs + 30)) wrk -t"$THREADS" -c"$CONNS" -d"$d" --latency -s "$LUA" "http://$IDG_ADDR" \
        -- "$mode" n="$n" run="$RUN_TAG-$label" >"$out" 2>&1; then
        problem "$label: wrk failed (see $out)"
    fi
    alive_check "$phase"
    RSS_AFTER[$label]=$(proc_kib "$IDG_PID" VmRSS)
    line=$(grep '^RESULT ' "$out" | tail -n 1 || true)
    if [[ -z "$line" ]]; then
        problem "$label: no RESULT line from wrk (see $out)"
        return 0
    fi
    RPS[$label]=$(field "$line" rps)
    P50[$label]=$(field "$line" p50_us)
    P99[$label]=$(field "$line" p99_us)
    NON2XX[$label]=$(field "$line" non2xx)
    ERRS[$label]=$(field "$line" errors)
    REQS[$label]=$(field "$line" requests)
    REPL[$label]=$(field "$line" replayed)
    h1=$(metric idemgate_cache_hits_total)
    m1=$(metric idemgate_cache_misses_total)
    if [[ -n "$h0$m0" && -n "$h1" && -n "$m1" ]] && ((h1 - h0 + m1 - m0 > 0)); then
        HIT[$label]=$(awk -v h=$((h1 - h0)) -v m=$((m1 - m0)) 'BEGIN { printf "%.1f", 100 * h / (h + m) }')
    else
        HIT[$label]="-"
    fi
    log "  $line cache_hit%=${HIT[$label]}"
    if ((${NON2XX[$label]} > 0 || ${ERRS[$label]} > 0)); then
        problem "$label: ${NON2XX[$label]} non-2xx answers and ${ERRS[$label]} socket errors in ${REQS[$label]} requests (see $WORKDIR/$phase.log)"
    fi
    if [[ "$mode" == "replay" && "${REPL[$label]}" != "${REQS[$label]}" ]]; then
        problem "$label: only ${REPL[$label]} of ${REQS[$label]} answers were replays, though every key sent is stored"
    fi
    if [[ "$mode" == "new" && "${REPL[$label]}" != "0" ]]; then
        problem "$label: ${REPL[$label]} replays in new mode, where every key is new"
    fi
}

# ------------------------------------------------------------------------- start
log "work dir: $WORKDIR"
LOAD_AT_START=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$LOAD_AT_START" 'BEGIN { exit !(l > 1.0) }'; then
    log "WARNING: load average is $LOAD_AT_START before the start: another benchmark or build may be running, and the numbers will be lower and noisier"
fi
log "starting bench_upstream on $UP_ADDR"
start_bg upstream "$UP_BIN" "$UP_ADDR"
UP_PID=$LAST_PID
wait_http upstream "$UP_PID" "http://$UP_ADDR/" 100

label_of() { # n -> 10k, 1M, 100k ...
    awk -v n="$1" 'BEGIN { if (n >= 1000000 && n % 1000000 == 0) printf "%dM", n / 1000000; else if (n >= 1000 && n % 1000 == 0) printf "%dk", n / 1000; else printf "%d", n }'
}

# The growth curve: first-seen keys per second with each N completed keys already stored (a
# fresh process each time, so only the store's size differs), and the ratio to the first N.
run_curve() {
    local n label db first="" out="$WORKDIR/curve.txt" row='%-12s %10s %8s %8s %8s %12s\n'
    # shellcheck disable=SC2059 # one format for the header and every line: the table's columns
    {
        echo "first-seen keys by keys already stored (wrk -t$THREADS -c$CONNS -d$DURATION, cache ${CACHE_MAX_MIB} MiB)"
        printf "$row" stored rps vs_first p50_us p99_us db_MiB
    } >"$out"
    for n in $CURVE; do
        [[ "$n" =~ ^[0-9]+$ ]] || die "CURVE: '$n' is not a number of keys"
        label="curve-$(label_of "$n")"
        db="$WORKDIR/$label.db"
        build_db "$label" "$db" "$n" 0
        start_idemgate "$label" "$db"
        run_wrk "$label" new "$DURATION" "$n" "$label"
        stop_idemgate
        [[ "$KEEP_DB" == "1" ]] || rm -f "$db" "$db-wal" "$db-shm"
        first=${first:-${RPS[$label]:-}}
        # shellcheck disable=SC2059
        printf "$row" "$(label_of "$n")" "${RPS[$label]:--}" \
            "$(awk -v a="${RPS[$label]:-0}" -v b="${first:-0}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else printf "-" }')" \
            "${P50[$label]:--}" "${P99[$label]:--}" "$((DBBYTES[$label] / 1048576))" >>"$out"
    done
    cat "$out"
    ((${#PROBLEMS[@]} == 0)) || die "problems: ${PROBLEMS[*]}"
}
if [[ -n "$CURVE" ]]; then
    run_curve
    exit 0
fi
SMALL=$(label_of "$N_SMALL")
LARGE=$(label_of "$N_LARGE")

build_db small "$WORKDIR/small.db" "$N_SMALL" 0
build_db large "$WORKDIR/large.db" "$N_LARGE" 0
build_db expired "$WORKDIR/expired.db" "$N_LARGE" 1

# --- 1. idle RSS on an empty database (the file does not exist yet: idemgate creates it)
log "phase idle: empty database"
start_idemgate idle "$WORKDIR/empty.db"
sleep 1
IDLE_RSS=$(proc_kib "$IDG_PID" VmRSS)
IDLE_HWM=$(proc_kib "$IDG_PID" VmHWM)
stop_idemgate

# --- 2/3. throughput at N_SMALL and N_LARGE stored keys
declare -A START_RSS END_RSS END_HWM
for size in small large; do
    n=${DBN[$size]}
    log "phase $size: $n stored keys"
    start_idemgate "$size" "$WORKDIR/$size.db"
    sleep 1
    START_RSS[$size]=$(proc_kib "$IDG_PID" VmRSS)
    sanity_replay "$n"
    run_wrk "$size-cold" replay "$DURATION" "$n" "$size"
    run_wrk "$size-warm" replay "$DURATION" "$n" "$size"
    run_wrk "$size-new" new "$DURATION" "$n" "$size"
    END_RSS[$size]=$(proc_kib "$IDG_PID" VmRSS)
    END_HWM[$size]=$(proc_kib "$IDG_PID" VmHWM)
    stop_idemgate
    [[ "$KEEP_DB" == "1" ]] || rm -f "$WORKDIR/$size.db" "$WORKDIR/$size.db-wal" "$WORKDIR/$size.db-shm"
done

# --- 4. sweeper: N_LARGE expired rows, new keys under load while the sweeper deletes them
log "phase sweep: $N_LARGE expired rows"
start_idemgate sweep "$WORKDIR/expired.db"
# The swept counter is polled every second from the start, in the background, while wrk runs.
PROGRESS="$WORKDIR/sweep-progress.tsv"
sweep_poller() {
    local deadline=$((IDG_T0 + SWEEP_TIMEOUT * 1000)) swept t
    printf 'seconds_since_start\tswept\n' >"$PROGRESS"
    while :; do
        swept=$(metric idemgate_swept_records_total)
        t=$(now_ms)
        printf '%s\t%s\n' "$(awk -v a="$t" -v b="$IDG_T0" 'BEGIN { printf "%.1f", (a - b) / 1000 }')" "${swept:--}" >>"$PROGRESS"
        if [[ -n "$swept" ]] && ((swept >= N_LARGE)); then return 0; fi
        ((t < deadline)) || return 0
        sleep 1
    done
}
start_bg sweep-poller sweep_poller
POLL_PID=$LAST_PID
run_wrk sweep-new new "$SWEEP_DURATION" "$N_LARGE" sweep
SWEPT_AT_WRK_END=$(metric idemgate_swept_records_total)
SWEPT_AT_WRK_END_S=$(awk -v a="$(now_ms)" -v b="$IDG_T0" 'BEGIN { printf "%.1f", (a - b) / 1000 }')
# The poller stops by itself once all are swept or at the deadline.
while kill -0 "$POLL_PID" 2>/dev/null; do
    kill -0 "$IDG_PID" 2>/dev/null || die "idemgate died during the sweep (log: $WORKDIR/sweep.log)"
    (($(now_ms) < IDG_T0 + (SWEEP_TIMEOUT + 10) * 1000)) || die "the sweep poller did not stop in time"
    sleep 0.5
done
wait "$POLL_PID" || true
forget_pid "$POLL_PID"
SWEEP_DONE_S=$(awk -F'\t' -v n="$N_LARGE" 'NR > 1 && $2 != "-" && $2 >= n { print $1; exit }' "$PROGRESS")
SWEPT=$(awk -F'\t' 'NR > 1 && $2 != "-" { v = $2 } END { print v + 0 }' "$PROGRESS")
SWEEP_HWM=$(proc_kib "$IDG_PID" VmHWM)
stop_idemgate
LEFT=$(sqlite3 -batch "$WORKDIR/expired.db" "SELECT count(*) FROM records WHERE expires_ms <= $(now_ms);" 2>/dev/null || echo "?")
if [[ -z "$SWEEP_DONE_S" ]]; then
    problem "sweep: only $SWEPT of $N_LARGE expired records swept within ${SWEEP_TIMEOUT}s of start"
fi
[[ "$LEFT" == "0" || -z "$SWEEP_DONE_S" ]] || problem "sweep: the metric says all were swept, but $LEFT expired rows are still in the file"

# ------------------------------------------------------------------------- report
{
    echo
    echo "idemgate scale benchmark: wrk -t$THREADS -c$CONNS -d$DURATION, ~1 KiB JSON POSTs, $(nproc) cores, cache.max_bytes ${CACHE_MAX_MIB}MiB, $(date -u +%Y-%m-%dT%H:%MZ), load average at start $LOAD_AT_START"
    echo
    echo "database (built with sqlite3: schema of src/store/sqlite.rs, ~100-byte bodies)"
    printf '  %-26s %10s %14s %10s %9s\n' "rows" "keys" "file bytes" "bytes/key" "fill (s)"
    for l in small large expired; do
        printf '  %-26s %10d %14d %10.1f %9.1f\n' "$([[ $l == expired ]] && echo "expired (sweep phase)" || echo "completed, $(label_of "${DBN[$l]}")")" \
            "${DBN[$l]}" "${DBBYTES[$l]}" "$(awk -v b="${DBBYTES[$l]}" -v n="${DBN[$l]}" 'BEGIN { print b / n }')" \
            "$(awk -v t="${DBFILL[$l]}" 'BEGIN { print t / 1000 }')"
    done
    echo
    echo "throughput ($SMALL vs $LARGE stored keys; hit% = idemgate cache hits during the run)"
    printf '  %-12s | %9s %8s %8s %6s | %9s %8s %8s %6s | %7s  %s\n' "mode" "rps" "p50 ms" "p99 ms" "hit%" "rps" "p50 ms" "p99 ms" "hit%" "$LARGE/$SMALL" "target >= 0.80x"
    printf '  %-12s | %-36s | %-36s |\n' "" "at $SMALL keys" "at $LARGE keys"
    for m in cold warm new; do
        a="small-$m"
        b="large-$m"
        name=$([[ $m == new ]] && echo "new keys" || echo "$m replay")
        if [[ -z "${RPS[$a]:-}" || -z "${RPS[$b]:-}" ]]; then
            printf '  %-12s | (no result)\n' "$name"
            continue
        fi
        awk -v name="$name" -v r1="${RPS[$a]}" -v a1="${P50[$a]}" -v b1="${P99[$a]}" -v h1="${HIT[$a]}" \
            -v r2="${RPS[$b]}" -v a2="${P50[$b]}" -v b2="${P99[$b]}" -v h2="${HIT[$b]}" 'BEGIN {
            q = (r1 > 0) ? r2 / r1 : 0
            printf "  %-12s | %9.0f %8.3f %8.3f %6s | %9.0f %8.3f %8.3f %6s | %6.2fx  %s\n", name, r1, a1 / 1000, b1 / 1000, h1, r2, a2 / 1000, b2 / 1000, h2, q, (q >= 0.8) ? "PASS" : "FAIL"
        }'
    done
    echo
    echo "memory (idemgate VmRSS / VmHWM from /proc)"
    awk -v idle="$IDLE_RSS" -v ihwm="$IDLE_HWM" -v s0="${START_RSS[small]}" -v l0="${START_RSS[large]}" \
        -v se="${END_RSS[small]}" -v sh="${END_HWM[small]}" -v le="${END_RSS[large]}" -v lh="${END_HWM[large]}" \
        -v cap="$CACHE_MAX_MIB" -v small="$SMALL" -v large="$LARGE" 'BEGIN {
        M = 1024
        printf "  %-44s %8.1f MiB (VmHWM %.1f)   target < 64 MiB: %s\n", "idle, empty database, after readiness", idle / M, ihwm / M, (idle > 0 && idle < 64 * M) ? "PASS" : "FAIL"
        printf "  %-44s %8.1f MiB\n", "after start on " small " keys, before traffic", s0 / M
        printf "  %-44s %8.1f MiB\n", "after start on " large " keys, before traffic", l0 / M
        printf "  %-44s %8.1f MiB (VmHWM %.1f)\n", "after the runs at " small " keys", se / M, sh / M
        printf "  %-44s %8.1f MiB (VmHWM %.1f)   target VmHWM < %d MiB (cache + 64): %s\n", "after the runs at " large " keys", le / M, lh / M, cap + 64, (lh > 0 && lh < (cap + 64) * M) ? "PASS" : "FAIL"
    }'
    # At the small size the cache is not full yet, so RSS growth / keys stored is what one cached
    # record really costs (at the large size the replay runs have already filled the cache).
    if [[ -n "${REQS[small-new]:-}" && -n "${RSS_BEFORE[small-new]:-}" ]]; then
        awk -v b="${RSS_BEFORE[small-new]}" -v a="${RSS_AFTER[small-new]}" -v n="${REQS[small-new]}" -v what="$SMALL" 'BEGIN {
            printf "  %-44s %+8.1f MiB for %d new keys = %.0f bytes per new key (with SQLite a new key is cached only once asked for again)\n", "RSS growth during the new-keys run at " what, (a - b) / 1024, n, (n > 0) ? (a - b) * 1024 / n : 0
        }'
    fi
    echo
    echo "sweeper ($N_LARGE expired rows at start; sweeps every 30s, 1000 rows per transaction)"
    if [[ -n "${RPS[sweep-new]:-}" && -n "${RPS[small-new]:-}" ]]; then
        awk -v r="${RPS[sweep-new]}" -v a="${P50[sweep-new]}" -v b="${P99[sweep-new]}" -v base="${RPS[small-new]}" -v d="$SWEEP_DURATION" -v small="$SMALL" 'BEGIN {
            printf "  %-44s %9.0f rps  p50 %.3f ms  p99 %.3f ms  = %.2fx new at %s keys (%.0f rps)\n", "new keys during the sweep (wrk -d" d ")", r, a / 1000, b / 1000, (base > 0) ? r / base : 0, small, base
        }'
    else
        echo "  new keys during the sweep: (no result)"
    fi
    printf '  %-44s %9s of %d, %ss after start\n' "swept when wrk ended" "${SWEPT_AT_WRK_END:-?}" "$N_LARGE" "$SWEPT_AT_WRK_END_S"
    if [[ -n "$SWEEP_DONE_S" ]]; then
        printf '  %-44s %9ss after start (polled every 1s, progress in sweep-progress.tsv; %s expired rows left in the file)\n' "all swept" "$SWEEP_DONE_S" "$LEFT"
    else
        printf '  %-44s NOT within %ss: %s swept, %s expired rows left in the file\n' "all swept" "$SWEEP_TIMEOUT" "$SWEPT" "$LEFT"
    fi
    awk -v h="$SWEEP_HWM" 'BEGIN { printf "  %-44s %8.1f MiB\n", "VmHWM during the sweep phase", h / 1024 }'
    echo
    if ((${#PROBLEMS[@]})); then
        echo "problems:"
        printf '  - %s\n' "${PROBLEMS[@]}"
    else
        echo "checks: every replay-mode answer was a replay, no new-mode answer was, no non-2xx, no socket errors"
    fi
} | tee "$WORKDIR/summary.txt"

((${#PROBLEMS[@]} == 0)) || exit 1
