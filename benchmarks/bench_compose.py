"""Kill one node of a running 3-node Compose job; seconds until the survivors step again.

    python benchmarks/bench_compose.py [--runs 3] [--quick] [--victim node-2]

Two variants of the same job (nodes 2:3, the cpu-gloo example's image, a synthetic trainer with
a 0.2 s step), side by side:

- kdist defaults: the compose file exactly as `kdist up` renders it;
- torch defaults: the same file with every rdzv-conf timeout and keep-alive setting removed
  from the torchrun command lines (`--rdzv-conf is_host=false`), i.e. torch's join 600 s,
  last call 30 s, close 30 s, keep-alive 5 s x 3.

One run: `up -d`; at step 15 (3 nodes), `kill -s SIGKILL <victim>`; the time from just before the
kill to the `time` of the first step metric after the restarted worker group's start event
(both this host's clock); then `down --volumes`. Needs a Docker Engine and the trainer image
(built from trainers/Dockerfile if missing). Prints a table, writes benchmarks/results/compose.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kdist.plan import LaunchPlan  # noqa: E402
from kdist.spec.load import load_text  # noqa: E402
from kdist.targets import render  # noqa: E402
from kdist.targets.compose.job import ComposeJob, detect, project_for  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "compose.json"
EXAMPLE = ROOT / "trainers" / "examples" / "cpu-gloo.yaml"
VARIANTS = ("kdist defaults", "torch defaults")
KILL_AT_STEP = 15
RESUME_TIMEOUT_S = 240.0


def plan_for(name: str) -> LaunchPlan:
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec.update(name=name, nodes="2:3", args=[
        "--synthetic", "--max-steps", "2000", "--checkpoint-every", "10", "--batch-size", "16",
        "--step-sleep", "0.2"])
    return LaunchPlan(load_text(yaml.safe_dump(spec, sort_keys=False), f"{name}.yaml"))


def torch_defaults(compose_text: str) -> str:
    """The rendered file with torch's rendezvous timeouts: only is_host stays in --rdzv-conf."""
    edited, n = re.subn(r"--rdzv-conf \S+", "--rdzv-conf is_host=false", compose_text)
    assert n > 0, "no --rdzv-conf in the rendered compose file"
    return edited


def metric(line: str) -> dict[str, Any] | None:
    _, sep, payload = line.partition("KDIST_METRIC ")
    return json.loads(payload) if sep else None


def one_run(variant: str, index: int, victim: str) -> dict[str, Any]:
    plan = plan_for(f"bench-{'kdist' if variant == VARIANTS[0] else 'torch'}-{index}")
    job = ComposeJob(project_for(plan, ROOT), detect())
    text = render(plan, "compose")
    job.write_file(text if variant == VARIANTS[0] else torch_defaults(text))
    job.down(volumes=True)
    try:
        job.up()
        return measure(job, victim)
    finally:
        job.down(volumes=True)
        shutil.rmtree(job.project.dir, ignore_errors=True)


def measure(job: ComposeJob, victim: str) -> dict[str, Any]:
    killed_at = 0.0
    restarted: dict[str, Any] | None = None
    lines = job.follow()
    try:
        for line in lines:
            m = metric(line)
            if m is None:
                if killed_at and time.time() - killed_at > RESUME_TIMEOUT_S:
                    break
                continue
            if not killed_at and m["event"] == "step" and m["step"] >= KILL_AT_STEP \
                    and m["world_size"] == 3:
                killed_at = time.time()
                job.kill(victim)
            elif killed_at and m["event"] == "start" and m["restart"] >= 1:
                restarted = m
            elif restarted is not None and m["event"] == "step":
                return {"recovery_s": round(m["time"] - killed_at, 2), "killed_at_step": KILL_AT_STEP,
                        "resumed_step": restarted["resumed_step"], "first_step": m["step"],
                        "world_size": m["world_size"]}
    finally:
        lines.close()
    return {"recovery_s": None, "error": "no step after the kill within the time limit"}


def ensure_image(image: str) -> None:
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0:
        return
    subprocess.run(["docker", "build", "-t", image, "-f", "trainers/Dockerfile", "."], cwd=ROOT,
                   check=True)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for variant, results in runs.items():
        times = [r["recovery_s"] for r in results if r["recovery_s"] is not None]
        rows.append({"variant": variant, "runs": len(results), "recovered": len(times),
                     "median_s": round(statistics.median(times), 2) if times else None,
                     "min_s": min(times, default=None), "max_s": max(times, default=None)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (median reported)")
    parser.add_argument("--quick", action="store_true", help="one run per variant")
    parser.add_argument("--victim", default="node-2", help="the node to kill (node-0 works too)")
    args = parser.parse_args()
    n = 1 if args.quick else args.runs
    engine = detect()
    ensure_image(plan_for("bench-probe").spec.image)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for i in range(n):  # interleaved, so both variants see the same machine load
        for variant in VARIANTS:
            result = one_run(variant, i, args.victim)
            runs[variant].append(result)
            print(f"{variant:<15} run {i + 1}/{n}: {result}", file=sys.stderr, flush=True)
    rows = summarize(runs)
    print(f"\nkill {args.victim} at step {KILL_AT_STEP} (nodes 2:3, 3 running) -> survivors step again")
    print(f"{'variant':<16} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7}")
    for r in rows:
        cells = [f"{r[k]:.2f}" if r[k] is not None else "-" for k in ("median_s", "min_s", "max_s")]
        print(f"{r['variant']:<16} {r['runs']:>4} {cells[0]:>9} {cells[1]:>7} {cells[2]:>7}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "victim": args.victim, "kill_at_step": KILL_AT_STEP, "rows": rows, "runs": runs,
        "engine": engine.server_version, "compose": engine.compose_version,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
