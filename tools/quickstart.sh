#!/usr/bin/env bash
# The main job end to end on the default data: set up .venv, then train -> export -> bench -> serve -> query -> stop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python tools/quickstart.py "$@"
