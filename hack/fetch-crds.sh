#!/usr/bin/env bash
# Fetch third-party CRDs the chart's tests validate against, from the Go module proxy (the
# module zip of a project carries its generated CRD YAML), once per machine.
#
# Today: the Prometheus Operator's ServiceMonitor, so that the chart's optional ServiceMonitor
# is checked by a real API server against the real schema.
#
# Output: ${NAS_TEST_CLUSTER_CACHE:-~/.cache/nas-operator}/crds/prometheus-operator-<version>/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${NAS_TEST_CLUSTER_CACHE:-$HOME/.cache/nas-operator}
dest="$cache_root/crds/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
if [[ -f "$dest/.complete" ]]; then
  exit 0
fi
command -v go >/dev/null || { echo "error: go is not installed (needed to fetch CRDs from the module proxy)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/nas-crds.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init nas-operator.test/crds >/dev/null 2>&1
module=github.com/prometheus-operator/prometheus-operator
dir=$(go mod download -json "$module@$PROMETHEUS_OPERATOR_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[[ -n "$dir" ]] || { echo "error: could not download $module@$PROMETHEUS_OPERATOR_VERSION" >&2; exit 1; }
mkdir -p "$dest"
cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$dest/"
chmod 644 "$dest"/*.yaml
touch "$dest/.complete"
echo ">> CRDs of prometheus-operator $PROMETHEUS_OPERATOR_VERSION in $dest"
