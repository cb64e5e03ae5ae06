# Shared by bench/run.sh and bench/scale/run.sh: process handling and wrk result parsing.
# Sourced after the caller defines log, die, WORKDIR and the PIDS/NAMES arrays.
# shellcheck shell=bash

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

stop_pid() { # pid name
    local pid=$1 name=$2 i
    kill -0 "$pid" 2>/dev/null || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) did not stop in 30s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

start_bg() { # name cmd... ; sets LAST_PID
    local name=$1
    shift
    "$@" >"$WORKDIR/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    NAMES+=("$name")
}

wait_http() { # name pid url tries(0.1s each)
    local name=$1 pid=$2 url=$3 tries=${4:-300} i
    for ((i = 0; i < tries; i++)); do
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$WORKDIR/$name.log" >&2 || true
            die "$name exited during startup (log: $WORKDIR/$name.log)"
        fi
        sleep 0.1
    done
    tail -n 20 "$WORKDIR/$name.log" >&2 || true
    die "$name did not answer 200 on $url in time"
}

port_in_use() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

proc_kib() { # pid field (VmRSS, VmHWM) from /proc/PID/status
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

field() { sed -n "s/^RESULT.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
