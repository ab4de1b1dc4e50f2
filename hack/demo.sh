#!/usr/bin/env bash
# The main job on the embedded default (no cluster): set up, build the runtime, index the sample
# knowledge base (examples/kb: Markdown, HTML, Confluence, Zendesk, Slack, PDF, text) from its
# KnowledgeBase manifest, serve it on localhost (gRPC :50051, HTTP :8080), and ask a few
# customer-style questions. Idempotent; a warm run takes seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
hack/setup.sh libtorch
hack/setup.sh models
cargo build -p switchboard-runtime --locked
BIN=target/debug/switchboard-runtime
GRPC="${SWITCHBOARD_GRPC_ADDR:-127.0.0.1:50051}"
HTTP="${SWITCHBOARD_HTTP_ADDR:-127.0.0.1:8080}"

"$BIN" --threads 2 serve --manifests examples/kb/knowledgebase.yaml \
  --grpc-addr "$GRPC" --http-addr "$HTTP" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT

for _ in $(seq 1 600); do
  if curl -fsS "http://$HTTP/readyz" >/dev/null 2>&1; then break; fi
  kill -0 $server 2>/dev/null || { echo "runtime exited before it was ready" >&2; exit 1; }
  sleep 0.2
done

"$BIN" query --addr "http://$GRPC" -k 3 \
  "How many days do I have to request a refund?" \
  "my bank feed stopped syncing transactions" \
  "what does the Pro plan cost per month?" \
  "I was charged twice this month"

echo
echo "HTTP mirror: curl -s http://$HTTP/v1/retrieve -d '{\"query\": \"cancel my subscription\"}'"
curl -fsS "http://$HTTP/v1/retrieve" -H 'content-type: application/json' \
  -d '{"query": "cancel my subscription", "topK": 1}' | head -c 400; echo
echo "metrics: curl -s http://$HTTP/metrics | grep switchboard_"
