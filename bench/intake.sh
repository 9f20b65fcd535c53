#!/usr/bin/env bash
# Intake and end-to-end benchmarks: gomail vs a private Postfix, same machine,
# same run, both doing the same work.
#
#   bench/intake.sh                  # intake: both relay every message to an smtp-sink of their
#                                    # own; the rate at which they accept (3 rounds x 10,000)
#   bench/intake.sh -r 1 -m 2000     # quick check
#   bench/intake.sh -e               # end-to-end relay: both relay into smtp-sink, timed until
#                                    # the sink has every message
#   bench/intake.sh -L               # local: both deliver into Maildirs on this machine
#                                    # (Postfix's virtual delivery agent), intake rate
#   bench/intake.sh -l 102400 -m 2000  # another message size (bench/ladder.sh runs them all)
#
# Each round runs gomail, then Postfix, each freshly started on free 127.0.0.1
# ports (every listener gomail opens), loaded with `smtp-source -s 20 -m N -l SIZE`
# (a new connection per message unless -d). See bench/README.md for what is measured.
set -euo pipefail

usage() {
    cat <<EOF
usage: $0 [-e | -L] [-w WORKERS] [-r ROUNDS] [-m MESSAGES] [-s SESSIONS] [-l BYTES] [-d] [-t DRAIN_TIMEOUT] [-k]
  -e                end-to-end relay mode: timed until the sink has every accepted
                    message (env E2E=1); without -e or -L both relay to a sink too,
                    and the intake rate is measured
  -L                local mode: both deliver into local Maildirs (env LOCAL=1)
  -w WORKERS        gomail's workerCount    (env WORKERS, default 20; 5 with -L)
  -r ROUNDS         rounds; each runs gomail then Postfix      (env ROUNDS, default 3)
  -m MESSAGES       messages per run                           (env MESSAGES, default 10000)
  -s SESSIONS       parallel smtp-source sessions              (env SESSIONS, default 20)
  -l BYTES          message payload size                       (env SIZE, default 5120)
  -d                reuse connections (smtp-source -d)         (env REUSE=1; default: one connection per message)
  -t SECONDS        bound on the wait for the queue to drain   (env DRAIN_TIMEOUT, default 600)
  -k                keep the temporary directory               (env KEEP_TMP=1)
  -n                no wait for an earlier benchmark's deletions to age (env NO_SETTLE=1)
EOF
}

ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-10000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-5120}
REUSE=${REUSE:-0}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-600}
KEEP_TMP=${KEEP_TMP:-0}
E2E=${E2E:-0}
LOCAL=${LOCAL:-0}
WORKERS=${WORKERS:-}
NO_SETTLE=${NO_SETTLE:-0}
while getopts "eLw:r:m:s:l:dt:knh" opt; do
    case $opt in
    e) E2E=1 ;;
    L) LOCAL=1 ;;
    w) WORKERS=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    m) MESSAGES=$OPTARG ;;
    s) SESSIONS=$OPTARG ;;
    l) SIZE=$OPTARG ;;
    d) REUSE=1 ;;
    t) DRAIN_TIMEOUT=$OPTARG ;;
    k) KEEP_TMP=1 ;;
    n) NO_SETTLE=1 ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
[[ $E2E == 1 && $LOCAL == 1 ]] && { echo "-e and -L exclude each other" >&2; exit 2; }
MODE=intake
[[ $E2E == 1 ]] && MODE=e2e
[[ $LOCAL == 1 ]] && MODE=local
[[ -n $WORKERS ]] || { [[ $MODE == local ]] && WORKERS=5 || WORKERS=20; }
for v in ROUNDS MESSAGES SESSIONS SIZE DRAIN_TIMEOUT WORKERS; do
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

