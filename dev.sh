#!/bin/sh
# gomail quick start: "./dev.sh run" runs the server, "./dev.sh test" runs the tests.
# Both create ./.venv on first use (needs python3 >= 3.11 with venv: Debian's python3-venv).
set -eu
cd "$(dirname "$0")"
VENV=${VENV_DIR:-.venv}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV" || {
            echo "dev.sh: could not create $VENV; on Debian/Ubuntu install python3-venv first" >&2
            exit 1
        }
    fi
    stamp="$VENV/.gomail-installed"
    if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip
        # compat mode: twistd finds twisted/plugins/gomail_plugin.py in this tree (see STYLE.md)
        "$VENV/bin/python" -m pip install -q -e ".[test]" --config-settings editable_mode=compat
        touch "$stamp"
    fi
}

case "${1:-}" in
run)
    shift
    setup
    exec "$VENV/bin/twistd" -n gomail --config conf/gomail.toml "$@"
    ;;
test)
    shift
    setup
    exec "$VENV/bin/python" -m tests.runner "$@"
    ;;
*)
    echo "usage: ./dev.sh run [twistd gomail options] | ./dev.sh test [trial test names]" >&2
    exit 2
    ;;
esac
