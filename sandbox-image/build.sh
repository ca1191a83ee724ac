#!/usr/bin/env bash
# Build the sandbox image, offline, only when its inputs changed.
#
#   sandbox-image/build.sh [PYTHON]
#
# PYTHON is an interpreter with claude-agent-sdk installed (default: .venv/bin/python); the Claude
# Code CLI bundled in that wheel goes into the image. The base image is, in order: $BASE_IMAGE if
# set; python:3.12-slim if present locally (or pulled, with AGENT_RUNNER_PULL_BASE=1); otherwise a
# Debian bookworm made here with debootstrap and `docker import`ed as agent-runner/base:bookworm.
# Result: agent-runner/sandbox:latest, labelled with the inputs' hash, so a second run is a no-op.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
python=${1:-$root/.venv/bin/python}
image=${SANDBOX_IMAGE:-agent-runner/sandbox:latest}
local_base=agent-runner/base:bookworm

tmp=${TMPDIR:-/var/tmp}

say() { printf 'sandbox-image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
need_disk() {  # need_disk MIB WHAT
    local free_kb
    free_kb=$(df -Pk "$tmp" | awk 'NR==2 {print $4}')
    [ "$free_kb" -ge $(($1 * 1024)) ] || die "not enough disk for $2: $((free_kb / 1024)) MiB free in $tmp, $1 MiB needed"
}

docker version >/dev/null 2>&1 || die "no Docker engine answers (run scripts/docker-engine.sh)"

cli=$("$python" -c 'import claude_agent_sdk, pathlib; print(pathlib.Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude")') \
    || die "$python cannot import claude_agent_sdk (run: make venv)"
[ -x "$cli" ] || die "the claude-agent-sdk wheel has no bundled CLI at $cli"
cli_version=$(cut -d' ' -f1 "$(dirname "$cli")/claude.version")
version=$("$python" -c 'import importlib.metadata as m; print(m.version("agent-runner"))' 2>/dev/null || echo dev)

build_local_base() {
    command -v debootstrap >/dev/null 2>&1 || {
        [ "$(id -u)" = 0 ] || die "no base image and no debootstrap; as root: apt-get install debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    need_disk 1500 "the base image"
    local dir
    dir=$(mktemp -d "$tmp/agent-runner-base.XXXXXX")
    trap 'rm -rf "$dir"' RETURN
    say "building $local_base with debootstrap (a few minutes, once)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,git,ca-certificates \
        bookworm "$dir" http://deb.debian.org/debian >"$dir.log" 2>&1 \
        || die "debootstrap failed; see $dir.log"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . | docker import \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$local_base" >/dev/null
    rm -f "$dir.log"
}

if [ -n "${BASE_IMAGE:-}" ]; then
    base=$BASE_IMAGE
    docker image inspect "$base" >/dev/null 2>&1 || docker pull "$base" >/dev/null || die "base image $base is neither present nor pullable"
elif docker image inspect python:3.12-slim >/dev/null 2>&1; then
    base=python:3.12-slim
elif [ "${AGENT_RUNNER_PULL_BASE:-0}" = 1 ] && docker pull python:3.12-slim >/dev/null 2>&1; then
    base=python:3.12-slim
else
    base=$local_base
    docker image inspect "$base" >/dev/null 2>&1 || build_local_base
fi
base_id=$(docker image inspect --format '{{.Id}}' "$base")

inputs_hash=$(cat "$here/Dockerfile" "$here/model-forwarder.py" <(echo "$cli_version $version $base_id") | sha256sum | cut -c1-16)
if [ "$(docker image inspect --format '{{index .Config.Labels "org.agent-runner.inputs-hash"}}' "$image" 2>/dev/null)" = "$inputs_hash" ]; then
    say "$image is up to date ($inputs_hash)"
    exit 0
fi

need_disk 1200 "the sandbox image (the CLI alone is ~380 MB)"
ctx=$(mktemp -d "$tmp/agent-runner-ctx.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$here/model-forwarder.py" "$ctx/"
# A hard link when on the same filesystem: the CLI is ~380 MB.
ln "$cli" "$ctx/claude" 2>/dev/null || cp "$cli" "$ctx/claude"
mkdir "$ctx/wheels"
"$python" -m pip download --quiet --only-binary=:all: --dest "$ctx/wheels" pytest >/dev/null 2>&1 \
    || die "could not download the pytest wheel for the image"

say "building $image from $base (Claude Code CLI $cli_version)"
docker build --quiet \
    --build-arg BASE_IMAGE="$base" \
    --build-arg AGENT_RUNNER_VERSION="$version" \
    --build-arg CLAUDE_CLI_VERSION="$cli_version" \
    --build-arg INPUTS_HASH="$inputs_hash" \
    --tag "$image" "$ctx" >"$ctx.log" 2>&1 || { tail -20 "$ctx.log" >&2; die "docker build failed (log: $ctx.log)"; }
rm -f "$ctx.log"
say "built $image ($inputs_hash)"