# shellcheck source=bench/common.sh
. "$BENCH/common.sh"   # log, die, stop_pid, finish_work

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
# Every run's files stay until the end: room for all of them (message + a block, twice over).
need=$(( ROUNDS * 2 * MESSAGES * (SIZE + 4096) * 2 ))
avail=$(df --output=avail -B1 /tmp | tail -1)
(( avail > need )) || die "/tmp: $avail bytes free, $need needed (every run's files are kept until the end)"
RESULTS=$BENCH/results
mkdir -p "$RESULTS"
# ext4 without a journal skips, at every file creation, the inodes deleted in
# the last 60-360 s (README "File system state"): a run started right after
# an earlier benchmark deleted its 10,000s of files would pay for them.
DELETED_AT_FILE=$RESULTS/.files-deleted-at
SETTLE=360
if [[ $NO_SETTLE != 1 && -f $DELETED_AT_FILE ]]; then
    deleted_at=$(tr -dc 0-9 <"$DELETED_AT_FILE")
    wait_s=$(( ${deleted_at:-0} + SETTLE - $(date +%s) ))
    if (( wait_s > 0 && wait_s <= SETTLE )); then
        log "an earlier benchmark deleted its files at $(date -d "@$deleted_at" +%H:%M:%S): waiting $wait_s s for them to age (-n: don't)"
        sleep "$wait_s"
    fi
fi
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOGS=$RESULTS/$MODE-$STAMP          # compressed server logs of every run
mkdir -p "$LOGS"
WORK=$(mktemp -d /tmp/gomail-$MODE.XXXXXX)
chmod 755 "$WORK"                    # Postfix daemons (user postfix) must reach their queue
mkdir -p "$WORK/runs"

GOMAIL_PID="" SINK_PID="" SINK_PORT="" LOAD_PID="" DRAIN_PID="" PF_CONF="" PF_QUEUE=""

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
    [[ -n $DRAIN_PID ]] && stop_pid "$DRAIN_PID" 5
    [[ -n $GOMAIL_PID ]] && stop_pid "$GOMAIL_PID" 45
    stop_postfix
    [[ -n $SINK_PID ]] && stop_pid "$SINK_PID" 5
    if [[ $KEEP_TMP != 1 ]]; then
        rm -rf "$WORK"
        date +%s >"$DELETED_AT_FILE"  # for the next run's wait (above)
    fi
    finish_work "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

save_log() {  # save_log FILE NAME: keep a compressed copy of a server log next to the results
    [[ -f $1 ]] && gzip -c "$1" >"$LOGS/$2.gz" || true
}

start_sink() {  # start_sink DIR AVOID_PORT: smtp-sink on a free port (SINK_PORT), counting into DIR/sink.out
    local dir=$1 avoid=$2
    SINK_PORT=$($HELPER freeport)
    [[ $SINK_PORT != "$avoid" ]] || SINK_PORT=$($HELPER freeport)
    smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 1000 >"$dir/sink.out" 2>"$dir/sink.err" &
    SINK_PID=$!
    $HELPER wait-port "$SINK_PORT" --timeout 30 || { cat "$dir/sink.err" >&2; die "smtp-sink did not start"; }
}

measure() {  # measure DIR PORT SERVER_PID [DRAIN ARGS...]: the load into 127.0.0.1:PORT, then the drain
    local dir=$1 port=$2 server_pid=$3
    shift 3
    $HELPER load --out "$dir/load.json" --output-file "$dir/smtp-source.out" ${server_pid:+--server-pid "$server_pid"} \
        -- smtp-source "${SMTP_SOURCE_OPTS[@]}" "127.0.0.1:$port" &
    LOAD_PID=$!
    if [[ $MODE == e2e ]]; then
        # The drain runs alongside the load, sampling smtp-sink's counter from the first connection on.
        $HELPER drain --e2e --poll 0.05 --load-pid "$LOAD_PID" --load-json "$dir/load.json" \
            --timeout "$DRAIN_TIMEOUT" "$@" &
        DRAIN_PID=$!
        wait "$LOAD_PID"
        LOAD_PID=""
    else
        wait "$LOAD_PID"
        LOAD_PID=""
        $HELPER drain --load-json "$dir/load.json" --timeout "$DRAIN_TIMEOUT" "$@" &
        DRAIN_PID=$!
    fi
    wait "$DRAIN_PID"
    DRAIN_PID=""
}

