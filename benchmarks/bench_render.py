"""Cold `kdist render` wall time per example (a new interpreter each run), median of N runs.

    python benchmarks/bench_render.py [--runs 10]
    python benchmarks/bench_render.py --against DIR   # DIR: another checkout, e.g. a git worktree

Target (issue 2): under 0.3 s cold; rendering must not import torch or the Kubernetes client.
With --against, each render runs alternately with this checkout's kdist and DIR's (on
PYTHONPATH, this venv's packages), so a change is compared on the same machine load (issue 11:
a refactor must not make cold render slower).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "render.json"


def cold_run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_imports(spec: Path) -> list[str]:
    code = ("import sys; from kdist.cli import main; sys.argv=['kdist','render','-t','k8s','-f',"
            f"{str(spec)!r}]\ntry: main()\nexcept SystemExit: pass\n"
            "print([m for m in ('torch', 'kubernetes') if m in sys.modules], file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stderr.strip().replace("'", '"')))


def render_code(spec: Path, target: str) -> str:
    return (f"import sys; from kdist.cli import main; sys.argv = ['kdist', 'render', '-t', "
            f"{target!r}, '-f', {str(spec)!r}]; main()")


def compare(other: Path, runs: int) -> None:
    """Medians of alternate cold renders: this checkout's kdist, then `other`'s."""
    trees = {"this": ROOT, "other": other.resolve()}
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(runs):
        for spec in sorted((ROOT / "trainers" / "examples").glob("*.yaml")):
            for target in ("compose", "k8s"):
                for name, tree in trees.items():
                    env = {**os.environ, "PYTHONPATH": str(tree)}
                    start = time.perf_counter()
                    subprocess.run([sys.executable, "-c", render_code(spec, target)], env=env,
                                   cwd=tree, check=True, stdout=subprocess.DEVNULL)
                    times.setdefault((spec.stem, target, name), []).append(
                        time.perf_counter() - start)
    print(f"{'example':<14} {'target':<8} {'other s':>8} {'this s':>8} {'change':>8}")
    for (example, target, name), values in times.items():
        if name == "this":
            this, that = statistics.median(values), statistics.median(
                times[(example, target, "other")])
            print(f"{example:<14} {target:<8} {that:>8.3f} {this:>8.3f} "
                  f"{(this - that) * 1000:>+6.0f} ms")
    overall = {n: statistics.median([t for k, v in times.items() if k[2] == n for t in v])
               for n in trees}
    print(f"all renders    other {overall['other']:.3f} s, this {overall['this']:.3f} s "
          f"({runs} runs each)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="compare with the kdist of another checkout (its root folder)")
    args = parser.parse_args()
    if args.against:
        compare(args.against, args.runs)
        return
    kdist = str(Path(sys.executable).parent / "kdist")
    rows = []
    for spec in sorted((ROOT / "trainers" / "examples").glob("*.yaml")):
        for target in ("compose", "k8s"):
            times = [cold_run([kdist, "render", "-t", target, "-f", str(spec)])
                     for _ in range(args.runs)]
            rows.append({"example": spec.stem, "target": target,
                         "median_s": round(statistics.median(times), 4),
                         "max_s": round(max(times), 4), "runs": args.runs})
    python_start = statistics.median(cold_run([sys.executable, "-c", "pass"]) for _ in range(5))
    heavy = heavy_imports(ROOT / "trainers" / "examples" / "gpu-nccl.yaml")
    print(f"{'example':<14} {'target':<8} {'median s':>9} {'max s':>7}")
    for r in rows:
        print(f"{r['example']:<14} {r['target']:<8} {r['median_s']:>9.3f} {r['max_s']:>7.3f}")
    print(f"bare python start: {python_start:.3f} s; heavy modules imported: {heavy or 'none'}")
    print(f"target < 0.3 s: {'met' if all(r['median_s'] < 0.3 for r in rows) else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "python_start_s": round(python_start, 4),
                                   "heavy_imports": heavy}, indent=2) + "\n")


if __name__ == "__main__":
    main()
