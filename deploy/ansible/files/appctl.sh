#!/bin/sh
# Runs the releases of one app as background processes, without systemd.
#
#   appctl.sh start RELEASE [COMMAND]  start the release (stopped first if up) in a session of its
#                                      own, supervised: started again whenever it exits, after
#                                      1 s, doubling up to 30 s while it keeps failing within a
#                                      minute; COMMAND (shell) is saved, so a later start reuses it
#   appctl.sh stop RELEASE             SIGTERM the release's process group (the app gets it and
#                                      its supervisor waits for it), SIGKILL after 10 s
#   appctl.sh status RELEASE           exit 0 when the release's supervisor is alive
#   appctl.sh supervise RELEASE        (what start runs) the supervisor itself
#   appctl.sh stop-all                 stop every release of the app
#   appctl.sh install RELEASE DIR      stop the release, then make DIR (a fresh unpack of its
#                                      archive, in releases/) its directory, replacing the old one
#   appctl.sh deps RELEASE PYTHON      install the release's requirements.txt into an environment
#                                      of its own (releases/RELEASE/.venv, made with PYTHON's venv);
#                                      says "installed", or "none" for a release without one
#
# Layout (next to this script): releases/RELEASE (the release's archive unpacked, with its .env),
# releases/.RELEASE.unpack (deploy.yml unpacks there, then swaps it in), run/RELEASE.sh (its start
# script), run/RELEASE.pid (its supervisor, leading the release's process group), run/RELEASE.child
# (the app's own process now), run/RELEASE.exits (how often it exited since its start: deploy.yml
# fails a release that exits while it is checked), logs/RELEASE.log (the app's output and the
# supervisor's restarts). release.py (beside this script) decides which release serves: it keeps
# current -> releases/RELEASE, current.json, and edge/ (the app's two slots and which serves).
set -eu
APP_DIR=$(cd "$(dirname "$0")" && pwd)
cd "$APP_DIR"

alive() {  # alive PID: the process exists and is not a zombie nobody reaped yet
    state=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ]
}

stop_pidfile() {
    [ -s "$1" ] || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    if alive "$pid"; then
        # The release leads its own session (setsid): signal the whole group, children too.
        kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        i=0
        while alive "$pid" && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL -"$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

start() {  # start RELEASE [COMMAND]
    mkdir -p run logs
    if [ -n "${2:-}" ]; then
        # The release's own environment, when it has one, comes first on PATH: its python3.
        printf '#!/bin/sh\ncd %s || exit 1\n[ -d .venv/bin ] && PATH="$PWD/.venv/bin:$PATH"\nset -a; . ./.env; set +a\nexec %s\n' \
            "'$APP_DIR/releases/$1'" "$2" >"run/$1.sh"
    fi
    [ -f "run/$1.sh" ] || { echo "appctl.sh: release $1 has no start command" >&2; exit 2; }
    stop_pidfile "run/$1.pid"
    echo 0 >"run/$1.exits"
    # setsid: the app outlives the SSH session and leads a process group we can stop as one.
    setsid nohup sh "$APP_DIR/appctl.sh" supervise "$1" >>"logs/$1.log" 2>&1 </dev/null &
    echo $! >"run/$1.pid"
}

supervise() {  # supervise RELEASE: run run/RELEASE.sh, again each time it ends, until stopped
    exits=0
    delay=1
    child=
    # A stop signals the whole group: the app ends as it does on SIGTERM (finishing what it
    # serves), and the supervisor waits for that instead of ending first.
    trap 'trap - TERM INT; kill -TERM "$child" 2>/dev/null || true; wait; exit 0' TERM INT
    while :; do
        started=$(date +%s)
        sh "run/$1.sh" </dev/null &
        child=$!
        echo "$child" >"run/$1.child"
        status=0
        wait "$child" || status=$?
        exits=$((exits + 1))
        echo "$exits" >"run/$1.exits"
        ran=$(($(date +%s) - started))
        if [ "$ran" -ge 60 ]; then delay=1; fi
        echo "appctl: release $1 exited (status $status) after ${ran} s; starting it again in ${delay} s"
        sleep "$delay"
        delay=$((delay * 2 > 30 ? 30 : delay * 2))
    done
}

command=${1:?usage: appctl.sh start|stop|status|install|deps|supervise RELEASE ... | stop-all}
case $command in
start) start "${2:?release}" "${3:-}" ;;
supervise) supervise "${2:?release}" ;;
stop) stop_pidfile "run/${2:?release}.pid" ;;
status)
    if [ -s "run/${2:?release}.pid" ] && alive "$(cat "run/$2.pid")"; then exit 0; else exit 1; fi
    ;;
install)
    # A process of the release runs from the directory being replaced: it goes first.
    stop_pidfile "run/${2:?release}.pid"
    rm -rf -- "releases/$2"
    mv -T -- "${3:?unpacked directory}" "releases/$2"
    ;;
deps)
    cd "releases/${2:?release}"
    if [ ! -f requirements.txt ]; then echo none; exit 0; fi
    "${3:?python}" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-input \
        -r requirements.txt
    echo installed
    ;;
stop-all)
    for file in run/*.pid; do
        [ -e "$file" ] && stop_pidfile "$file"
    done
    ;;
*) echo "appctl.sh: unknown command $command" >&2; exit 2 ;;
esac
exit 0
