#!/usr/bin/env bash
# The main job on the embedded default (no cluster): set up, build the runtime, and answer a few
# customer-style questions by dense retrieval over the 503 real answers of the Zaragoza FAQ with the
# all-MiniLM-L6-v2 encoder (libtorch via tch). Idempotent; seconds on a warm machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
hack/setup.sh libtorch
hack/setup.sh models
cargo build -p switchboard-runtime --locked
exec target/debug/switchboard-runtime --threads 2 search \
  --passages .cache/models/zaragoza-faq-en.jsonl --field a -k 3 \
  "how many weeks until the city approves my building permit?" \
  "do I need permission to tear down an old garage" \
  "who pays if the contractor finishes late?"
