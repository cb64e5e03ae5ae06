#!/usr/bin/env bash
# idemgate benchmark: idemgate vs nginx proxy_pass in front of the same tiny upstream.
# One command: bench/run.sh   (see bench/README.md for what it measures and how to read it)
#
# Env: DURATION (wrk -d per run, default 5s), ROUNDS (default 3), QUICK=1 (1s, 1 round, 1s probes),
#      PROBE_DURATION (default 3s), CHECK (1: count non-2xx/replays in Lua, default 1),
#      SKIP_BUILD=1, BENCH_DIR (work dir, default a new mktemp dir), KEEP_DB=1,
#      BENCH_IDEMGATE_BIN (default target/release/idemgate),
#      STORE (sqlite | postgres | redis; default sqlite; postgres uses BENCH_POSTGRES_URL, default
#      postgres://postgres@127.0.0.1:5432/test; redis uses BENCH_REDIS_URL, default redis://127.0.0.1:6379/0).
# All traffic stays on 127.0.0.1. Every step is bounded in time; all processes started here are
# stopped on exit.
set -Eeuo pipefail
trap 'echo "[bench] failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK="${QUICK:-0}"
if [[ "$QUICK" == "1" ]]; then
    DURATION="${DURATION:-1s}"
    ROUNDS="${ROUNDS:-1}"
    PROBE_DURATION="${PROBE_DURATION:-1s}"
fi
DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-3}"
PROBE_DURATION="${PROBE_DURATION:-3s}"
CHECK="${CHECK:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP_DB="${KEEP_DB:-0}"
THREADS=2
CONNS=32
MODES=(new dup mix)
TARGETS=(upstream nginx idemgate)

IDG_BIN="${BENCH_IDEMGATE_BIN:-$ROOT/target/release/idemgate}"
UP_BIN="$ROOT/target/release/examples/bench_upstream"
LUA="$ROOT/bench/wrk/webhook.lua"

UP_ADDR=127.0.0.1:18000
NGX_ADDR=127.0.0.1:18080
IDG_ADDR=127.0.0.1:18081
ADMIN_ADDR=127.0.0.1:19091

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

dur_secs() {
    local d=$1 n
    [[ "$d" =~ ^([0-9]+)([smh]?)$ ]] || die "bad duration '$d' (use e.g. 5s, 2m)"
    n=${BASH_REMATCH[1]}
    case "${BASH_REMATCH[2]}" in
        m) n=$((n * 60)) ;;
        h) n=$((n * 3600)) ;;
    esac
    echo "$n"
}

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
DUR_S=$(dur_secs "$DURATION")
PROBE_S=$(dur_secs "$PROBE_DURATION")

# ------------------------------------------------------------------------- tools
as_root=()
if [[ "$(id -u)" -ne 0 ]]; then as_root=(sudo); fi
need=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
    log "installing: ${need[*]}"
    timeout 600 "${as_root[@]}" apt-get update -qq
    timeout 900 "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
NGINX="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"

# ------------------------------------------------------------------------- build
if [[ "$SKIP_BUILD" != "1" ]]; then
    log "building (release): idemgate + bench_upstream"
    timeout 3600 cargo build --release --bin idemgate --example bench_upstream
fi
[[ -x "$UP_BIN" ]] || die "missing $UP_BIN"
[[ -x "$IDG_BIN" ]] || die "missing $IDG_BIN"

# ------------------------------------------------------------------------- work dir, cleanup
WORKDIR="${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/idemgate-bench.XXXXXX")}"
mkdir -p "$WORKDIR"
chmod 755 "$WORKDIR" # nginx workers may run as another user
RESULTS="$WORKDIR/results.tsv"
mkdir -p "$WORKDIR/wrk"
RUN_TAG="b$(date +%s)$$"
HOT="hot-$RUN_TAG"

PIDS=()
NAMES=()
UP_PID=""
NGX_PID=""
IDG_PID=""

stop_pid() { # pid name
    local pid=$1 name=$2 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) did not stop in 10s; killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}" "${NAMES[$i]}"
    done
    if [[ "$KEEP_DB" != "1" ]]; then
        rm -f "$WORKDIR"/idemgate.db "$WORKDIR"/idemgate.db-*
    fi
    log "work dir (results.tsv, logs, configs): $WORKDIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

