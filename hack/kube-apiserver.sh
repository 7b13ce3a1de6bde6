#!/usr/bin/env bash
# Builds a real kube-apiserver (v1.20.2) from Debian bookworm's `kubernetes` source package and
# installs etcd 3.4 (etcd-server) from Debian, for the Kubernetes integration tests.
# The binary is cached outside the checkout (KUBE_BIN_DIR, default /var/cache/commit-status-
# controller/k8s-bin) so a machine builds it once. Needs root; ~4 min and ~2 GB scratch disk.
set -euo pipefail
OUT=${KUBE_BIN_DIR:-/var/cache/commit-status-controller/k8s-bin}
WORK=${WORK:-/tmp/kube-apiserver-build}
if [ -x "$OUT/kube-apiserver" ] && command -v etcd >/dev/null; then
  echo "kube-apiserver already built: $OUT/kube-apiserver"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Enable deb-src for the Debian mirror already configured (adds no new host).
if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > /etc/apt/sources.list.d/debian-src.sources
  else
    grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > /etc/apt/sources.list.d/debian-src.list
  fi
  apt-get update -qq
fi
apt-get install -y -qq golang-go etcd-server golang-github-modern-go-reflect2-dev rsync jq make openssl >/dev/null
if [ -x "$OUT/kube-apiserver" ]; then exit 0; fi
rm -rf "$WORK"; mkdir -p "$WORK"; cd "$WORK"
apt-get source --download-only kubernetes 2>&1 | grep -v 'unsandboxed' || true
tar xzf kubernetes_*.orig.tar.gz
cd kubernetes-1.20.*
# Go >= 1.18 makes the vendored reflect2 v1.0.1 crash the apiserver ("fatal error: fault" in
# mapiternext on the first custom-resource create). Debian's reflect2 v1.0.2 is the fix.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod
make WHAT=cmd/kube-apiserver KUBE_BUILD_PLATFORMS=linux/amd64
mkdir -p "$OUT"; cp _output/bin/kube-apiserver "$OUT/"
cd /; rm -rf "$WORK"
"$OUT/kube-apiserver" --version
