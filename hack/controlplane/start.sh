#!/usr/bin/env bash
# Runs the upstream control plane that `hack/setup.sh controlplane` builds (etcd, kube-apiserver,
# kube-controller-manager) on free loopback ports, the way controller-runtime's envtest does, and
# stays in the foreground until SIGTERM/SIGINT (or until one of the three exits): then it stops
# all three and, when it made DIR itself, removes it (kept after a failure, for its logs).
#
#   hack/controlplane/start.sh [DIR]
#
# DIR must be empty or absent (default: a new temporary directory). Once /readyz answers ok and
# the controller manager's /healthz too, it prints one line on stdout, the admin kubeconfig path
# (DIR/kubeconfig: user admin, group system:masters, client certificate), and writes
# DIR/controlplane.env (KEY=value lines, `source`-able):
#   KUBECONFIG, APISERVER_URL, ADMIN_TOKEN (bearer token of the same admin), CA_FILE, ETCD_URL,
#   CONTROLLER_MANAGER_URL, and the pids ETCD_PID, APISERVER_PID, CONTROLLER_MANAGER_PID.
# Logs: DIR/logs/{etcd,kube-apiserver,kube-controller-manager}.log. No kubelet and no scheduler:
# pods stay Pending; controllers (deployments, replicasets, namespaces, GC, service accounts...) run.
#
# Environment: CONTROLPLANE_BIN (default .cache/controlplane/bin), CONTROLPLANE_TIMEOUT (seconds
# to wait for readiness, default 180), CONTROLPLANE_VERBOSITY (klog -v of the Kubernetes parts,
# default 0), CONTROLPLANE_CONTROLLERS (kube-controller-manager --controllers, default `*`: e.g.
# `*,-job-controller` for tests that write a Job's status themselves), CONTROLPLANE_WATCH_PID (stop when that process is gone: a test binary that started
# the control plane for its lifetime, even when it is killed), CONTROLPLANE_REMOVE_DIR=1 (remove
# DIR on exit even when it was given). Needs openssl, curl and python3 (to pick free ports).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${CONTROLPLANE_BIN:-$ROOT/.cache/controlplane/bin}"
TIMEOUT="${CONTROLPLANE_TIMEOUT:-180}"
VERBOSITY="${CONTROLPLANE_VERBOSITY:-0}"
CONTROLLERS="${CONTROLPLANE_CONTROLLERS:-*}"
SERVICE_CIDR="10.0.0.0/24" # the kubernetes Service gets its first address, 10.0.0.1

