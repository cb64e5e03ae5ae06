#!/usr/bin/env bash
# Async delivery (issue 17): acknowledgements per second on an async route beside the same load on
# a sync route, and idemgate's memory with a large queue. One command: bench/async.sh
# (see bench/README.md and docs/performance.md, "Async delivery").
#
# (1) acks: idemgate (release, the default config: JSON request logs at info, metrics on, SQLite)
#     with two routes on one key source (Idempotency-Key): `async` on /webhooks/async
#     (`delivery: { mode: async }`, the delivery defaults) and `sync` on /webhooks/sync, in front
#     of examples/bench_upstream. wrk -t2 -c32 -d$DURATION, every key new (bench/wrk/webhook.lua),
#     against each route in turn (the order alternates per round), ROUNDS rounds. Per run: rps,
#     p50/p99, idemgate's CPU per request; on the async route also how far delivery is behind at
#     the end of the run (idemgate_queue_depth, and acknowledged minus delivered from the
#     counters) and how long the queue then takes to drain.
# (2) queue: a fresh idemgate, one async route in front of an app that accepts connections and
#     never answers, so `concurrency` (4) events are in flight and the rest stay queued
#     (upstream.timeout HOLD_TIMEOUT: nothing is retried during the run). QUEUE_EVENTS POSTs of
#     QUEUE_BODY bytes with distinct keys (webhook.lua mode fill), and idemgate's memory
#     (/proc: VmRSS, VmHWM, RssAnon, RssFile, RssShmem) idle before, then at 10%, 50% and 100% of
#     them queued and 5 s after, with idemgate_queue_depth and the database's size.
#
# Env: DURATION (wrk -d per run, default 5s), ROUNDS (3), QUEUE_EVENTS (100000), QUEUE_BODY
#      (10240 bytes), PART (all | acks | queue; default all), DRAIN_TIMEOUT (seconds a drain may
#      take, 120), FILL_TIMEOUT (seconds each fill step may take, 300), HOLD_TIMEOUT (upstream
#      timeout of part 2, 300s), QUICK=1 (DURATION=1s ROUNDS=1 QUEUE_EVENTS=10000),
#      SKIP_BUILD=1, BENCH_DIR, KEEP_DB=1, PORT_BASE (58000: upstream +0, silent app +1,
#      idemgate +81, admin +1091), IDEMGATE_LOG_LEVEL (info), BENCH_IDEMGATE_BIN.
# All traffic stays on 127.0.0.1. Every step is bounded in time; every process started here is
# stopped on exit.
set -Eeuo pipefail
trap 'echo "[async] failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK="${QUICK:-0}"
if [[ "$QUICK" == "1" ]]; then
    DURATION="${DURATION:-1s}"
    ROUNDS="${ROUNDS:-1}"
    QUEUE_EVENTS="${QUEUE_EVENTS:-10000}"
fi
DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-3}"
QUEUE_EVENTS="${QUEUE_EVENTS:-100000}"
QUEUE_BODY="${QUEUE_BODY:-10240}"
PART="${PART:-all}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-120}"
FILL_TIMEOUT="${FILL_TIMEOUT:-300}"
HOLD_TIMEOUT="${HOLD_TIMEOUT:-300s}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP_DB="${KEEP_DB:-0}"
PORT_BASE="${PORT_BASE:-58000}"
LOG_LEVEL="${IDEMGATE_LOG_LEVEL:-info}"
THREADS=2
CONNS=32

IDG_BIN="${BENCH_IDEMGATE_BIN:-$ROOT/target/release/idemgate}"
UP_BIN="$ROOT/target/release/examples/bench_upstream"
LUA="$ROOT/bench/wrk/webhook.lua"

UP_ADDR="127.0.0.1:$PORT_BASE"
SILENT_ADDR="127.0.0.1:$((PORT_BASE + 1))"
IDG_ADDR="127.0.0.1:$((PORT_BASE + 81))"
ADMIN_ADDR="127.0.0.1:$((PORT_BASE + 1091))"

