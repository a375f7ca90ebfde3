#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up; notebooks clean and in sync with aimass/ and README.md; every notebook
# executed once, in a real kernel (tools/render_docs.py: the notebook tests and the HTML docs check in one run); then
# every pytest tier (in parallel, but for the serial and browser tests). Extra arguments go to pytest. For the quick
# inner loop, see tools/quick.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash tools/setup.sh
bash tools/setup-browser.sh
bash tools/setup-prometheus.sh
export PYTHONUNBUFFERED=1

echo "== notebooks are the source: nbdev-clean and nbdev-export must leave no diff ($((SECONDS - start)) s so far)"
.venv/bin/nbdev-clean
.venv/bin/nbdev-export
.venv/bin/python tools/readme.py --check
if [ -n "$(git status --porcelain -- nbs aimass README.md)" ]; then
  git status --short -- nbs aimass README.md
  echo "Notebooks were not clean or aimass/ was not what they export: run nbdev-clean and nbdev-export, then commit." >&2
  exit 1
fi

echo "== notebooks: each run once in a real kernel, skipping what nbdev-test skips, and rendered ($((SECONDS - start)) s so far)"
.venv/bin/python tools/render_docs.py

# Most tests wait on subprocesses and servers: three workers keep the two cores busy (one torch thread each). The
# `serial` tests judge latency under load, and the browser drives a real JupyterLab: they run alone, afterwards.
workers=${AIMASS_TEST_WORKERS:-3}
echo "== pytest: every tier but serial and browser, $workers at a time ($((SECONDS - start)) s so far)"
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -n "$workers" -m "not serial and not browser" "$@"
echo "== pytest: the serial and browser tests, one at a time ($((SECONDS - start)) s so far)"
.venv/bin/python -m pytest -q -m "serial or browser" "$@" || [ $? -eq 5 ]  # 5: a -k or path left none of them
echo "== done in $((SECONDS - start)) s"
