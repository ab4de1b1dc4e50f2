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

step "cargo test"
cargo test --workspace --locked
