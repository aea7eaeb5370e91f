"""The same job on the single-node cluster (`kdist apply --wait`) and on Compose (`kdist up`).

    sudo .venv/bin/python benchmarks/bench_cluster.py [--runs 3] [--quick]

Starts the cluster of tests/kube_cluster.py (needs root, Docker, containerd, runc, the CNI
plugins and `make cluster-build`; no other cluster may be up), puts trainers/Dockerfile's image
on its node, then measures, interleaving the targets run by run so both see the same load:

- finish: the CPU example with `nodes: 2` (300 steps of 0.1 s, a checkpoint every 10), cpu
  300m a node so the nodes and the store fit the node's 2 CPUs: seconds from the command to
  its exit 0, `kdist apply --wait` against an attached `kdist up` of the same spec file;
- lost node: the same with `nodes: "2:3"`, 3 running; at step 15 node 2 goes: its pod is
  deleted (what a drain or an eviction does; the StatefulSet makes it again) against its
  container `docker kill`ed; seconds from just before that to the first step of a worker group
  started after it (KDIST_METRIC `time`, this host's clock, which the pods share).

Prints a table, writes benchmarks/results/cluster.json, stops the cluster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench_compose import measure  # noqa: E402
from cluster_job import KDIST, ClusterJob, import_trainer_image, write_spec  # noqa: E402
from kube_cluster import KubeCluster, missing  # noqa: E402

from kdist.plan import LaunchPlan  # noqa: E402
from kdist.spec.load import load_file  # noqa: E402
from kdist.targets import render  # noqa: E402
from kdist.targets.compose.job import ComposeJob, detect, project_for  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cluster.json"
KILL_AT_STEP = 15
VICTIM = 2
TIMEOUT_S = 400.0
MEASURES = ("finish: k8s", "finish: compose", "lost node: k8s", "lost node: compose")


def finish_k8s(cluster: KubeCluster, folder: Path, index: int) -> dict[str, Any]:
    job = ClusterJob(cluster, folder, f"bench-finish-{index}", nodes=2)
    try:
        began = time.monotonic()
        done = subprocess.run([*KDIST, "apply", "-f", str(job.file), "--wait"], cwd=ROOT,
                              env=job.env, capture_output=True, text=True, timeout=TIMEOUT_S)
        took = time.monotonic() - began
        return {"seconds": round(took, 2) if done.returncode == 0 else None,
                "exit_code": done.returncode}
    finally:
        job.kdist("delete", "-f", str(job.file), "--volumes")


def finish_compose(cluster: KubeCluster, folder: Path, index: int) -> dict[str, Any]:
    spec = folder / "kdist.yaml"
    write_spec(spec, f"bench-up-{index}", nodes=2)
    compose = compose_job(spec)
    try:
        began = time.monotonic()
        done = subprocess.run([*KDIST, "up", "-f", str(spec)], cwd=ROOT, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
        took = time.monotonic() - began
        return {"seconds": round(took, 2) if done.returncode == 0 else None,
                "exit_code": done.returncode}
    finally:
        compose.down(volumes=True)


def lost_k8s(cluster: KubeCluster, folder: Path, index: int) -> dict[str, Any]:
    job = ClusterJob(cluster, folder, f"bench-lost-{index}", nodes="2:3")
    proc = job.apply()
    deleted_at = 0.0
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            job.poll_logs()
            if not deleted_at and any(m["event"] == "step" and m["step"] >= KILL_AT_STEP
                                      and m["world_size"] == 3 for m in job.metrics()):
                deleted_at = time.time()
                job.api.request("DELETE", f"/api/v1/namespaces/{job.ns}/pods/{job.name}-{VICTIM}")
            elif deleted_at and (step := first_step_after(job, deleted_at)) is not None:
                return {"seconds": round(step["time"] - deleted_at, 2), "first_step": step["step"],
                        "world_size": step["world_size"]}
            time.sleep(0.25)
        return {"seconds": None, "error": "no step of a new worker group in time"}
    finally:
        proc.kill()
        proc.wait()
        job.kdist("delete", "-f", str(job.file), "--volumes")


def first_step_after(job: ClusterJob, since: float) -> dict[str, Any] | None:
    """The earliest step metric, in any pod's log, of a worker group started after `since`:
    a step that follows a restart's or a resume's start line in the same log."""
    steps = []
    for uid in job.order:
        restarted = False
        for m in job.metrics_of(uid):
            if m["event"] == "start" and (m["restart"] >= 1 or m["resumed_step"] > 0):
                restarted = True
            elif restarted and m["event"] == "step" and m["time"] > since:
                steps.append(m)
                break
    return min(steps, key=lambda m: float(m["time"]), default=None)


def lost_compose(cluster: KubeCluster, folder: Path, index: int) -> dict[str, Any]:
    spec = folder / "kdist.yaml"
    write_spec(spec, f"bench-kill-{index}", nodes="2:3")
    compose = compose_job(spec)
    try:
        compose.write_file(render(compose_plan(spec), "compose"))
        compose.up()
        found = measure(compose, f"node-{VICTIM}", "docker kill")
        return {"seconds": found.pop("recovery_s"), **found}
    finally:
        compose.down(volumes=True)


def compose_plan(spec: Path) -> LaunchPlan:
    return LaunchPlan(load_file(spec))


def compose_job(spec: Path) -> ComposeJob:
    """The job as `kdist up -f SPEC` in ROOT sees it (its state under ROOT/.kdist/compose)."""
    return ComposeJob(project_for(compose_plan(spec), ROOT), detect())


RUNS: dict[str, Callable[[KubeCluster, Path, int], dict[str, Any]]] = dict(
    zip(MEASURES, (finish_k8s, finish_compose, lost_k8s, lost_compose), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each (median reported)")
    parser.add_argument("--quick", action="store_true", help="one run of each")
    args = parser.parse_args()
    n = 1 if args.quick else args.runs
    if reason := missing():
        sys.exit(f"bench_cluster: {reason}")
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in MEASURES}
    with tempfile.TemporaryDirectory(prefix="kdist-bench-cluster-") as tmp, \
            KubeCluster(Path(tmp) / "cluster") as cluster:
        imported = import_trainer_image(cluster)
        print(f"cluster up {cluster.timings['total']:.0f}s, image imported {imported:.0f}s",
              file=sys.stderr, flush=True)
        for i in range(n):
            for name, run in RUNS.items():
                folder = Path(tmp) / f"{name.replace(': ', '-').replace(' ', '-')}-{i}"
                folder.mkdir()
                results[name].append(run(cluster, folder, i))
                print(f"{name:<18} run {i + 1}/{n}: {results[name][-1]}", file=sys.stderr,
                      flush=True)
    rows = summarize(results)
    print(f"\n{'measure':<18} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7}")
    for r in rows:
        cells = [f"{r[k]:.2f}" if r[k] is not None else "-" for k in ("median_s", "min_s", "max_s")]
        print(f"{r['measure']:<18} {r['runs']:>4} {cells[0]:>9} {cells[1]:>7} {cells[2]:>7}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"kill_at_step": KILL_AT_STEP, "rows": rows, "runs": results},
                                  indent=2) + "\n")


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for name, runs in results.items():
        times = [r["seconds"] for r in runs if r["seconds"] is not None]
        rows.append({"measure": name, "runs": len(runs), "ok": len(times),
                     "median_s": round(statistics.median(times), 2) if times else None,
                     "min_s": min(times, default=None), "max_s": max(times, default=None)})
    return rows


if __name__ == "__main__":
    main()
