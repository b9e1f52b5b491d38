#!/bin/sh
# Runs the releases of one app as background processes, without systemd.
#
#   appctl.sh start RELEASE [COMMAND]  start the release (stopped first if up) in a session of its
#                                      own, supervised: started again whenever it exits, after
#                                      1 s, doubling up to 30 s while it keeps failing within a
#                                      minute; COMMAND (shell) is saved, so a later start reuses it
#   appctl.sh stop RELEASE [SIGNAL]    SIGNAL (default TERM) to the release's process group (the
#                                      app gets it and its supervisor waits for it), SIGKILL
#                                      after 10 s; a release that is a container (its name in
#                                      run/RELEASE.container) has that container removed too
#   appctl.sh status RELEASE           exit 0 when the release's supervisor is alive
#   appctl.sh supervise RELEASE        (what start runs) the supervisor itself
#   appctl.sh stop-all                 stop every release of the app
#   appctl.sh install RELEASE DIR      stop the release, then make DIR (a fresh unpack of its
#                                      archive, in releases/) its directory, replacing the old one
#   appctl.sh deps RELEASE PYTHON      the release's requirements.txt installed in an environment
#                                      (made with PYTHON's venv) shared by every release with the
#                                      same requirements and python: venvs/KEY, built once, and
#                                      releases/RELEASE/.venv a link to it; environments no release
#                                      links to go; says "installed", "reused", or "none" for a
#                                      release without requirements
#   appctl.sh run RELEASE COMMAND      run COMMAND (shell) once in the release's directory as its
#                                      start script would (its .venv first on PATH, its .env
#                                      exported), in the foreground: the release command
#
# Layout (next to this script): releases/RELEASE (the release's archive unpacked, with its .env),
# releases/.RELEASE.unpack (deploy.yml unpacks there, then swaps it in), run/RELEASE.sh (its start
# script), run/RELEASE.pid (its supervisor, leading the release's process group), run/RELEASE.child
# (the app's own process now), run/RELEASE.exits (how often it exited since its start: deploy.yml
# fails a release that exits while it is checked), logs/RELEASE.log (the app's output and the
# supervisor's restarts), venvs/KEY (the environments releases link to), run/RELEASE.container
# (the container a release runs as: `podman run` in the foreground is its process). release.py (beside this script) decides which release serves: it keeps
# current -> releases/RELEASE, current.json, and edge/ (the app's two slots and which serves).
set -eu
APP_DIR=$(cd "$(dirname "$0")" && pwd)
cd "$APP_DIR"

alive() {  # alive PID: the process exists and is not a zombie nobody reaped yet
    state=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ]
}

stop_pidfile() {  # stop_pidfile FILE [SIGNAL]
    [ -s "$1" ] || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    signal=${2:-TERM}
    if alive "$pid"; then
        # The release leads its own session (setsid): signal the whole group, children too.
        kill -"$signal" -"$pid" 2>/dev/null || kill -"$signal" "$pid" 2>/dev/null || true
        i=0
        while alive "$pid" && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL -"$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

stop_release() {  # stop_release RELEASE [SIGNAL]
    stop_pidfile "run/$1.pid" "${2:-TERM}"
    # `podman run` forwards the signal to its container and --rm removes it; a client killed
    # before it could (SIGKILL after 10 s) leaves the container running: it goes here.
    if [ -s "run/$1.container" ]; then
        podman rm --force --ignore --time 5 "$(cat "run/$1.container")" >/dev/null 2>&1 || true
        rm -f "run/$1.container"
    fi
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

deps() {  # deps RELEASE PYTHON
    requirements="releases/$1/requirements.txt"
    if [ ! -f "$requirements" ]; then echo none; return 0; fi
    # Same requirements, same python: same environment (pip reaches the network once per lock).
    key=$({ cat "$requirements"; command -v "$2"; "$2" -c 'import sys; print(sys.version)'; } |
        sha256sum | cut -c1-64)
    venv="venvs/$key"
    if [ -f "$venv/.complete" ]; then
        result=reused
    else
        # Built where it stays (a venv's scripts name its absolute path, so a renamed one breaks
        # its console scripts); the .complete marker, written last, is what says it is whole: a
        # build killed halfway is thrown away by the next one, and no release links to it.
        rm -rf -- "$venv"
        mkdir -p venvs
        "$2" -m venv "$venv"
        if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            -r "$requirements"; then
            rm -rf -- "$venv"
            exit 1
        fi
        touch "$venv/.complete"
        result=installed
    fi
    # An archive's own .venv (a directory committed by mistake) makes way for the link.
    [ -L "releases/$1/.venv" ] || rm -rf -- "releases/$1/.venv"
    ln -sfn "$APP_DIR/$venv" "releases/$1/.venv.new"
    mv -T "releases/$1/.venv.new" "releases/$1/.venv"
    prune_venvs
    echo "$result"
}

prune_venvs() {  # an environment no release links to any more (its releases were replaced) goes
    for venv in venvs/*; do
        [ -d "$venv" ] || continue
        used=
        for link in releases/*/.venv; do
            if [ "$(readlink "$link" 2>/dev/null)" = "$APP_DIR/$venv" ]; then used=1; break; fi
        done
        [ -n "$used" ] || rm -rf -- "$venv"
    done
}

command=${1:?usage: appctl.sh start|stop|status|install|deps|run|supervise RELEASE ... | stop-all}
case $command in
start) start "${2:?release}" "${3:-}" ;;
supervise) supervise "${2:?release}" ;;
stop) stop_release "${2:?release}" "${3:-TERM}" ;;
status)
    if [ -s "run/${2:?release}.pid" ] && alive "$(cat "run/$2.pid")"; then exit 0; else exit 1; fi
    ;;
install)
    # A process of the release runs from the directory being replaced: it goes first.
    stop_release "${2:?release}"
    rm -rf -- "releases/$2"
    mv -T -- "${3:?unpacked directory}" "releases/$2"
    ;;
deps) deps "${2:?release}" "${3:?python}" ;;
run)
    cd "releases/${2:?release}"
    if [ -d .venv/bin ]; then PATH="$PWD/.venv/bin:$PATH"; fi
    set -a; . ./.env; set +a
    exec sh -c "${3:?command}" </dev/null
    ;;
stop-all)
    for file in run/*.pid; do
        [ -e "$file" ] && stop_release "$(basename "$file" .pid)"
    done
    ;;
*) echo "appctl.sh: unknown command $command" >&2; exit 2 ;;
esac
exit 0
