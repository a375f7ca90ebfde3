#!/usr/bin/env bash
# Wheels for the lent GPU machine (Python 3.12, x86-64, no network): what aimass and the GPU check need that its image
# lacks (tools/gpu_image_packages.txt), in .whl/ (ignored by git, carried by the device tool). tools/gpu_check.sh
# installs them there. Run here, where pip reaches the package registry:  bash tools/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ALL=$(mktemp -d /tmp/aimass-gpu-wheels-XXXX)
trap 'rm -rf "$ALL"' EXIT
plat=""; for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do plat="$plat --platform $p"; done
# aimass's runtime dependencies (pyproject.toml) and, for `%aimass train` in a real kernel, nbclient and ipykernel
# (those the image has are left out before resolving, or pip would fetch torch and its CUDA libraries again)
deps=$($PY - <<'PY'
import re, tomllib
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
have = {norm(l.strip()) for l in open("tools/gpu_image_packages.txt") if l.strip() and not l.startswith("#")}
reqs = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(r for r in reqs if norm(re.split(r"[<>=!~\[ ;]", r)[0]) not in have))
PY
)
echo "asking pip for: $deps"
# the versions this checkout is tested with, where .venv has them
$PY -m pip freeze --exclude-editable | grep -v "^-e\| @ " > "$ALL/constraints.txt"
$PY -m pip download -q --only-binary=:all: --python-version ${GPU_PYTHON_VERSION:-3.12} --implementation cp $plat -d "$ALL" -c "$ALL/constraints.txt" \
    $deps "nbclient>=0.10" "ipykernel>=6.29" "nbformat>=5.9"
WHL=${WHEEL_DIR:-.whl}  # GPU_PYTHON_VERSION and WHEEL_DIR let a check here try the same set on this Python
rm -rf "$WHL"; mkdir -p "$WHL"
$PY - "$ALL" "$WHL" <<'PY'
import re, shutil, sys
from pathlib import Path
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
have = {norm(l.strip()) for l in open("tools/gpu_image_packages.txt") if l.strip() and not l.startswith("#")}
kept, size = [], 0
for w in sorted(Path(sys.argv[1]).glob("*.whl")):
    if norm(w.name.split("-")[0]) in have: continue
    shutil.copy(w, sys.argv[2]); kept.append(w.name); size += w.stat().st_size
print(f"{len(kept)} wheels, {size / 2**20:.1f} MiB in {sys.argv[2]}/ (the device tool carries at most 64 MiB with the tree):")
print("  " + "\n  ".join(kept))
PY
