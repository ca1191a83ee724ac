#!/usr/bin/env bash
# Make sure a headless Chromium is on this machine for the task page's browser test. Idempotent.
#
# No browser can be downloaded by Playwright here (only the package registries answer), so the test drives
# Debian's `chromium` through Playwright's `executable_path`. As root on Debian this installs it with
# apt-get; anywhere else it fails with one line saying what to do. AGENT_RUNNER_CHROMIUM names another binary.
set -euo pipefail

say() { printf 'browser: %s\n' "$*" >&2; }
found() { command -v "${AGENT_RUNNER_CHROMIUM:-chromium}" >/dev/null 2>&1; }

found && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "chromium is missing: apt-get install chromium as root (or set AGENT_RUNNER_CHROMIUM)"
    exit 1
fi
say "installing chromium with apt-get"
# fonts-dejavu-core: a page screenshot needs at least one font with Latin and box-drawing glyphs.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null \
    || { apt-get update -qq >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core \
            >/dev/null; }
found || { say "chromium did not install"; exit 1; }
