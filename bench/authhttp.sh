#!/usr/bin/env bash
# nginx auth_http benchmark: gomail's /api/auth (valid, cached credentials) vs a
# bare twisted.web resource returning the same success headers, same machine,
# same run; plus reactor liveness (GET /health while uncached logins run bcrypt).
#
#   bench/authhttp.sh              # 3 rounds x 10 s at -c50 and at -c10, then liveness (~3 minutes)
#   bench/authhttp.sh -r 1 -d 3    # quick check (~25 s)
#   bench/authhttp.sh -p           # also one extra, profiled gomail run (py-spy)
#
# See bench/README.md ("nginx auth_http") for what is measured.
set -euo pipefail

usage() {
    cat <<EOF
usage: $0 [-r ROUNDS] [-d SECONDS] [-c CONNS] [-b COST] [-p] [-k]
  -r ROUNDS    rounds; each runs gomail and the peer (order alternating) at -c50
               and at -c10                                  (env ROUNDS, default 3)
  -d SECONDS   duration of every wrk run                    (env DURATION, default 10)
  -c CONNS     comma-separated wrk connection counts        (env CONNS, default 50,10)
  -b COST      bcrypt cost of the user's hash and gomail's auth.bcryptRounds
                                                            (env BCRYPT_ROUNDS, default 10)
  -p           after the rounds, one more gomail run at the first -c under
               py-spy (not in the table; needs .venv/bin/py-spy)  (env PROFILE=1)
  -n           a new connection per request (Connection: close), as nginx
               makes one per login                          (env NEW_CONN=1)
  -K           the peer is a bare Klein route (same headers) instead of a
               bare twisted.web resource                    (env KLEIN_PEER=1)
  -k           keep the temporary directory                 (env KEEP_TMP=1)
EOF
}

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50,10}
BCRYPT_ROUNDS=${BCRYPT_ROUNDS:-10}
PROFILE=${PROFILE:-0}
KEEP_TMP=${KEEP_TMP:-0}
NEW_CONN=${NEW_CONN:-0}
KLEIN_PEER=${KLEIN_PEER:-0}
while getopts "r:d:c:b:pnKkh" opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    b) BCRYPT_ROUNDS=$OPTARG ;;
    p) PROFILE=1 ;;
    n) NEW_CONN=1 ;;
    K) KLEIN_PEER=1 ;;
    k) KEEP_TMP=1 ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
