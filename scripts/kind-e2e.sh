#!/usr/bin/env bash
# kdist's Kubernetes end-to-end test on kind.
#
# NOT RUN IN THE DEVELOPMENT SANDBOX: it needs Docker, kind, kubectl, the kind node image and a
# package index for the trainer image, none of which exist there. It runs on a machine or CI runner
# that has them (.github/workflows/kind-e2e.yml, `make kind-e2e`). The Kubernetes client itself is
# tested without a cluster, at the HTTP boundary (tests/test_kube_client.py, test_k8s_backend.py).
#
#   scripts/kind-e2e.sh up        # kind cluster (manifests/kind/cluster.yaml); its default
#                                 # StorageClass made ReadWriteMany-capable (shared_storage)
#   scripts/kind-e2e.sh build     # docker build -f trainers/Dockerfile -t kdist-trainer:0.1.0 .
#   scripts/kind-e2e.sh load      # docker save + kind load image-archive into the cluster's nodes
#   scripts/kind-e2e.sh e2e       # apply --wait; delete a node pod mid-run; a restart is seen;
#                                 # Succeeded; delete --volumes
#   scripts/kind-e2e.sh diagnose  # objects, events and logs of the test job (CI: on failure)
#   scripts/kind-e2e.sh down      # delete the cluster
#   scripts/kind-e2e.sh all       # up build load e2e
#
# Environment: KDIST (kdist), KIND_CLUSTER (kdist), IMAGE (kdist-trainer:0.1.0), E2E_TIMEOUT
# (seconds, 1200), E2E_STEPS (training steps, 600), E2E_STEP_SLEEP (seconds per step, 0.2: the
# job must outlast the chaos step).
set -euo pipefail

cd "$(dirname "$0")/.."
KDIST=${KDIST:-kdist}
CLUSTER=${KIND_CLUSTER:-kdist}
CONTEXT=kind-$CLUSTER
IMAGE=${IMAGE:-kdist-trainer:0.1.0}
TIMEOUT=${E2E_TIMEOUT:-1200}
STEPS=${E2E_STEPS:-600}
STEP_SLEEP=${E2E_STEP_SLEEP:-0.2}
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
  case "$(kind version)" in
    *" v0.1"[0-9].* | *" v0.2"[0-4].*) die "$(kind version): kind before v0.25 stalls DNS under NetworkPolicies (kubernetes-sigs/kind#3713); use v0.25 or later" ;;
  esac
  mkdir -p "$SHARED"
  chmod 0777 "$SHARED"  # the trainer runs as uid 1000; hostPath volumes get no fsGroup
  local clusters
  clusters="$(kind get clusters 2>/dev/null || true)"
  if grep -qx "$CLUSTER" <<<"$clusters"; then
    say "kind cluster $CLUSTER exists"
  else
    say "creating kind cluster $CLUSTER (1 control plane, 2 workers)"
    kind create cluster --name "$CLUSTER" --config manifests/kind/cluster.yaml --wait 180s
  fi
  shared_storage
}

# ReadWriteMany on kind's default StorageClass (`standard`, rancher.io/local-path): every kind
# node mounts the same host folder at /kdist-shared (manifests/kind/cluster.yaml), and the
# provisioner's sharedFileSystemPath mode puts every volume there, for every access mode. So the
# claim of any spec without `checkpoint.storage_class` (the `kdist init` spec, the CPU examples)
# binds with no extra objects.
shared_storage() {
  say "kind's default StorageClass: volumes on the shared folder (ReadWriteMany)"
  kc -n local-path-storage patch configmap local-path-config --type merge \
    -p '{"data":{"config.json":"{\"nodePathMap\":[],\"sharedFileSystemPath\":\"/kdist-shared\"}"}}'
  kc -n local-path-storage rollout restart deployment/local-path-provisioner
  kc -n local-path-storage rollout status deployment/local-path-provisioner --timeout=120s
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
  mkdir -p "$WORK"
  # an archive, not `kind load docker-image`: that fails with Docker's containerd image store
  docker save -o "$WORK/image.tar" "$IMAGE"
  kind load image-archive "$WORK/image.tar" --name "$CLUSTER"
  rm -f "$WORK/image.tar"
}

write_spec() {
  mkdir -p "$WORK"
  cat >"$SPEC" <<EOF
# Written by scripts/kind-e2e.sh: an elastic CPU job (gloo), 3 nodes, keeps training down to 2.
name: $JOB
image: $IMAGE
entrypoint: trainers/train.py
args: [--synthetic, --max-steps, "$STEPS", --checkpoint-every, "25", --batch-size, "32",
       --step-sleep, "$STEP_SLEEP"]
nodes: "2:3"
max_restarts: 3
resources: {cpu: "1", memory: 1536Mi, shm: 256Mi}
checkpoint: {path: /checkpoints, size: 1Gi}  # kind's default class (shared_storage)
EOF
}

# A fresh start: no leftover job and no checkpoints from an earlier run.
reset() {
  "$KDIST" delete --target k8s -f "$SPEC" --context "$CONTEXT" --volumes
  kc wait --for=delete pod -l "$SELECTOR" --timeout=180s 2>/dev/null || true
  kc wait --for=delete "pvc/$JOB-checkpoints" --timeout=120s 2>/dev/null || true
}

# Wait until the node pods' logs match an extended regex (rank 0 prints KDIST_METRIC lines).
# The logs are read into a variable first: piped straight into a grep that quits at its first
# match, kubectl would get SIGPIPE (141) and pipefail would fail the pipeline.
wait_for_log() {
  local pattern=$1 what=$2 deadline=$((SECONDS + 900)) logs outcome
  while :; do
    logs=$(kc logs -l "$SELECTOR,app.kubernetes.io/component=node" --tail=-1 -c node 2>/dev/null || true)
    if grep -Eq "$pattern" <<<"$logs"; then return 0; fi
    [ "$SECONDS" -lt "$deadline" ] || die "no $what within 900s"
    outcome=$(kc get statefulset "$JOB" -o jsonpath='{.metadata.annotations.kdist\.dev/outcome}' 2>/dev/null || true)
    [ -z "$outcome" ] || die "the job finished ($outcome) before $what was seen"
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
  wait_for_log '"event":"checkpoint","step":([5-9][0-9]|[1-9][0-9]{2,})' "checkpoint at step >= 50"
  say "chaos: deleting pod $JOB-1 mid-run"
  kc delete pod "$JOB-1" --wait=false --ignore-not-found
  # torchrun restarted the workers: a start metric with restart > 0, resumed from a checkpoint
  wait_for_log '"event":"start","restart":[1-9][0-9]*,"resumed_step":[1-9]' "restart (start metric with restart > 0)"
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