BENCH_TAG=async
# shellcheck source=bench/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$PART" =~ ^(all|acks|queue)$ ]] || die "PART must be all, acks or queue"
[[ "$QUEUE_EVENTS" =~ ^[1-9][0-9]*$ && $((QUEUE_EVENTS % (10 * THREADS))) -eq 0 ]] ||
    die "QUEUE_EVENTS must be a positive multiple of $((10 * THREADS))"
[[ "$QUEUE_BODY" =~ ^[1-9][0-9]*$ ]] || die "QUEUE_BODY must be a positive integer (bytes)"
for n in DRAIN_TIMEOUT FILL_TIMEOUT; do [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "$n must be a number of seconds"; done
DUR_S=$(dur_secs "$DURATION")
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------------- tools, build
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if ((${#need[@]})); then
    as_root=()
    if [[ "$(id -u)" -ne 0 ]]; then as_root=(sudo); fi
    log "installing: ${need[*]}"
    timeout 600 "${as_root[@]}" apt-get update -qq
    timeout 900 "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if [[ "$SKIP_BUILD" != "1" ]]; then
    log "building (release): idemgate + bench_upstream"
    timeout 3600 nice cargo build --release --bin idemgate --example bench_upstream
fi
for b in "$UP_BIN" "$IDG_BIN"; do [[ -x "$b" ]] || die "missing $b (build it, or unset SKIP_BUILD)"; done

# ------------------------------------------------------------------------- work dir, cleanup
WORKDIR="${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/idemgate-async.XXXXXX")}"
mkdir -p "$WORKDIR/wrk" "$WORKDIR/db" "$WORKDIR/config"
RESULTS="$WORKDIR/results.tsv"
MEMORY="$WORKDIR/memory.tsv"
RUN_TAG="a$(date +%s)$$"
PIDS=()
NAMES=()
IDG_PID=""

WORK_DIR_NOTE="results.tsv, memory.tsv, summary.txt, logs, configs"
scratch_cleanup() {
    [[ "$KEEP_DB" == "1" ]] || rm -rf "$WORKDIR/db"
}
cleanup_on_exit

stop_one() { # pid name
    stop_pid "$1" "$2"
    forget_pid "$1"
}

for a in "$UP_ADDR" "$SILENT_ADDR" "$IDG_ADDR" "$ADMIN_ADDR"; do
    if port_in_use "$a"; then die "$a is already in use (a previous run still alive? set PORT_BASE)"; fi
done
clear_idemgate_env

# ------------------------------------------------------------------------- idemgate
# The config sits in a folder of its own (idemgate watches it); database and log elsewhere.
start_idemgate() { # name upstream-fields routes-yaml [server-fields]
    local name=$1 up=$2 routes=$3 server=${4:-} cfg="$WORKDIR/config/$1.yaml"
    cat >"$cfg" <<EOF
# generated by bench/async.sh: the default config (request logs at $LOG_LEVEL, metrics on) but
# for the routes$([[ -z "$server" ]] || echo ", server and upstream timeout")
listen: $IDG_ADDR
log: { format: json, level: $LOG_LEVEL }
admin: { listen: $ADMIN_ADDR }
upstream: { $up }
store: { sqlite: { path: $WORKDIR/db/$name.db } }
$([[ -z "$server" ]] || echo "server: { $server }")
routes:
$routes
EOF
    timeout 30 "$IDG_BIN" check --config "$cfg" >"$WORKDIR/$name.check" 2>&1 || {
        cat "$WORKDIR/$name.check" >&2
        die "idemgate check refused $cfg"
    }
    log "starting idemgate ($name) on $IDG_ADDR"
    start_bg "$name" "$IDG_BIN" serve --config "$cfg"
    IDG_PID=$LAST_PID
    # Ready once both listeners are bound. (Not the proxy's /healthz: it is the app's, and the
    # app of part 2 never answers.)
    wait_http "$name" "$IDG_PID" "http://$ADMIN_ADDR/readyz" 600
}

# The async route's queue from /metrics: "depth acknowledged delivered". depth is the
# idemgate_queue_depth gauge (read from the store about once a second); acknowledged (requests
# with outcome queued) minus delivered (attempts with result ok) is exact at every moment.
queue_numbers() {
    curl -fsS --max-time 2 "http://$ADMIN_ADDR/metrics" 2>/dev/null | awk '
        /route="async"/ && /^idemgate_queue_depth[{ ]/ { d = $NF }
        /route="async"/ && /^idemgate_requests_total[{ ]/ && /outcome="queued"/ { q = $NF }
        /route="async"/ && /^idemgate_delivery_attempts_total[{ ]/ && /result="ok"/ { o = $NF }
        END { printf "%d %d %d\n", d, q, o }' || echo "-1 -1 -1"
}
behind() { # from queue_numbers' output
    local d q o
    read -r d q o <<<"$1"
    echo $((q - o))
}
now_ms() { date +%s%3N; }

# Sends the same key twice; prints ok if the second answer is a replay with the first's status.
sanity() { # path expected-status
    local u="http://$IDG_ADDR$1" s1 h2
    s1=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -X POST "$u" -H 'Content-Type: application/json' \
        -H "Idempotency-Key: sanity-$RUN_TAG" --data '{"id":"evt_sanity"}' || true)
    h2=$(curl -sS -o /dev/null -D - --max-time 5 -X POST "$u" -H 'Content-Type: application/json' \
        -H "Idempotency-Key: sanity-$RUN_TAG" --data '{"id":"evt_sanity"}' | tr -d '\r' || true)
    if [[ "$s1" == "$2" ]] && grep -q "^HTTP/1.1 $2" <<<"$h2" && grep -qi '^idempotent-replayed: *true' <<<"$h2"; then
        echo ok
    else
        echo "FAILED (first $s1, second $(head -n1 <<<"$h2"))"
    fi
}

# ========================================================================= (1) acknowledgements
# phase round route rps p50_us p99_us non2xx errors requests cpu_us_req depth_gauge behind drain_ms cpu_us_event
printf 'round\troute\trps\tp50_us\tp99_us\tnon2xx\terrors\trequests\tcpu_us_req\tdepth_gauge\tbehind\tdrain_ms\tcpu_us_event\n' >"$RESULTS"

# Waits until every acknowledged event is delivered; prints the milliseconds it took, or
# "timeout".
drain() {
    local t0 nums
    t0=$(now_ms)
    while (($(now_ms) - t0 < DRAIN_TIMEOUT * 1000)); do
        nums=$(queue_numbers)
        if [[ "$(behind "$nums")" -le 0 ]]; then
            echo $(($(now_ms) - t0))
            return
        fi
        sleep 0.1
    done
    echo timeout
}

run_acks() { # round route
    local round=$1 route=$2 out="$WORKDIR/wrk/r$1-$2.txt" c0 c1 c2 line nums depth="-" lag="-" ms="-" req cpu_run cpu_all
    c0=$(cpu_ticks "$IDG_PID")
    if ! timeout $((DUR_S + 30)) wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$LUA" "http://$IDG_ADDR" \
        -- new run="$RUN_TAG-r$round-$route" path="/webhooks/$route" check=1 >"$out" 2>&1; then
        log "WARNING: wrk failed against $route, see $out"
    fi
    c1=$(cpu_ticks "$IDG_PID")
    c2=$c1
    if [[ "$route" == async ]]; then
        nums=$(queue_numbers)
        depth=${nums%% *}
        lag=$(behind "$nums")
        ms=$(drain)
        c2=$(cpu_ticks "$IDG_PID")
    fi
    line=$(grep '^RESULT ' "$out" | tail -n 1 || true)
    kill -0 "$IDG_PID" 2>/dev/null || die "idemgate died (log: $WORKDIR/acks.log)"
    if [[ -z "$line" ]]; then
        printf '%s\t%s\tNA\tNA\tNA\tNA\tNA\tNA\tNA\t%s\t%s\t%s\tNA\n' "$round" "$route" "$depth" "$lag" "$ms" >>"$RESULTS"
        log "round $round/$ROUNDS $route: no result (see $out)"
        return
    fi
    req=$(field "$line" requests)
    cpu_run=$(awk -v t=$((c1 - c0)) -v n="$req" -v hz="$HZ" 'BEGIN { printf "%.1f", (n > 0) ? t * 1e6 / hz / n : 0 }')
    cpu_all=$(awk -v t=$((c2 - c0)) -v n="$req" -v hz="$HZ" 'BEGIN { printf "%.1f", (n > 0) ? t * 1e6 / hz / n : 0 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$route" "$(field "$line" rps)" \
        "$(field "$line" p50_us)" "$(field "$line" p99_us)" "$(field "$line" non2xx)" "$(field "$line" errors)" \
        "$req" "$cpu_run" "$depth" "$lag" "$ms" "$cpu_all" >>"$RESULTS"
    log "round $round/$ROUNDS $route: $line cpu_us/req=$cpu_run$([[ $route == sync ]] || echo " queue_depth=$depth behind=$lag drain_ms=$ms cpu_us/event(with drain)=$cpu_all")"
}

ACKS_SANITY="-"
if [[ "$PART" != "queue" ]]; then
    log "starting bench_upstream on $UP_ADDR"
    start_bg upstream "$UP_BIN" "$UP_ADDR"
    UP_PID=$LAST_PID
    wait_http upstream "$UP_PID" "http://$UP_ADDR/healthz"
    start_idemgate acks "url: http://$UP_ADDR" "  - name: async
    match: { path_prefix: /webhooks/async }
    key: { header: Idempotency-Key }
    delivery: { mode: async }
  - name: sync
    match: { path_prefix: /webhooks/sync }
    key: { header: Idempotency-Key }"
    ACKS_SANITY="async $(sanity /webhooks/async 202), sync $(sanity /webhooks/sync 200)"
    log "replay sanity: $ACKS_SANITY"
    [[ "$(drain)" != timeout ]] || die "the sanity event was not delivered in ${DRAIN_TIMEOUT}s"
    log "$((2 * ROUNDS)) runs of $DURATION, each async one followed by its drain"
    for ((round = 1; round <= ROUNDS; round++)); do
        order=(async sync)
        ((round % 2)) || order=(sync async)
        for route in "${order[@]}"; do
            run_acks "$round" "$route"
            # The request log is kept short: its writes are idemgate's cost, its size is not.
            : >"$WORKDIR/acks.log"
            sleep 0.5
        done
    done
    ACKS_RSS="$(proc_kib "$IDG_PID" VmRSS) $(proc_kib "$IDG_PID" VmHWM)"
    ACKS_DB=$(du -cb "$WORKDIR"/db/acks.db* | tail -n 1 | cut -f1)
    stop_one "$IDG_PID" idemgate
    stop_one "$UP_PID" upstream
fi

# ========================================================================= (2) a large queue
# An app that accepts connections, reads and discards what it is sent, and never answers.
SILENT_APP='
import selectors, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, int(port)))
srv.listen(128)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
accepted = 0
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is srv:
            conn, _ = srv.accept()
            sel.register(conn, selectors.EVENT_READ)
            accepted += 1
            print("accepted", accepted, flush=True)
        else:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
'

# memory.tsv: one line per moment.
printf 'moment\tvmrss_kib\tvmhwm_kib\trss_anon_kib\trss_file_kib\trss_shmem_kib\tqueue_depth\tacknowledged\tdb_bytes\twal_bytes\tshm_bytes\tfill_rps\tnon2xx\terrors\n' >"$MEMORY"
file_bytes() { stat -c %s "$1" 2>/dev/null || echo 0; }
memory_line() { # moment [fill result line]
    local depth acked f="$WORKDIR/db/queue.db"
    read -r depth acked _ <<<"$(queue_numbers)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" \
        "$(proc_kib "$IDG_PID" VmRSS)" "$(proc_kib "$IDG_PID" VmHWM)" "$(proc_kib "$IDG_PID" RssAnon)" \
        "$(proc_kib "$IDG_PID" RssFile)" "$(proc_kib "$IDG_PID" RssShmem)" "$depth" "$acked" \
        "$(file_bytes "$f")" "$(file_bytes "$f-wal")" "$(file_bytes "$f-shm")" \
        "$(field "${2:-}" rps)" "$(field "${2:-}" non2xx)" "$(field "${2:-}" errors)" >>"$MEMORY"
    log "memory at $1: $(tail -n 1 "$MEMORY" | tr '\t' ' ')"
}

# Queues `n` more events (n / THREADS per wrk thread); stops wrk once every thread has its
# first-seen answers. Prints wrk's RESULT line.
fill() { # step n
    local step=$1 n=$2 out="$WORKDIR/wrk/fill-$1.txt" done_file="$WORKDIR/wrk/fill-$1.done" pid t0
    : >"$done_file"
    timeout $((FILL_TIMEOUT + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${FILL_TIMEOUT}s" --latency -s "$LUA" \
        "http://$IDG_ADDR" -- fill run="$RUN_TAG-q$step" path=/webhooks/async size="$QUEUE_BODY" \
        count=$((n / THREADS)) done="$done_file" >"$out" 2>&1 &
    pid=$!
    t0=$(now_ms)
    while kill -0 "$pid" 2>/dev/null && [[ "$(wc -l <"$done_file")" -lt "$THREADS" ]]; do
        (($(now_ms) - t0 < FILL_TIMEOUT * 1000)) || break
        sleep 0.1
    done
    [[ "$(wc -l <"$done_file")" -ge "$THREADS" ]] || log "WARNING: fill step $step did not get its $n first-seen answers (see $out)"
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" || log "WARNING: wrk (fill $step) exited with $?, see $out"
    grep '^RESULT ' "$out" | tail -n 1 || true
}

QUEUE_SANITY="-"
if [[ "$PART" != "acks" ]]; then
    log "starting the silent app on $SILENT_ADDR"
    start_bg silent python3 -c "$SILENT_APP" "$SILENT_ADDR"
    SILENT_PID=$LAST_PID
    for ((i = 0; i < 100; i++)); do
        port_in_use "$SILENT_ADDR" && break
        kill -0 "$SILENT_PID" 2>/dev/null || die "the silent app exited (log: $WORKDIR/silent.log)"
        sleep 0.1
    done
    port_in_use "$SILENT_ADDR" || die "the silent app does not listen on $SILENT_ADDR"
    SILENT_PROBES=$(grep -c '^accepted' "$WORKDIR/silent.log" || true)
    HOLD_S=$(dur_secs "$HOLD_TIMEOUT")
    start_idemgate queue "url: http://$SILENT_ADDR, timeout: ${HOLD_S}s" "  - name: async
    match: { path_prefix: /webhooks/async }
    key: { header: Idempotency-Key }
    lease: $((HOLD_S + 60))s
    delivery: { mode: async, queue_limit: $((QUEUE_EVENTS + 1000)) }" "shutdown_grace: 1s"
    sleep 2
    memory_line idle
    # One more event (queued, and held by the app) besides QUEUE_EVENTS.
    QUEUE_SANITY=$(sanity /webhooks/async 202)
    log "replay sanity: $QUEUE_SANITY"
    filled=0
    for pct in 10 50 100; do
        n=$((QUEUE_EVENTS * pct / 100 - filled))
        log "queueing $n events of $QUEUE_BODY bytes (to $pct% of $QUEUE_EVENTS)"
        r=$(fill "$pct" "$n")
        filled=$((filled + n))
        : >"$WORKDIR/queue.log"
        sleep 2 # the queue gauge is read from the store about once a second
        memory_line "$pct%" "$r"
    done
    sleep 5
    memory_line "100%+5s"
    SILENT_ACCEPTED=$(($(grep -c '^accepted' "$WORKDIR/silent.log" || true) - SILENT_PROBES))
    stop_one "$IDG_PID" idemgate
fi

# ========================================================================= report
{
    echo
    echo "== async delivery ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average $LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after)"
    if [[ "$PART" != "queue" ]]; then
        echo "(1) acknowledgements: wrk -t$THREADS -c$CONNS -d$DURATION, every key new, ~1 KiB JSON; $ROUNDS round(s), order alternating"
        echo "replay sanity: $ACKS_SANITY"
        awk -F'\t' -f - "$RESULTS" <<'AWK'
function sortn(a, n,    i, j, t) { for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
function med(s,    a, n) { n = split(s, a, " "); if (n == 0) return -1; sortn(a, n); return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
NR > 1 && $3 != "NA" {
    k = $2; rps[k] = rps[k] " " $3; p50[k] = p50[k] " " $4; p99[k] = p99[k] " " $5; cpu[k] = cpu[k] " " $9
    bad[k] += $6 + $7; R[$1, k] = $3; rounds[$1] = 1
    if (k == "async") {
        dep = dep " " $10; beh = beh " " $11; cpuall = cpuall " " $13
        during = during " " ($8 - $11) / ($8 / $3)
        if ($12 == "timeout") to++; else { dr = dr " " $12; if ($12 > 0) rate = rate " " $11 * 1000 / $12 }
    }
}
END {
    printf "%-6s %10s %8s %8s %11s %7s\n", "route", "rps(med)", "p50(ms)", "p99(ms)", "cpu us/req", "non2xx"
    for (i = 1; i <= 2; i++) {
        k = (i == 1) ? "async" : "sync"
        if (!(k in rps)) { printf "%-6s (no result)\n", k; continue }
        printf "%-6s %10.0f %8.3f %8.3f %11.1f %7d\n", k, med(rps[k]), med(p50[k]) / 1000, med(p99[k]) / 1000, med(cpu[k]), bad[k]
    }
    s = ""; for (r in rounds) if (R[r, "async"] > 0 && R[r, "sync"] > 0) s = s " " R[r, "async"] / R[r, "sync"]
    printf "async/sync rps (median of same-round ratios): %s\n", (s == "") ? "-" : sprintf("%.2fx", med(s))
    printf "async, at the end of each run: idemgate_queue_depth %s (median; the gauge is read from the store about once a second), acknowledged - delivered %s (median; per run:%s)\n", med(dep), med(beh), beh
    printf "async, drain after each run: %s ms (median; per run:%s)%s; idemgate CPU per event, its run and its drain: %.1f us\n", (dr == "") ? "-" : med(dr), dr, to ? sprintf(", %d not drained within the timeout", to) : "", med(cpuall)
    printf "async, deliveries per second (medians): %.0f during the run, %.0f while draining\n", med(during), (rate == "") ? 0 : med(rate)
}
AWK
        awk -v r="${ACKS_RSS% *}" -v h="${ACKS_RSS#* }" -v d="$ACKS_DB" 'BEGIN { printf "idemgate after the runs: RSS %.1f MiB, peak (VmHWM) %.1f MiB; database with its WAL %.1f MiB\n", r / 1024, h / 1024, d / 1048576 }'
    fi
    if [[ "$PART" != "acks" ]]; then
        echo
        echo "(2) $QUEUE_EVENTS events of $QUEUE_BODY bytes queued (wrk -t$THREADS -c$CONNS, mode fill) in front of an app that never answers (idemgate opened $SILENT_ACCEPTED connections to it); upstream timeout $HOLD_TIMEOUT"
        echo "replay sanity: $QUEUE_SANITY"
        awk -F'\t' 'NR == 1 { printf "%-8s %8s %8s %8s %8s %8s %9s %9s %9s %8s\n", "moment", "RSS", "VmHWM", "anon", "file", "shmem", "depth", "db", "wal", "acks/s"; next }
            { printf "%-8s %8.1f %8.1f %8.1f %8.1f %8.1f %9d %9.1f %9.1f %8s\n", $1, $2 / 1024, $3 / 1024, $4 / 1024, $5 / 1024, $6 / 1024, $7, $9 / 1048576, $10 / 1048576, ($12 == "") ? "-" : sprintf("%.0f", $12)
              if ($1 == "idle") idle = $2; if ($1 == "10%") ten = $2; last = $2; lasthwm = $3; if ($13 + $14 > 0) bad += $13 + $14 }
            END { printf "(MiB; depth = idemgate_queue_depth)\nRSS growth: idle -> 100%%+5s %+.1f MiB; 10%% -> 100%%+5s %+.1f MiB; peak %.1f MiB; non-2xx or socket errors while filling: %d\n", (last - idle) / 1024, (last - ten) / 1024, lasthwm / 1024, bad }' "$MEMORY"
    fi
    echo "raw results: $RESULTS $MEMORY"
} | tee "$WORKDIR/summary.txt"
