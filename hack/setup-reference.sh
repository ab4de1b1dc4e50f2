#!/usr/bin/env bash
# Python reference stack for fixtures and benchmarks (not needed to build or test the project):
# PyTorch 2.11.0 (the same libtorch as the Rust runtime), sentence-transformers, transformers, gguf,
# rank_bm25. Installed into .cache/venv-ref; idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.cache/venv-ref"
STAMP="$VENV/.stamp-v1"
[[ -f "$STAMP" ]] && exit 0
"$ROOT/hack/setup.sh" libtorch >/dev/null   # leaves the torch wheel in .cache/wheels
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet "$(ls "$ROOT"/.cache/wheels/torch-2.11.0-*.whl | head -n1)" \
  "sentence-transformers==5.1.2" "transformers==4.57.1" "gguf==0.17.1" "rank-bm25==0.2.2" "numpy<3"
touch "$STAMP"
