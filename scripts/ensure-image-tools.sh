#!/bin/sh
# Install the image tools `make images` needs when they are missing: buildah (builds OCI images
# from the Dockerfiles without a daemon) and mmdebstrap (builds the Debian base when the Python
# base image cannot be pulled), with uidmap. Debian/Ubuntu only; needs root (or sudo) for apt-get.
set -eu
EXTRA_PACKAGES=uidmap exec "$(dirname "$0")/install-missing.sh" buildah=buildah mmdebstrap=mmdebstrap