for a in "$UP_ADDR" "$NGX_ADDR" "$IDG_ADDR" "$ADMIN_ADDR"; do
    if port_in_use "$a"; then die "$a is already in use (a previous run still alive?)"; fi
done

start_bg() { # name cmd... ; sets LAST_PID
    local name=$1
    shift
    "$@" >"$WORKDIR/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    NAMES+=("$name")
}

wait_http() { # name pid url
    local name=$1 pid=$2 url=$3 i
    for ((i = 0; i < 150; i++)); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$WORKDIR/$name.log" >&2 || true
            die "$name exited during startup (log: $WORKDIR/$name.log)"
        fi
        sleep 0.1
    done
    tail -n 20 "$WORKDIR/$name.log" >&2 || true
    die "$name did not answer $url in time"
}

rss_kib() { # pid field
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# ------------------------------------------------------------------------- upstream
log "starting bench_upstream on $UP_ADDR"
start_bg upstream "$UP_BIN" "$UP_ADDR"
UP_PID=$LAST_PID
wait_http upstream "$UP_PID" "http://$UP_ADDR/healthz"

# ------------------------------------------------------------------------- nginx
NGX_DIR="$WORKDIR/nginx"
mkdir -p "$NGX_DIR/tmp"
chmod 755 "$NGX_DIR" "$NGX_DIR/tmp"
cat >"$NGX_DIR/nginx.conf" <<EOF
# generated by bench/run.sh
worker_processes auto;
daemon off;
pid $NGX_DIR/nginx.pid;
error_log $NGX_DIR/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $NGX_DIR/tmp/client_body;
    proxy_temp_path $NGX_DIR/tmp/proxy;
    fastcgi_temp_path $NGX_DIR/tmp/fastcgi;
    uwsgi_temp_path $NGX_DIR/tmp/uwsgi;
    scgi_temp_path $NGX_DIR/tmp/scgi;
    upstream app {
        server $UP_ADDR;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen $NGX_ADDR;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
"$NGINX" -t -q -p "$NGX_DIR" -c "$NGX_DIR/nginx.conf" -e "$NGX_DIR/error.log" ||
    die "nginx config test failed (see $NGX_DIR/error.log)"
log "starting nginx on $NGX_ADDR"
start_bg nginx "$NGINX" -p "$NGX_DIR" -c "$NGX_DIR/nginx.conf" -e "$NGX_DIR/error.log"
NGX_PID=$LAST_PID
wait_http nginx "$NGX_PID" "http://$NGX_ADDR/healthz"

# ------------------------------------------------------------------------- idemgate
IDG_CFG="$WORKDIR/idemgate.yaml"
case "${STORE:-sqlite}" in
  sqlite) STORE_YAML="store: { sqlite: { path: $WORKDIR/idemgate.db } }" ;;
  postgres) STORE_YAML="store: { postgres: { url: \"${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}\" } }" ;;
  redis) STORE_YAML="store: { redis: { url: \"${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}\", key_prefix: \"bench-$(date +%s):\" } }" ;;
  *) die "STORE must be sqlite, postgres or redis, not ${STORE}" ;;
