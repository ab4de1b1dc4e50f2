#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up what the tests need, then formatting,
# lints and every test of the workspace. Idempotent; on a warm machine setup takes seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }

step "setup (hack/setup.sh)"
hack/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Build every test target first, then run them against exactly those binaries. The process-level
# tests (tests/e2e) otherwise run `cargo build -p switchboard-runtime` themselves, which resolves
# features without the workspace's dev-dependencies and so compiles a second copy of tokio, kube,
# tch, tantivy... (measured: ~20 min of a cold CI run). `cargo test --workspace` has already put
# the runtime and operator binaries, built with the test feature set, in target/debug/.
step "cargo test --no-run (build all test targets)"
cargo test --workspace --locked --no-run

step "cargo test"
SWITCHBOARD_TEST_NO_BUILD=1 cargo test --workspace --locked