# -- gomail -------------------------------------------------------------------------
run_gomail() {  # run_gomail ROUND SEQ
    local round=$1 seq=$2 dir=$WORK/gomail-$1 port authport relay="" delivery="" sink_args=()
    mkdir -p "$dir"
    port=$($HELPER freeport)
    authport=$($HELPER freeport)
    [[ $authport != "$port" ]] || authport=$($HELPER freeport)
    if [[ $MODE != local ]]; then
        # gomail relays everything to its own smtp-sink (no STARTTLS offered, no
        # credentials configured: plaintext), counted like the Postfix side.
        start_sink "$dir" "$port"
        relay="forwardSMTP = true
forwardHost = \"127.0.0.1\"
forwardPort = $SINK_PORT"
        delivery="[delivery]
tlsVerify = false
retryInitialDelay = 5"
        sink_args=(--sink-out "$dir/sink.out")
    else
        sink_args=(--maildir "$dir/data/spool/mailbox/$RCPT/new")
    fi
    cat >"$dir/gomail.toml" <<EOF
smtpHost = "127.0.0.1"
smtpPort = $port
dataDir = "$dir/data"
queueSize = 1000000
workerCount = $WORKERS
enableHealthCheck = false
$relay

[security]
requireAuth = false
allowLocalOnly = true

[smtp]
maxConnectionsPerIP = 100

[spool]
minFreeSpaceMB = 0

# Not used here, but listening: on a free port, so a busy 8090 cannot stop the run.
[nginxAuth]
listen = ["tcp:$authport:interface=127.0.0.1"]

$delivery
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
    local to=""
    [[ $MODE != local ]] && to=" relaying to smtp-sink on 127.0.0.1:$SINK_PORT (workerCount $WORKERS)"
    log "gomail round $round: pid $GOMAIL_PID on 127.0.0.1:$port$to, sending $MESSAGES messages"

    measure "$dir" "$port" "$GOMAIL_PID" --kind gomail --round "$round" --out "$WORK/runs/run-$seq.json" \
        --log "$dir/gomail.log" --server-pid "$GOMAIL_PID" --source-json "$dir/source.json" \
        --queue-dir "$dir/data/spool/queue" --failed-dir "$dir/data/spool/failed" "${sink_args[@]}"

    stop_pid "$GOMAIL_PID" 45
    GOMAIL_PID=""
    if [[ -n $SINK_PID ]]; then
        stop_pid "$SINK_PID" 5
        SINK_PID=""
    fi
    save_log "$dir/gomail.log" "gomail-round$round.log"
    save_log "$dir/smtp-source.out" "gomail-round$round.smtp-source.out"
    # The spool and Maildirs stay until the end (see "File system state" in bench/README.md).
    sync
}

# -- Postfix --------------------------------------------------------------------------
run_postfix() {  # run_postfix ROUND SEQ
    local round=$1 seq=$2 dir=$WORK/postfix-$1 port sinkport local_delivery="" delivered_args=() where
    mkdir -p "$dir/conf" "$dir/queue" "$dir/data"
    chmod 755 "$dir" "$dir/queue"
    chown postfix "$dir/data"
    port=$($HELPER freeport)
    start_sink "$dir" "$port"
    sinkport=$SINK_PORT
    if [[ $MODE == local ]]; then
        # The virtual delivery agent writes each message into a Maildir (as gomail's
        # local delivery does), as the unprivileged user nobody.
        mkdir -p "$dir/mail"
        chown nobody "$dir/mail"
        local_delivery="virtual_mailbox_domains = ${RCPT#*@}
virtual_mailbox_base = $dir/mail
virtual_mailbox_maps = static:${RCPT%@*}/
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$(id -g nobody)
virtual_minimum_uid = 100"
        delivered_args=(--maildir "$dir/mail/${RCPT%@*}/new")
        where="delivering into a Maildir under $dir/mail"
    else
        delivered_args=(--sink-out "$dir/sink.out")
        where="relaying to smtp-sink on 127.0.0.1:$sinkport"
    fi

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
# Room for the largest size of the ladder (10 MB of payload plus headers).
message_size_limit = 104857600
mailbox_size_limit = 0
virtual_mailbox_limit = 0
$local_delivery
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
    log "postfix round $round: 127.0.0.1:$port $where, sending $MESSAGES messages"
    # Its CPU is the master's and its daemons' (those that exit pass theirs to the master).
    local master_pid
    master_pid=$(tr -dc 0-9 <"$dir/queue/pid/master.pid")

    measure "$dir" "$port" "$master_pid" --kind postfix --round "$round" --out "$WORK/runs/run-$seq.json" \
        --log "$dir/maillog" --server-pid "$master_pid" "${delivered_args[@]}" --expected-sessions "$EXPECTED_SESSIONS"

    stop_postfix
    stop_pid "$SINK_PID" 5
    SINK_PID=""
    save_log "$dir/maillog" "postfix-round$round.maillog"
    save_log "$dir/smtp-source.out" "postfix-round$round.smtp-source.out"
    sync
}

