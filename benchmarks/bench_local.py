"""The local target (`kdist run`) against plain torchrun, side by side in one run.

    python benchmarks/bench_local.py [--runs 3] [--quick] [--cap 150] [--scale 8,16,32]
                                     [--scale-cap 240] [--keep-alive S]
    python benchmarks/bench_local.py --store-loss [--runs 3] [--cap 150]
    python benchmarks/bench_local.py --tutorial [--runs 3] [--cap 150]
    python benchmarks/bench_local.py --outside [--runs 3] [--cap 150]

- recovery: a 3-node elastic job (nodes 2:3) loses a node that does not host the store
  (SIGKILL of its whole process tree); seconds from the kill to the first training step of
  the two survivors. kdist's defaults against plain torchrun with torch's defaults (the same
  trainer, node 0 hosting the store, `--rdzv-conf is_host=...` only; both with
  TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 as kdist sets it). Target: <= 8 s for kdist.
- launch: wall time of `kdist run` of the 2-node smoke job against the same two torchrun
  command lines started by hand, and their ratio.
- scale: 8, 16 and 32 simulated nodes of the smoke job with kdist's defaults; wall time, and
  how long the rendezvous takes after the last agent is ready (torchrun's "Rendezvous'ing
  worker group", i.e. torch imported) until the round is complete, read from the node logs.
  Above 8 nodes per core `kdist run` itself lengthens keep-alives to 5 s x 3 (on 2 cores, 32
  agents heart-beating every second never settle); a size that still does not finish within
  --scale-cap is run again with keep_alive_interval 5 s x 3 in the spec.
- recovery phases (kdist): kill -> survivors' worker groups FAILED -> new round complete ->
  first step, from the node logs' timestamps.

Medians of --runs runs (--quick: one run each). Writes benchmarks/results/local.json.

--store-loss measures only this, into benchmarks/results/local-store-loss.json: a 2-node job
with the standalone store loses the store (SIGKILL of its process); seconds from the kill to
the first training step after it (kdist starts the store again on its port, the agents fail,
kdist starts them again, a new round resumes from the checkpoint), and when kdist saw the loss.

--outside measures only this, into benchmarks/results/local-outside.json: the same 3-node job
loses node-2 to a SIGKILL of its whole process tree sent from outside kdist (what the OOM killer
or a dying host does) beside `kdist run --kill`; seconds from the kill to the survivors' first
training step after they resumed from the checkpoint. kdist restarts the lost node (it rejoins
later); the --kill node stays gone.

--tutorial measures only node-loss recovery of trainers/examples/tutorial (PyTorch's
fault-tolerant torchrun tutorial: snapshot.pt in the working directory, no KDIST_METRIC) beside
kdist's own trainer, both under `kdist run`, into benchmarks/results/local-tutorial.json: 3 nodes
(2:3), node-2 killed; seconds from the kill to the first epoch a survivor finishes after it
resumed from the snapshot (lines timed as they arrive on kdist's stdout).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdist.plan import STORE_CODE, LaunchPlan
from kdist.spec.load import load_file, load_text
from kdist.targets.local.job import (
    LOCAL_HOST,
    NODE_RANK_ENV,
    RUN_ID_ENV,
    find_processes,
    free_port,
    kill_tree,
    signal_processes,
    start_process,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "local.json"
OUTSIDE_RESULTS = ROOT / "benchmarks" / "results" / "local-outside.json"
STORE_LOSS_RESULTS = ROOT / "benchmarks" / "results" / "local-store-loss.json"
KDIST = [sys.executable, "-c",
         "from kdist.cli import cli, main; from kdist.cli.run import run; "
         "'run' in cli.commands or cli.add_command(run); main()"]
TRAIN_ARGS = ["--synthetic", "--max-steps", "100000", "--checkpoint-every", "10",
              "--batch-size", "16", "--step-sleep", "0.2"]
KILL_AT = 15.0  # seconds after start: training runs by then on 2 cores


def elastic_text(entrypoint: str) -> str:
    """3 nodes (2:3), store on node 0, kdist's default rendezvous timeouts."""
    return (f"name: bench\nimage: x:1\nentrypoint: {entrypoint}\n"
            f"args: {json.dumps(TRAIN_ARGS)}\nnodes: \"2:3\"\nmax_restarts: 3\n"
            "rendezvous: {store: node0}\n")


