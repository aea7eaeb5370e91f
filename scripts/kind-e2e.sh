#!/usr/bin/env bash
# kdist's Kubernetes end-to-end test on kind.
#
# NOT RUN IN THE DEVELOPMENT SANDBOX: it needs Docker, kind, kubectl, the kind node image and a
# package index for the trainer image, none of which exist there. It runs on a machine or CI runner
# that has them (.github/workflows/kind-e2e.yml, `make kind-e2e`). The Kubernetes client itself is
# tested without a cluster, at the HTTP boundary (tests/test_kube_client.py, test_k8s_backend.py).
#
#   scripts/kind-e2e.sh up        # kind cluster (manifests/kind/cluster.yaml) + the shared RWX volume
#   scripts/kind-e2e.sh build     # docker build -f trainers/Dockerfile -t kdist-trainer:0.1.0 .
#   scripts/kind-e2e.sh load      # kind load docker-image into the cluster's nodes
#   scripts/kind-e2e.sh e2e       # apply --wait; delete a node pod mid-run; Succeeded; delete --volumes
#   scripts/kind-e2e.sh diagnose  # objects, events and logs of the test job (CI: on failure)
#   scripts/kind-e2e.sh down      # delete the cluster
#   scripts/kind-e2e.sh all       # up build load e2e
#
# Environment: KDIST (kdist), KIND_CLUSTER (kdist), IMAGE (kdist-trainer:0.1.0), E2E_TIMEOUT
# (seconds, 1200), E2E_STEPS (training steps, 600).
set -euo pipefail

cd "$(dirname "$0")/.."
KDIST=${KDIST:-kdist}
CLUSTER=${KIND_CLUSTER:-kdist}
CONTEXT=kind-$CLUSTER
IMAGE=${IMAGE:-kdist-trainer:0.1.0}
TIMEOUT=${E2E_TIMEOUT:-1200}
STEPS=${E2E_STEPS:-600}
SHARED=/tmp/kdist-kind-shared  # = the extraMounts hostPath in manifests/kind/cluster.yaml
JOB=kdist-e2e
WORK=.kdist/kind-e2e
SPEC=$WORK/kdist.yaml
SELECTOR="app.kubernetes.io/instance=$JOB,app.kubernetes.io/managed-by=kdist"

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'kind-e2e: %s\n' "$*" >&2; exit 1; }
kc() { kubectl --context "$CONTEXT" "$@"; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed (${2:-})"; }

up() {
  need docker "https://docs.docker.com/engine/install/"
  need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
  need kubectl "https://kubernetes.io/docs/tasks/tools/"
  mkdir -p "$SHARED"
  chmod 0777 "$SHARED"  # the trainer runs as uid 1000; hostPath volumes get no fsGroup
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "kind cluster $CLUSTER exists"
  else
    say "creating kind cluster $CLUSTER (1 control plane, 2 workers)"
    kind create cluster --name "$CLUSTER" --config manifests/kind/cluster.yaml --wait 180s
  fi
  shared_volume
}

# A ReadWriteMany volume both workers see: a hostPath PV on the folder kind mounts into each.
shared_volume() {
  for node in $(kind get nodes --name "$CLUSTER"); do
    docker exec "$node" sh -c 'if [ -d /kdist-shared ]; then mkdir -p /kdist-shared/checkpoints && chmod 0777 /kdist-shared/checkpoints; fi'
  done
  kc apply -f - <<'EOF'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: kdist-shared
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: kdist-shared-checkpoints
spec:
  storageClassName: kdist-shared
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: /kdist-shared/checkpoints, type: Directory}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}
EOF
}

build() {
  need docker
  say "building $IMAGE"
  docker build -f trainers/Dockerfile -t "$IMAGE" .
}

load() {
  need kind
  docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE is missing: run '$0 build' first"
  say "loading $IMAGE into kind cluster $CLUSTER"
  kind load docker-image "$IMAGE" --name "$CLUSTER"
}

write_spec() {
  mkdir -p "$WORK"
  cat >"$SPEC" <<EOF
# Written by scripts/kind-e2e.sh: an elastic CPU job (gloo), 3 nodes, keeps training down to 2.
name: $JOB
image: $IMAGE
entrypoint: trainers/train.py
args: [--synthetic, --max-steps, "$STEPS", --checkpoint-every, "25", --batch-size, "32"]
nodes: "2:3"
max_restarts: 3
resources: {cpu: "1", memory: 1536Mi, shm: 256Mi}
checkpoint: {path: /checkpoints, size: 1Gi, storage_class: kdist-shared}
EOF
}