# -- the run ----------------------------------------------------------------------------
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
GOMAIL_ENV=$(env | grep -E '^GOMAIL_' | grep -viE 'PASSWORD' | sort | tr '\n' ' ' | sed 's/ $//' || true)
[[ -z $GOMAIL_ENV ]] || log "gomail configuration overridden from the environment: $GOMAIL_ENV"
case $MODE in
e2e) log "end-to-end relay benchmark: $ROUNDS round(s) x $MESSAGES messages of $SIZE bytes, $SESSIONS sessions, $CONNECTION_MODE, gomail workerCount $WORKERS" ;;
local) log "intake benchmark, local Maildir delivery on both sides: $ROUNDS round(s) x $MESSAGES messages of $SIZE bytes, $SESSIONS sessions, $CONNECTION_MODE" ;;
*) log "intake benchmark, both relaying to smtp-sink: $ROUNDS round(s) x $MESSAGES messages of $SIZE bytes, $SESSIONS sessions, $CONNECTION_MODE, gomail workerCount $WORKERS" ;;
esac
log "work dir $WORK, load average $LOADAVG_START"
seq=0
for ((round = 1; round <= ROUNDS; round++)); do
    seq=$((seq + 1)); run_gomail "$round" "$seq"
    seq=$((seq + 1)); run_postfix "$round" "$seq"
done

if [[ $MODE != local ]]; then
    GOMAIL_CONFIG="forwardSMTP=true to smtp-sink (plaintext, no credentials), workerCount=$WORKERS, delivery.tlsVerify=false, delivery.retryInitialDelay=5, queueSize=1000000, maxConnectionsPerIP=100, minFreeSpaceMB=0, nginxAuth.listen on a free port, other keys default (logAllEmails=true, ioThreads=8, batchSize=20, connectionIdleTimeout=10)"
    POSTFIX_CONFIG="relayhost=smtp-sink, default durable queue, chroot off, maillog_file, message_size_limit=100 MB"
else
    GOMAIL_CONFIG="local Maildir delivery, workerCount=$WORKERS, queueSize=1000000, maxConnectionsPerIP=100, minFreeSpaceMB=0, nginxAuth.listen on a free port, other keys default (logAllEmails=true, ioThreads=8)"
    POSTFIX_CONFIG="virtual(8) Maildir delivery as nobody, default durable queue, chroot off, maillog_file, message_size_limit=100 MB"
fi
PARAMS=$(
    cat <<EOF
{"mode": "$MODE", "workers": $WORKERS, "rounds": $ROUNDS, "messages": $MESSAGES, "sessions": $SESSIONS, "size": $SIZE,
 "connection_mode": "$CONNECTION_MODE", "smtp_source": "smtp-source ${SMTP_SOURCE_OPTS[*]} 127.0.0.1:PORT",
 "timestamp": "$STAMP", "cpus": $(nproc), "loadavg_start": "$LOADAVG_START",
 "gomail_commit": "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)",
 "gomail_version": "$("$PY" -c 'import gomail; print(gomail.__version__)' 2>/dev/null || echo unknown)",
 "twisted_version": "$("$PY" -c 'import twisted; print(twisted.__version__)' 2>/dev/null || echo unknown)",
 "postfix_version": "$(postconf -dh mail_version 2>/dev/null || echo unknown)",
 "gomail_config": "$GOMAIL_CONFIG",
 "gomail_env_overrides": "$GOMAIL_ENV",
 "postfix_config": "$POSTFIX_CONFIG",
 "logs": "$LOGS"}
EOF
)
$HELPER summarize --runs "$WORK/runs" --params "$PARAMS" --out "$RESULTS/$MODE-$STAMP.json"
