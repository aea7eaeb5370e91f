#!/usr/bin/env bash
# A local Kubernetes control plane built from the official modules, in the manner of
# Kubernetes' hack/local-up-cluster.sh: host processes, no images, no downloads but Go modules.
#
#   scripts/cluster.sh build   go build etcd, kube-apiserver, kube-controller-manager and
#                              kube-scheduler from cluster/go.mod into a cache outside the clone
#                              (KDIST_CLUSTER_CACHE, keyed by the Kubernetes version); a second
#                              run with the same go.mod/go.sum reuses the binaries
#   scripts/cluster.sh bin     print the folder that holds the built binaries
#   scripts/cluster.sh up      start the control plane (tests/kube_server.py) in KDIST_CLUSTER_DIR
#                              and print the kubeconfig's path
#   scripts/cluster.sh down    stop every process `up` started and remove KDIST_CLUSTER_DIR
set -euo pipefail

KDIST_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODULE_DIR="${KDIST_ROOT}/cluster"
KDIST_CLUSTER_CACHE=${KDIST_CLUSTER_CACHE:-/var/cache/kdist-cluster}
KDIST_CLUSTER_DIR=${KDIST_CLUSTER_DIR:-/tmp/kdist-cluster}
PYTHON=${PYTHON:-python3}
# cluster/go.mod pins the release; the build key is the Kubernetes version
KUBE_VERSION=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "${MODULE_DIR}/go.mod")
BIN_DIR="${KDIST_CLUSTER_CACHE}/${KUBE_VERSION}/bin"
# binary name -> Go package
declare -A PACKAGES=(
  [etcd]=go.etcd.io/etcd/server/v3
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
)
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# the node's add-ons, each its own module at a release: binary name -> package@version
declare -A ADDONS=(
  [coredns]=github.com/coredns/coredns@v1.14.7
  [crictl]=sigs.k8s.io/cri-tools/cmd/crictl@v1.34.0
)

kube::log::status() {
  echo "cluster: $*" >&2
}

kube::log::error_exit() {
  echo "cluster: error: $*" >&2
  exit 2
}

# The -X flags of Kubernetes' hack/lib/version.sh (kube::version::ldflags): without them the
# binaries report v0.0.0-master. buildDate is the release's module time, so builds repeat.
kube::version::ldflags() {
  local major minor build_date
  major=${KUBE_VERSION#v}
  minor=${major#*.}
  major=${major%%.*}
  minor=${minor%%.*}
  build_date=$(cd "${MODULE_DIR}" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  local -a flags=(-s -w)
  local key val
  for key in gitVersion gitMajor gitMinor gitTreeState buildDate; do
    case ${key} in
      gitVersion) val=${KUBE_VERSION} ;;
      gitMajor) val=${major} ;;
      gitMinor) val=${minor} ;;
      gitTreeState) val=clean ;;
      buildDate) val=${build_date} ;;
    esac
    flags+=("-X 'k8s.io/client-go/pkg/version.${key}=${val}'"
            "-X 'k8s.io/component-base/version.${key}=${val}'")
  done
  echo "${flags[*]}"
}

# What the binaries were built from: another module, sums, flags or binary list rebuilds.
kube::build::key() {
  { cat "${MODULE_DIR}/go.mod" "${MODULE_DIR}/go.sum"; echo "$1 ${BINARIES[*]} ${ADDONS[*]}"; } |
    sha256sum | cut -c1-16
}

kube::build::all() {
  command -v go >/dev/null || kube::log::error_exit "go is not on PATH (Go >= 1.25 builds cluster/go.mod)"
  local key stamp ldflags
  ldflags=$(kube::version::ldflags)
  key=$(kube::build::key "${ldflags}")
  stamp="${BIN_DIR}/.build-key"
  if [[ -f ${stamp} && $(cat "${stamp}") == "${key}" ]]; then
    kube::log::status "reusing ${BIN_DIR} (Kubernetes ${KUBE_VERSION}, build key ${key})"
    return
  fi
  mkdir -p "${BIN_DIR}"
  rm -f "${stamp}"
  local name start
  for name in "${BINARIES[@]}"; do
    start=${SECONDS}
    kube::log::status "building ${name} (${PACKAGES[${name}]}) ..."
    (cd "${MODULE_DIR}" && CGO_ENABLED=0 go build -trimpath -ldflags "${ldflags}" \
        -o "${BIN_DIR}/${name}.new" "${PACKAGES[${name}]}")
    mv "${BIN_DIR}/${name}.new" "${BIN_DIR}/${name}"
    kube::log::status "built ${name} in $((SECONDS - start))s"
  done
  kube::build::addons
  echo "${key}" > "${stamp}"
  kube::log::status "binaries in ${BIN_DIR}: $(du -sh "${BIN_DIR}" | cut -f1)"
}

# go install each add-on at its release (outside cluster/go.mod: each has its own go.mod).
kube::build::addons() {
  local name start gobin
  gobin=$(mktemp -d)
  for name in "${!ADDONS[@]}"; do
    start=${SECONDS}
    kube::log::status "building ${name} (${ADDONS[${name}]}) ..."
    (cd "${gobin}" && GOBIN="${gobin}" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
        "${ADDONS[${name}]}") || kube::log::error_exit "go install ${ADDONS[${name}]} failed"
    mv "${gobin}/${name}" "${BIN_DIR}/${name}"
    kube::log::status "built ${name} in $((SECONDS - start))s"
  done
  rmdir "${gobin}"
}

kube::cluster::up() {
  [[ -f "${BIN_DIR}/.build-key" ]] || kube::log::error_exit "no binaries in ${BIN_DIR}: run \`make cluster-build\` first"
  PYTHONPATH="${KDIST_ROOT}${PYTHONPATH:+:${PYTHONPATH}}" \
    "${PYTHON}" "${KDIST_ROOT}/tests/kube_cluster.py" up --bin "${BIN_DIR}" --dir "${KDIST_CLUSTER_DIR}"
}

kube::cluster::down() {
  PYTHONPATH="${KDIST_ROOT}${PYTHONPATH:+:${PYTHONPATH}}" \
    "${PYTHON}" "${KDIST_ROOT}/tests/kube_cluster.py" down --bin "${BIN_DIR}" --dir "${KDIST_CLUSTER_DIR}"
}

case ${1:-} in
  build) kube::build::all ;;
  bin) echo "${BIN_DIR}" ;;
  up) kube::cluster::up ;;
  down) kube::cluster::down ;;
  *) echo "usage: $0 build|bin|up|down" >&2; exit 2 ;;
esac
