#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, notebooks clean and in sync with aimass/, every notebook
# executed (nbdev-test), then the pytest integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/setup-browser.sh
export PYTHONUNBUFFERED=1

echo "== notebooks are the source: nbdev-clean and nbdev-export must leave no diff"
.venv/bin/nbdev-clean
.venv/bin/nbdev-export
.venv/bin/python tools/readme.py --check
if [ -n "$(git status --porcelain -- nbs aimass README.md)" ]; then
  git status --short -- nbs aimass README.md
  echo "Notebooks were not clean or aimass/ was not what they export: run nbdev-clean and nbdev-export, then commit." >&2
  exit 1
fi

echo "== nbdev-test: every notebook, top to bottom"
.venv/bin/nbdev-test --n-workers 2

echo "== docs: every notebook executed in a real kernel and rendered to HTML (nbconvert; Quarto is not installed here)"
.venv/bin/python tools/render_docs.py

echo "== pytest"
.venv/bin/python -m pytest -q "$@"
