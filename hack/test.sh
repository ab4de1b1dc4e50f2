#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up what the tests need, then formatting,
# lints and every test of the workspace. Idempotent; on a warm machine setup takes seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }

step "setup (hack/setup.sh libtorch models tools)"
hack/setup.sh libtorch
hack/setup.sh models
hack/setup.sh tools

# The upstream control plane (hack/setup.sh controlplane: etcd, kube-apiserver and
# kube-controller-manager built from the Go modules pinned in hack/controlplane) is the API
# server of every test that talks to Kubernetes: admission, the chart, the controllers, the CLI,
# the trainer's --apply and the end-to-end stories. Cold, its Go build is ~9 CPU-minutes on each core: it runs at
# low priority beside the Rust build below, on the cycles rustc leaves idle (one big crate at a
# time, links), and is waited for before the tests. Warm, it is a stamp check.
controlplane_log="$(mktemp)"
nice -n 15 hack/setup.sh controlplane >"$controlplane_log" 2>&1 &
controlplane_pid=$!
trap 'kill "$controlplane_pid" 2>/dev/null || true' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The per-request decisions read the RuntimeConfig document only: switchboard-policy builds with
# switchboard-crds' `kube` feature off, so neither kube nor k8s-openapi is below it.
step "switchboard-policy without kube (crds --no-default-features)"
cargo clippy -p switchboard-policy --all-targets --locked -- -D warnings
if cargo tree -p switchboard-policy -e normal --locked | grep -E ' (kube|k8s-openapi) v'; then
  echo "switchboard-policy depends on kube or k8s-openapi (above)" >&2
  exit 1
fi

# Build every test target first, then run them against exactly those binaries. The process-level
# tests (tests/e2e) otherwise run `cargo build -p switchboard-runtime` themselves, which resolves
# features without the workspace's dev-dependencies and so compiles a second copy of tokio, kube,
# tch, tantivy... (measured: ~20 min of a cold CI run). `cargo test --workspace` has already put
# the runtime and operator binaries, built with the test feature set, in target/debug/.
step "cargo test --no-run (build all test targets)"
cargo test --workspace --locked --no-run

step "control plane (hack/setup.sh controlplane, started with the setup)"
controlplane_start=$SECONDS
if ! wait "$controlplane_pid"; then
  cat "$controlplane_log" >&2
  echo "hack/setup.sh controlplane failed" >&2
  exit 1
fi
trap - EXIT
cat "$controlplane_log" >&2
echo "waited $((SECONDS - controlplane_start))s for it after the Rust build" >&2

step "cargo test"
SWITCHBOARD_TEST_NO_BUILD=1 cargo test --workspace --locked
