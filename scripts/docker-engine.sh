#!/usr/bin/env bash
# Make sure a Docker engine answers, with gVisor (runsc) registered where we can. Idempotent.
#
# On a fresh Debian machine (as root) it installs docker.io and starts dockerd in the background.
# Anywhere else it fails with one line saying what to do. A dockerd killed with the session that
# started it leaves /var/run/docker.pid behind; a stale pid file is removed before starting.
#
# As root on Debian it also installs Debian's `runsc` and registers it in /etc/docker/daemon.json
# (merged with what is there), then SIGHUPs dockerd to reload: the sandbox backend uses it by default
# (AGENT_RUNNER_RUNTIME). Two entries:
#   runsc      `--platform=ptrace` (no KVM needed) `--network=none` (runsc refuses `--network none`
#              containers without it) `--host-uds=open` (the model socket is a bind-mounted host Unix
#              socket; without it connect() fails with EPERM): every container of a task but one;
#   runsc-net  `--platform=ptrace --network=host`: the dependency set-up, the one container with network
#              (gVisor's own netstack refuses this engine's network namespaces; `host` here is the
#              container's own namespace, on the isolated set-up bridge).
# Set AGENT_RUNNER_NO_RUNSC=1 to skip this part.
set -euo pipefail

say() { printf 'docker-engine: %s\n' "$*" >&2; }
answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
daemon_json=/etc/docker/daemon.json
runsc_args='["--platform=ptrace", "--network=none", "--host-uds=open"]'
runsc_net_args='["--platform=ptrace", "--network=host"]'

# Install runsc and write its entry into daemon.json; prints "changed" when the file changed.
register_runsc() {
    [ "${AGENT_RUNNER_NO_RUNSC:-0}" = 1 ] && return 0
    [ "$(id -u)" = 0 ] || return 0
    if ! command -v runsc >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || return 0
        say "installing runsc (gVisor) and jq with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc jq >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc jq >/dev/null; } \
            || { say "could not install runsc; sandboxes will use runc"; return 0; }
    fi
    command -v jq >/dev/null 2>&1 || { say "no jq to edit $daemon_json; sandboxes will use runc"; return 0; }
    local runsc merged
    runsc=$(command -v runsc)
    mkdir -p "$(dirname "$daemon_json")"
    [ -s "$daemon_json" ] || echo '{}' >"$daemon_json"
    merged=$(jq --arg path "$runsc" --argjson args "$runsc_args" --argjson net "$runsc_net_args" \
        '.runtimes = ((.runtimes // {}) + {runsc: {path: $path, runtimeArgs: $args},
                                           "runsc-net": {path: $path, runtimeArgs: $net}})' "$daemon_json") \
        || { say "$daemon_json is not valid JSON; not registering runsc"; return 0; }
    if [ "$merged" != "$(jq . "$daemon_json")" ]; then
        printf '%s\n' "$merged" >"$daemon_json.tmp" && mv "$daemon_json.tmp" "$daemon_json"
        echo changed
    fi
}

# dockerd re-reads daemon.json's runtimes on SIGHUP; wait until it lists runsc.
reload_engine() {
    local pid
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        say "registered runsc in $daemon_json; restart dockerd (or SIGHUP it) to use it"
        return 0
    fi
    kill -HUP "$pid"
    for _ in $(seq 1 50); do
        docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc-net"' && { say "runsc registered"; return 0; }
        sleep 0.2
    done
    say "dockerd did not pick up runsc from $daemon_json; sandboxes will use runc"
}

if answers; then
    if [ "$(register_runsc)" = changed ]; then
        reload_engine
    fi
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

register_runsc >/dev/null  # before the start: a fresh dockerd reads daemon.json itself

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
