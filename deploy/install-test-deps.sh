#!/usr/bin/env bash
# System packages the test suite needs beyond the Python venv (run as root, Debian 12).
#
# tests/e2e/test_report_browser.py loads the run reports in Debian's headless Chromium
# (/usr/bin/chromium). This installs it with apt-get, only when it is missing, without
# recommended packages (upower, udev, mesa, notification daemon... are not needed headless),
# plus one font so the screenshots show text. Debian 12: ~81 MB download, ~290 MB installed
# on a bare image; the apt step took ~1 min on the 2-core dev machine.
#
# Usage:  sudo deploy/install-test-deps.sh      (idempotent; a no-op when chromium is there)
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
    echo "install-test-deps: $CHROMIUM present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-test-deps: $CHROMIUM is missing and installing it needs root: sudo $0" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
apt-get update
apt-get install -y --no-install-recommends chromium fonts-dejavu-core
echo "install-test-deps: apt-get took $(( $(date +%s) - start )) s"

# Check that it really runs headless (missing shared libraries would show up here).
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
out=$("$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
      --disable-component-update --disable-sync --user-data-dir="$profile" \
      --dump-dom 'data:text/html,<p>chromium-ok</p>' 2>/dev/null)
if [[ "$out" != *chromium-ok* ]]; then
    echo "install-test-deps: $CHROMIUM is installed but does not render a page headless" >&2
    exit 1
fi
echo "install-test-deps: $("$CHROMIUM" --version 2>/dev/null) works headless"
