#!/usr/bin/env bash
# The GPU proof (issue 16) in one call on the lent GPU machine (one NVIDIA GPU, Python 3.12 with CUDA torch, no network).
# Here first, where pip reaches the registry:   bash tools/gpu_wheels.sh     (what that machine lacks, into .whl/)
# then, with the device tool:                   run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=600)
# It installs the carried wheels that machine lacks, runs the `gpu` tests, then bench/gpu.py, within about 9.5 min.
# Logs and results land in $OUT (the device tool brings them back): gpu_check.log, gpu_tests.xml, gpu_results.json,
# gpu_summary.md. On a machine without a GPU it runs too (the tests skip; pass --device cpu to bench/gpu.py by hand).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/aimass-site}  # where the carried wheels go (PYTHON, WHEEL_DIR and SITE let a check here mimic that machine)
BUDGET=${AIMASS_GPU_BUDGET:-570}  # seconds for everything: the device tool stops a call at 600
start=$(date +%s); left() { echo $(( BUDGET - ($(date +%s) - start) )); }

echo "== setup ($(date -u +%FT%TZ))"
need=$($PY - <<'PY'
import importlib.metadata as md
from pathlib import Path
import os
for w in sorted(Path(os.environ.get("WHEEL_DIR", ".whl")).glob("*.whl")):  # only what this machine lacks: its own versions stay
    try: md.version(w.name.split("-")[0])
    except md.PackageNotFoundError: print(w)
PY
)
if [ -n "$need" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" $need || exit 1
fi
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
$PY -c "import aimass, litserve, fastapi, uvicorn, IPython, ipywidgets, nbclient, ipykernel, torch, lightning, transformers, onnxruntime
print('imports ok: torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU', torch.cuda.is_available() and torch.cuda.get_device_name(0))" || exit 1

echo "== gpu tests ($(left) s left)"
timeout $(( $(left) < 240 ? $(left) : 240 )) $PY -m pytest -q -m gpu -p no:cacheprovider -rs --junitxml="$OUT/gpu_tests.xml" \
    tests/test_train_gpu.py tests/test_images_gpu.py tests/test_texts_train.py tests/test_serve_cuda.py tests/test_bench_cuda.py
echo "pytest exit: $?"

echo "== bench/gpu.py ($(left) s left)"
timeout $(( $(left) - 5 )) $PY bench/gpu.py --out "$OUT" --budget $(( $(left) - 20 )) ${AIMASS_GPU_ARGS:-}  # e.g. "--device cpu --quick" to try it here
echo "bench/gpu.py exit: $? (total $(( $(date +%s) - start )) s)"
