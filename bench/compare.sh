#!/usr/bin/env bash
# idemgate vs the ceiling (bench/ceiling: the leanest program doing the same durable work) vs nginx
# proxy_pass, in the same interleaved rounds. One command: bench/compare.sh   (see bench/README.md)
#
# Prints, per mode (new, dup, mix), the medians of same-round ratios idemgate/ceiling,
# ceiling/nginx and idemgate/nginx, with rps, p50/p99 and CPU per request; a one-connection
# latency probe (added p50 over nginx); idle RSS. LARGE=1 adds the stored-keys variant: both
# stores prefilled with N_SMALL (10k) and N_LARGE (1M) completed keys, then first-seen rate and
# uniform replays over all stored keys, at each size.
#
# Env: DURATION (wrk -d per run, default 5s), ROUNDS (default 3), PROBE_DURATION (default 3s),
#      QUICK=1 (1s runs, 1 round, 1s probes, N_LARGE=100000), LARGE=1 (the stored-keys variant;
#      LARGE=only: that variant alone), N_SMALL (10000), N_LARGE (1000000), LARGE_ROUNDS (default
#      ROUNDS), SKIP_BUILD=1, BENCH_DIR, KEEP_DB=1, PORT_BASE (default 38000: upstream +0,
#      nginx +80, idemgate +81, ceiling +82, admin +1091), IDEMGATE_LOG_LEVEL (default info, the
#      default config: one request log line per request, to a file).
# All traffic stays on 127.0.0.1. Every step is bounded in time; every process started here is
# stopped on exit.
set -Eeuo pipefail
trap 'echo "[compare] failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK="${QUICK:-0}"
if [[ "$QUICK" == "1" ]]; then
    DURATION="${DURATION:-1s}"
    ROUNDS="${ROUNDS:-1}"
    PROBE_DURATION="${PROBE_DURATION:-1s}"
    N_LARGE="${N_LARGE:-100000}"
fi
DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-3}"
PROBE_DURATION="${PROBE_DURATION:-3s}"
LARGE="${LARGE:-0}"
N_SMALL="${N_SMALL:-10000}"
N_LARGE="${N_LARGE:-1000000}"
LARGE_ROUNDS="${LARGE_ROUNDS:-$ROUNDS}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP_DB="${KEEP_DB:-0}"
PORT_BASE="${PORT_BASE:-38000}"
LOG_LEVEL="${IDEMGATE_LOG_LEVEL:-info}"
THREADS=2
CONNS=32
MODES=(new dup mix)
TARGETS=(nginx ceiling idemgate)
TTL_MS=$((7 * 24 * 3600 * 1000))

IDG_BIN="${BENCH_IDEMGATE_BIN:-$ROOT/target/release/idemgate}"
UP_BIN="$ROOT/target/release/examples/bench_upstream"
CEIL_BIN="$ROOT/bench/ceiling/target/release/idemgate-ceiling"
LUA="$ROOT/bench/wrk/webhook.lua"
SCALE_LUA="$ROOT/bench/scale/scale.lua"

UP_ADDR="127.0.0.1:$PORT_BASE"
NGX_ADDR="127.0.0.1:$((PORT_BASE + 80))"
IDG_ADDR="127.0.0.1:$((PORT_BASE + 81))"
CEIL_ADDR="127.0.0.1:$((PORT_BASE + 82))"
ADMIN_ADDR="127.0.0.1:$((PORT_BASE + 1091))"

BENCH_TAG=compare
# shellcheck source=bench/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$LARGE_ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "LARGE_ROUNDS must be a positive integer"
[[ "$LARGE" =~ ^(0|1|only)$ ]] || die "LARGE must be 0, 1 or only"
DUR_S=$(dur_secs "$DURATION")
PROBE_S=$(dur_secs "$PROBE_DURATION")

