#!/usr/bin/env bash
# Runs every test: installs what the Kubernetes tests need (a real kube-apiserver built from
# Debian's source package, and etcd; cached, so only the first run on a machine builds it),
# then the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/kube-apiserver.sh
cargo test --workspace "$@"
