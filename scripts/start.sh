#!/usr/bin/env bash
# Starts the product on the embedded default: SQLite, SQLite broker, web + one worker on 127.0.0.1.
# Extra arguments go to `meal up` (--host, --port, --data-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/meal up "$@"
