#!/usr/bin/env bash
# Creates .venv in the repo root and installs aimass (editable) with its dev tools. Safe to run again:
# it reinstalls only when pyproject.toml changed (its pytest settings aside).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.aimass-installed
# The pytest settings (markers, options) change no install: they are left out of the stamp.
# The extras the tests and notebooks need: dev tools, peft for the LoRA examples, optuna for tuning, LightGBM and its
# ONNX converter for the leaderboard, the real all-MiniLM-L6-v2 for the text tutorial and benchmark (each optional
# for users: aimass[lora], aimass[tune], aimass[trees], aimass[tutorials]).
extras="dev,lora,tune,trees,tutorials"
want=$( (echo "$extras"; awk '/^\[/ {skip = ($0 == "[tool.pytest.ini_options]")} !skip' pyproject.toml) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: this takes the CPU wheel where one is provided; an unpinned torch pulls GBs of CUDA packages.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[$extras]"
  # the protocol tests' clients, without their pins (see the dev extra in pyproject.toml)
  .venv/bin/python -m pip install -q --no-deps "kserve==0.21.0" "tritonclient==2.73.0"
  echo "$want" > "$stamp"
fi