def elastic_plan() -> LaunchPlan:
    return LaunchPlan(load_text(elastic_text(str(ROOT / "trainers" / "train.py"))))


def first_recovered_step(events: list[tuple[float, dict[str, Any]]], kill_wall: float
                         ) -> float | None:
    for wall, event in events:
        if wall > kill_wall and event.get("event") == "step" and event.get("world_size") == 2:
            return wall - kill_wall
    return None


GLOG_STAMP = re.compile(r"^[IWE](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) ")


def glog_times(log: Path, needle: str) -> list[float]:
    """Wall times of torchrun's log lines that contain `needle` (glog stamps, local time)."""
    year = time.localtime().tm_year
    times = []
    for line in log.read_text(errors="replace").splitlines():
        match = GLOG_STAMP.match(line)
        if match and needle in line:
            month, day, hour, minute, second, micros = (int(g) for g in match.groups())
            stamp = datetime.datetime(year, month, day, hour, minute, second, micros)
            times.append(stamp.timestamp())
    return times


def first_after(times: list[float], after: float) -> float | None:
    return next((t for t in times if t > after), None)


def recovery_phases(run_dir: Path, kill_wall: float, stepped: float) -> dict[str, float] | None:
    """kill -> survivors' worker groups FAILED -> new round complete -> first step (seconds)."""
    failed, complete = [], []
    for node in ("node-0", "node-1"):
        log = run_dir / f"{node}.log"
        failed.append(first_after(glog_times(log, "Worker group FAILED"), kill_wall))
        complete.append(first_after(glog_times(log, "Rendezvous complete"), kill_wall))
    if None in failed or None in complete:
        return None
    t_failed, t_complete = max(t for t in failed if t), max(t for t in complete if t)
    return {"detect_s": t_failed - kill_wall, "rendezvous_s": t_complete - t_failed,
            "worker_start_s": stepped - t_complete}


def rendezvous_overhead(run_dir: Path) -> float | None:
    """Seconds from the last agent ready to rendezvous (torch imported) to the round complete."""
    ready, complete = [], []
    for log in sorted(run_dir.glob("node-*.log")):
        ready += glog_times(log, "Rendezvous'ing worker group")[:1]
        complete += glog_times(log, "Rendezvous complete")[:1]
    if not ready or len(complete) != len(ready):
        return None
    return max(complete) - max(ready)


def stop_run(proc: subprocess.Popen[str], run_dir: Path) -> tuple[list[dict[str, Any]], float | None]:
    """SIGINT to `kdist run`; its metrics.jsonl events and the wall time of its --kill."""
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return events, next((e["wall"] for e in events if e["event"] == "kdist.kill"), None)


# ---- recovery ----------------------------------------------------------------------------


