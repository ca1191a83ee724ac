# The agent-runner supervisor: `agent-runner serve` with the docker CLI, built offline.
#
#   scripts/build-supervisor-image.sh      (prepares the context: wheels/ and docker, then builds)
#
# The context is not the repository: the script puts a wheelhouse (`wheels/`, this project and every
# dependency, for the base image's Python) and the host's docker client binary (`docker`) next to this file.
# Nothing is fetched during the build, except git through apt when the base image has none (python:*-slim);
# the offline base agent-runner/base:bookworm has git.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# So the build script can remove this stage's leftover image (the classic builder keeps it) and nothing else.
LABEL org.agent-runner.stage=supervisor-build
COPY wheels /wheels
RUN python3 -m venv /opt/agent-runner \
    && /opt/agent-runner/bin/pip install --quiet --no-index --no-cache-dir --find-links /wheels agent-runner \
    # The supervisor never runs the Claude Code CLI bundled in the SDK's wheel: the agent's CLI runs inside
    # the sandbox image and is attached with `docker exec -i`. Dropping it saves ~200 MB.
    && rm -f /opt/agent-runner/lib/python3*/site-packages/claude_agent_sdk/_bundled/claude

FROM ${BASE_IMAGE}
ARG INPUTS_HASH=dev
LABEL org.opencontainers.image.title="agent-runner supervisor" \
      org.agent-runner.inputs-hash="${INPUTS_HASH}"
RUN command -v git >/dev/null 2>&1 || { apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git ca-certificates \
        && rm -rf /var/lib/apt/lists/*; }
# The host's docker client (a static-enough binary: it links only libc). Only the client: the engine is
# the host's, reached through the socket that compose mounts into this one container.
COPY docker /usr/local/bin/docker
COPY --from=build /opt/agent-runner /opt/agent-runner
# uid 1000 on purpose: it is the sandbox's user (runner/sandbox/base.py SANDBOX_UID), so the workspaces
# this process writes are the sandbox's to edit without a root chown. The Docker socket's group is added at
# run time (compose `group_add: [$DOCKER_GID]`), because its number is the host's and varies.
# Written directly: a minbase Debian has no useradd.
RUN (getent group 1000 >/dev/null || echo 'agent-runner:x:1000:' >>/etc/group) \
    && (getent passwd 1000 >/dev/null || echo 'agent-runner:x:1000:1000::/home/agent-runner:/bin/sh' >>/etc/passwd) \
    && mkdir -p /home/agent-runner /var/lib/agent-runner \
    && chown 1000:1000 /home/agent-runner /var/lib/agent-runner
ENV PATH=/opt/agent-runner/bin:/usr/local/bin:/usr/bin:/bin \
    HOME=/home/agent-runner \
    PYTHONUNBUFFERED=1 \
    AGENT_RUNNER_HOME=/var/lib/agent-runner \
    AGENT_RUNNER_HOST=0.0.0.0 \
    AGENT_RUNNER_PORT=8080
USER 1000:1000
WORKDIR /home/agent-runner
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('AGENT_RUNNER_PORT', '8080'), timeout=4).read()"]
ENTRYPOINT ["agent-runner"]
CMD ["serve"]
