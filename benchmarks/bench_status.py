"""Benchmark (not a test): `kdist status` of a 500-node job against a real kube-apiserver.

    python benchmarks/bench_status.py [--nodes 500] [--runs 5]

Starts etcd and kube-apiserver (tests/kube_server.py; `make cluster-build` first), applies a
job with `nodes: "2:N"` (timed), makes its N node pods from the StatefulSet's template as the
controller would (no kubelet: they stay Pending), times cold `kdist status -t k8s -o json`
processes and reads their peak memory, then times one `kdist scale` to N - 100.
tests/test_k8s_apiserver.py checks the request count (one list of pods, no request for a
single pod). Writes benchmarks/results/status.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "status.json"
sys.path.insert(0, str(ROOT / "tests"))

from kube_server import KubeServer, missing  # noqa: E402

KDIST = [sys.executable, "-c", "from kdist.cli import main; main()"]
NAMESPACE = "bench"


def prepare(server: KubeServer) -> None:
    server.create("/apis/storage.k8s.io/v1/storageclasses", {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "shared", "annotations": {
            "storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kdist.bench/rwx"})
    server.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": NAMESPACE}})
    server.create(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
                  {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}})


def pod(sts: dict[str, Any], name: str) -> dict[str, Any]:
    template = copy.deepcopy(sts["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}


def cold(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB of the child, stdout."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, peak, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if reason := missing():
        sys.exit(reason)
    with tempfile.TemporaryDirectory() as tmp, KubeServer(Path(tmp) / "apiserver") as server:
        prepare(server)
        spec = Path(tmp) / "kdist.yaml"
        spec.write_text(f'name: big\nimage: trainer:1.0\nentrypoint: train.py\nnodes: "2:{args.nodes}"\n'
                        "resources: {cpu: 100m, memory: 256Mi, shm: 64Mi}\n")
        env = {**os.environ, "KUBECONFIG": str(server.kubeconfig), "HOME": tmp}
        applied, _, _ = cold([*KDIST, "apply", "-f", str(spec), "-n", NAMESPACE], env)
        sts = server.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/big")
        pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
        with ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda i: server.request("POST", pods, pod(sts, f"big-{i}"))[0],
                                 range(args.nodes)))
        assert made == [201] * args.nodes, sorted(set(made))
        argv = [*KDIST, "status", "-t", "k8s", "-f", str(spec), "-n", NAMESPACE, "-o", "json"]
        cold(argv, env)  # warm the file cache
        walls, peak, out = [], 0.0, ""
        for _ in range(args.runs):
            wall, peak, out = cold(argv, env)
            walls.append(wall)
        scaled, _, _ = cold([*KDIST, "scale", "-t", "k8s", "-f", str(spec), "-n", NAMESPACE,
                             str(args.nodes - 100)], env)
    listed = len(json.loads(out)["nodes"])
    result = {"nodes": args.nodes, "listed": listed, "runs": args.runs,
              "status_median_s": round(statistics.median(walls), 3),
              "status_max_s": round(max(walls), 3), "peak_rss_mib": round(peak, 1),
              "apply_s": round(applied, 3), "scale_s": round(scaled, 3),
              "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"kdist status of a {args.nodes}-node job ({listed} pods listed): median "
          f"{result['status_median_s']} s, max {result['status_max_s']} s over {args.runs} cold "
          f"runs, peak RSS {result['peak_rss_mib']} MiB; apply {result['apply_s']} s, scale to "
          f"{args.nodes - 100} {result['scale_s']} s (one run each); wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
