#!/usr/bin/env bash
# Starts the product on the offline default (sets up .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/meal train examples/demo.yaml "$@"
