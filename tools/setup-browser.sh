#!/usr/bin/env bash
# Debian's Chromium for the JupyterLab browser test (Playwright drives it; no browser download).
# Installs it when missing and this user can; otherwise the browser test is skipped with a reason.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "chromium is not installed and cannot be installed by this user: the browser test will be skipped." >&2
fi
