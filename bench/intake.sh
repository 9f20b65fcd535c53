#!/usr/bin/env bash
# Intake benchmark: gomail vs a private Postfix relay, same machine, same run.
#
#   bench/intake.sh                  # 3 rounds x 10,000 messages (the defined benchmark)
#   bench/intake.sh -r 1 -m 2000     # quick check
#
# Each round runs gomail, then Postfix, each freshly started on free 127.0.0.1
# ports, loaded with `smtp-source -s 20 -m N -l 5120` (a new connection per
# message unless -d). See bench/README.md for what is measured.
set -euo pipefail

usage() {
    cat <<EOF
usage: $0 [-r ROUNDS] [-m MESSAGES] [-s SESSIONS] [-l BYTES] [-d] [-t DRAIN_TIMEOUT] [-k]
  -r ROUNDS         rounds; each runs gomail then Postfix      (env ROUNDS, default 3)
  -m MESSAGES       messages per run                           (env MESSAGES, default 10000)
  -s SESSIONS       parallel smtp-source sessions              (env SESSIONS, default 20)
  -l BYTES          message payload size                       (env SIZE, default 5120)
  -d                reuse connections (smtp-source -d)         (env REUSE=1; default: one connection per message)
  -t SECONDS        bound on the wait for the queue to drain   (env DRAIN_TIMEOUT, default 600)
  -k                keep the temporary directory               (env KEEP_TMP=1)
EOF
}

ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-10000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-5120}
REUSE=${REUSE:-0}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-600}
KEEP_TMP=${KEEP_TMP:-0}
while getopts "r:m:s:l:dt:kh" opt; do
    case $opt in
    r) ROUNDS=$OPTARG ;;
    m) MESSAGES=$OPTARG ;;
    s) SESSIONS=$OPTARG ;;
    l) SIZE=$OPTARG ;;
    d) REUSE=1 ;;
    t) DRAIN_TIMEOUT=$OPTARG ;;
    k) KEEP_TMP=1 ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
for v in ROUNDS MESSAGES SESSIONS SIZE DRAIN_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || { echo "$v must be a positive integer, got '${!v}'" >&2; exit 2; }
done

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
TWISTD=${TWISTD:-$REPO/.venv/bin/twistd}
PY=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PY ]] || PY=python3
HELPER="$PY $BENCH/intake_helper.py"
export PATH="$PATH:/usr/sbin:/sbin"
RCPT=bob@example.com
SENDER=alice@example.org

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# -- tools ------------------------------------------------------------------------
[[ -x $TWISTD ]] || die "$TWISTD not found: run ./dev.sh test (or ./dev.sh run) once to create .venv"
if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null || ! command -v postfix >/dev/null; then
    [[ $(id -u) -eq 0 ]] || die "postfix (smtp-source, smtp-sink) is not installed and we are not root to install it"
    log "installing Debian's postfix package (No configuration)"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null; }
fi
[[ $(id -u) -eq 0 ]] || die "run as root: the private Postfix instance needs it (postfix -c DIR start)"
getent passwd postfix >/dev/null || die "no 'postfix' user (is the postfix package installed?)"
getent passwd nobody >/dev/null || die "no 'nobody' user for smtp-sink -u"

SMTP_SOURCE_OPTS=(-s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f "$SENDER" -t "$RCPT")
if [[ $REUSE == 1 ]]; then
    SMTP_SOURCE_OPTS=(-d "${SMTP_SOURCE_OPTS[@]}")
    CONNECTION_MODE="connections reused (-d)"
    EXPECTED_SESSIONS=$SESSIONS
else
    CONNECTION_MODE="new connection per message"
    EXPECTED_SESSIONS=$MESSAGES
fi

# -- work area and cleanup --------------------------------------------------------
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$BENCH/results
mkdir -p "$RESULTS"
LOGS=$RESULTS/intake-$STAMP          # compressed server logs of every run
mkdir -p "$LOGS"
WORK=$(mktemp -d /tmp/gomail-intake.XXXXXX)
chmod 755 "$WORK"                    # Postfix daemons (user postfix) must reach their queue
mkdir -p "$WORK/runs"

GOMAIL_PID="" SINK_PID="" LOAD_PID="" PF_CONF="" PF_QUEUE=""

