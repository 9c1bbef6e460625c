#!/usr/bin/env bash
# Builds kube-apiserver, the node's kubelet, kube-controller-manager, kube-scheduler and
# kube-proxy, and etcd from the Go module proxy (no binary can be downloaded on
# these machines) and caches them outside the repository, keyed by version. Idempotent:
# a second run with the binaries present returns at once.
#
#   scripts/build-controlplane.sh            build what is missing, print the bin dir
#
# Environment: DBCONN_CACHE (default ~/.cache/dbconn), KUBE_VERSION, ETCD_VERSION, HELM_VERSION.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
HELM_VERSION="${HELM_VERSION:-3.21.4}"
KUBECONFORM_VERSION="${KUBECONFORM_VERSION:-0.7.0}"
CACHE="${DBCONN_CACHE:-$HOME/.cache/dbconn}"
BIN="$CACHE/bin"
mkdir -p "$BIN" "$CACHE/src"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
log() { echo "[controlplane] $*" >&2; }

# build_in_wrapper NAME MODULE VERSION PACKAGE OUTPUT [extra go.mod lines]
build_in_wrapper() {
  local name=$1 module=$2 version=$3 package=$4 output=$5 extra=${6:-}
  if [ -x "$output" ]; then
    log "$name $version: cached at $output"
    ln -sf "$(basename "$output")" "$BIN/$name"
    return
  fi
  local dir="$CACHE/src/$name-$version"
  rm -rf "$dir" && mkdir -p "$dir"
  log "$name $version: resolving modules (first time: minutes, about a gigabyte of downloads)"
  cat >"$dir/go.mod" <<GOMOD
module dbconn.local/build/$name

go 1.24

require $module v$version
$extra
GOMOD
  (cd "$dir" && go get "$package@v$version" >/dev/null)
  log "$name $version: compiling (first time: many minutes on 2 cores)"
  (cd "$dir" && go build -trimpath -ldflags "${ldflags:-}" -o "$output.tmp" "$package")
  mv "$output.tmp" "$output"
  ln -sf "$(basename "$output")" "$BIN/$name"
  log "$name $version: built $output"
}

# k8s.io/kubernetes requires its staging modules at v0.0.0 with replace directives into its
# own tree; replaces only apply in the main module, so the wrapper replaces each staging
# module with its published v0.N.P version, listed from the tag's own go.mod.
kube_replaces() {
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  local staging_version="v0.${KUBE_VERSION#1.}"
  grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$gomod" \
    | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
}

# The version the binaries report (kubectl get nodes, /version): a module build has no git
# metadata, so it is stamped here as the release build does.
KUBE_LDFLAGS="-X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION \
  -X k8s.io/component-base/version.gitMajor=${KUBE_VERSION%%.*} \
  -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2) \
  -X k8s.io/component-base/version.gitTreeState=clean"
kube_out="$BIN/kube-apiserver-$KUBE_VERSION"
if [ ! -x "$kube_out" ]; then
  (cd "$CACHE/src" && mkdir -p probe && cd probe && [ -f go.mod ] || go mod init probe >/dev/null 2>&1 || true)
  replaces=$(cd "$CACHE/src/probe" && kube_replaces)
  [ -n "$replaces" ] || { log "could not read the staging modules of k8s.io/kubernetes v$KUBE_VERSION"; exit 1; }
fi
ldflags="$KUBE_LDFLAGS" build_in_wrapper kube-apiserver k8s.io/kubernetes "$KUBE_VERSION" k8s.io/kubernetes/cmd/kube-apiserver "$kube_out" "${replaces:-}"
# The node's parts build in the apiserver's wrapper module, sharing its modules and build cache
# (each takes a minute or two once the apiserver has been built).
for component in kubelet kube-controller-manager kube-scheduler kube-proxy; do
  out="$BIN/$component-$KUBE_VERSION"
  if [ -x "$out" ]; then
    log "$component $KUBE_VERSION: cached at $out"
  else
    log "$component $KUBE_VERSION: compiling in the kube-apiserver wrapper module"
    (cd "$CACHE/src/kube-apiserver-$KUBE_VERSION" \
      && go get "k8s.io/kubernetes/cmd/$component@v$KUBE_VERSION" >/dev/null \
      && go build -trimpath -ldflags "$KUBE_LDFLAGS" -o "$out.tmp" "k8s.io/kubernetes/cmd/$component")
    mv "$out.tmp" "$out"
  fi
  ln -sf "$(basename "$out")" "$BIN/$component"
done
build_in_wrapper etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3 "$BIN/etcd-$ETCD_VERSION"
if [ "${WITH_HELM:-1}" = 1 ]; then
  build_in_wrapper helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$BIN/helm-$HELM_VERSION"
  build_in_wrapper kubeconform github.com/yannh/kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform "$BIN/kubeconform-$KUBECONFORM_VERSION"
fi

echo "$BIN"