for v in ROUNDS DURATION BCRYPT_ROUNDS; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || { echo "$v must be a positive integer, got '${!v}'" >&2; exit 2; }
done
[[ $CONNS =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "CONNS must be like 50,10, got '$CONNS'" >&2; exit 2; }
IFS=, read -r -a CONN_LIST <<<"$CONNS"
LIVENESS_CONNS=50   # the definition: /health while 50 uncached logins are in flight

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
TWISTD=${TWISTD:-$REPO/.venv/bin/twistd}
PY=${PYTHON:-$REPO/.venv/bin/python}
HELPER="$PY $BENCH/authhttp_helper.py"
USER_NAME=alice@example.org
USER_PASS=bench-pass-1
SECRET=bench-shared-secret

# shellcheck source=bench/common.sh
. "$BENCH/common.sh"   # log, die, stop_pid, finish_work

[[ -x $TWISTD && -x $PY ]] || die "$TWISTD not found: run ./dev.sh test (or ./dev.sh run) once to create .venv"
command -v wrk >/dev/null || die "wrk is not installed (Debian: apt-get install wrk)"
command -v curl >/dev/null || die "curl is not installed"
if [[ $PROFILE == 1 && ! -x $REPO/.venv/bin/py-spy ]]; then
    die "-p needs py-spy: $REPO/.venv/bin/pip install py-spy"
fi

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
NPROC=$(nproc)

# -- work area and cleanup --------------------------------------------------------
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$BENCH/results
LOGS=$RESULTS/authhttp-$STAMP
mkdir -p "$LOGS"
WORK=$(mktemp -d /tmp/gomail-authhttp.XXXXXX)
mkdir -p "$WORK/runs"
GOMAIL_PID="" PEER_PID="" RUN_PID="" SPY_PID=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n $SPY_PID ]] && stop_pid "$SPY_PID" 5
    [[ -n $RUN_PID ]] && stop_pid "$RUN_PID" 10   # the helper stops its wrk children
    [[ -n $PEER_PID ]] && stop_pid "$PEER_PID" 10
    [[ -n $GOMAIL_PID ]] && stop_pid "$GOMAIL_PID" 40
    [[ -f $WORK/gomail.log ]] && gzip -c "$WORK/gomail.log" >"$LOGS/gomail.log.gz"
    [[ -f $WORK/peer.log ]] && gzip -c "$WORK/peer.log" >"$LOGS/peer.log.gz"
    cp "$WORK"/runs/*.wrk.txt "$LOGS"/ 2>/dev/null
    finish_work "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r AUTH_PORT MON_PORT SMTP_PORT PEER_PORT <<<"$($HELPER freeports 4)"

# -- gomail -------------------------------------------------------------------------
DATA=$WORK/data
cat >"$WORK/gomail.toml" <<EOF
smtpHost = "127.0.0.1"
smtpPort = $SMTP_PORT
dataDir = "$DATA"
enableHealthCheck = true
healthCheckPort = $MON_PORT

[security]
requireAuth = false

[smtp]
hostname = "bench.test"

[spool]
minFreeSpaceMB = 0

[auth]
bcryptRounds = $BCRYPT_ROUNDS
# lockout out of reach: the uncached (wrong password) load must run bcrypt every time
maxFailAttempts = 1000000000
maxFailAttemptsPerIP = 1000000000
# longer than any run: the cached phase never expires mid-run
cacheTTL = 86400

[nginxAuth]
listen = ["tcp:$AUTH_PORT:interface=127.0.0.1"]
sharedSecret = "$SECRET"
healthCheckInterval = 0

[[nginxAuth.backends]]
protocol = "imap"
address = "127.0.0.1"
port = 143
EOF
log "creating $USER_NAME (bcrypt cost $BCRYPT_ROUNDS) in $DATA/gomail.db"
$HELPER users --db "$DATA/gomail.db" --user "$USER_NAME" --password "$USER_PASS" --rounds "$BCRYPT_ROUNDS"

# The Go relay's variable names would move gomail's listener or add a user: not for this run.
GO_VARS=(SMTP_HOST SMTP_PORT DEFAULT_USERNAME DEFAULT_PASSWORD FORWARD_SMTP FORWARD_HOST FORWARD_PORT
    FORWARD_USERNAME FORWARD_PASSWORD FORWARD_SSL)
GOMAIL_ENV=$(env | grep -o '^GOMAIL_[A-Z_]*' | sort | tr '\n' ' ' || true)
[[ -n $GOMAIL_ENV ]] && log "gomail environment overrides in effect: $GOMAIL_ENV"

log "starting gomail: auth_http 127.0.0.1:$AUTH_PORT, monitor 127.0.0.1:$MON_PORT"
(cd "$WORK" && exec env "${GO_VARS[@]/#/--unset=}" "$TWISTD" -n --pidfile= gomail --config "$WORK/gomail.toml") \
    >"$WORK/gomail.log" 2>&1 &
GOMAIL_PID=$!
$HELPER wait-text "$WORK/gomail.log" "gomail ready" --pid "$GOMAIL_PID" --timeout 60 ||
    { tail -30 "$WORK/gomail.log" >&2; die "gomail did not start"; }

# -- the peer -------------------------------------------------------------------------
if [[ $KLEIN_PEER == 1 ]]; then PEER_KIND="bare Klein route"; PEER_ARGS=(--klein); else PEER_KIND="bare twisted.web resource"; PEER_ARGS=(); fi
log "starting the peer ($PEER_KIND) on 127.0.0.1:$PEER_PORT"
$PY "$BENCH/authhttp_helper.py" peer --port "$PEER_PORT" "${PEER_ARGS[@]}" >"$WORK/peer.log" 2>&1 &
PEER_PID=$!
$HELPER wait-text "$WORK/peer.log" "peer ready" --pid "$PEER_PID" --timeout 30 ||
    { cat "$WORK/peer.log" >&2; die "the peer did not start"; }

AUTH_URL="http://127.0.0.1:$AUTH_PORT/api/auth"
PEER_URL="http://127.0.0.1:$PEER_PORT/api/auth"
HEALTH_URL="http://127.0.0.1:$MON_PORT/health"
METRICS_URL="http://127.0.0.1:$MON_PORT/metrics?format=prometheus"
HEADERS=(-H 'Auth-Method: plain' -H "Auth-User: $USER_NAME" -H "Auth-Pass: $USER_PASS" -H 'Auth-Protocol: imap'
    -H 'Auth-Login-Attempt: 1' -H 'Client-IP: 127.0.0.1' -H "X-Auth-Key: $SECRET")
# nginx opens one connection per login (HTTP/1.0); -n makes wrk do the same.
[[ $NEW_CONN == 1 ]] && HEADERS+=(-H 'Connection: close')
WRONG_HEADERS=("${HEADERS[@]/Auth-Pass: $USER_PASS/Auth-Pass: wrong-password}")

# -- check the answers before measuring ----------------------------------------------
check() {  # check NAME URL EXPECT HEADERS...: one curl -si; EXPECT ok = Auth-Status: OK, fail = anything else
    local name=$1 url=$2 expect=$3 status
    shift 3
    curl -si --max-time 30 "$@" "$url" | tr -d '\r' >"$WORK/check-$name.txt" || die "$name: no answer from $url"
    status=$(sed -n 's/^Auth-Status: *//Ip' "$WORK/check-$name.txt" | head -1)
    log "$name: $(head -1 "$WORK/check-$name.txt"); Auth-Status: ${status:-(none)}"
    if [[ $expect == ok && $status != OK ]] || [[ $expect == fail && ( -z $status || $status == OK ) ]]; then
        sed 's/^/    /' "$WORK/check-$name.txt" >&2
        die "$name: expected Auth-Status ${expect^^}"
    fi
}
check gomail-warmup "$AUTH_URL" ok "${HEADERS[@]}"    # runs bcrypt once: the credentials are cached from here on
check gomail-cached "$AUTH_URL" ok "${HEADERS[@]}"
check peer "$PEER_URL" ok "${HEADERS[@]}"
check gomail-wrong-password "$AUTH_URL" fail "${WRONG_HEADERS[@]}"
curl -sf --max-time 30 -o /dev/null "$HEALTH_URL" || die "GET $HEALTH_URL failed"

