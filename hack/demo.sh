#!/usr/bin/env bash
# The main job on the embedded default (no cluster): set up, build the runtime, index the sample
# knowledge base (examples/kb: Markdown, HTML, Confluence, Zendesk, Slack, PDF, text) from the
# KnowledgeBase in examples/scenario.yaml, compile that file's Router into a RuntimeConfig, serve it
# on localhost (gRPC :50051, HTTP :8080), show ranked passages for a few customer-style questions,
# then grounded answers from SmolLM2 with citations and provenance, a refusal for a question the
# knowledge base cannot answer, and outcome feedback. Idempotent; a warm run takes seconds plus
# generation time (seconds per answer on 2 CPU cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
hack/setup.sh libtorch
hack/setup.sh models
cargo build -p switchboard-runtime --locked
BIN=target/debug/switchboard-runtime
GRPC="${SWITCHBOARD_GRPC_ADDR:-127.0.0.1:50051}"
HTTP="${SWITCHBOARD_HTTP_ADDR:-127.0.0.1:8080}"
ADMIN="${SWITCHBOARD_ADMIN_ADDR:-127.0.0.1:8081}"

"$BIN" --threads 2 serve --manifests examples/scenario.yaml \
  --grpc-addr "$GRPC" --http-addr "$HTTP" --admin-addr "$ADMIN" &
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

answer() {
  curl -fsS "http://$HTTP/v1/answer" -H 'content-type: application/json' -d "$1"
}
show='import json, sys
a = json.load(sys.stdin)
p = a["provenance"]
adapter = p.get("adapter") or {}
print("  answer:", a["answer"].strip().replace("\n", " ")[:400])
for c in a["citations"]:
    print("  [%s] %s (%s)" % (c["index"], c["breadcrumb"], c["source"]))
print("  path=%s refused=%s model=%s adapter=%s route=%s generation=%s config=%s..." % (
    a["path"], a["refused"], p["model"],
    "%s@%s" % (adapter["lineage"], adapter["version"]) if adapter else "none",
    p["routeReason"], p["kbGeneration"], p["configRevision"][:19]))
open("/tmp/switchboard-demo-token", "w").write(a["interactionToken"])'
echo
echo "Grounded answers (POST /v1/answer): the evidence sentences of the retrieved passages are"
echo "scored against the question, the best go to the model as numbered facts, and its answer is"
echo "checked against them (path: generative, extractive or refusal):"
for q in "How many days do I have to request a refund?" \
         "my customer's card keeps getting declined, what can they do?" \
         "How much is the dispute fee for a chargeback?" \
         "What is the capital of France?"; do
  echo "question: $q"
  answer "{\"query\": \"$q\", \"userId\": \"demo-user\"}" | python3 -c "$show"
done
echo
echo "Feedback for the last answer (POST /v1/feedback), then the same call replayed:"
token=$(cat /tmp/switchboard-demo-token)
curl -sS "http://$HTTP/v1/feedback" -H 'content-type: application/json' \
  -d "{\"token\": \"$token\", \"outcome\": \"resolved\"}"; echo
curl -sS "http://$HTTP/v1/feedback" -H 'content-type: application/json' \
  -d "{\"token\": \"$token\", \"outcome\": \"resolved\"}"; echo
echo
curl -fsS "http://$HTTP/metrics" | grep -E '^switchboard_(interactions|feedback|answer_checks|route_decisions)_total' || true
echo
echo "The admin API (its own listener, always authenticated; the token the runtime wrote at start):"
echo "  curl -s http://$ADMIN/v1/config -H \"Authorization: Bearer \$(cat .cache/switchboard/index/admin-token)\""
curl -fsS "http://$ADMIN/v1/config" -H "Authorization: Bearer $(cat .cache/switchboard/index/admin-token)" \
  | python3 -c 'import json, sys; c = json.load(sys.stdin); print("  config", c["revision"][:19] + "...", "router", c["router"], "adapters", [a["lineage"] + "@" + a["version"] for a in c.get("adapters", [])])' || true
echo "  without the token: HTTP $(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/v1/config")"
