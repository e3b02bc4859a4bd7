#!/bin/sh
# Install Debian packages whose command is missing: each argument is COMMAND=PACKAGE, and
# EXTRA_PACKAGES (space-separated) come along when anything is installed. Debian/Ubuntu only;
# needs root (or sudo) for apt-get. Used by ensure-image-tools.sh and `make browser`.
set -eu
missing=""
for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing="$missing ${pair#*=}"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-missing: please install:$missing (no apt-get here)" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-missing: installing$missing" >&2
$sudo apt-get update -qq
# shellcheck disable=SC2086  # the package lists are meant to split
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing ${EXTRA_PACKAGES:-} >&2