def recovery_kdist(cap: float, workdir: Path, phases: list[dict[str, float]]) -> float | None:
    """`kdist run --kill node-2@15s`; stopped with SIGINT once the survivors step again."""
    spec = workdir / "kdist.yaml"
    spec.write_text(elastic_text("trainers/train.py"))
    run_dir = workdir / "run"
    proc = subprocess.Popen([*KDIST, "run", "-f", str(spec), "--run-dir", str(run_dir),
                             "--kill", f"node-2@{KILL_AT}s"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + KILL_AT + cap + 60
    killed = False
    for line in proc.stdout:
        killed = killed or line.startswith("kdist | kill ")
        if (killed and '"world_size":2' in line and '"event":"step"' in line) \
                or time.monotonic() > deadline:
            break
    events, kill_wall = stop_run(proc, run_dir)
    if kill_wall is None:
        return None
    took = first_recovered_step([(e["wall"], e) for e in events], kill_wall)
    split = None if took is None else recovery_phases(run_dir, kill_wall, kill_wall + took)
    if split is not None:
        phases.append(split)
    return took


def recovery_torchrun(cap: float, workdir: Path) -> float | None:
    """Three plain torchrun agents, torch's default rendezvous timeouts; SIGKILL node 2's tree."""
    plan, port, tag = elastic_plan(), free_port(), f"bench-plain-{os.getpid()}-{time.time_ns()}"
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
           "KDIST_CHECKPOINT_DIR": str(workdir / "checkpoints"), RUN_ID_ENV: tag}
    procs = []
    for node in range(3):
        argv = plan.torchrun_argv(LOCAL_HOST, port, is_host=node == 0)
        at = argv.index("--rdzv-conf")
        argv[at + 1] = f"is_host={'true' if node == 0 else 'false'}"  # torch's default timeouts
        cmd = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        procs.append(start_process(f"node-{node}", node, cmd, workdir / f"node-{node}",
                                   {**env, NODE_RANK_ENV: str(node)},
                                   workdir / f"node-{node}.log", lines))
    events: list[tuple[float, dict[str, Any]]] = []
    start, kill_wall = time.monotonic(), 0.0
    try:
        while time.monotonic() - start < KILL_AT + cap:
            collect(lines, events, 0.2)
            if not kill_wall and time.monotonic() - start >= KILL_AT:
                kill_tree([procs[2].popen.pid], {RUN_ID_ENV: tag, NODE_RANK_ENV: "2"})
                kill_wall = time.time()
            if kill_wall and first_recovered_step(events, kill_wall) is not None:
                break
    finally:
        kill_tree([p.popen.pid for p in procs], {RUN_ID_ENV: tag})
        for p in procs:
            p.popen.wait()
    return first_recovered_step(events, kill_wall) if kill_wall else None


def collect(lines: queue.Queue[tuple[str, str | None]], events: list[tuple[float, dict[str, Any]]],
            timeout: float) -> None:
    try:
        item = lines.get(timeout=timeout)
        while True:
            line = item[1] or ""
            if "KDIST_METRIC " in line:
                events.append((time.time(), json.loads(line.split("KDIST_METRIC ", 1)[1])))
            item = lines.get_nowait()
    except queue.Empty:
        return


# ---- a node lost from outside kdist --------------------------------------------------------


def first_step_after_resume(events: list[dict[str, Any]], kill_wall: float) -> float | None:
    """Seconds from the kill to the first step after the trainer's first (re)start after it."""
    resumed = False
    for event in events:
        if event.get("wall", 0) <= kill_wall:
            continue
        resumed = resumed or event.get("event") == "start"
        if resumed and event.get("event") == "step":
            return float(event["wall"]) - kill_wall
    return None


def node_pids(run_dir: Path, node: int) -> set[int]:
    """The node's processes as an outsider finds them (ps, /proc): by their environment."""
    found = set()
    for pid in find_processes([], {NODE_RANK_ENV: str(node)}):
        try:
            if str(run_dir).encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.add(pid)
        except OSError:
            continue
    return found


def recovery_lost(cap: float, workdir: Path, outside: bool) -> float | None:
    """node-2 of the 3-node job killed once training runs: from outside, or by `--kill`."""
    spec = workdir / "kdist.yaml"
    spec.write_text(elastic_text("trainers/train.py"))
    run_dir = (workdir / "run").resolve()
    kill = [] if outside else ["--kill", f"node-2@{KILL_AT}s"]
    proc = subprocess.Popen([*KDIST, "run", "-f", str(spec), "--run-dir", str(run_dir), *kill],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    start, kill_wall, resumed = time.monotonic(), 0.0, False
    for line in proc.stdout:
        if outside and not kill_wall and time.monotonic() - start >= KILL_AT:
            signal_processes(node_pids(run_dir, 2), signal.SIGKILL)
            kill_wall = time.time()
        killed = bool(kill_wall) or line.startswith("kdist | kill ")
        resumed = resumed or (killed and line.startswith("kdist | resumed:"))
        if (resumed and '"event":"step"' in line) or time.monotonic() - start > KILL_AT + cap:
            break
    events, kdist_kill = stop_run(proc, run_dir)
    kill_wall = kill_wall or kdist_kill or 0.0
    return first_step_after_resume(events, kill_wall) if kill_wall else None


def bench_outside(runs: int, cap: float) -> dict[str, Any]:
    return {
        "outside_kill": median_of("outside kill", runs, lambda d: recovery_lost(cap, d, True)),
        "kdist_kill": median_of("kdist --kill", runs, lambda d: recovery_lost(cap, d, False)),
        "runs": runs, "cpus": os.cpu_count(), "cap_s": cap,
    }


# ---- recovery of a trainer that knows nothing of kdist ----------------------------------

TUTORIAL_ARGS = ["100000", "2", "--epoch-sleep", "0.5"]
TUTORIAL_RESULTS = ROOT / "benchmarks" / "results" / "local-tutorial.json"
EPOCH_RE = re.compile(r"\[RANK\d+\] Epoch \d+")


def recovery_tutorial(cap: float, workdir: Path) -> float | None:
    """`kdist run --kill node-2@15s` of the tutorial trainer; stopped once a survivor finishes
    an epoch after resuming from snapshot.pt."""
    spec = workdir / "kdist.yaml"
    spec.write_text(f"name: bench\nimage: x:1\nentrypoint: trainers/examples/tutorial/train.py\n"
                    f"args: {json.dumps(TUTORIAL_ARGS)}\nnodes: \"2:3\"\nmax_restarts: 3\n")
    run_dir = workdir / "run"
    proc = subprocess.Popen([*KDIST, "run", "-f", str(spec), "--run-dir", str(run_dir),
                             "--kill", f"node-2@{KILL_AT}s"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline, arrivals = time.monotonic() + KILL_AT + cap + 60, []
    for line in proc.stdout:
        arrivals.append((time.time(), line))
        resumed = any("Resuming training from snapshot" in x for _, x in arrivals[-50:])
        if (resumed and EPOCH_RE.search(line)) or time.monotonic() > deadline:
            break
    _, kill_wall = stop_run(proc, run_dir)
    if kill_wall is None:
        return None
    after = [(wall, line) for wall, line in arrivals if wall > kill_wall]
    start = next((i for i, (_, x) in enumerate(after) if "Resuming training" in x), len(after))
    return next((wall - kill_wall for wall, x in after[start:] if EPOCH_RE.search(x)), None)


def bench_tutorial(runs: int, cap: float) -> dict[str, Any]:
    phases: list[dict[str, float]] = []
    return {
        "tutorial": median_of("recovery tutorial", runs, lambda d: recovery_tutorial(cap, d)),
        "kdist_trainer": median_of("recovery kdist", runs, lambda d: recovery_kdist(cap, d, phases)),
        "runs": runs, "cpus": os.cpu_count(), "cap_s": cap,
    }


# ---- store loss --------------------------------------------------------------------------


def store_pid(run_dir: Path) -> int | None:
    """The run's standalone store: the process running STORE_CODE in the run folder."""
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and os.readlink(entry / "cwd") == str(run_dir)
                    and STORE_CODE.encode() in (entry / "cmdline").read_bytes()):
                return int(entry.name)
        except OSError:
            continue
    return None


def store_loss_kdist(cap: float, workdir: Path, detects: list[float]) -> float | None:
    """`kdist run` of 2 nodes (standalone store); SIGKILL the store after KILL_AT seconds of
    training; stopped with SIGINT once the nodes step again."""
    spec = workdir / "kdist.yaml"
    spec.write_text(f"name: bench\nimage: x:1\nentrypoint: trainers/train.py\n"
                    f"args: {json.dumps(TRAIN_ARGS)}\nnodes: 2\n")
    run_dir = (workdir / "run").resolve()
    proc = subprocess.Popen([*KDIST, "run", "-f", str(spec), "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline, stepping, kill_wall = time.monotonic() + KILL_AT + cap + 60, 0.0, 0.0
    resumed = False
    for line in proc.stdout:
        if time.monotonic() > deadline or (resumed and '"event":"step"' in line):
            break
        resumed = resumed or bool(kill_wall and '"event":"start"' in line)
        stepping = stepping or (time.monotonic() if '"event":"step"' in line else 0.0)
        if stepping and not kill_wall and time.monotonic() - stepping >= KILL_AT:
            pid = store_pid(run_dir)
            if pid is None:
                break
            os.kill(pid, signal.SIGKILL)
            kill_wall = time.time()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lost = next((e["wall"] for e in events if e["event"] == "kdist.store-lost"), None)
    if not kill_wall or lost is None:
        return None
    detects.append(lost - kill_wall)
    # the old workers step on until their agent fails: count from the new group's first step
    later = [e for e in events if e["wall"] > kill_wall]
    start = next((i for i, e in enumerate(later) if e["event"] == "start"), len(later))
    return next((e["wall"] - kill_wall for e in later[start:] if e["event"] == "step"), None)


def bench_store_loss(runs: int, cap: float) -> dict[str, Any]:
    detects: list[float] = []
    took = median_of("store loss kdist", runs, lambda d: store_loss_kdist(cap, d, detects))
    detect = round(statistics.median(detects), 2) if detects else None
    return {"kill_to_step": took, "kill_to_kdist_detect_median_s": detect, "runs": runs,
            "cpus": os.cpu_count(), "cap_s": cap}


# ---- launch and scale --------------------------------------------------------------------


def timed(argv: list[str], cap: float = 600.0) -> float:
    """Wall time of a command; after `cap` seconds it gets SIGINT (kdist then stops its job)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        _, stderr = proc.communicate(timeout=cap)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        raise RuntimeError(f"did not finish within {cap:.0f} s (stopped with SIGINT)") from None
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {stderr.strip()[-500:]}")
    return time.perf_counter() - start


def launch_kdist(spec: Path, workdir: Path, cap: float = 600.0) -> float:
    return timed([*KDIST, "run", "-f", str(spec), "--run-dir", str(workdir / "run")], cap)


def launch_by_hand(spec: Path, workdir: Path) -> float:
    """The plan's torchrun command lines (store on node 0), started and awaited directly."""
    plan = LaunchPlan(dataclasses.replace(load_file(spec),
                                          entrypoint=str(ROOT / "trainers" / "smoke.py")))
    port = free_port()
    env = {**os.environ, **plan.env(), "PET_LOCAL_ADDR": LOCAL_HOST}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run",
                               *plan.torchrun_argv(LOCAL_HOST, port, is_host=i == 0)[1:]],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
             for i in range(plan.spec.nodes.count)]
    codes = [p.wait() for p in procs]
    if codes != [0] * len(procs):
        raise RuntimeError(f"torchrun exit codes {codes}")
    return time.perf_counter() - start


def smoke_spec(workdir: Path, nodes: int, keep_alive: int) -> Path:
    """The smoke example with `nodes` nodes (and a keep-alive interval, when given)."""
    spec = workdir / f"smoke-{nodes}.yaml"
    text = (ROOT / "trainers" / "examples" / "smoke-node0.yaml").read_text()
    text = text.replace("nodes: 2\n", f"nodes: {nodes}\n")
    if keep_alive:
        text = text.replace("  store: node0\n", f"  store: node0\n  keep_alive_interval: "
                            f"{keep_alive}\n  keep_alive_max_attempt: 3\n")
    spec.write_text(text)
    return spec


def median_of(label: str, runs: int, measure: Callable[[Path], float | None]
              ) -> dict[str, Any]:
    """Median over the runs that gave a number; failed runs are listed with their error."""
    values: list[float | None] = []
    errors: list[str] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="kdist-bench-") as tmp:
            try:
                values.append(measure(Path(tmp)))
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                values.append(None)
                errors.append(str(e))
            print(f"{label}: {values[-1]}", file=sys.stderr, flush=True)
    done = [v for v in values if v is not None]
    median = round(statistics.median(done), 2) if done else None
    result = {"median_s": median, "runs_s": [None if v is None else round(v, 2) for v in values]}
    return {**result, "errors": errors} if errors else result


def import_torch_time() -> float:
    return statistics.median(timed([sys.executable, "-c", "import torch"]) for _ in range(3))


def bench_recovery(runs: int, cap: float) -> dict[str, Any]:
    phases: list[dict[str, float]] = []
    return {
        "kdist": median_of("recovery kdist", runs, lambda d: recovery_kdist(cap, d, phases)),
        "kdist_phases_median_s": {key: round(statistics.median(p[key] for p in phases), 2)
                                  for key in (phases[0] if phases else {})},
        "torchrun_defaults": median_of("recovery torchrun", runs,
                                       lambda d: recovery_torchrun(cap, d)),
        "cap_s": cap,
    }


def bench_launch(runs: int) -> dict[str, Any]:
    spec = ROOT / "trainers" / "examples" / "smoke-node0.yaml"
    kdist = median_of("launch kdist", runs, lambda d: launch_kdist(spec, d))
    by_hand = median_of("launch by hand", runs, lambda d: launch_by_hand(spec, d))
    ok = kdist["median_s"] is not None and by_hand["median_s"] is not None
    ratio = round(kdist["median_s"] / by_hand["median_s"], 2) if ok else None
    return {"kdist": kdist, "torchrun_by_hand": by_hand, "ratio": ratio}


def scale_run(nodes: int, keep_alive: int, cap: float, overheads: list[float], workdir: Path
              ) -> float:
    wall = launch_kdist(smoke_spec(workdir, nodes, keep_alive), workdir, cap)
    overhead = rendezvous_overhead(workdir / "run")
    if overhead is not None:
        overheads.append(overhead)
    return wall


def bench_scale(runs: int, sizes: list[int], torch_import: float, keep_alive: int, cap: float
                ) -> list[dict[str, Any]]:
    """One row per size; a size that fails with the spec's keep-alive is retried with 5 s."""
    rows = []
    for nodes in sizes:
        for interval in (keep_alive, 5) if not keep_alive else (keep_alive,):
            overheads: list[float] = []
            measure = functools.partial(scale_run, nodes, interval, cap, overheads)
            result = median_of(f"scale {nodes} (keep-alive {interval or 'default'})", runs,
                               measure)
            wall = result["median_s"]
            minus = None if wall is None else round(wall - torch_import, 2)
            rdzv = round(statistics.median(overheads), 2) if overheads else None
            rows.append({"nodes": nodes, "keep_alive_interval": interval or "kdist default",
                         **result, "minus_import_torch_s": minus,
                         "rendezvous_after_last_agent_ready_s": rdzv})
            if wall is not None:
                break
    return rows


def show(results: dict[str, Any]) -> None:
    rec, launch = results["recovery"], results["launch"]
    failed = [k for k, v in flat(results) if isinstance(v, dict) and v.get("errors")]
    print(f"{'benchmark':<46} {'kdist s':>9} {'torchrun s':>11}  runs")
    print(f"{'recovery (kill -> survivors step)':<46} {fmt(rec['kdist'])} "
          f"{fmt(rec['torchrun_defaults'], 11)}  {rec['kdist']['runs_s']} vs "
          f"{rec['torchrun_defaults']['runs_s']}")
    print(f"{'launch, 2-node smoke (wall)':<46} {fmt(launch['kdist'])} "
          f"{fmt(launch['torchrun_by_hand'], 11)}  ratio {launch['ratio']}")
    for row in results["scale"]:
        label = f"scale, {row['nodes']}-node smoke, keep-alive {row['keep_alive_interval']}"
        print(f"{label:<46} {fmt(row)} {'':>11}  rendezvous after the last agent is ready: "
              f"{row['rendezvous_after_last_agent_ready_s']} s")
    print(f"bare `python -c 'import torch'`: {results['import_torch_s']:.2f} s")
    print(f"kdist recovery phases (medians): {rec['kdist_phases_median_s']}")
    if failed:
        print(f"runs that failed (see errors in {RESULTS.name}): {', '.join(failed)}")
    target = rec["kdist"]["median_s"]
    print(f"recovery target <= 8 s: {'met' if target is not None and target <= 8 else 'NOT met'}")


def flat(results: dict[str, Any]) -> list[tuple[str, Any]]:
    out = [(f"recovery.{k}", v) for k, v in results["recovery"].items()]
    out += [(f"launch.{k}", v) for k, v in results["launch"].items()]
    return out + [(f"scale.{r['nodes']}@{r['keep_alive_interval']}s", r) for r in results["scale"]]


def fmt(result: dict[str, Any], width: int = 9) -> str:
    value = result["median_s"]
    return f"{'timeout' if value is None else f'{value:.2f}':>{width}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run of each")
    parser.add_argument("--cap", type=float, default=150.0,
                        help="give up on a recovery after this many seconds")
    parser.add_argument("--scale", default="8,16,32", help="node counts for the scale runs")
    parser.add_argument("--scale-cap", type=float, default=240.0,
                        help="stop a scale run after this many seconds")
    parser.add_argument("--keep-alive", type=int, default=0, metavar="S",
                        help="rendezvous.keep_alive_interval for the scale runs (with 3 "
                             "attempts); default: the spec's (1 s x 5)")
    parser.add_argument("--store-loss", action="store_true",
                        help="measure only the recovery from losing the rendezvous store")
    parser.add_argument("--tutorial", action="store_true",
                        help="measure only node-loss recovery of the tutorial trainer and ours")
    parser.add_argument("--outside", action="store_true",
                        help="measure only a node killed from outside kdist beside --kill")
    args = parser.parse_args()
    runs = 1 if args.quick else max(args.runs, 3)
    if args.outside:
        lost = bench_outside(runs, args.cap)
        print(f"node lost (kill -> survivors step again after resuming): outside SIGKILL median "
              f"{lost['outside_kill']['median_s']} s, runs {lost['outside_kill']['runs_s']}; "
              f"kdist run --kill median {lost['kdist_kill']['median_s']} s, runs "
              f"{lost['kdist_kill']['runs_s']}")
        OUTSIDE_RESULTS.write_text(json.dumps(lost, indent=2) + "\n")
        return
    if args.tutorial:
        both = bench_tutorial(runs, args.cap)
        print(f"node-loss recovery under kdist run (kill -> survivors step again): tutorial "
              f"trainer median {both['tutorial']['median_s']} s, runs {both['tutorial']['runs_s']}; "
              f"kdist's trainer median {both['kdist_trainer']['median_s']} s, runs "
              f"{both['kdist_trainer']['runs_s']}")
        TUTORIAL_RESULTS.write_text(json.dumps(both, indent=2) + "\n")
        return
    if args.store_loss:
        loss = bench_store_loss(runs, args.cap)
        print(f"store loss (kill -> step again): median {loss['kill_to_step']['median_s']} s, "
              f"runs {loss['kill_to_step']['runs_s']}; kdist saw the loss after "
              f"{loss['kill_to_kdist_detect_median_s']} s")
        STORE_LOSS_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        STORE_LOSS_RESULTS.write_text(json.dumps(loss, indent=2) + "\n")
        return
    torch_import = import_torch_time()
    results = {
        "runs": runs,
        "cpus": os.cpu_count(),
        "import_torch_s": round(torch_import, 2),
        "recovery": bench_recovery(runs, args.cap),
        "launch": bench_launch(runs),
        "scale": bench_scale(runs, [int(n) for n in args.scale.split(",") if n], torch_import,
                             args.keep_alive, args.scale_cap),
    }
    show(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