# A fresh start: no leftover job, an Available PV and no checkpoints from an earlier run.
reset() {
  "$KDIST" delete --target k8s -f "$SPEC" --context "$CONTEXT" --volumes
  kc wait --for=delete pod -l "$SELECTOR" --timeout=180s 2>/dev/null || true
  kc wait --for=delete "pvc/$JOB-checkpoints" --timeout=120s 2>/dev/null || true
  kc delete pv kdist-shared-checkpoints --ignore-not-found --wait=true
  for node in $(kind get nodes --name "$CLUSTER"); do
    docker exec "$node" sh -c 'if [ -d /kdist-shared/checkpoints ]; then rm -rf /kdist-shared/checkpoints/* /kdist-shared/checkpoints/.[!.]*; fi' || true
  done
  shared_volume
}

# Wait until the trainer has written a checkpoint at step >= 50 (rank 0 prints KDIST_METRIC lines).
wait_for_checkpoint() {
  local deadline=$((SECONDS + 900))
  until kc logs -l "$SELECTOR,app.kubernetes.io/component=node" --tail=-1 -c node 2>/dev/null \
      | grep -Eq '"event":"checkpoint","step":([5-9][0-9]|[1-9][0-9]{2,})'; do
    [ "$SECONDS" -lt "$deadline" ] || die "no checkpoint at step >= 50 within 900s"
    outcome=$(kc get statefulset "$JOB" -o jsonpath='{.metadata.annotations.kdist\.dev/outcome}' 2>/dev/null || true)
    [ -z "$outcome" ] || die "the job finished ($outcome) before a checkpoint was seen"
    sleep 5
  done
}

e2e() {
  need kubectl
  command -v "$KDIST" >/dev/null 2>&1 || die "kdist not found ($KDIST): pip install -e . or set KDIST"
  write_spec
  say "fresh start"
  reset
  say "server-side dry run"
  "$KDIST" apply --target k8s -f "$SPEC" --context "$CONTEXT" --dry-run=server
  say "apply and wait (in the background)"
  "$KDIST" apply --target k8s -f "$SPEC" --context "$CONTEXT" --wait --timeout "$TIMEOUT" &
  waiter=$!
  trap 'kill "$waiter" 2>/dev/null || true' EXIT
  wait_for_checkpoint
  say "chaos: deleting pod $JOB-1 mid-run"
  kc delete pod "$JOB-1" --wait=false
  local rc=0
  wait "$waiter" || rc=$?
  trap - EXIT
  "$KDIST" status --target k8s -f "$SPEC" --context "$CONTEXT" || true
  [ "$rc" -eq 0 ] || die "kdist apply --wait exited with $rc: the job did not succeed"
  outcome=$(kc get statefulset "$JOB" -o jsonpath='{.metadata.annotations.kdist\.dev/outcome}')
  [ "$outcome" = Succeeded ] || die "outcome annotation is '$outcome', expected Succeeded"
  replicas=$(kc get statefulset "$JOB" -o jsonpath='{.spec.replicas}')
  [ "$replicas" = 0 ] || die "a finished job must scale itself to 0; replicas is $replicas"
  say "re-applying a finished job is refused"
  if "$KDIST" apply --target k8s -f "$SPEC" --context "$CONTEXT"; then die "re-apply was not refused"; fi
  say "delete"
  "$KDIST" delete --target k8s -f "$SPEC" --context "$CONTEXT" --volumes
  kc wait --for=delete pod -l "$SELECTOR" --timeout=180s 2>/dev/null || true
  left=$(kc get statefulsets,deployments,services,pvc,pdb,networkpolicies,serviceaccounts,roles,rolebindings,pods \
         -l "$SELECTOR" -o name)
  [ -z "$left" ] || die "objects left after kdist delete: $left"
  say "kind e2e passed"
}

diagnose() {
  kc get statefulsets,deployments,pods,services,pvc,pdb,networkpolicies -l "$SELECTOR" -o wide || true
  kc get statefulset "$JOB" -o jsonpath='{.metadata.annotations}{"\n"}' || true
  kc get pv -o wide || true
  kc describe pods -l "$SELECTOR" || true
  kc get events --sort-by=.lastTimestamp | tail -50 || true
  kc logs -l "$SELECTOR" --all-containers --prefix --tail=200 || true
  kc logs -l "$SELECTOR" --all-containers --prefix --tail=100 --previous || true
}

down() {
  need kind
  kind delete cluster --name "$CLUSTER"
}

[ "$#" -gt 0 ] || set -- all
for step in "$@"; do
  case "$step" in
    up | build | load | e2e | diagnose | down) "$step" ;;
    all) up; build; load; e2e ;;
    *) die "unknown step '$step' (up, build, load, e2e, diagnose, down, all)" ;;
  esac
done