esac
cat >"$IDG_CFG" <<EOF
# generated by bench/run.sh
listen: $IDG_ADDR
log: { format: json, level: warn }
admin: { listen: $ADMIN_ADDR }
upstream: { url: http://$UP_ADDR }
$STORE_YAML
routes:
  - name: bench
    match: { path_prefix: /webhooks/ }
    key: { header: Idempotency-Key }
EOF
# The config file alone decides: no IDEMGATE_* overrides or RUST_LOG from the caller.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^IDEMGATE_' || true)
unset RUST_LOG
log "starting idemgate on $IDG_ADDR (admin $ADMIN_ADDR)"
start_bg idemgate "$IDG_BIN" serve --config "$IDG_CFG"
IDG_PID=$LAST_PID
wait_http idemgate "$IDG_PID" "http://$ADMIN_ADDR/healthz"
wait_http idemgate "$IDG_PID" "http://$IDG_ADDR/healthz" # unrouted path: passthrough
sleep 0.5
IDLE_RSS_KIB=$(rss_kib "$IDG_PID" VmRSS)

# Sanity: the second delivery of a key must be a replay, or the dup numbers mean nothing.
sanity() {
    local h
    h=$(curl -sS -o /dev/null -D - --max-time 5 -X POST "http://$IDG_ADDR/webhooks/bench" \
        -H 'Content-Type: application/json' -H "Idempotency-Key: sanity-$RUN_TAG" \
        --data '{"id":"evt_sanity","type":"invoice.paid"}' | tr -d '\r')
    printf '%s\n' "$h"
}
S1=$(sanity || true)
S2=$(sanity || true)
SANITY="ok"
if ! grep -q '^HTTP/1.1 200' <<<"$S1"; then
    SANITY="first delivery not 200: $(head -n1 <<<"$S1")"
elif ! grep -qi '^idempotent-replayed: *true' <<<"$S2"; then
    SANITY="second delivery not replayed: $(head -n1 <<<"$S2")"
fi
[[ "$SANITY" == "ok" ]] || log "WARNING: replay sanity check failed: $SANITY"

# ------------------------------------------------------------------------- wrk helpers
url_of() {
    case "$1" in
        upstream) echo "http://$UP_ADDR" ;;
        nginx) echo "http://$NGX_ADDR" ;;
        idemgate) echo "http://$IDG_ADDR" ;;
    esac
}

alive_check() {
    kill -0 "$UP_PID" 2>/dev/null || die "bench_upstream died (log: $WORKDIR/upstream.log)"
    kill -0 "$NGX_PID" 2>/dev/null || die "nginx died (log: $NGX_DIR/error.log)"
    kill -0 "$IDG_PID" 2>/dev/null || die "idemgate died (log: $WORKDIR/idemgate.log)"
}

