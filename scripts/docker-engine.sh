#!/usr/bin/env bash
# Make sure a Docker engine answers. Idempotent: returns at once when one does.
#
# On a fresh Debian machine (as root) it installs docker.io and starts dockerd in the background.
# Anywhere else it fails with one line saying what to do. A dockerd killed with the session that
# started it leaves /var/run/docker.pid behind; a stale pid file is removed before starting.
set -euo pipefail

say() { printf 'docker-engine: %s\n' "$*" >&2; }
answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if answers; then
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    say "no Docker engine answers and we are not root: install Docker (https://docs.docker.com/engine/install/) and start it, or run as root on Debian to have it installed"
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no Docker engine and no apt-get: install Docker for this system and start it"
        exit 1
    fi
    say "installing docker.io with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq docker.io >/dev/null
fi
if ! command -v docker >/dev/null 2>&1; then
    say "dockerd is installed but the docker client is missing: apt-get install docker.io"
    exit 1
fi

pidfile=/var/run/docker.pid
if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        say "dockerd (pid $pid) is running but does not answer yet; waiting"
    else
        say "removing stale $pidfile (pid ${pid:-?} is gone)"
        rm -f "$pidfile" /var/run/docker.sock
    fi
fi

if ! [ -f "$pidfile" ]; then
    log=/var/log/agent-runner-dockerd.log
    say "starting dockerd in the background (log: $log)"
    # setsid: the engine must outlive the shell (and pytest) that started it.
    setsid nohup dockerd >"$log" 2>&1 </dev/null &
fi

for _ in $(seq 1 60); do
    if answers; then
        say "engine is up ($(docker version --format '{{.Server.Version}}'))"
        exit 0
    fi
    sleep 1
done
say "dockerd did not answer within 60 s; see /var/log/agent-runner-dockerd.log"
exit 1
