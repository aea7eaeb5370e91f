"""Benchmark (not a test): strict schema validation of 100 Service+StatefulSet files.

    python benchmarks/bench_validate.py [--runs 5] [--files 100]

Times, as cold CLI processes like CI runs them, `kubernetes-validate --strict -k 1.31.0 FILES`
against `kdist validate --kubernetes-version 1.31 DIR`, prints a table and writes
benchmarks/results/validate.json. kdist also runs its cross-object and security checks on the
same files, so the comparison is conservative. With the validators CI pipelines use on PATH or
in .venv/bin (`make validators` builds them: kubeconform and kube-score with `go install`, checkov
from PyPI in .venv-checkov), they run on the same files in the same interleaved rounds:
kubeconform -strict against standalone copies of kubernetes-validate's 1.31 schemas
(benchmarks/standalone_schemas.py; nothing is downloaded), `kube-score score`, and `checkov
--framework kubernetes`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "validate.json"
EXAMPLE = ROOT / "trainers" / "examples" / "smoke-node0.yaml"


def generate(folder: Path, count: int) -> list[Path]:
    """`count` files, each the headless Service + StatefulSet kdist renders, renamed."""
    from kdist.plan import LaunchPlan
    from kdist.spec.load import load_file
    from kdist.targets.k8s import render as k8s
    from kdist.yamlio import dump_all

    docs = k8s.render(LaunchPlan(load_file(EXAMPLE)))
    text = dump_all([d for d in docs if d["kind"] in ("Service", "StatefulSet")])
    files = []
    for i in range(count):
        path = folder / f"job{i:03d}.yaml"
        path.write_text(text.replace("smoke", f"job{i:03d}"), encoding="utf-8")
        files.append(path)
    return files


@dataclass
class Runs:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # user + sys of the process
    exit: int = 0

    def summary(self) -> dict[str, float]:
        return {"median_s": round(statistics.median(self.wall), 4),
                "min_s": round(min(self.wall), 4),
                "cpu_median_s": round(statistics.median(self.cpu), 4), "exit": self.exit}


def timed(cmd: list[str], runs: Runs, env: dict[str, str]) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    runs.wall.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    runs.cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    runs.exit = done.returncode
    if done.returncode not in (0, 1):
        sys.exit(f"{cmd[0]} failed ({done.returncode}): {done.stderr[-2000:]}")


def compare(commands: dict[str, list[str]], count: int, cache: Path) -> dict[str, Runs]:
    """Interleaved runs (a, b, c, a, b, c, ...) after one warm-up each, so load spikes hit all.

    The Python tools run as installed packages do: with bytecode caching (kept in a temporary
    PYTHONPYCACHEPREFIX, so the checkout stays clean), whatever PYTHONDONTWRITEBYTECODE says.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    runs = {name: Runs() for name in commands}
    for cmd in commands.values():
        timed(cmd, Runs(), env)  # warm the file and bytecode caches
    for _ in range(count):
        for name, cmd in commands.items():
            timed(cmd, runs[name], env)
    return runs


def tool(name: str, *venvs: str) -> str | None:
    """An installed validator: .venv/bin, then the given virtualenvs' bin, then PATH."""
    for folder in (Path(sys.executable).parent, *(ROOT / v / "bin" for v in venvs)):
        found = shutil.which(name, path=str(folder))
        if found:
            return found
    return shutil.which(name)


def peer_commands(folder: Path, files: list[Path], schemas: Path) -> dict[str, list[str]]:
    """The CI validators that are installed, on the same files (exit 1 = findings, timed too)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from standalone_schemas import write

    out: dict[str, list[str]] = {}
    if kubeconform := tool("kubeconform"):
        write("1.31", schemas)
        out["kubeconform -strict"] = [kubeconform, "-strict", "-summary", "-schema-location",
                                      f"{schemas}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
                                      str(folder)]
    if kube_score := tool("kube-score"):
        out["kube-score score"] = [kube_score, "score", *map(str, files)]
    if checkov := tool("checkov", ".venv-checkov"):
        out["checkov (kubernetes)"] = [checkov, "-d", str(folder), "--framework", "kubernetes",
                                       "--quiet", "--compact", "--skip-download"]
    return out


def kdist_command(folder: Path) -> list[str]:
    kdist = shutil.which("kdist", path=str(Path(sys.executable).parent)) or "kdist"
    registered = subprocess.run([kdist, "validate", "--help"], capture_output=True, check=False)
    base = [kdist, "validate"] if registered.returncode == 0 else [
        sys.executable, "-m", "kdist.cli.validate"]
    return [*base, "--kubernetes-version", "1.31", "--no-docker", str(folder)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=100)
    args = parser.parse_args()
    kv = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) \
        or shutil.which("kubernetes-validate")
    if kv is None:
        sys.exit("kubernetes-validate is not installed (pip install kubernetes-validate)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "manifests"
        folder.mkdir()
        files = generate(folder, args.files)
        commands = {"kubernetes-validate --strict": [kv, "--strict", "-k", "1.31.0", *map(str, files)],
                    "kdist validate": kdist_command(folder),
                    **peer_commands(folder, files, Path(tmp) / "schemas")}
        runs = compare(commands, args.runs, Path(tmp) / "pycache")
    summaries = {name: r.summary() for name, r in runs.items()}
    kv, kd = summaries["kubernetes-validate --strict"], summaries["kdist validate"]
    result = {
        "files": args.files, "objects": 2 * args.files, "runs": args.runs,
        "kubernetes_validate": kv, "kdist_validate": kd,
        "speedup": round(kv["median_s"] / kd["median_s"], 1),
        "speedup_cpu": round(kv["cpu_median_s"] / kd["cpu_median_s"], 1),
        "peers": {name: s for name, s in summaries.items() if name not in (
            "kubernetes-validate --strict", "kdist validate")},
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{'tool':<32}{'median s':>10}{'min s':>10}{'cpu s':>10}{'exit':>6}")
    for name, r in summaries.items():
        print(f"{name:<32}{r['median_s']:>10.3f}{r['min_s']:>10.3f}{r['cpu_median_s']:>10.3f}"
              f"{r['exit']:>6}")
    print(f"speedup over kubernetes-validate: {result['speedup']}x wall, {result['speedup_cpu']}x "
          f"cpu over {args.files} files ({2 * args.files} objects); wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