# ------------------------------------------------------------------------- tools, build
as_root=()
if [[ "$(id -u)" -ne 0 ]]; then as_root=(sudo); fi
need=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
if ((${#need[@]})); then
    log "installing: ${need[*]}"
    timeout 600 "${as_root[@]}" apt-get update -qq
    timeout 900 "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
NGINX="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"

if [[ "$SKIP_BUILD" != "1" ]]; then
    log "building (release): idemgate + bench_upstream, then bench/ceiling"
    timeout 3600 nice cargo build --release --bin idemgate --example bench_upstream
    (cd bench/ceiling && timeout 3600 nice cargo build --release)
fi
for b in "$UP_BIN" "$IDG_BIN" "$CEIL_BIN"; do [[ -x "$b" ]] || die "missing $b (build it, or unset SKIP_BUILD)"; done

# ------------------------------------------------------------------------- work dir, cleanup
WORKDIR="${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/idemgate-compare.XXXXXX")}"
mkdir -p "$WORKDIR/wrk" "$WORKDIR/db" "$WORKDIR/config"
chmod 755 "$WORKDIR"
RESULTS="$WORKDIR/results.tsv"
RUN_TAG="c$(date +%s)$$"
HOT="hot-$RUN_TAG"
PIDS=()
NAMES=()
UP_PID="" NGX_PID="" IDG_PID="" CEIL_PID=""

WORK_DIR_NOTE="results.tsv, summary.txt, logs, configs"
scratch_cleanup() {
    [[ "$KEEP_DB" == "1" ]] || rm -rf "$WORKDIR/db"
}
cleanup_on_exit


for a in "$UP_ADDR" "$NGX_ADDR" "$IDG_ADDR" "$CEIL_ADDR" "$ADMIN_ADDR"; do
    if port_in_use "$a"; then die "$a is already in use (a previous run still alive? set PORT_BASE)"; fi
done

# ------------------------------------------------------------------------- processes
log "starting bench_upstream on $UP_ADDR"
start_bg upstream "$UP_BIN" "$UP_ADDR"
UP_PID=$LAST_PID
wait_http upstream "$UP_PID" "http://$UP_ADDR/healthz"


# idemgate's config sits in a folder of its own: its config watcher watches that folder, and the
# database and the request log (info: one line per request) are written elsewhere.
clear_idemgate_env
start_idemgate() { # name db
    local name=$1 db=$2 cfg="$WORKDIR/config/$1.yaml"
    cat >"$cfg" <<EOF
# generated by bench/compare.sh: the default config (request logs at $LOG_LEVEL, metrics on)
listen: $IDG_ADDR
log: { format: json, level: $LOG_LEVEL }
admin: { listen: $ADMIN_ADDR }
upstream: { url: http://$UP_ADDR }
store: { sqlite: { path: $db } }
routes:
  - name: bench
    match: { path_prefix: /webhooks/ }
    key: { header: Idempotency-Key }
EOF
    log "starting idemgate ($name) on $IDG_ADDR, db $db"
    start_bg "$name" "$IDG_BIN" serve --config "$cfg"
    IDG_PID=$LAST_PID
    wait_http "$name" "$IDG_PID" "http://$ADMIN_ADDR/readyz" 600
    wait_http "$name" "$IDG_PID" "http://$IDG_ADDR/healthz"
}
start_ceiling() { # name db
    log "starting the ceiling ($1) on $CEIL_ADDR, db $2"
    start_bg "$1" "$CEIL_BIN" "$CEIL_ADDR" "$UP_ADDR" "$2"
    CEIL_PID=$LAST_PID
    wait_http "$1" "$CEIL_PID" "http://$CEIL_ADDR/healthz" 600
}
stop_one() { # pid name
    stop_pid "$1" "$2"
    forget_pid "$1"
}

url_of() {
    case "$1" in
        upstream) echo "http://$UP_ADDR" ;;
        nginx) echo "http://$NGX_ADDR" ;;
        idemgate) echo "http://$IDG_ADDR" ;;
        ceiling) echo "http://$CEIL_ADDR" ;;
    esac
}
pid_of() {
    case "$1" in
        upstream) echo "$UP_PID" ;;
        nginx) echo "$NGX_PID" ;;
        idemgate) echo "$IDG_PID" ;;
        ceiling) echo "$CEIL_PID" ;;
    esac
}
alive_check() {
    local t p
    for t in "$@"; do
        p=$(pid_of "$t")
        kill -0 "$p" 2>/dev/null || die "$t died (logs in $WORKDIR)"
    done
}

