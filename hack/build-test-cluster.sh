#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, helm) from the Go module proxy with the installed Go, once per machine.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every k8s.io/* staging
# module with a path inside its own tree. A throw-away module that requires it and replaces
# each staging module with its published v0.<minor>.<patch> release builds the same code.
#
# Output: ${NAS_TEST_CLUSTER_CACHE:-~/.cache/nas-operator}/k8s-<version>/bin/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${NAS_TEST_CLUSTER_CACHE:-$HOME/.cache/nas-operator}
dest="$cache_root/k8s-$KUBERNETES_VERSION"
bin="$dest/bin"
stamp="$dest/.complete-$KUBERNETES_VERSION-$ETCD_VERSION-$HELM_VERSION"
if [[ -f "$stamp" && "${1:-}" != "--force" ]]; then
  echo "test cluster binaries up to date in $bin"
  exit 0
fi

command -v go >/dev/null || { echo "error: go is not installed (needed to build the test cluster)" >&2; exit 1; }
mkdir -p "$bin"
work=$(mktemp -d "${TMPDIR:-/tmp}/nas-k8s-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod
export CGO_ENABLED=0
start=$(date +%s)

minor=${KUBERNETES_VERSION#v1.}
staging_version="v0.$minor"            # v1.36.3 -> v0.36.3

echo ">> kubernetes $KUBERNETES_VERSION (staging modules at $staging_version), etcd $ETCD_VERSION"
cd "$work"
mkdir k8s && cd k8s
go mod init nas-operator.test/k8s-build >/dev/null 2>&1
# The kubernetes go.mod, as published on the proxy, lists the staging modules to replace.
gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[[ -f "$gomod" ]] || { echo "error: could not download k8s.io/kubernetes@$KUBERNETES_VERSION go.mod" >&2; exit 1; }
go mod edit -require="k8s.io/kubernetes@$KUBERNETES_VERSION"
for mod in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod"); do
  go mod edit -replace="$mod=$mod@$staging_version"
done
# etcd's own root module has replace directives too; its server module exposes etcdmain.
mkdir -p cmd/etcd
cat > cmd/etcd/main.go <<'GO'
// Command etcd is etcd's own main, built from the published server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
go mod tidy >/dev/null 2>&1 || go mod tidy

build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*}"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  echo ">> building $cmd"
  go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
echo ">> building etcd"
go build -trimpath -ldflags "-s -w" -o "$bin/etcd" ./cmd/etcd

echo ">> building helm $HELM_VERSION"
helm_major=${HELM_VERSION%%.*}
GOBIN="$bin" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/$helm_major/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/$helm_major/cmd/helm@$HELM_VERSION"

rm -f "$dest"/.complete-*
touch "$stamp"
echo ">> test cluster binaries built in $(( $(date +%s) - start ))s into $bin"