field() { sed -n "s/^RESULT.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# run_wrk OUTFILE TARGET MODE THREADS CONNS DURATION RUN_ID; prints the RESULT line (or nothing)
run_wrk() {
    local out=$1 target=$2 mode=$3 t=$4 c=$5 d=$6 run_id=$7 secs
    secs=$(dur_secs "$d")
    if ! timeout $((secs + 30)) wrk -t"$t" -c"$c" -d"$d" --latency -s "$LUA" "$(url_of "$target")" \
        -- "$mode" run="$run_id" hot="$HOT" check="$CHECK" >"$out" 2>&1; then
        log "WARNING: wrk failed against $target ($mode), see $out"
    fi
    grep '^RESULT ' "$out" | tail -n 1 || true
}

printf 'round\tmode\ttarget\trps\tp50_us\tp99_us\tnon2xx\terrors\trequests\treplayed\tidemgate_rss_kib\n' >"$RESULTS"

record() { # round mode target result-line; also notes idemgate's RSS after the run
    local r=$4 rss
    rss=$(rss_kib "$IDG_PID" VmRSS)
    if [[ -z "$r" ]]; then
        printf '%s\t%s\t%s\tNA\tNA\tNA\tNA\tNA\tNA\tNA\t%s\n' "$1" "$2" "$3" "$rss" >>"$RESULTS"
        return
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" \
        "$(field "$r" rps)" "$(field "$r" p50_us)" "$(field "$r" p99_us)" "$(field "$r" non2xx)" \
        "$(field "$r" errors)" "$(field "$r" requests)" "$(field "$r" replayed)" "$rss" >>"$RESULTS"
}

# Warm the hot keys: one request each over one connection (wrk stops itself after 100 answers;
# repeated if the time ran out first, which only replays what was already stored).
warm() {
    local target=$1 i r n
    for ((i = 1; i <= 5; i++)); do
        r=$(run_wrk "$WORKDIR/wrk/warm-$target-$i.txt" "$target" warm 1 1 2s "warm")
        n=$(field "$r" requests)
        if [[ -n "$n" && "$n" -ge 100 ]]; then
            [[ "$(field "$r" non2xx)" == "0" ]] || log "WARNING: warm-up of $target: $r"
            return 0
        fi
    done
    log "WARNING: warm-up of $target did not complete 100 requests"
}

NRUNS=$((ROUNDS * ${#MODES[@]} * ${#TARGETS[@]}))
log "work dir $WORKDIR; $NRUNS runs of $DURATION + probes, about $(((NRUNS * (DUR_S + 1) + 4 * (PROBE_S + 1) + 10) / 60 + 1)) min"

for target in "${TARGETS[@]}"; do warm "$target"; done
alive_check

# ------------------------------------------------------------------------- throughput rounds
for ((round = 1; round <= ROUNDS; round++)); do
    for mode in "${MODES[@]}"; do
        for target in "${TARGETS[@]}"; do
            r=$(run_wrk "$WORKDIR/wrk/r$round-$mode-$target.txt" "$target" "$mode" "$THREADS" "$CONNS" \
                "$DURATION" "$RUN_TAG-r$round-$mode-$target")
            record "$round" "$mode" "$target" "$r"
            log "round $round/$ROUNDS $mode $target: ${r:-no result} idemgate_rss=$(($(rss_kib "$IDG_PID" VmRSS) / 1024))MiB"
            alive_check
            sleep 0.5
        done
    done
done

# ------------------------------------------------------------------------- latency probe (1 conn)
PROBES=("upstream new" "nginx new" "idemgate dup" "idemgate new")
for p in "${PROBES[@]}"; do
    read -r target mode <<<"$p"
    r=$(run_wrk "$WORKDIR/wrk/probe-$mode-$target.txt" "$target" "$mode" 1 1 "$PROBE_DURATION" \
        "$RUN_TAG-probe-$mode-$target")
    record probe "$mode" "$target" "$r"
    log "probe 1 conn $mode $target: ${r:-no result}"
    alive_check
    sleep 0.3
done

PEAK_RSS_KIB=$(rss_kib "$IDG_PID" VmHWM)
END_RSS_KIB=$(rss_kib "$IDG_PID" VmRSS)
DB_KIB=$( (du -sk "$WORKDIR"/idemgate.db* 2>/dev/null || true) | awk '{s += $1} END {print s + 0}')

# ------------------------------------------------------------------------- report
WRK_VER=$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print $1, $2}')
NGX_VER=$( ("$NGINX" -v 2>&1 || true) | sed 's/.*: //')
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
{
    echo
    echo "== idemgate vs nginx proxy_pass ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load $LOADAVG, $WRK_VER, $NGX_VER)"
    echo "throughput: wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS round(s), ~1 KiB JSON POST /webhooks/bench"
    echo "replay sanity check: $SANITY"
    echo
    awk -F'\t' '
    function sortn(a, n,    i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    }
    function med(s,    a, n) {
        n = split(s, a, " "); if (n == 0) return -1; sortn(a, n)
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function mn(s,    a, n) { n = split(s, a, " "); sortn(a, n); return a[1] }
    function mx(s,    a, n) { n = split(s, a, " "); sortn(a, n); return a[n] }
    NR == 1 || $1 == "probe" { next }
    {
        k = $2 SUBSEP $3
        if ($4 == "NA") { failed[k]++; next }
        rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6
        non2xx[k] += $7; errs[k] += $8; reqs[k] += $9
        if ($10 >= 0) { repl[k] += $10; rreq[k] += $9 } else { norepl[k] = 1 }
        n[k]++
    }
    END {
        split("new dup mix", modes, " "); split("upstream nginx idemgate", targets, " ")
        goal["new"] = 0.6; goal["dup"] = 1.5; goal["mix"] = 1.2
        want["new"] = 0; want["dup"] = 99; want["mix"] = 85
        printf "%-4s %-9s %4s %10s %19s %8s %8s %7s %6s %8s %9s %9s  %s\n", "mode", "target", "runs", "rps(med)", "rps(min-max)", "p50(ms)", "p99(ms)", "non2xx", "errors", "replay%", "rps/nginx", "p99/nginx", "goal"
        for (mi = 1; mi <= 3; mi++) {
            m = modes[mi]
            for (ti = 1; ti <= 3; ti++) {
                t = targets[ti]; k = m SUBSEP t
                if (!(k in n)) { printf "%-4s %-9s %4s  (no result%s)\n", m, t, 0, (k in failed) ? ", " failed[k] " failed" : ""; continue }
                R[t] = med(rps[k]); P99[t] = med(p99[k])
                rp = (k in norepl || rreq[k] == 0) ? "-" : sprintf("%.1f", 100 * repl[k] / rreq[k])
                ratio = "-"; pr = "-"; verdict = ""
                if (t == "idemgate" && ((m SUBSEP "nginx") in n) && R["nginx"] > 0) {
                    q = R[t] / R["nginx"]; pq = P99["nginx"] > 0 ? P99[t] / P99["nginx"] : 0
                    ratio = sprintf("%.2fx", q); pr = sprintf("%.2fx", pq)
                    ok = (q >= goal[m]); cond = sprintf(">=%.1fx", goal[m])
                    if (m == "dup") { ok = ok && (P99[t] <= P99["nginx"]); cond = cond " & p99<=nginx" }
                    if (non2xx[k] > 0 || errs[k] > 0) { ok = 0; cond = cond " & no errors" }
                    verdict = cond ": " (ok ? "PASS" : "FAIL")
                    # dup should be ~100% replays, mix ~90%: otherwise the run measured something else
                    if (rp != "-" && rp + 0 < want[m]) verdict = verdict " (INVALID: replay% " rp " < " want[m] ")"
                }
                printf "%-4s %-9s %4d %10.0f %19s %8.3f %8.3f %7d %6d %8s %9s %9s  %s\n", m, t, n[k], R[t], sprintf("%.0f-%.0f", mn(rps[k]), mx(rps[k])), med(p50[k]) / 1000, P99[t] / 1000, non2xx[k], errs[k], rp, ratio, pr, verdict
            }
        }
    }' "$RESULTS"

    echo
    echo "latency at 1 connection: wrk -t1 -c1 -d$PROBE_DURATION (added = p50 - upstream direct p50)"
    awk -F'\t' '
    $1 == "probe" && $4 != "NA" { p50[$2 " " $3] = $5; p99[$2 " " $3] = $6; nx[$2 " " $3] = $7 + $8; rr[$2 " " $3] = $10; rq[$2 " " $3] = $9 }
    END {
        base = p50["new upstream"]
        printf "%-28s %8s %8s %13s %8s  %s\n", "path", "p50(ms)", "p99(ms)", "added p50(ms)", "replay%", "goal"
        row("upstream direct", "new upstream", "")
        row("nginx proxy_pass", "new nginx", "")
        row("idemgate replay (dup)", "dup idemgate", 0.1)
        row("idemgate first-seen (new)", "new idemgate", 0.5)
    }
    function row(label, k, g,    add, v, rp) {
        if (!(k in p50)) { printf "%-28s  (no result)\n", label; return }
        add = (base != "") ? sprintf("%+.3f", (p50[k] - base) / 1000) : "-"
        v = ""
        if (g != "" && base != "") v = sprintf("< %.1f ms: %s", g, ((p50[k] - base) / 1000 < g && nx[k] == 0) ? "PASS" : "FAIL")
        rp = (rr[k] >= 0 && rq[k] > 0) ? sprintf("%.1f", 100 * rr[k] / rq[k]) : "-"
        printf "%-28s %8.3f %8.3f %13s %8s  %s\n", label, p50[k] / 1000, p99[k] / 1000, (k == "new upstream") ? "-" : add, rp, v
    }' "$RESULTS"

    echo
    awk -v idle="$IDLE_RSS_KIB" -v peak="$PEAK_RSS_KIB" -v endr="$END_RSS_KIB" -v db="$DB_KIB" 'BEGIN {
        printf "idemgate memory: idle RSS after startup %.1f MiB (goal < 64 MiB: %s); peak RSS (VmHWM) %.1f MiB; RSS at end %.1f MiB; SQLite files %.1f MiB\n",
            idle / 1024, (idle > 0 && idle < 65536) ? "PASS" : "FAIL", peak / 1024, endr / 1024, db / 1024
    }'
    echo "raw results: $RESULTS"
} | tee "$WORKDIR/summary.txt"