stop_pid() {  # stop_pid PID SECONDS: TERM, bounded wait, then KILL
    local pid=$1 tenths=$(($2 * 10)) i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < tenths; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "process $pid did not stop in $2 s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

stop_postfix() {
    [[ -n $PF_CONF ]] || return 0
    local master_pid="" i
    [[ -f $PF_QUEUE/pid/master.pid ]] && master_pid=$(tr -dc 0-9 <"$PF_QUEUE/pid/master.pid")
    postfix -c "$PF_CONF" stop >/dev/null 2>&1 || true
    if [[ -n $master_pid ]]; then
        for ((i = 0; i < 200; i++)); do
            kill -0 "$master_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$master_pid" 2>/dev/null; then
            log "postfix master $master_pid did not stop in 20 s: aborting it"
            postfix -c "$PF_CONF" abort >/dev/null 2>&1 || kill -KILL "$master_pid" 2>/dev/null || true
        fi
    fi
    PF_CONF=""
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n $LOAD_PID ]] && stop_pid "$LOAD_PID" 5
    [[ -n $GOMAIL_PID ]] && stop_pid "$GOMAIL_PID" 45
    stop_postfix
    [[ -n $SINK_PID ]] && stop_pid "$SINK_PID" 5
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    rmdir "$LOGS" 2>/dev/null  # nothing saved (stopped early)
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

save_log() {  # save_log FILE NAME: keep a compressed copy of a server log next to the results
    [[ -f $1 ]] && gzip -c "$1" >"$LOGS/$2.gz" || true
}

# -- gomail -------------------------------------------------------------------------
run_gomail() {  # run_gomail ROUND SEQ
    local round=$1 seq=$2 dir=$WORK/gomail-$1 port
    mkdir -p "$dir"
    port=$($HELPER freeport)
    cat >"$dir/gomail.toml" <<EOF
smtpHost = "127.0.0.1"
smtpPort = $port
dataDir = "$dir/data"
queueSize = 1000000
workerCount = 5
enableHealthCheck = false

[security]
requireAuth = false
allowLocalOnly = true

[smtp]
maxConnectionsPerIP = 100

[spool]
minFreeSpaceMB = 0
EOF
    $HELPER srcstate "$REPO" gomail twisted >"$dir/source.json"   # what this server imports
    # The Go relay's environment names would override the file (SMTP_PORT...): drop them.
    # GOMAIL_* variables are passed on on purpose (e.g. GOMAIL_SPOOL_IOTHREADS=2) and recorded.
    (cd "$dir" && exec env -u SMTP_HOST -u SMTP_PORT -u DEFAULT_USERNAME -u DEFAULT_PASSWORD \
        -u FORWARD_SMTP -u FORWARD_HOST -u FORWARD_PORT -u FORWARD_USERNAME -u FORWARD_PASSWORD \
        -u FORWARD_SSL PYTHONUNBUFFERED=1 \
        "$TWISTD" -n --pidfile= gomail --config "$dir/gomail.toml" >"$dir/gomail.log" 2>&1) &
    GOMAIL_PID=$!
    $HELPER wait-log "$dir/gomail.log" "gomail ready" --pid "$GOMAIL_PID" --timeout 60 ||
        { tail -20 "$dir/gomail.log" >&2; die "gomail did not start"; }
    log "gomail round $round: pid $GOMAIL_PID on 127.0.0.1:$port, sending $MESSAGES messages"

    $HELPER load --out "$dir/load.json" --output-file "$dir/smtp-source.out" --server-pid "$GOMAIL_PID" \
        -- smtp-source "${SMTP_SOURCE_OPTS[@]}" "127.0.0.1:$port" &
    LOAD_PID=$!
    wait "$LOAD_PID"
    LOAD_PID=""

    $HELPER drain --kind gomail --round "$round" --out "$WORK/runs/run-$seq.json" \
        --load-json "$dir/load.json" --log "$dir/gomail.log" --server-pid "$GOMAIL_PID" \
        --source-json "$dir/source.json" \
        --maildir "$dir/data/spool/mailbox/$RCPT/new" --queue-dir "$dir/data/spool/queue" \
        --timeout "$DRAIN_TIMEOUT" &
    LOAD_PID=$!
    wait "$LOAD_PID"
    LOAD_PID=""

    stop_pid "$GOMAIL_PID" 45
    GOMAIL_PID=""
    save_log "$dir/gomail.log" "gomail-round$round.log"
    save_log "$dir/smtp-source.out" "gomail-round$round.smtp-source.out"
    [[ $KEEP_TMP == 1 ]] || rm -rf "$dir/data"
    sync
}

