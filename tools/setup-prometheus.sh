#!/usr/bin/env bash
# Debian's Prometheus for the metrics test (tests/test_metrics.py scrapes a live aimass server with it, on 127.0.0.1).
# Installs it when missing and this user can; otherwise the Prometheus test is skipped with a reason.
set -euo pipefail
command -v prometheus >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # The test runs the binary itself, on 127.0.0.1: the package's service must not start (it would listen on every
  # interface and outlive the tests). policy-rc.d answering 101 tells the package scripts not to start it.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; fi
  trap 'if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  # --no-install-recommends: the server binary alone (no node exporter)
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
else
  echo "prometheus is not installed and cannot be installed by this user: the Prometheus test will be skipped." >&2
fi
