#!/bin/sh
# Install with apt-get the Debian packages of the commands that are missing.
# usage: install-missing.sh WHO COMMAND[:PACKAGE]... [-- PACKAGE...]
# WHO names the caller in messages; a COMMAND without :PACKAGE is its own package; the packages
# after -- are installed too, but only when something was missing. Debian/Ubuntu only; needs root
# (or sudo) for apt-get.
set -eu
who=$1
shift
missing=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    command -v "${1%%:*}" >/dev/null 2>&1 || missing="$missing ${1#*:}"
    shift
done
[ $# -gt 0 ] && shift
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$who: please install:$missing (no apt-get here)" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "$who: installing$missing" >&2
$sudo apt-get update -qq
# shellcheck disable=SC2086  # the package list is meant to split
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing "$@" >&2