# -- Postfix --------------------------------------------------------------------------
run_postfix() {  # run_postfix ROUND SEQ
    local round=$1 seq=$2 dir=$WORK/postfix-$1 port sinkport
    mkdir -p "$dir/conf" "$dir/queue" "$dir/data"
    chmod 755 "$dir" "$dir/queue"
    chown postfix "$dir/data"
    port=$($HELPER freeport)
    sinkport=$($HELPER freeport)
    [[ $sinkport != "$port" ]] || sinkport=$($HELPER freeport)

    smtp-sink -u nobody -c "127.0.0.1:$sinkport" 1000 >"$dir/sink.out" 2>"$dir/sink.err" &
    SINK_PID=$!
    $HELPER wait-port "$sinkport" --timeout 30 || { cat "$dir/sink.err" >&2; die "smtp-sink did not start"; }

    cat >"$dir/conf/main.cf" <<EOF
# private benchmark instance written by bench/intake.sh; /etc/postfix is not used
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.localdomain
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
relayhost = [127.0.0.1]:$sinkport
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
EOF
    # Debian's default services, every one with chroot off, smtpd on 127.0.0.1:port.
    cat >"$dir/conf/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$port inet n  -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    postfix -c "$dir/conf" check >"$dir/check.out" 2>&1 || { cat "$dir/check.out" >&2; die "postfix check failed"; }
    PF_CONF=$dir/conf PF_QUEUE=$dir/queue
    postfix -c "$dir/conf" start >"$dir/start.out" 2>&1 ||
        { cat "$dir/start.out" "$dir/maillog" >&2; die "postfix did not start"; }
    $HELPER wait-port "$port" --timeout 30 || { cat "$dir/maillog" >&2; die "postfix is not listening"; }
    log "postfix round $round: 127.0.0.1:$port relaying to smtp-sink on 127.0.0.1:$sinkport, sending $MESSAGES messages"

    $HELPER load --out "$dir/load.json" --output-file "$dir/smtp-source.out" \
        -- smtp-source "${SMTP_SOURCE_OPTS[@]}" "127.0.0.1:$port" &
    LOAD_PID=$!
    wait "$LOAD_PID"
    LOAD_PID=""

    $HELPER drain --kind postfix --round "$round" --out "$WORK/runs/run-$seq.json" \
        --load-json "$dir/load.json" --log "$dir/maillog" --sink-out "$dir/sink.out" \
        --expected-sessions "$EXPECTED_SESSIONS" --timeout "$DRAIN_TIMEOUT" &
    LOAD_PID=$!
    wait "$LOAD_PID"
    LOAD_PID=""

    stop_postfix
    stop_pid "$SINK_PID" 5
    SINK_PID=""
    save_log "$dir/maillog" "postfix-round$round.maillog"
    save_log "$dir/smtp-source.out" "postfix-round$round.smtp-source.out"
    [[ $KEEP_TMP == 1 ]] || rm -rf "$dir/queue" "$dir/data"
    sync
}

# -- the run ----------------------------------------------------------------------------
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
GOMAIL_ENV=$(env | grep -E '^GOMAIL_' | grep -viE 'PASSWORD' | sort | tr '\n' ' ' | sed 's/ $//' || true)
[[ -z $GOMAIL_ENV ]] || log "gomail configuration overridden from the environment: $GOMAIL_ENV"
log "intake benchmark: $ROUNDS round(s) x $MESSAGES messages of $SIZE bytes, $SESSIONS sessions, $CONNECTION_MODE"
log "work dir $WORK, load average $LOADAVG_START"
seq=0
for ((round = 1; round <= ROUNDS; round++)); do
    seq=$((seq + 1)); run_gomail "$round" "$seq"
    seq=$((seq + 1)); run_postfix "$round" "$seq"
done

PARAMS=$(
    cat <<EOF
{"rounds": $ROUNDS, "messages": $MESSAGES, "sessions": $SESSIONS, "size": $SIZE,
 "connection_mode": "$CONNECTION_MODE", "smtp_source": "smtp-source ${SMTP_SOURCE_OPTS[*]} 127.0.0.1:PORT",
 "timestamp": "$STAMP", "cpus": $(nproc), "loadavg_start": "$LOADAVG_START",
 "gomail_commit": "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)",
 "gomail_version": "$("$PY" -c 'import gomail; print(gomail.__version__)' 2>/dev/null || echo unknown)",
 "twisted_version": "$("$PY" -c 'import twisted; print(twisted.__version__)' 2>/dev/null || echo unknown)",
 "postfix_version": "$(postconf -dh mail_version 2>/dev/null || echo unknown)",
 "gomail_config": "workerCount=5, queueSize=1000000, maxConnectionsPerIP=100, minFreeSpaceMB=0, other keys default (logAllEmails=true, ioThreads=8)",
 "gomail_env_overrides": "$GOMAIL_ENV",
 "postfix_config": "relayhost=smtp-sink, default durable queue, chroot off, maillog_file",
 "logs": "$LOGS"}
EOF
)
$HELPER summarize --runs "$WORK/runs" --params "$PARAMS" --out "$RESULTS/intake-$STAMP.json"