# run_wrk OUT TARGET LUA T C D ARGS... -> prints "RESULT ... cpu_ticks=N"
run_wrk() {
    local out=$1 target=$2 lua=$3 t=$4 c=$5 d=$6 secs pid c0 c1 line
    shift 6
    secs=$(dur_secs "$d")
    pid=$(pid_of "$target")
    c0=$(cpu_ticks "$pid")
    if ! timeout $((secs + 30)) wrk -t"$t" -c"$c" -d"$d" --latency -s "$lua" "$(url_of "$target")" -- "$@" >"$out" 2>&1; then
        log "WARNING: wrk failed against $target, see $out"
    fi
    c1=$(cpu_ticks "$pid")
    line=$(grep '^RESULT ' "$out" | tail -n 1 || true)
    [[ -z "$line" ]] || echo "$line cpu_ticks=$((c1 - c0))"
}

printf 'phase\tround\tmode\ttarget\trps\tp50_us\tp99_us\tnon2xx\terrors\trequests\treplayed\tcpu_us_per_req\n' >"$RESULTS"
record() { # phase round mode target result-line
    local r=$5
    if [[ -z "$r" ]]; then
        printf '%s\t%s\t%s\t%s\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
        return
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" \
        "$(field "$r" rps)" "$(field "$r" p50_us)" "$(field "$r" p99_us)" "$(field "$r" non2xx)" \
        "$(field "$r" errors)" "$(field "$r" requests)" "$(field "$r" replayed)" \
        "$(per_req "$(field "$r" cpu_ticks)" "$(field "$r" requests)")" >>"$RESULTS"
}

# The second delivery of a key must be a replay, or the dup numbers mean nothing.
sanity() { # target
    local h u
    u="$(url_of "$1")/webhooks/bench"
    for i in 1 2; do
        h=$(curl -sS -o /dev/null -D - --max-time 5 -X POST "$u" -H 'Content-Type: application/json' \
            -H "Idempotency-Key: sanity-$RUN_TAG" --data '{"id":"evt_sanity"}' | tr -d '\r' || true)
    done
    if grep -qi '^idempotent-replayed: *true' <<<"$h"; then echo ok; else echo "FAILED: $(head -n1 <<<"$h")"; fi
}