# -- measurements -----------------------------------------------------------------
wrk_run() {  # wrk_run FILE META -- NAME DELAY CMD... [::: ...]: in the background, so the trap can stop it
    local out=$1 meta=$2
    shift 2
    $HELPER run --out "$WORK/runs/$out" --pid "$GOMAIL_PID" --peer-pid "$PEER_PID" --metrics "$METRICS_URL" \
        --meta "$meta" --timeout $((DURATION + 60)) "$@" &
    RUN_PID=$!
    wait "$RUN_PID" || die "wrk run $out failed"
    RUN_PID=""
}

throughput() {  # throughput ROUND SIDE CONNS [KIND]
    local round=$1 side=$2 conns=$3 kind=${4:-throughput} url
    [[ $side == gomail ]] && url=$AUTH_URL || url=$PEER_URL
    wrk_run "r$round-$side-c$conns-$kind.json" \
        "{\"kind\": \"$kind\", \"round\": $round, \"side\": \"$side\", \"conns\": $conns}" \
        -- main 0 wrk -t2 -c"$conns" -d"${DURATION}s" --latency "${HEADERS[@]}" "$url"
    log "round $round, $side -c$conns: $(grep -h '^Requests/sec' "$WORK"/runs/r"$round-$side-c$conns-$kind".main.wrk.txt)," \
        "p99 $(grep -h ' 99%' "$WORK"/runs/r"$round-$side-c$conns-$kind".main.wrk.txt | awk '{print $2}')"
}

