# Shell helpers shared by the bench scripts (sourced, not run).
# They use the scripts' WORK, LOGS and KEEP_TMP variables.

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

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

finish_work() {  # finish_work RC: keep or remove $WORK, drop an empty $LOGS, exit with RC
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    rmdir "$LOGS" 2>/dev/null  # nothing saved (stopped early)
    exit "$1"
}
