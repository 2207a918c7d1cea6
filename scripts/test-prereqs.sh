#!/usr/bin/env bash
# What the test suite needs besides Python packages: Debian's Chromium for the browser tests.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "test-prereqs: installing Debian chromium + chromium-driver"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "test-prereqs: /usr/bin/chromium missing and not root: browser tests will skip" >&2
  fi
fi
