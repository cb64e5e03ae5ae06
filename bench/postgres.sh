#!/usr/bin/env bash
# idemgate on PostgreSQL against pgbench doing the same durable work, in the same run.
#
#   bench/postgres.sh
#
# (a) pgbench -M prepared -c 32 -j 2 -T $DURATION runs, per transaction (one key), the two
#     autocommitted statements idemgate runs for a first-seen key: its claim (the same
#     INSERT ... ON CONFLICT ... RETURNING statement, src/store/postgres/sql.rs) and its
#     completion (the same UPDATE, with a webhook-sized stored response), on a table shaped like
#     idemgate_records.
# (b) idemgate (release build) in front of examples/bench_upstream, every key new
#     (bench/wrk/webhook.lua, mode new: "<run>-t<thread>-<counter>"), wrk -t2 -c32 -d$DURATION.
# Both use one scratch database on the same server (created here, dropped on exit), so both
# tables start empty. Prints keys/s of each and idemgate / pgbench (issue 16 target: >= 0.5).
#
# Env: DURATION (default 10s), ROUNDS (default 1; each round runs pgbench then idemgate),
#      PGHOST/PGPORT/PGUSER (default 127.0.0.1 / 5432 / postgres), ADMIN_DB (default test: where
#      the scratch database is created from), SSLMODE (default prefer, for both clients),
#      IDEMGATE_PG_OPTS (extra store.postgres settings, e.g. "pool_size: 32, prepared_statements: false"),
#      BENCH_IDEMGATE_BIN (default target/release/idemgate), SKIP_BUILD=1, BENCH_DIR (work dir).
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -Eeuo pipefail
trap 'echo "[pg-bench] failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-1}"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
ADMIN_DB="${ADMIN_DB:-test}"
SSLMODE="${SSLMODE:-prefer}"
export PGSSLMODE="$SSLMODE"
IDEMGATE_PG_OPTS="${IDEMGATE_PG_OPTS:-}"
SKIP_BUILD="${SKIP_BUILD:-0}"
IDG_BIN="${BENCH_IDEMGATE_BIN:-$ROOT/target/release/idemgate}"
UP_BIN="$ROOT/target/release/examples/bench_upstream"
LUA="$ROOT/bench/wrk/webhook.lua"
# Ports of their own, so that this can run beside bench/run.sh.
UP_ADDR=127.0.0.1:18300
IDG_ADDR=127.0.0.1:18381
ADMIN_ADDR=127.0.0.1:19391

BENCH_TAG=pg-bench
# shellcheck source=bench/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
DUR_S=$(dur_secs "$DURATION")
for tool in pgbench psql wrk curl; do command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"; done

if [[ "$SKIP_BUILD" != "1" ]]; then
    log "building (release): idemgate + bench_upstream"
    timeout 3600 nice cargo build --release --bin idemgate --example bench_upstream
fi
[[ -x "$UP_BIN" ]] || die "missing $UP_BIN"
[[ -x "$IDG_BIN" ]] || die "missing $IDG_BIN"

WORKDIR="${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/idemgate-pg-bench.XXXXXX")}"
mkdir -p "$WORKDIR/wrk"
DB="idemgate_pgbench_$$"
PIDS=()
NAMES=()
DB_MADE=0

WORK_DIR_NOTE="logs, configs, pgbench script"
scratch_cleanup() {
    if [[ "$DB_MADE" == "1" ]]; then
        psql -X -q -d "$ADMIN_DB" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 ||
            log "WARNING: could not drop the scratch database $DB"
    fi
}
cleanup_on_exit

for a in "$UP_ADDR" "$IDG_ADDR" "$ADMIN_ADDR"; do
    if port_in_use "$a"; then die "$a is already in use (a previous run still alive?)"; fi
done

