#!/usr/bin/env bash
# Runs every test: installs what the Kubernetes tests need (a real kube-apiserver built from
# Debian's source package, and etcd; cached, so only the first run on a machine builds it) and
# Debian's chromium for the browser test, then the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/kube-apiserver.sh
# The delivery pages are checked in a real headless browser (crates/controller/tests/pages.rs).
if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }
fi
cargo test --workspace "$@"