# ========================================================================= main comparison
declare -A SANITY IDLE_RSS
if [[ "$LARGE" != "only" ]]; then
    start_nginx "$WORKDIR/nginx" "$UP_ADDR" "$NGX_ADDR"
    start_idemgate idemgate "$WORKDIR/db/idemgate.db"
    start_ceiling ceiling "$WORKDIR/db/ceiling.db"
    sleep 1
    IDLE_RSS[idemgate]=$(proc_kib "$IDG_PID" VmRSS)
    IDLE_RSS[ceiling]=$(proc_kib "$CEIL_PID" VmRSS)
    for t in idemgate ceiling; do
        SANITY[$t]=$(sanity "$t")
        [[ "${SANITY[$t]}" == ok ]] || log "WARNING: $t replay sanity check: ${SANITY[$t]}"
    done

    NRUNS=$((ROUNDS * ${#MODES[@]} * ${#TARGETS[@]}))
    log "$NRUNS runs of $DURATION + 6 probes of $PROBE_DURATION: about $(((NRUNS * (DUR_S + 1) + 6 * (PROBE_S + 1) + 20) / 60 + 1)) min"
    for t in "${TARGETS[@]}"; do
        r=$(run_wrk "$WORKDIR/wrk/warm-$t.txt" "$t" "$LUA" 1 1 5s warm run=warm hot="$HOT" check=1)
        [[ "$(field "$r" requests)" -ge 100 ]] 2>/dev/null || log "WARNING: warm-up of $t: ${r:-no result}"
    done
    alive_check upstream nginx idemgate ceiling

    for ((round = 1; round <= ROUNDS; round++)); do
        # Odd rounds run nginx, the ceiling, idemgate; even rounds the reverse: whoever runs
        # second in a disk-bound mode ran into the first one's writes still going to disk.
        order=("${TARGETS[@]}")
        if ((round % 2 == 0)); then mapfile -t order < <(printf '%s\n' "${TARGETS[@]}" | tac); fi
        for mode in "${MODES[@]}"; do
            for t in "${order[@]}"; do
                # Each target starts with no one's writes pending: the ceiling's last 5 s of
                # first-seen keys (their checkpoint, the file's writeback) otherwise took the
                # disk from under idemgate's syncs, which ran right after it.
                sync
                r=$(run_wrk "$WORKDIR/wrk/r$round-$mode-$t.txt" "$t" "$LUA" "$THREADS" "$CONNS" "$DURATION" \
                    "$mode" run="$RUN_TAG-r$round-$mode-$t" hot="$HOT" check=1)
                record main "$round" "$mode" "$t" "$r"
                log "round $round/$ROUNDS $mode $t: ${r:-no result}"
                alive_check upstream nginx idemgate ceiling
                # The request log is kept short: its writes are idemgate's cost, its size is not.
                : >"$WORKDIR/idemgate.log"
                sleep 0.5
            done
        done
    done

    for p in "upstream new" "nginx new" "ceiling dup" "idemgate dup" "ceiling new" "idemgate new"; do
        read -r t mode <<<"$p"
        r=$(run_wrk "$WORKDIR/wrk/probe-$mode-$t.txt" "$t" "$LUA" 1 1 "$PROBE_DURATION" \
            "$mode" run="$RUN_TAG-probe-$mode-$t" hot="$HOT" check=1)
        record probe 0 "$mode" "$t" "$r"
        log "probe 1 conn $mode $t: ${r:-no result}"
        sleep 0.3
    done
    PEAK_RSS_IDG=$(proc_kib "$IDG_PID" VmHWM)
    PEAK_RSS_CEIL=$(proc_kib "$CEIL_PID" VmHWM)
    stop_one "$IDG_PID" idemgate
    stop_one "$CEIL_PID" ceiling
    stop_one "$NGX_PID" nginx
fi

# ========================================================================= stored keys (LARGE=1)
# Databases as bench/scale/run.sh builds them: idemgate creates the schema (started once on the
# empty file), sqlite3 inserts N completed rows in one transaction; the ceiling gets a copy (its
# schema is the same, version 2).
make_db() { # path n
    local db=$1 n=$2 now
    now=$(date +%s%3N)
    rm -f "$db" "$db-wal" "$db-shm"
    start_idemgate "schema" "$db"
    stop_one "$IDG_PID" idemgate
    timeout 900 sqlite3 -batch -bail "$db" >/dev/null <<EOF
PRAGMA synchronous=OFF;
BEGIN;
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < $n)
INSERT INTO records (route, scope, key, state, token, fingerprint, created_ms, expires_ms,
                     status, headers, body, body_omitted)
SELECT 'bench', '', 'fill-' || i, 1, i, NULL, $now, $((now + TTL_MS)), 200,
       CAST('content-type:application/json' || char(10) AS BLOB),
       CAST(printf('{"ok":true,"id":"evt_fill_%07d","type":"invoice.paid","padding":"%s"}',
                   i, 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') AS BLOB),
       0
FROM seq;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
EOF
    [[ "$(sqlite3 -batch "$db" "SELECT count(*) FROM records WHERE key LIKE 'fill-%'")" == "$n" ]] || die "$db: row count is not $n"
}

if [[ "$LARGE" != "0" ]]; then
    for size in small large; do
        n=$([[ $size == small ]] && echo "$N_SMALL" || echo "$N_LARGE")
        log "stored keys: building $n rows"
        make_db "$WORKDIR/db/idemgate-$size.db" "$n"
        cp "$WORKDIR/db/idemgate-$size.db" "$WORKDIR/db/ceiling-$size.db"
        start_idemgate "idemgate-$size" "$WORKDIR/db/idemgate-$size.db"
        start_ceiling "ceiling-$size" "$WORKDIR/db/ceiling-$size.db"
        for ((round = 1; round <= LARGE_ROUNDS; round++)); do
            for mode in replay new; do
                for t in ceiling idemgate; do
                    r=$(run_wrk "$WORKDIR/wrk/$size-r$round-$mode-$t.txt" "$t" "$SCALE_LUA" "$THREADS" "$CONNS" \
                        "$DURATION" "$mode" n="$n" run="$RUN_TAG-$size-r$round-$t")
                    record "$size" "$round" "$mode" "$t" "$r"
                    log "$size ($n keys) round $round/$LARGE_ROUNDS $mode $t: ${r:-no result}"
                    alive_check upstream idemgate ceiling
                    : >"$WORKDIR/idemgate-$size.log"
                    sleep 0.5
                done
            done
        done
        stop_one "$IDG_PID" idemgate
        stop_one "$CEIL_PID" ceiling
        [[ "$KEEP_DB" == "1" ]] || rm -f "$WORKDIR"/db/*-"$size".db*
    done
fi

# ========================================================================= report
{
    echo
    echo "== idemgate vs ceiling vs nginx proxy_pass ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
    echo "wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS round(s), ~1 KiB JSON POST /webhooks/bench; idemgate log level $LOG_LEVEL, metrics on"
    if [[ "$LARGE" != "only" ]]; then
        echo "replay sanity: idemgate ${SANITY[idemgate]}, ceiling ${SANITY[ceiling]}"
        echo
        awk -F'\t' -f - "$RESULTS" <<'AWK'
function sortn(a, n,    i, j, t) { for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
function med(s,    a, n) { n = split(s, a, " "); if (n == 0) return -1; sortn(a, n); return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
$1 == "main" && $5 != "NA" {
    k = $3 SUBSEP $4; rps[k] = rps[k] " " $5; p50[k] = p50[k] " " $6; p99[k] = p99[k] " " $7; cpu[k] = cpu[k] " " $12
    bad[k] += $8 + $9; req[k] += $10; rep[k] += $11; R[$2, $3, $4] = $5; rounds[$2] = 1
}
$1 == "probe" && $5 != "NA" { pp50[$3 " " $4] = $6; pp99[$3 " " $4] = $7 }
function ratio(m, a, b,    r, s) { s = ""; for (r in rounds) if (R[r, m, a] > 0 && R[r, m, b] > 0) s = s " " R[r, m, a] / R[r, m, b]; return s == "" ? "-" : sprintf("%.2fx", med(s)) }
END {
    split("new dup mix", modes, " "); split("nginx ceiling idemgate", targets, " ")
    printf "%-4s %-9s %10s %8s %8s %11s %7s %8s\n", "mode", "target", "rps(med)", "p50(ms)", "p99(ms)", "cpu us/req", "non2xx", "replay%"
    for (mi = 1; mi <= 3; mi++) for (ti = 1; ti <= 3; ti++) {
        m = modes[mi]; t = targets[ti]; k = m SUBSEP t
        if (!(k in rps)) { printf "%-4s %-9s (no result)\n", m, t; continue }
        printf "%-4s %-9s %10.0f %8.3f %8.3f %11.1f %7d %8s\n", m, t, med(rps[k]), med(p50[k]) / 1000, med(p99[k]) / 1000, med(cpu[k]), bad[k],
            (t == "nginx") ? "-" : sprintf("%.1f", req[k] ? 100 * rep[k] / req[k] : 0)
    }
    print ""
    print "medians of same-round throughput ratios"
    goal["new"] = 0.9; goal["dup"] = 0.75; goal["mix"] = 0.8
    printf "%-4s %17s %14s %15s   %s\n", "mode", "idemgate/ceiling", "ceiling/nginx", "idemgate/nginx", "issue 16 target (idemgate/ceiling)"
    for (mi = 1; mi <= 3; mi++) {
        m = modes[mi]; q = ratio(m, "idemgate", "ceiling")
        printf "%-4s %17s %14s %15s   >= %.2fx: %s\n", m, q, ratio(m, "ceiling", "nginx"), ratio(m, "idemgate", "nginx"), goal[m], (q != "-" && q + 0 >= goal[m]) ? "PASS" : "FAIL"
    }
    print ""
    print "latency at 1 connection (wrk -t1 -c1; added = p50 minus nginx proxy_pass p50)"
    base = pp50["new nginx"]
    printf "%-26s %8s %8s %15s\n", "path", "p50(ms)", "p99(ms)", "added p50(ms)"
    n = split("new upstream|new nginx|dup ceiling|dup idemgate|new ceiling|new idemgate", ks, "|")
    split("upstream direct|nginx proxy_pass|ceiling replay|idemgate replay|ceiling first-seen|idemgate first-seen", names, "|")
    for (i = 1; i <= n; i++) {
        if (!(ks[i] in pp50)) { printf "%-26s (no result)\n", names[i]; continue }
        printf "%-26s %8.3f %8.3f %15s\n", names[i], pp50[ks[i]] / 1000, pp99[ks[i]] / 1000, (i > 2 && base != "") ? sprintf("%+.3f", (pp50[ks[i]] - base) / 1000) : "-"
    }
}
AWK
        echo
        awk -v i="${IDLE_RSS[idemgate]}" -v c="${IDLE_RSS[ceiling]}" -v pi="$PEAK_RSS_IDG" -v pc="$PEAK_RSS_CEIL" 'BEGIN {
            printf "idle RSS (1 s after ready): idemgate %.1f MiB (target < 64: %s), ceiling %.1f MiB; peak (VmHWM): idemgate %.1f MiB, ceiling %.1f MiB\n",
                i / 1024, (i > 0 && i < 65536) ? "PASS" : "FAIL", c / 1024, pi / 1024, pc / 1024 }'
    fi
    if [[ "$LARGE" != "0" ]]; then
        echo
        echo "stored keys: uniform replays over all N stored keys (each run mostly cold), and first-seen keys, with N stored ($LARGE_ROUNDS round(s))"
        awk -F'\t' -v ns="$N_SMALL" -v nl="$N_LARGE" -f - "$RESULTS" <<'AWK'
function sortn(a, n,    i, j, t) { for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
function med(s,    a, n) { n = split(s, a, " "); if (n == 0) return -1; sortn(a, n); return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
($1 == "small" || $1 == "large") && $5 != "NA" {
    k = $1 SUBSEP $3 SUBSEP $4; rps[k] = rps[k] " " $5; p99[k] = p99[k] " " $7; cpu[k] = cpu[k] " " $12
    bad[k] += $8 + $9; req[k] += $10; rep[k] += $11; R[$1, $2, $3, $4] = $5; rounds[$2] = 1
}
function ratio(s, m,    r, x) { x = ""; for (r in rounds) if (R[s, r, m, "ceiling"] > 0) x = x " " R[s, r, m, "idemgate"] / R[s, r, m, "ceiling"]; return x == "" ? "-" : sprintf("%.2fx", med(x)) }
function v(s, m, t) { return ((s SUBSEP m SUBSEP t) in rps) ? med(rps[s SUBSEP m SUBSEP t]) : 0 }
END {
    printf "%-8s %-7s %13s %13s %17s %9s %9s %9s %7s\n", "keys", "mode", "ceiling rps", "idemgate rps", "idemgate/ceiling", "idg p99", "idg us/r", "replay%", "err c/i"
    split("small large", sizes, " "); split("replay new", modes, " ")
    for (mi = 1; mi <= 2; mi++) for (si = 1; si <= 2; si++) {
        s = sizes[si]; m = modes[mi]; k = s SUBSEP m SUBSEP "idemgate"
        printf "%-8s %-7s %13.0f %13.0f %17s %9.3f %9.1f %9s %7s\n", (s == "small") ? ns : nl, m, v(s, m, "ceiling"), v(s, m, "idemgate"), ratio(s, m),
            (k in p99) ? med(p99[k]) / 1000 : 0, (k in cpu) ? med(cpu[k]) : 0, req[k] ? sprintf("%.1f", 100 * rep[k] / req[k]) : "-",
            bad[s SUBSEP m SUBSEP "ceiling"] + 0 "/" bad[k] + 0
    }
    for (mi = 1; mi <= 2; mi++) {
        m = modes[mi]
        printf "%s: %d keys / %d keys: idemgate %.2fx, ceiling %.2fx (issue 16 target for idemgate >= 0.80x: %s)\n", m, nl, ns,
            v("small", m, "idemgate") ? v("large", m, "idemgate") / v("small", m, "idemgate") : 0,
            v("small", m, "ceiling") ? v("large", m, "ceiling") / v("small", m, "ceiling") : 0,
            (v("small", m, "idemgate") && v("large", m, "idemgate") / v("small", m, "idemgate") >= 0.8) ? "PASS" : "FAIL"
    }
}
AWK
    fi
    echo "raw results: $RESULTS"
} | tee "$WORKDIR/summary.txt"
