#!/bin/sh
# Install the image tools `make images` needs when they are missing: buildah (builds OCI images
# from the Dockerfiles without a daemon) and mmdebstrap (builds the Debian base when the Python
# base image cannot be pulled). Debian/Ubuntu only; needs root (or sudo) for apt-get.
set -eu
missing=""
command -v buildah >/dev/null 2>&1 || missing="$missing buildah"
command -v mmdebstrap >/dev/null 2>&1 || missing="$missing mmdebstrap"
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-image-tools: please install:$missing (no apt-get here)" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "ensure-image-tools: installing$missing" >&2
$sudo apt-get update -qq
# shellcheck disable=SC2086  # the package list is meant to split
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing uidmap >&2
