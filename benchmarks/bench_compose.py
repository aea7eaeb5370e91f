"""Kill one node of a running 3-node Compose job; seconds until the survivors step again.

    python benchmarks/bench_compose.py [--runs 3] [--quick] [--victim node-2] [--outside]

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

`--outside` (benchmarks/results/compose-outside.json): kdist's defaults only, the node lost three
ways side by side: `kdist kill`, `docker kill` (Docker leaves it down) and SIGKILL to the
container's init process from the host (what the OOM killer or a crash does: its restart policy
brings it back); plus "below min": `nodes: 2`, `docker kill node-1` under an attached `kdist up`,
seconds from the kill until `kdist up` has exited, saying the job cannot go on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
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
OUTSIDE_RESULTS = ROOT / "benchmarks" / "results" / "compose-outside.json"
KILLS = ("kdist kill", "docker kill", "host SIGKILL")
BELOW_MIN = "below min: fails"
EXAMPLE = ROOT / "trainers" / "examples" / "cpu-gloo.yaml"
VARIANTS = ("kdist defaults", "torch defaults")
KILL_AT_STEP = 15
RESUME_TIMEOUT_S = 240.0


def spec_text(name: str, nodes: str | int = "2:3") -> str:
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec.update(name=name, nodes=nodes, args=[
        "--synthetic", "--max-steps", "2000", "--checkpoint-every", "10", "--batch-size", "16",
        "--step-sleep", "0.2"])
    return yaml.safe_dump(spec, sort_keys=False)


def plan_for(name: str, nodes: str | int = "2:3") -> LaunchPlan:
    return LaunchPlan(load_text(spec_text(name, nodes), f"{name}.yaml"))


def torch_defaults(compose_text: str) -> str:
    """The rendered file with torch's rendezvous timeouts: only is_host stays in --rdzv-conf."""
    edited, n = re.subn(r"--rdzv-conf \S+", "--rdzv-conf is_host=false", compose_text)
    assert n > 0, "no --rdzv-conf in the rendered compose file"
    return edited


def metric(line: str) -> dict[str, Any] | None:
    _, sep, payload = line.partition("KDIST_METRIC ")
    return json.loads(payload) if sep else None


def one_run(variant: str, index: int, victim: str) -> dict[str, Any]:
    """`variant`: one of VARIANTS (killed by `kdist kill`) or of KILLS (kdist's defaults)."""
    label = {VARIANTS[1]: "torch"}.get(variant, re.sub(r"\W+", "", variant.split()[0]))
    plan = plan_for(f"bench-{label}-{index}")
    job = ComposeJob(project_for(plan, ROOT), detect())
    text = render(plan, "compose")
    job.write_file(torch_defaults(text) if variant == VARIANTS[1] else text)
    job.down(volumes=True)
    try:
        job.up()
        return measure(job, victim, variant)
    finally:
        job.down(volumes=True)
        shutil.rmtree(job.project.dir, ignore_errors=True)


def container(job: ComposeJob, service: str) -> str:
    return f"{job.project.name}-{service}-1"


def kill(job: ComposeJob, victim: str, how: str) -> None:
    """Lose `victim` the way `how` says (kdist kill by default)."""
    if how == "docker kill":
        subprocess.run(["docker", "kill", container(job, victim)], check=True, capture_output=True)
    elif how == "host SIGKILL":
        pid = subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}",
                              container(job, victim)], check=True, capture_output=True, text=True)
        os.kill(int(pid.stdout), signal.SIGKILL)
    else:
        job.kill(victim)


def below_min(index: int) -> dict[str, Any]:
    """`nodes: 2`, node-1 lost through `docker kill` at step 15: seconds until `kdist up` exits."""
    plan = plan_for(f"bench-belowmin-{index}", nodes=2)
    spec = ROOT / ".kdist" / f"{plan.name}.yaml"
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(spec_text(plan.name, nodes=2))
    job = ComposeJob(project_for(plan, ROOT), detect())
    argv = [sys.executable, "-c", "from kdist.cli import main; main()", "up", "-f", str(spec)]
    up = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    try:
        assert up.stdout is not None
        for line in up.stdout:
            m = metric(line)
            if m is not None and m["event"] == "step" and m["step"] >= KILL_AT_STEP:
                break
        killed_at = time.monotonic()
        kill(job, "node-1", "docker kill")
        out, err = up.communicate(timeout=RESUME_TIMEOUT_S)
        took = time.monotonic() - killed_at
        said = "fewer than nodes.min=2" in out + err
        return {"recovery_s": round(took, 2), "exit_code": up.returncode, "said_why": said}
    finally:
        if up.poll() is None:
            up.kill()
        job.down(volumes=True)
        shutil.rmtree(job.project.dir, ignore_errors=True)
        spec.unlink(missing_ok=True)


def measure(job: ComposeJob, victim: str, how: str = "") -> dict[str, Any]:
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
                kill(job, victim, how)
            elif killed_at and m["event"] == "start" and (m["restart"] >= 1
                                                         or m["resumed_step"] > 0):
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
    parser.add_argument("--outside", action="store_true",
                        help="kdist kill vs docker kill vs a host SIGKILL, and a loss below min")
    args = parser.parse_args()
    n = 1 if args.quick else args.runs
    engine = detect()
    ensure_image(plan_for("bench-probe").spec.image)
    if args.outside:
        outside(n, args.victim, engine.server_version, engine.compose_version)
        return
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


def outside(n: int, victim: str, engine: str, compose: str) -> None:
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in (*KILLS, BELOW_MIN)}
    for i in range(n):  # interleaved, so every way sees the same machine load
        for how in runs:
            result = below_min(i) if how == BELOW_MIN else one_run(how, i, victim)
            runs[how].append(result)
            print(f"{how:<17} run {i + 1}/{n}: {result}", file=sys.stderr, flush=True)
    rows = summarize(runs)
    print(f"\n{victim} lost at step {KILL_AT_STEP} (nodes 2:3, 3 running) -> survivors step again; "
          "below min (nodes 2): kill -> kdist up exited")
    print(f"{'lost by':<18} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7}")
    for r in rows:
        cells = [f"{r[k]:.2f}" if r[k] is not None else "-" for k in ("median_s", "min_s", "max_s")]
        print(f"{r['variant']:<18} {r['runs']:>4} {cells[0]:>9} {cells[1]:>7} {cells[2]:>7}")
    OUTSIDE_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    OUTSIDE_RESULTS.write_text(json.dumps({
        "victim": victim, "kill_at_step": KILL_AT_STEP, "rows": rows, "runs": runs,
        "engine": engine, "compose": compose}, indent=2) + "\n")


if __name__ == "__main__":
    main()
