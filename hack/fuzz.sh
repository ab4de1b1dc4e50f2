#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer via cargo-fuzz, nightly toolchain) of every target in
# tests/fuzz/src/lib.rs, each for SECONDS (default 60), starting from fuzz/corpus/<target>/ and
# fuzz/regressions/<target>/. New corpus entries go to .cache/fuzz/corpus/<target>/ (not the
# repository); a crash is saved under fuzz/artifacts/<target>/ and fails the script: add it to
# fuzz/regressions/<target>/ with the fix. `cargo test -p switchboard-fuzz` replays the
# committed inputs and mutates them for a bounded time on stable (what CI runs).
#
#   hack/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_PER_TARGET="${1:-60}"
shift || true
TOOLS="$ROOT/.cache/tools"
if ! [ -x "$TOOLS/bin/cargo-fuzz" ]; then
  cargo install --locked --root "$TOOLS" cargo-fuzz@0.13.2
fi
export PATH="$TOOLS/bin:$PATH"
# The gguf and tokenizer_input targets link libtorch (hack/setup.sh libtorch); the workspace's
# binaries carry its folder as an rpath, cargo-fuzz's do not.
hack/setup.sh libtorch >/dev/null
export LD_LIBRARY_PATH="$ROOT/.cache/libtorch/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^switchboard')
fi
cd fuzz
cargo +nightly fuzz build -O
status=0
for t in "${targets[@]}"; do
  mkdir -p "$ROOT/.cache/fuzz/corpus/$t"
  echo "== $t: ${SECONDS_PER_TARGET}s"
  if ! cargo +nightly fuzz run -O "$t" "$ROOT/.cache/fuzz/corpus/$t" "$ROOT/fuzz/corpus/$t" \
      $( [ -d "$ROOT/fuzz/regressions/$t" ] && echo "$ROOT/fuzz/regressions/$t" ) \
      -- -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      2>&1 | tail -n 25; then
    status=1
  fi
done
exit $status
