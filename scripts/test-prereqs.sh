#!/usr/bin/env bash
# What the test suite needs besides Python packages: Debian's Chromium for the browser tests, and
# the agent jail's programs (bubblewrap; socat for the jailed Claude Code CLI's model bridge;
# setpriv and prlimit from util-linux).
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v socat >/dev/null || missing+=(socat)
{ command -v setpriv >/dev/null && command -v prlimit >/dev/null; } || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "test-prereqs: installing Debian ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test-prereqs: missing ${missing[*]} and not root: browser tests skip, jail tests fail" >&2
  fi
fi
