#!/usr/bin/env bash
# Build the supervisor image, offline, only when its inputs changed.
#
#   scripts/build-supervisor-image.sh [PYTHON]
#
# PYTHON (default .venv/bin/python) is the host interpreter whose pip prepares the wheelhouse: this
# project as a wheel, and every dependency downloaded as a binary wheel for the *base image's* Python
# version (pip download --python-version/--platform), so the build itself runs `pip install --no-index`.
# The docker client copied into the image is the host's `docker` binary (it links only libc).
# The base image is, in order: $BASE_IMAGE; python:3.12-slim if present locally; agent-runner/base:bookworm
# (sandbox-image/build.sh makes it with debootstrap when missing).
# Result: agent-runner/supervisor:latest (or $SUPERVISOR_IMAGE), labelled with the inputs' hash.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
python=${1:-$root/.venv/bin/python}
image=${SUPERVISOR_IMAGE:-agent-runner/supervisor:latest}
local_base=agent-runner/base:bookworm
tmp=${TMPDIR:-/var/tmp}

say() { printf 'supervisor-image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

docker version >/dev/null 2>&1 || die "no Docker engine answers (run scripts/docker-engine.sh)"
docker_cli=$(command -v docker) || die "no docker client on PATH"

if [ -n "${BASE_IMAGE:-}" ]; then
    base=$BASE_IMAGE
elif docker image inspect python:3.12-slim >/dev/null 2>&1; then
    base=python:3.12-slim
else
    base=$local_base
    docker image inspect "$base" >/dev/null 2>&1 || "$root/sandbox-image/build.sh" "$python" \
        || die "no base image: $local_base could not be built"
fi
docker image inspect "$base" >/dev/null 2>&1 || die "base image $base is not present locally"
base_id=$(docker image inspect --format '{{.Id}}' "$base")

# Everything that ends up in the image: the Dockerfile, this script, the package's sources, the base, the CLI.
inputs_hash=$(
    cd "$root"
    {
        cat Dockerfile "$here/build-supervisor-image.sh" pyproject.toml
        find runner policy -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
        echo "$base_id"
        sha256sum <"$docker_cli"
    } | sha256sum | cut -c1-16
)
if [ "$(docker image inspect --format '{{index .Config.Labels "org.agent-runner.inputs-hash"}}' "$image" 2>/dev/null)" = "$inputs_hash" ]; then
    say "$image is up to date ($inputs_hash)"
    exit 0
fi

pyver=$(docker run --rm --network none --entrypoint python3 "$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    || die "the base image $base has no python3"
ctx=$(mktemp -d "$tmp/agent-runner-supervisor.XXXXXX")
trap 'rm -rf "$ctx" "$ctx.log"' EXIT
cp "$root/Dockerfile" "$ctx/"
cp "$docker_cli" "$ctx/docker"
mkdir "$ctx/wheels"
say "wheelhouse for Python $pyver"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$ctx/wheels" "$root" >"$ctx.log" 2>&1 \
    || { tail -20 "$ctx.log" >&2; die "could not build the agent-runner wheel"; }
"$python" -m pip download --quiet --dest "$ctx/wheels" --only-binary=:all: \
    --python-version "$pyver" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64 \
    "$ctx"/wheels/agent_runner-*.whl >"$ctx.log" 2>&1 \
    || { tail -20 "$ctx.log" >&2; die "could not download the dependencies' wheels"; }

say "building $image from $base"
docker build --quiet \
    --build-arg BASE_IMAGE="$base" \
    --build-arg INPUTS_HASH="$inputs_hash" \
    --tag "$image" "$ctx" >"$ctx.log" 2>&1 || { tail -30 "$ctx.log" >&2; die "docker build failed"; }
docker image prune --force --filter label=org.agent-runner.stage=supervisor-build >/dev/null 2>&1 || true
say "built $image ($inputs_hash)"
