"""The finish sidecar of a Kubernetes node pod: the only container that holds an API token.

kdist/targets/k8s/render.py runs this file's text as `python3 -c TEXT NAME STORE NODES_MIN DIR` in a
native sidecar; the Helm chart ships the same bytes as charts/kdist/files/finish.py. STORE is
the standalone store's Deployment, or "" without one. DIR is an emptyDir shared with the
trainer container, whose script (kdist/targets/k8s/node.py) writes DIR/exit-code when its torchrun ends for
good (success, or retries used up). Then:

- exit code 0: record `outcome: Succeeded` in the job's ConfigMap NAME-outcome (unless a node
  did) and scale the StatefulSet and the store to zero;
- otherwise this node leaves the job: record `left.<pod>` in that ConfigMap. The job is Failed,
  and stopped FAILED_GRACE_S later, only when fewer than NODES_MIN nodes can continue.

The record is a ConfigMap, not annotations on the StatefulSet, so that the token can patch
nothing that holds a pod template: its Role allows that one ConfigMap and the /scale
subresources of the job's StatefulSet and store, by name.

At start (before DIR/ready lets the kubelet start the trainer), a pod of a job that already has
an outcome (re-applied, or a `helm upgrade`) writes DIR/finished, so the trainer does not train
again, and stops the job again; a new pod of a node that had left clears its left record.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

RECORD = "-outcome"  # the job's ConfigMap: NAME-outcome
OUTCOME, EXIT_CODE, FINISHED_BY = "outcome", "exit-code", "finished-by"
LEFT = "left."  # + the pod's name: the exit code it left the job with
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TRIES = 5
# A Failed job is scaled to 0 this many seconds after its outcome is recorded: the nodes have
# stopped training, and their logs stay readable for `kdist apply --wait`'s root cause and for
# kubectl logs (scaled at once, the pods and their logs were gone before anyone read them).
FAILED_GRACE_S = float(os.environ.get("KDIST_FAILED_GRACE", "15"))


class Api:
    """The API server, with the projected token (re-read each call: the kubelet rotates it);
    `apps` and `core` are the pod's namespace in apps/v1 and v1."""

    def __init__(self) -> None:
        sa = Path(os.environ.get("KDIST_SERVICEACCOUNT_DIR", TOKEN_DIR))
        self.token = sa / "token"
        namespace = (sa / "namespace").read_text().strip()
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        host = f"[{host}]" if ":" in host else host
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.base = f"https://{host}:{port}"
        self.apps = f"/apis/apps/v1/namespaces/{namespace}/"
        self.core = f"/api/v1/namespaces/{namespace}/"
        self.tls = ssl.create_default_context(cafile=str(sa / "ca.crt"))

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET, or a merge patch with `body`; retried a few times on errors (HTTP included)."""
        for _ in range(TRIES - 1):
            try:
                return self.once(path, body)
            except OSError as e:
                print(f"kdist: {path}: {e}; retrying", file=sys.stderr, flush=True)
                time.sleep(2)
        return self.once(path, body)

    def once(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token.read_text().strip()}",
                   "Content-Type": "application/merge-patch+json"}
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data, headers,
                                         method="GET" if body is None else "PATCH")
        with urllib.request.urlopen(request, context=self.tls, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result


def record_of(api: Api, name: str, data: dict[str, str | None] | None = None) -> dict[str, str]:
    """The job's record (its ConfigMap's data); with `data`, merged in first (None deletes)."""
    body = None if data is None else {"data": data}
    return dict(api.call(f"{api.core}configmaps/{name}{RECORD}", body).get("data") or {})


def replicas_of(api: Api, name: str) -> int:
    return int((api.call(f"{api.apps}statefulsets/{name}/scale").get("spec") or {}).get("replicas", 1))


def ordinal(name: str, pod: str) -> int:
    """The StatefulSet ordinal of `pod` (<name>-N); -1 when it is not one."""
    prefix, _, number = pod.rpartition("-")
    return int(number) if prefix == name and number.isdigit() else -1


def stop(api: Api, name: str, store: str) -> None:
    api.call(f"{api.apps}statefulsets/{name}/scale", {"spec": {"replicas": 0}})
    if store:
        api.call(f"{api.apps}deployments/{store}/scale", {"spec": {"replicas": 0}})
    print(f"kdist: scaled statefulset {name}" + (f" and deployment {store}" if store else "")
          + " to 0", flush=True)


def record(api: Api, name: str, outcome: str, rc: int, pod: str) -> None:
    """Write the outcome in the job's record, unless a node already did."""
    if OUTCOME in record_of(api, name):
        return
    record_of(api, name, {OUTCOME: outcome, EXIT_CODE: str(rc), FINISHED_BY: pod})
    print(f"kdist: recorded {outcome} (exit code {rc})", flush=True)


def start(api: Api, name: str, store: str, pod: str, folder: Path) -> None:
    notes = record_of(api, name)
    if OUTCOME in notes:
        (folder / "finished").write_text(notes[OUTCOME])
        print(f"kdist: job {name} already finished ({notes[OUTCOME]}); not training again. "
              "Delete it (kdist delete) to train again.", flush=True)
        stop(api, name, store)
    elif LEFT + pod in notes:
        record_of(api, name, {LEFT + pod: None})
        print(f"kdist: {pod} rejoins the job", flush=True)


def leave(api: Api, name: str, pod: str, rc: int, nodes_min: int) -> bool:
    """Record that `pod` left the job; True when at least `nodes_min` nodes can continue."""
    notes = record_of(api, name, {LEFT + pod: str(rc)})
    replicas = replicas_of(api, name)
    left = [k for k in notes if k.startswith(LEFT) and ordinal(name, k[len(LEFT):]) < replicas]
    able = replicas - len(left)
    print(f"kdist: {pod} left the job (exit code {rc}); {able} of {replicas} nodes can "
          f"continue (min {nodes_min})", flush=True)
    return able >= nodes_min


def finish(api: Api, name: str, store: str, pod: str, nodes_min: int, rc: int) -> None:
    if rc != 0 and leave(api, name, pod, rc, nodes_min):
        return
    record(api, name, "Succeeded" if rc == 0 else "Failed", rc, pod)
    if rc != 0:
        print(f"kdist: job {name} failed; scaling it to 0 in {FAILED_GRACE_S:g}s (its logs stay "
              "readable until then)", flush=True)
        time.sleep(FAILED_GRACE_S)
    stop(api, name, store)


def exit_code(path: Path) -> int:
    text = path.read_text().strip()
    return int(text) if text.lstrip("-").isdigit() else 1


def main(argv: list[str]) -> int:
    name, store, nodes_min, folder = argv[0], argv[1], int(argv[2]), Path(argv[3])
    pod = os.environ.get("HOSTNAME", "")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    api = Api()
    done = folder / "exit-code"
    if not done.exists():
        try:
            start(api, name, store, pod, folder)
        except OSError as e:
            print(f"kdist: could not read configmap {name}{RECORD} ({e}); training anyway",
                  file=sys.stderr, flush=True)
    (folder / "ready").touch()
    while not done.exists():
        time.sleep(1)
    try:
        finish(api, name, store, pod, nodes_min, exit_code(done))
    except OSError as e:
        print(f"kdist: could not record the outcome ({e}); idling anyway", file=sys.stderr,
              flush=True)
    while True:  # idle until the pod stops: exiting would restart this sidecar
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