# ------------------------------------------------------------------------- scratch database
log "creating the scratch database $DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$ADMIN_DB" -c "CREATE DATABASE $DB" >/dev/null
DB_MADE=1
SC=$(psql -X -Atq -d "$DB" -c "SHOW synchronous_commit")
[[ "$SC" == "on" ]] || log "WARNING: synchronous_commit is $SC, not on: the numbers do not compare with issue 16"
# Shaped like idemgate_records (src/store/postgres/sql.rs, SCHEMA_V1), in a schema of its own.
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE SCHEMA pgb;
CREATE TABLE pgb.records (
    route        text     NOT NULL,
    scope        text     NOT NULL,
    key          text     NOT NULL,
    state        smallint NOT NULL,
    token        bigint   NOT NULL,
    fingerprint  bytea,
    created_ms   bigint   NOT NULL,
    expires_ms   bigint   NOT NULL,
    status       integer,
    headers      bytea,
    body         bytea,
    body_omitted boolean  NOT NULL DEFAULT false,
    PRIMARY KEY (route, scope, key)
);
CREATE INDEX ON pgb.records (expires_ms);
SQL

# One key per transaction: idemgate's claim, then its completion, each autocommitted. The key
# is random over 2^62 per client; now_ms is fixed (it only decides takeovers of existing rows).
# fingerprint: 32 bytes; headers: content-type: application/json as idemgate encodes it
# (roughly); body: the upstream's {"ok":true} (in hex: pgbench would read ":true" as a variable).
FP="'\\x$(printf '03%.0s' {1..32})'::bytea"
cat >"$WORKDIR/pgbench.sql" <<SQL
\\set k random(1, 4611686018427387904)
\\set tok random(1, 4611686018427387904)
\\set now 1800000000000
WITH taken AS (
    INSERT INTO pgb.records AS r (route, scope, key, state, token, fingerprint, created_ms, expires_ms)
    VALUES ('bench', '', :client_id::text || '-' || :k::text, 0, :tok::bigint, $FP, :now::bigint, :now::bigint + 10000)
    ON CONFLICT (route, scope, key) DO UPDATE SET
        state = 0, token = excluded.token, fingerprint = excluded.fingerprint,
        created_ms = excluded.created_ms, expires_ms = excluded.expires_ms,
        status = CASE WHEN r.state = 0 THEN 0 END,
        headers = NULL, body = NULL, body_omitted = false
    WHERE r.expires_ms <= excluded.created_ms
    RETURNING token, status
)
SELECT token, NULL::smallint AS state, NULL::bytea AS fingerprint, NULL::bigint AS created_ms,
       NULL::bigint AS expires_ms, status, NULL::bytea AS headers, NULL::bytea AS body,
       NULL::boolean AS body_omitted
FROM taken
UNION ALL
SELECT NULL, state, fingerprint, created_ms, expires_ms, status, headers, body, body_omitted
FROM pgb.records
WHERE route = 'bench' AND scope = '' AND key = :client_id::text || '-' || :k::text AND expires_ms > :now::bigint
  AND NOT EXISTS (SELECT 1 FROM taken);
UPDATE pgb.records
SET state = 1, status = 200, headers = '\\x0c636f6e74656e742d74797065106170706c69636174696f6e2f6a736f6e'::bytea,
    body = '\\x7b226f6b223a747275657d'::bytea, body_omitted = false, expires_ms = :now::bigint + 86400000,
    created_ms = :now::bigint, fingerprint = $FP
WHERE route = 'bench' AND scope = '' AND key = :client_id::text || '-' || :k::text AND token = :tok::bigint AND state = 0;
SQL

# ------------------------------------------------------------------------- upstream, idemgate
start_bg upstream "$UP_BIN" "$UP_ADDR"
wait_http upstream "$LAST_PID" "http://$UP_ADDR/healthz"

