#!/bin/sh
# Install Prometheus when it is missing: tests/cluster/test_monitoring.py starts a real one on
# loopback to run every PromQL expression the chart ships (the package's own service is not used).
# Debian/Ubuntu only; needs root (or sudo) for apt-get.
exec "$(dirname "$0")/install-missing.sh" ensure-prometheus prometheus
