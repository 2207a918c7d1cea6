#!/usr/bin/env bash
# What the test suite needs besides Python packages: Debian's Chromium for the browser tests, and
# the agent jail's programs (bubblewrap; socat for the jailed Claude Code CLI's model bridge;
# setpriv and prlimit from util-linux), and nginx and systemd-analyze for the deployment files.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v socat >/dev/null || missing+=(socat)
{ command -v setpriv >/dev/null && command -v prlimit >/dev/null; } || missing+=(util-linux)
# The deployment files' checks (tests/ops/test_deploy_files.py): nginx -t, systemd-analyze verify.
command -v nginx >/dev/null || missing+=(nginx)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "test-prereqs: installing Debian ${missing[*]}"
    # RUNLEVEL=1: a package's own service (nginx's) is installed, not started.
    apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test-prereqs: missing ${missing[*]} and not root: browser tests skip, jail tests fail" >&2
  fi
fi
