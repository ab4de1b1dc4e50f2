#!/usr/bin/env bash
# Test tier 4 (docs/testing.md): Switchboard on a real Kubernetes cluster.
#
#   hack/kind-e2e.sh            create (or reuse) a kind cluster, build and load the images,
#                               install the chart and the examples, wait for their conditions,
#                               then run the cluster test (cargo test -p switchboard-e2e --test cluster)
#   hack/kind-e2e.sh delete     delete the kind cluster
#
# Environment:
#   KIND_CLUSTER    cluster name (default switchboard-e2e)
#   KUBECONFIG_OUT  where to write the cluster's kubeconfig (default .cache/kind-e2e.kubeconfig)
#   SKIP_IMAGES=1   do not build/load images (they are already in the cluster or a registry)
#   TIMEOUT         seconds to wait for each condition (default 600)
#
# Needs kind, docker, kubectl and helm. Without kind (or docker) it says so and exits 0 without
# running anything: the cluster tier is then *skipped*, and the cluster test reports
# "skipped: no cluster" rather than passing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CLUSTER="${KIND_CLUSTER:-switchboard-e2e}"
KUBECONFIG_OUT="${KUBECONFIG_OUT:-$ROOT/.cache/kind-e2e.kubeconfig}"
TIMEOUT="${TIMEOUT:-600}"
NS=support
TAG=e2e
PATH="$ROOT/.cache/bin:$PATH"

log() { printf '[kind-e2e] %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1; }

if [[ "${1:-}" == "delete" ]]; then
  need kind && kind delete cluster --name "$CLUSTER"
  exit 0
fi

for tool in kind docker; do
  if ! need "$tool"; then
    log "skipped: no $tool on this machine (the real-cluster tier needs kind and docker)"
    exit 0
  fi
done
for tool in kubectl helm; do
  need "$tool" || { log "$tool not found: run hack/setup.sh tools"; exit 1; }
done

mkdir -p "$(dirname "$KUBECONFIG_OUT")"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 180s
fi
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_OUT"
export KUBECONFIG="$KUBECONFIG_OUT"

if [[ "${SKIP_IMAGES:-}" != "1" ]]; then
  for component in operator runtime; do
    log "building switchboard-$component:$TAG"
    docker build -f "Dockerfile.$component" -t "switchboard-$component:$TAG" .
    kind load docker-image --name "$CLUSTER" "switchboard-$component:$TAG"
  done
fi

log "installing the chart"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
helm upgrade --install switchboard charts/switchboard \
  --namespace switchboard-system --create-namespace \
  --set image.repository=switchboard-operator --set image.tag="$TAG" --set image.pullPolicy=Never \
  --set runtimeImage.repository=switchboard-runtime --set runtimeImage.tag="$TAG" \
  --set operator.extraArgs='{--analysis-interval=10s}' \
  --set "rbac.secretNamespaces={$NS}" \
  --wait --timeout "${TIMEOUT}s"

log "waiting for the CRDs and the operator"
for crd in knowledgebases adapterpatches routers experiments; do
  kubectl wait --for condition=Established "crd/$crd.switchboard.dev" --timeout "${TIMEOUT}s"
done
kubectl -n switchboard-system rollout status deployment --timeout "${TIMEOUT}s"

log "applying examples/scenario.yaml"
kubectl apply -f examples/scenario.yaml
kubectl -n "$NS" wait --for condition=Ready knowledgebase --all --timeout "${TIMEOUT}s"
kubectl -n "$NS" wait --for condition=Ready router --all --timeout "${TIMEOUT}s"
kubectl -n "$NS" get switchboard

log "running the cluster test"
SWITCHBOARD_E2E_KUBECONFIG="$KUBECONFIG_OUT" SWITCHBOARD_E2E_NAMESPACE="$NS" \
  cargo test -p switchboard-e2e --test cluster -- --nocapture