log "load average $LOADAVG_START, nproc $NPROC; $ROUNDS rounds x ${DURATION}s at -c${CONNS//,/ and -c}"
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then order=(gomail peer); else order=(peer gomail); fi
    for conns in "${CONN_LIST[@]}"; do
        for side in "${order[@]}"; do
            throughput "$round" "$side" "$conns"
        done
    done
done

if [[ $PROFILE == 1 ]]; then
    log "profiled run: gomail -c${CONN_LIST[0]} with py-spy attached"
    "$REPO/.venv/bin/py-spy" record --pid "$GOMAIL_PID" --threads --rate 250 --format raw \
        --duration "$DURATION" --output "$WORK/pyspy.txt" >"$WORK/pyspy.log" 2>&1 &
    SPY_PID=$!
    sleep 1
    throughput 0 gomail "${CONN_LIST[0]}" profile
    wait "$SPY_PID" || log "py-spy failed: $(tail -3 "$WORK/pyspy.log")"
    SPY_PID=""
    if [[ -s $WORK/pyspy.txt ]]; then
        cp "$WORK/pyspy.txt" "$LOGS/pyspy-raw.txt"
        $HELPER profile "$WORK/pyspy.txt" --top 12 | tee "$LOGS/pyspy-summary.txt"
    fi
fi

# Reactor liveness: /health on the monitor port, idle, then while 50 uncached logins
# (a different wrong password each, so bcrypt runs every time) are in flight.
cat >"$WORK/uncached.lua" <<'EOF'
-- every request carries a different wrong password: no cache can answer, bcrypt runs each time
counter = 0
function setup(thread)
    n = (n or 0) + 1
    thread:set("tid", n)
end
function request()
    counter = counter + 1
    wrk.headers["Auth-Pass"] = "wrong-" .. tostring(tid) .. "-" .. counter
    return wrk.format()
end
EOF
log "liveness: GET /health idle, ${DURATION}s"
wrk_run liveness-idle.json '{"kind": "liveness-idle"}' \
    -- health 0 wrk -t1 -c1 -d"${DURATION}s" --latency "$HEALTH_URL"
log "liveness: GET /health while $LIVENESS_CONNS uncached logins are in flight, ${DURATION}s"
wrk_run liveness-load.json "{\"kind\": \"liveness-load\", \"conns\": $LIVENESS_CONNS}" \
    -- load 0 wrk -t2 -c"$LIVENESS_CONNS" -d"$((DURATION + 2))s" --timeout 60s --latency -s "$WORK/uncached.lua" \
    "${WRONG_HEADERS[@]}" "$AUTH_URL" \
    ::: health 1 wrk -t1 -c1 -d"${DURATION}s" --latency "$HEALTH_URL"

# -- summary ----------------------------------------------------------------------
problems=$(grep -cE 'Traceback|\[-\] .*(error|Error|failed)' "$WORK/gomail.log" || true)
((problems == 0)) || log "gomail's log has $problems traceback/error lines: see $LOGS/gomail.log.gz"
conns_json=$(printf '%s,' "${CONN_LIST[@]}")
dirty=$(git -C "$REPO" status --porcelain gomail 2>/dev/null | head -1)
PARAMS=$(
    cat <<EOF
{"timestamp": "$STAMP", "rounds": $ROUNDS, "duration": $DURATION, "conns": [${conns_json%,}],
 "liveness_conns": $LIVENESS_CONNS, "bcrypt_rounds": $BCRYPT_ROUNDS, "new_conn": $NEW_CONN,
 "nproc": $NPROC, "loadavg_start": "$LOADAVG_START", "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
 "gomail_rev": "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty:+ + uncommitted changes in gomail/}",
 "twisted_version": "$($PY -c 'import twisted; print(twisted.__version__)')",
 "bcrypt_version": "$($PY -c 'import bcrypt; print(bcrypt.__version__)')",
 "wrk_version": "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)",
 "gomail_env": "$GOMAIL_ENV", "gomail_log_problem_lines": $problems, "logs": "$LOGS"}
EOF
)
$HELPER summarize --runs "$WORK/runs" --params "$PARAMS" --out "$RESULTS/authhttp-$STAMP.json"
