#!/usr/bin/env bash
# The quick inner loop: the layer notebooks (nbs/0*, 1*, 2*) through nbdev-test, then the pytest tests that are
# neither slow, browser nor venv (see the markers in pyproject.toml). Run nbdev-export first when you changed a
# notebook: the tests import aimass/. Extra arguments go to pytest (e.g. -x, -k serve).
# CI and tools/test.sh run everything: the tutorials, the HTML docs check, and every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export PYTHONUNBUFFERED=1
start=$SECONDS

echo "== nbdev-test: the layer notebooks (one torch thread each: two at once share the two cores)"
OMP_NUM_THREADS=1 .venv/bin/nbdev-test nbs --file-re '^[0-2]' --n-workers 2 --timing

echo "== pytest: the quick tier ($((SECONDS - start)) s so far)"
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -n "${AIMASS_TEST_WORKERS:-3}" -m "not slow and not browser and not venv and not serial" "$@"