log() { printf '[controlplane] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

for name in etcd kube-apiserver kube-controller-manager; do
  [[ -x "$BIN/$name" ]] || die "$BIN/$name missing: run hack/setup.sh controlplane"
done
for tool in openssl curl python3; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

OWN_DIR=""
if [[ $# -ge 1 ]]; then
  DIR="$1"
  mkdir -p "$DIR"
  [[ -z "$(ls -A "$DIR")" ]] || die "$DIR is not empty"
  DIR="$(cd "$DIR" && pwd)"
else
  DIR="$(mktemp -d "${TMPDIR:-/tmp}/controlplane.XXXXXX")"
  OWN_DIR="$DIR"
fi
[[ "${CONTROLPLANE_REMOVE_DIR:-}" == 1 ]] && OWN_DIR="$DIR"
if [[ -n "${CONTROLPLANE_WATCH_PID:-}" ]]; then
  ( while kill -0 "$CONTROLPLANE_WATCH_PID" 2>/dev/null; do sleep 1; done
    kill -TERM $$ 2>/dev/null ) &
fi
PKI="$DIR/pki" LOGS="$DIR/logs"
mkdir -p "$PKI" "$LOGS" "$DIR/etcd"
chmod 700 "$PKI" "$DIR/etcd"

PIDS=()
# shellcheck disable=SC2317 # only called from the traps
stop() {
  local rc=$? pid i
  trap - EXIT INT TERM
  ((${#PIDS[@]} == 0)) || log "stopping"
  # Reverse start order: controller manager, apiserver, etcd. SIGTERM, then SIGKILL after 10s.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid="${PIDS[i]}"
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  # A clean stop (or a signal) removes DIR; a failure keeps it for its logs.
  if [[ -n "$OWN_DIR" ]]; then
    if ((rc == 0 || rc == 130 || rc == 143)); then rm -rf "$OWN_DIR"; else log "logs kept in $LOGS"; fi
  fi
  exit "$rc"
}
trap stop EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# Four distinct free ports, held together while they are picked.
read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
)
ETCD_URL="http://127.0.0.1:$ETCD_PORT"
APISERVER_URL="https://127.0.0.1:$APISERVER_PORT"
KCM_URL="https://127.0.0.1:$KCM_PORT"

# --- PKI (RSA 2048, 10 years): the cluster CA (apiserver serving certificate, client
# certificates), the front-proxy CA (aggregation layer / requestheader authentication, which the
# controller manager's own secure port delegates to), the service-account signing key pair.
ca() { # name common-name
  printf '%s\n' '[req]' 'distinguished_name=dn' '[dn]' '[ca]' \
    'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature' \
    'subjectKeyIdentifier=hash' > "$PKI/$1.cnf"
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/$1.key" -out "$PKI/$1.crt" \
    -days 3650 -sha256 -subj "/CN=$2" -config "$PKI/$1.cnf" -extensions ca 2>/dev/null
  rm -f "$PKI/$1.cnf"
}
cert() { # ca name subject server|client [subjectAltName]
  local ca="$1" name="$2" subj="$3" usage="${4}Auth" san="${5:-}"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
    -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' 'basicConstraints=critical,CA:FALSE' \
    'keyUsage=critical,digitalSignature,keyEncipherment' "extendedKeyUsage=$usage" \
    ${san:+"subjectAltName=$san"} > "$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 -extfile "$PKI/$name.ext" \
    -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
ca ca switchboard-controlplane-ca
ca front-proxy-ca switchboard-controlplane-front-proxy-ca
cert ca apiserver "/CN=kube-apiserver" server \
  "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert ca admin "/O=system:masters/CN=admin" client
cert ca controller-manager "/CN=system:kube-controller-manager" client
cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" client
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
ADMIN_TOKEN="$(openssl rand -hex 24)"
echo "$ADMIN_TOKEN,admin,admin,system:masters" > "$PKI/token.csv"

kubeconfig() { # file user cert-name
  local b64ca; b64ca="$(base64 -w0 < "$PKI/ca.crt")"
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: controlplane
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $b64ca
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 < "$PKI/$3.crt")
    client-key-data: $(base64 -w0 < "$PKI/$3.key")
contexts:
- name: $2@controlplane
  context:
    cluster: controlplane
    user: $2
    namespace: default
current-context: $2@controlplane
EOF
  chmod 600 "$1"
}
kubeconfig "$DIR/kubeconfig" admin admin
kubeconfig "$DIR/controller-manager.kubeconfig" system:kube-controller-manager controller-manager

wait_for() { # what url expected-body-glob curl-args...
  local what="$1" url="$2" want="$3"; shift 3
  local deadline=$((SECONDS + TIMEOUT)) pid
  # shellcheck disable=SC2053 # $want is a glob on purpose
  until [[ "$(curl -s --max-time 5 "$@" "$url" 2>/dev/null)" == $want ]]; do
    for pid in "${PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null || die "$what: a process exited early; see $LOGS"
    done
    ((SECONDS < deadline)) || die "$what not ready after ${TIMEOUT}s; see $LOGS"
    sleep 0.5
  done
  log "$what ready at $url"
}

# --- etcd: single member, loopback only, no fsync (test data).
"$BIN/etcd" \
  --name=controlplane \
  --data-dir="$DIR/etcd" \
  --listen-client-urls="$ETCD_URL" \
  --advertise-client-urls="$ETCD_URL" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="controlplane=http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster-state=new \
  --unsafe-no-fsync=true \
  --log-level=warn \
  > "$LOGS/etcd.log" 2>&1 &
PIDS+=($!)
ETCD_PID=$!
wait_for etcd "$ETCD_URL/health" '*"health":"true"*'

# --- kube-apiserver: secure port only, client certs + static token, RBAC, own service accounts.
# --endpoint-reconciler-type=none: the kubernetes Service's endpoint would be 127.0.0.1, which
# Endpoints validation rejects (loopback), so the default reconciler logs an error every 10s.
"$BIN/kube-apiserver" \
  --etcd-servers="$ETCD_URL" \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --secure-port="$APISERVER_PORT" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --token-auth-file="$PKI/token.csv" \
  --authorization-mode=RBAC \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-issuer="$APISERVER_URL" \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
  --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --allow-privileged=true \
  --endpoint-reconciler-type=none \
  --v="$VERBOSITY" \
  > "$LOGS/kube-apiserver.log" 2>&1 &
PIDS+=($!)
APISERVER_PID=$!
wait_for kube-apiserver "$APISERVER_URL/readyz" ok --cacert "$PKI/ca.crt" \
  -H "Authorization: Bearer $ADMIN_TOKEN"

# --- kube-controller-manager: its own identity, every controller with its own service account.
"$BIN/kube-controller-manager" \
  --kubeconfig="$DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$DIR/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="$KCM_PORT" \
  --cert-dir="$DIR/controller-manager-certs" \
  --leader-elect=false \
  --controllers="$CONTROLLERS" \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" \
  --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" \
  --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --v="$VERBOSITY" \
  > "$LOGS/kube-controller-manager.log" 2>&1 &
PIDS+=($!)
KCM_PID=$!
wait_for kube-controller-manager "$KCM_URL/healthz" ok -k

cat > "$DIR/controlplane.env" <<EOF
KUBECONFIG=$DIR/kubeconfig
APISERVER_URL=$APISERVER_URL
ADMIN_TOKEN=$ADMIN_TOKEN
CA_FILE=$PKI/ca.crt
ETCD_URL=$ETCD_URL
CONTROLLER_MANAGER_URL=$KCM_URL
ETCD_PID=$ETCD_PID
APISERVER_PID=$APISERVER_PID
CONTROLLER_MANAGER_PID=$KCM_PID
EOF
echo "$DIR/kubeconfig"

# Until a signal, or until one of the three exits (then stop the others and fail).
set +e
wait -n "${PIDS[@]}"
rc=$?
set -e
log "a control-plane process exited (status $rc); stopping; see $LOGS"
exit 1
