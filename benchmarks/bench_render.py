"""Cold `kdist render` wall time per example (a new interpreter each run), median of N runs.

    python benchmarks/bench_render.py [--runs 10]

Target (issue 2): under 0.3 s cold; rendering must not import torch or the Kubernetes client.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
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
