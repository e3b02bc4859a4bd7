#!/bin/sh
# Install Debian's chromium when it is missing: the dashboard's browser test
# (tests/integration/test_serve_browser.py) drives it headless. Debian/Ubuntu only; needs root
# (or sudo) for apt-get.
set -eu
command -v chromium >/dev/null 2>&1 && exit 0
command -v chromium-browser >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-browser: please install chromium (no apt-get here)" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "ensure-browser: installing chromium" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >&2