case "$SSLMODE" in prefer) URL_SSL="" ;; *) URL_SSL="?sslmode=$SSLMODE" ;; esac
cat >"$WORKDIR/idemgate.yaml" <<EOF
# generated by bench/postgres.sh
listen: $IDG_ADDR
log: { format: json, level: warn }
admin: { listen: $ADMIN_ADDR }
upstream: { url: http://$UP_ADDR }
store: { postgres: { url: "postgres://$PGUSER@$PGHOST:$PGPORT/$DB$URL_SSL"${IDEMGATE_PG_OPTS:+, $IDEMGATE_PG_OPTS} } }
routes:
  - name: bench
    match: { path_prefix: /webhooks/ }
    key: { header: Idempotency-Key }
EOF
clear_idemgate_env
log "starting idemgate on $IDG_ADDR (store.postgres: url .../$DB${IDEMGATE_PG_OPTS:+, $IDEMGATE_PG_OPTS})"
start_bg idemgate "$IDG_BIN" serve --config "$WORKDIR/idemgate.yaml"
IDG_PID=$LAST_PID
wait_http idemgate "$IDG_PID" "http://$ADMIN_ADDR/healthz"

run_wrk() { # out duration run-id; prints the RESULT line
    local out=$1 d=$2 secs
    secs=$(dur_secs "$d")
    timeout $((secs + 30)) wrk -t2 -c32 -d"$d" --latency -s "$LUA" "http://$IDG_ADDR" \
        -- new run="$3" check=1 >"$out" 2>&1 || log "WARNING: wrk failed, see $out"
    grep '^RESULT ' "$out" | tail -n 1 || true
}

log "warming idemgate's pool (2s, not counted)"
run_wrk "$WORKDIR/wrk/warm.txt" 2s "warm$$" >/dev/null

# ------------------------------------------------------------------------- rounds
printf 'round\tpgbench_keys_s\tidemgate_keys_s\tratio\tidemgate_p50_us\tidemgate_p99_us\tnon2xx\n' >"$WORKDIR/results.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r: pgbench -M prepared -c 32 -j 2 -T $DUR_S"
    pgbench -n -M prepared -c 32 -j 2 -T "$DUR_S" -f "$WORKDIR/pgbench.sql" "$DB" >"$WORKDIR/pgbench-$r.txt" 2>&1 ||
        { cat "$WORKDIR/pgbench-$r.txt" >&2; die "pgbench failed"; }
    PGB=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORKDIR/pgbench-$r.txt" | head -n 1)
    [[ -n "$PGB" ]] || die "no tps in $WORKDIR/pgbench-$r.txt"
    log "round $r: idemgate, every key new, wrk -t2 -c32 -d$DURATION"
    kill -0 "$IDG_PID" 2>/dev/null || die "idemgate died (log: $WORKDIR/idemgate.log)"
    RES=$(run_wrk "$WORKDIR/wrk/new-$r.txt" "$DURATION" "r$$-$r-$(date +%s)")
    [[ -n "$RES" ]] || die "no wrk result (see $WORKDIR/wrk/new-$r.txt)"
    IDG=$(field "$RES" rps)
    NON2XX=$(field "$RES" non2xx)
    RATIO=$(awk -v a="$IDG" -v b="$PGB" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    printf '%s\t%.0f\t%.0f\t%s\t%s\t%s\t%s\n' "$r" "$PGB" "$IDG" "$RATIO" "$(field "$RES" p50_us)" \
        "$(field "$RES" p99_us)" "$NON2XX" >>"$WORKDIR/results.tsv"
    [[ "$NON2XX" == "0" ]] || log "WARNING: $NON2XX answers were not 2xx (see $WORKDIR/idemgate.log)"
done

column -t -s $'\t' "$WORKDIR/results.tsv"
STORED=$(psql -X -Atq -d "$DB" -c "SELECT count(*) FILTER (WHERE state = 1) FROM idemgate_records")
echo "idemgate completed records stored: $STORED"
awk -F'\t' 'NR > 1 { p += $2; i += $3; n++ } END {
    printf "idemgate keys/s / pgbench keys/s = %.0f / %.0f = %.2f (mean of %d round(s); target >= 0.50)\n", i / n, p / n, (p > 0 ? i / p : 0), n }' \
    "$WORKDIR/results.tsv"
