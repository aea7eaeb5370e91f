"""`kdist run`: real torchrun processes (torch CPU, gloo) on this host, no mocks.

The `torch` tests start whole jobs (about 2.5 minutes together on 2 cores); the others check
option handling, process-tree killing and the console with cheap real processes.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kdist.cli import KdistGroup
from kdist.cli.console import TerminalConsole, describe_event
from kdist.cli.run import run
from kdist.errors import UsageError
from kdist.plan import LaunchPlan
from kdist.progress import RunProgress
from kdist.spec.load import load_text
from kdist.targets.local.job import (
    Kill,
    NodeResult,
    RunOptions,
    RunResult,
    check_options,
    find_processes,
    kill_tree,
    parse_kill,
    parse_seconds,
    resolve_entrypoint,
    signal_processes,
    stop_reason,
)

ROOT = Path(__file__).resolve().parent.parent
KDIST = [sys.executable, "-c", "from kdist.cli import main; main()"]


def spec_text(name: str, nodes: str, args: list[str], extra: str = "") -> str:
    return (f"name: {name}\nimage: kdist-trainer:test\nentrypoint: trainers/train.py\n"
            f"args: {json.dumps(args)}\nnodes: {json.dumps(nodes) if ':' in nodes else nodes}\n"
            f"{extra}")


def write_spec(tmp_path: Path, *args: Any, **kwargs: Any) -> Path:
    path = tmp_path / "kdist.yaml"
    path.write_text(spec_text(*args, **kwargs), encoding="utf-8")
    return path


def kdist_run(spec: Path, run_dir: Path, *options: str, timeout: float = 180
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KDIST, "run", "-f", str(spec), "--run-dir", str(run_dir), *options],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def metrics(stdout: str) -> list[dict[str, Any]]:
    """KDIST_METRIC events in arrival order, plus kdist's own `kill` lines as {"event": "kill"}."""
    out: list[dict[str, Any]] = []
    for line in stdout.splitlines():
        if "KDIST_METRIC " in line:
            out.append(json.loads(line.split("KDIST_METRIC ", 1)[1]))
        elif line.startswith("kdist | kill "):
            out.append({"event": "kill", "line": line})
    return out


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstderr:\n{result.stderr[-3000:]}\nstdout:\n" \
           f"{result.stdout[-4000:]}"


def check_resumes(events: list[dict[str, Any]], max_steps: int) -> None:
    """Every (re)start resumes right after the last checkpoint; no step is skipped."""
    last_checkpoint, expected_next = 0, 1
    for event in events:
        if event["event"] == "checkpoint":
            last_checkpoint = event["step"]
        elif event["event"] == "start":
            assert event["resumed_step"] == last_checkpoint, events
            expected_next = last_checkpoint + 1
        elif event["event"] == "step":
            assert event["step"] == expected_next, (event, events)
            expected_next += 1
    steps = {e["step"] for e in events if e["event"] == "step"}
    assert steps == set(range(1, max_steps + 1))
    assert events[-1] == {"event": "done", "step": max_steps, "world_size": events[-1]["world_size"]}


# ---- whole jobs --------------------------------------------------------------------------


@pytest.mark.torch
def test_two_nodes_finish_with_identical_parameters(tmp_path: Path) -> None:
    dump = tmp_path / "params"
    spec = write_spec(tmp_path, "pair", "2", ["--synthetic", "--max-steps", "12",
                                              "--checkpoint-every", "4", "--batch-size", "16",
                                              "--dump-params", str(dump)])
    result = kdist_run(spec, tmp_path / "run")
    assert result.returncode == 0, explain(result)
    hashes = [json.loads((tmp_path / f"params.rank{r}.json").read_text())["param_sha256"]
              for r in range(2)]
    assert hashes[0] == hashes[1]
    assert re.search(r"run pair-\S+ succeeded: 2 nodes, final step 12, \S+ elapsed, logs in ",
                     result.stderr), result.stderr
    assert re.search(r"^node-[01] \| KDIST_METRIC ", result.stdout, re.M)  # rank 0's output
    assert not re.search(r"^node-\d \| [IWE]\d{4} ", result.stdout, re.M)  # agents: logs only
    for name in ("node-0.log", "node-1.log", "store.log", "metrics.jsonl"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert (tmp_path / "run" / "checkpoints" / "checkpoint.pt").exists()


@pytest.mark.torch
def test_losing_a_node_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    """nodes 2:3, store on node 0: SIGKILL node 2 mid-run; nodes 0 and 1 finish the job."""
    spec = write_spec(tmp_path, "elastic", "2:3",
                      ["--synthetic", "--max-steps", "40", "--checkpoint-every", "4",
                       "--batch-size", "16", "--step-sleep", "0.5"],
                      "rendezvous: {store: node0}\n")
    result = kdist_run(spec, tmp_path / "run", "--kill", "node-2@20s")
    assert result.returncode == 0, explain(result)
    events = metrics(result.stdout)
    kill_at = next(i for i, e in enumerate(events) if e["event"] == "kill")
    before, after = events[:kill_at], events[kill_at:]
    assert any(e["event"] == "step" and e["world_size"] == 3 for e in before), \
        "the kill came before training started; raise the kill time"
    assert any(e["event"] == "step" for e in after), "the job was done before the kill"
    worlds = [e["world_size"] for e in events if e["event"] == "start"]
    assert worlds[0] == 3 and worlds[-1] == 2
    check_resumes([e for e in events if e["event"] != "kill"], 40)
    assert "succeeded: 3 nodes (1 killed), final step 40" in result.stderr


@pytest.mark.torch
@pytest.mark.chaos
def test_losing_node_0_is_survivable_with_the_standalone_store(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "standalone", "1:2",
                      ["--synthetic", "--max-steps", "30", "--checkpoint-every", "5",
                       "--batch-size", "16", "--step-sleep", "0.5"])
    result = kdist_run(spec, tmp_path / "run", "--kill", "node-0@14s")
    assert result.returncode == 0, explain(result)
    events = metrics(result.stdout)
    assert [e["world_size"] for e in events if e["event"] == "start"][-1] == 1
    check_resumes([e for e in events if e["event"] != "kill"], 30)
    assert "kdist | node-0 lost (killed on purpose, exit code -9)" in result.stdout


@pytest.mark.torch
def test_a_node_lost_below_nodes_min_fails_the_job_and_says_why(tmp_path: Path) -> None:
    """nodes 2, no restarts: node-1's processes SIGKILLed from outside. Too few are left."""
    spec = write_spec(tmp_path, "toofew", "2", ["--synthetic", "--max-steps", "5000",
                                                "--step-sleep", "0.2"], "max_restarts: 0\n")
    run_dir = (tmp_path / "run").resolve()
    proc = start_until_stepping(spec, run_dir)
    try:
        victims = [pid for pid in find_processes([], {"KDIST_NODE_RANK": "1"})
                   if str(run_dir).encode() in Path(f"/proc/{pid}/environ").read_bytes()]
        assert victims
        signal_processes(victims, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    assert ("kdist | node-1 lost (killed by SIGKILL, no error in its log); 1 of 2 nodes left, "
            "fewer than nodes.min=2: the job cannot go on") in out, out[-2000:]
    assert "the job failed: 1 node(s) left, fewer than nodes.min=2: the job cannot continue" in err
    assert not job_processes(run_dir, set())


def job_processes(run_dir: Path, sessions: set[int]) -> dict[int, str]:
    """pid -> state of live processes that belong to the run: by environment, cwd or session."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        state, session = stat.rsplit(")", 1)[1].split()[0], int(stat.rsplit(")", 1)[1].split()[4])
        if state != "Z" and (str(run_dir).encode() in environ or cwd.startswith(str(run_dir))
                             or session in sessions):
            found[int(entry.name)] = state
    return found


def sessions_of(pids: set[int]) -> set[int]:
    return {os.getsid(pid) for pid in pids if Path(f"/proc/{pid}").exists()}


def start_until_stepping(spec: Path, run_dir: Path, timeout: float = 120
                         ) -> subprocess.Popen[str]:
    """`kdist run` in the background, returned once training steps (or after `timeout`)."""
    proc = subprocess.Popen([*KDIST, "run", "-f", str(spec), "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if '"event":"step"' in line or time.monotonic() > deadline:
            break
    return proc


@pytest.mark.torch
def test_ctrl_c_stops_every_process_of_the_job(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "interrupt", "2",
                      ["--synthetic", "--max-steps", "5000", "--step-sleep", "0.2"])
    run_dir = (tmp_path / "run").resolve()
    proc = start_until_stepping(spec, run_dir)
    try:
        running = job_processes(run_dir, set())
        sessions = sessions_of(set(running)) - {os.getsid(0)}
        assert len(running) >= 5, running  # store, 2 agents, 2 workers
        assert len(sessions) >= 5  # torchrun starts its workers in sessions of their own
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        stdout, stderr = proc.communicate(timeout=30)
        stopped_after = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stopped_after < 15
    assert "interrupted by SIGINT" in stderr
    assert "Traceback" not in stdout + stderr  # torchrun's SignalExceptions stay in the node logs
    assert "Traceback" in (run_dir / "node-0.log").read_text()
    left = job_processes(run_dir, sessions)
    assert not left, f"left behind: {left}"
    assert not [pid for pid in running if Path(f"/proc/{pid}/stat").exists()
                and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]


@pytest.mark.torch
def test_a_failing_trainer_reports_its_root_cause(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "failing", "2", ["--synthetic", "--max-steps", "20",
                                                 "--fail-at-step", "3", "--batch-size", "16"],
                      "max_restarts: 0\n")
    result = kdist_run(spec, tmp_path / "run")
    assert result.returncode == 1, explain(result)
    assert re.search(r"kdist: node-[01] failed \(torchrun exit code 1\): rank 0 exited with code 1: "
                     r"RuntimeError: injected failure at step 3\n", result.stderr), result.stderr
    assert "RuntimeError: injected failure at step 3" in result.stderr
    assert "log: " in result.stderr and "internal error" not in result.stderr
    assert re.search(r"run failing-\S+ failed: 2 nodes", result.stderr)


TUTORIAL = "trainers/examples/tutorial/train.py"


@pytest.mark.torch
@pytest.mark.parametrize("restarts", [0, 3])
def test_tutorial_trainer_raising_names_rank_0_and_stops_within_15_s(tmp_path: Path,
                                                                    restarts: int) -> None:
    """No @record, no KDIST_METRIC: the `[rank0]:` traceback is the root cause. With
    max_restarts 0 torchrun gives up at once: kdist exits within 15 s of the raise. With 3
    (trainers/examples/tutorial.yaml) rank 0 fails the same way again after the first restart
    and kdist stops the job then: one restart cycle later (its time is the trainer's start-up,
    12 to 19 s on a loaded 2-core machine), not after all three."""
    spec = tmp_path / "kdist.yaml"
    spec.write_text(f"name: tutraise\nimage: kdist-trainer:test\nentrypoint: {TUTORIAL}\n"
                    'args: ["30", "2", --epoch-sleep, "0.5", --raise-at, "2"]\n'
                    f"nodes: 2\nmax_restarts: {restarts}\n", encoding="utf-8")
    run_dir = (tmp_path / "run").resolve()
    proc = subprocess.Popen([*KDIST, "run", "-f", str(spec), "--run-dir", str(run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    raised, stdout = 0.0, []
    for line in proc.stdout:
        stdout.append(line)
        if "[rank0]: RuntimeError: tutorial trainer" in line and not raised:
            raised = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    ended = time.monotonic()
    assert proc.returncode == 1, stderr
    assert raised and ended - raised < (15 if restarts == 0 else 45), (ended - raised, stderr)
    match = re.search(r"kdist: (node-[01]) failed \(torchrun exit code 1\): rank 0 exited with code 1: "
                      r"RuntimeError: tutorial trainer: deliberate failure at epoch 2\n", stderr)
    assert match, stderr
    assert f"  log: {run_dir / match[1]}.log\n" in stderr
    assert 'raise RuntimeError(f"tutorial trainer: deliberate failure at epoch {epoch}")' in stderr
    assert not any(re.match(r"node-\d \| [IWE]\d{4} ", x) for x in stdout)  # agent lines: logs only
    members = r"members (node-0, node-1|node-1, node-0)\n"  # in group-rank order
    assert re.search(r"^kdist \| round 1: world size 2, " + members, "".join(stdout), re.M)
    if restarts:
        assert re.search(r"^kdist \| resumed: round 2, world size 2 after 1 restart, " + members,
                         "".join(stdout), re.M)
        assert ("  kdist: the same error again after a restart, so restarts would repeat it: RuntimeError: "
                "tutorial trainer: deliberate failure at epoch 2; stopped the job instead of "
                "restarting\n") in stderr
        logs = "".join((run_dir / f"node-{i}.log").read_text() for i in (0, 1))
        assert "1/3 attempts left" not in logs  # kdist stopped it before the third attempt


@pytest.mark.torch
def test_a_crash_certain_to_repeat_stops_without_spending_the_restarts(tmp_path: Path) -> None:
    trainer = tmp_path / "bad.py"
    trainer.write_text("import no_such_module_for_kdist  # noqa: F401\n", encoding="utf-8")
    spec = tmp_path / "kdist.yaml"
    spec.write_text(f"name: badimport\nimage: kdist-trainer:test\nentrypoint: {trainer}\n"
                    "nodes: 2\nmax_restarts: 5\n", encoding="utf-8")
    result = kdist_run(spec, tmp_path / "run", timeout=60)
    assert result.returncode == 1, explain(result)
    assert re.search(r"kdist: node-[01] failed \(torchrun exit code 1\): rank [01] exited with code 1: "
                     r"ModuleNotFoundError: No module named 'no_such_module_for_kdist'\n", result.stderr)
    assert ("kdist: every node's first attempt failed the same way: ModuleNotFoundError: No module "
            "named 'no_such_module_for_kdist'; stopped the job instead of restarting") in result.stderr
    attempts = (tmp_path / "run" / "node-0.log").read_text().count("failed (exitcode: 1)")
    assert 1 <= attempts < 6  # kdist stopped it before torchrun spent its 5 restarts


LATE_FAILURE = """\
import time
import torch.distributed as dist
dist.init_process_group("gloo")
if dist.get_rank() == 1:
    time.sleep(4)
    raise RuntimeError("rank 1 fails after rank 0 finished")
print("rank 0 done", flush=True)
"""


@pytest.mark.torch
def test_a_node_left_waiting_in_the_exit_barrier_does_not_hold_the_job(tmp_path: Path) -> None:
    """Rank 0 finishes and its agent waits up to 300 s in torchrun's exit barrier; rank 1 then
    fails and its agent would wait for a new round that rank 0's node never joins."""
    trainer = tmp_path / "late.py"
    trainer.write_text(LATE_FAILURE, encoding="utf-8")
    spec = tmp_path / "kdist.yaml"
    spec.write_text(f"name: late\nimage: kdist-trainer:test\nentrypoint: {trainer}\nnodes: 2\n",
                    encoding="utf-8")
    started = time.monotonic()
    result = kdist_run(spec, tmp_path / "run", timeout=120)
    assert result.returncode == 1, explain(result)
    assert time.monotonic() - started < 60  # not torchrun's 300 s
    assert re.search(r"kdist: node-([01])'s workers failed after node-[01] finished: fewer than "
                     r"nodes.min=2 nodes can rendezvous again, so the job cannot succeed any more; "
                     r"node-[01] was waiting in torchrun's exit barrier \(up to 300 s\)",
                     result.stderr), result.stderr
    assert "RuntimeError: rank 1 fails after rank 0 finished" in result.stderr


# ---- options, process trees, console (no torch) ------------------------------------------


PLAN = LaunchPlan(load_text(spec_text("opts", "2:3", ["--synthetic"])))


HOME_READER = """\
import os, pathlib
home = pathlib.Path.home()
token = (home / ".cache" / "huggingface" / "token").read_text().strip()
print("home", home, "token", token, "netrc", (home / ".netrc").is_file(), flush=True)
"""


@pytest.mark.torch
def test_nodes_see_the_users_home_as_under_plain_torchrun(tmp_path: Path) -> None:
    """~/.netrc and a Hugging Face token in ~/.cache are where the trainer looks."""
    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text("hf_test\n")
    (home / ".netrc").write_text("machine example.invalid login me password x\n")
    trainer = tmp_path / "reads_home.py"
    trainer.write_text(HOME_READER, encoding="utf-8")
    spec = tmp_path / "kdist.yaml"
    spec.write_text(f"name: home\nimage: kdist-trainer:test\nentrypoint: {trainer.name}\n"
                    "nodes: 2\n", encoding="utf-8")
    result = subprocess.run([*KDIST, "run", "-f", str(spec), "--run-dir", str(tmp_path / "run")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "HOME": str(home)})
    assert result.returncode == 0, explain(result)
    seen = sorted(line.split("| ", 1)[1] for line in result.stdout.splitlines() if "| home " in line)
    assert seen == [f"home {home} token hf_test netrc True"] * 2, result.stdout[-2000:]


def test_fault_injection_options_parse() -> None:
    assert parse_kill("node-1@20s") == Kill(1, 20.0)
    assert parse_kill("2@1.5") == Kill(2, 1.5)
    assert parse_seconds("500ms", "--add-node") == 0.5
    assert parse_seconds("2m", "--add-node") == 120.0
    for bad in ("node-1", "node-x@2s", "1@soon"):
        with pytest.raises(UsageError, match="--kill"):
            parse_kill(bad)


def test_options_must_fit_the_spec() -> None:
    assert check_options(PLAN, RunOptions()) == 3
    assert check_options(PLAN, RunOptions(nodes=2, add_nodes=(5.0,))) == 2
    with pytest.raises(UsageError, match=r"--nodes 4 is outside nodes 2:3"):
        check_options(PLAN, RunOptions(nodes=4))
    with pytest.raises(UsageError, match=r"would start 4 nodes; the spec allows at most 3"):
        check_options(PLAN, RunOptions(add_nodes=(5.0,)))
    with pytest.raises(UsageError, match=r"node-3: the run has nodes node-0..node-2"):
        check_options(PLAN, RunOptions(kills=(Kill(3, 1.0),)))


def test_the_entrypoint_is_resolved_against_the_working_directory(tmp_path: Path) -> None:
    plan = resolve_entrypoint(PLAN, ROOT)
    assert plan.spec.entrypoint == str(ROOT / "trainers" / "train.py")
    argv, original = plan.torchrun_argv("127.0.0.1", 1234), PLAN.torchrun_argv("127.0.0.1", 1234)
    assert argv[:-2] == original[:-2]  # the plan's command line; only the script path differs
    assert argv[-2:] == [str(ROOT / "trainers" / "train.py"), "--synthetic"]
    with pytest.raises(UsageError, match=r"entrypoint trainers/train\.py not found"):
        resolve_entrypoint(PLAN, tmp_path)


def test_cli_errors_before_starting_anything(tmp_path: Path) -> None:
    spec = tmp_path / "kdist.yaml"
    spec.write_text(spec_text("opts", "2:3", ["--synthetic"]), encoding="utf-8")
    group = KdistGroup(name="kdist", commands=[run])  # kdist.cli's error handling, only `run`
    result = CliRunner().invoke(group, ["run", "-f", str(spec), "--nodes", "5"])
    assert result.exit_code == 2
    assert "kdist: --nodes 5 is outside nodes 2:3 of the spec" in result.output
    result = CliRunner().invoke(group, ["run", "-f", str(spec), "--kill", "soon"])
    assert result.exit_code == 2 and "--kill: expected NODE@TIME" in result.output


def test_job_success_rules() -> None:
    def result(*nodes: NodeResult) -> RunResult:
        return RunResult("r", Path("/r"), nodes, 10, 1.0, outputs=Path("/r/checkpoints"))

    assert result(NodeResult(0, 0), NodeResult(1, -9, killed=True)).succeeded
    assert not result(NodeResult(0, 0), NodeResult(1, 1)).succeeded
    assert not result(NodeResult(0, -9, killed=True)).succeeded
    assert not result(NodeResult(0, 0), NodeResult(1, -15, stopped=True)).succeeded
    assert result(NodeResult(0, 0)).summary() == (
        "run r succeeded: 1 node, final step 10, 00:01 elapsed, logs in /r, outputs (the working "
        "directory) in /r/checkpoints")


def test_when_kdist_stops_the_remaining_nodes() -> None:
    up, ok, killed = NodeResult(0, None), NodeResult(1, 0, at=10.0), NodeResult(2, -9, True)

    def reason(*nodes: NodeResult, adds: bool = False, now: float = 11.0) -> str:
        return stop_reason(nodes, 2, adds, now, linger=60)

    assert reason(up, NodeResult(1, None)) == ""
    assert reason(up, ok) == ""  # one node finished first: the others are in the exit barrier
    assert reason(up, ok, now=71) == "node-0 still running 60s after node-1 finished"
    assert reason(up, NodeResult(1, 1)) == "node-1 failed; stopped the other nodes"
    assert reason(up, killed) == "1 node(s) left, fewer than nodes.min=2: the job cannot continue"
    assert reason(up, killed, adds=True) == ""  # a node is still to come
    assert reason(ok, killed) == ""  # nothing left to stop


def test_which_ends_of_a_node_are_losses() -> None:
    """kdist/policy.py: a signal nobody in the job sent is a loss; the node's own error is not."""
    from kdist.policy import exit_signal, loss
    from kdist.torchlog import Failure

    own = Failure(1, 1, "", "", "ValueError: bad batch", ("ValueError: bad batch",))
    peer = Failure(1, 1, "", "", "RuntimeError: Connection closed by peer", ())
    killed_worker = Failure(1, -9, "SIGKILL", "", "", ())
    assert exit_signal(-9) == "SIGKILL" and exit_signal(137, container=True) == "SIGKILL"
    assert exit_signal(139, container=True) == "SIGSEGV" and exit_signal(137) == ""
    assert exit_signal(1, container=True) == exit_signal(0) == exit_signal(None) == ""
    assert loss(1, -9, None) is not None and loss(1, -9, None).why == "killed by SIGKILL"  # type: ignore[union-attr]
    assert loss(1, -9, peer) is not None  # its workers only saw the peers go
    assert loss(1, -9, own) is None  # its own error, whatever happened to the agent after
    assert loss(1, 1, own) is None and loss(1, 1, None) is None
    assert loss(1, 1, killed_worker).why == "its workers were killed by SIGKILL"  # type: ignore[union-attr]
    oom = loss(2, 137, None, container=True, oom=True)
    assert oom is not None and oom.oom and oom.message(2, 3, 2, False) == (
        "node-2 lost (out of memory: OOM-killed, no error in its log); 2 of 3 nodes go on (min 2)")
    assert loss(1, -9, None).message(1, 2, 2, False).endswith(  # type: ignore[union-attr]
        "1 of 2 nodes left, fewer than nodes.min=2: the job cannot go on")


def test_kill_tree_finds_orphans_in_their_own_sessions() -> None:
    """Like torchrun's workers: a child in a new session, then its parent is gone."""
    env = {**os.environ, "KDIST_RUN_ID": "tree-test", "KDIST_NODE_RANK": "7"}
    agent = subprocess.Popen(["sh", "-c", "setsid sleep 300 & sleep 300"], env=env,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(find_processes([agent.pid], {})) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = find_processes([agent.pid], {})
        assert len(tree) == 3  # sh, sleep, setsid'ed sleep
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        markers = {"KDIST_RUN_ID": "tree-test", "KDIST_NODE_RANK": "7"}
        assert find_processes([agent.pid], markers) == tree - {agent.pid}  # found by env only
        assert kill_tree([agent.pid], markers) == 2
        assert find_processes([], markers) == set()
    finally:
        kill_tree([agent.pid], {"KDIST_RUN_ID": "tree-test"})


def test_console_keeps_the_status_line_below_the_log() -> None:
    screen = io.StringIO()
    console = TerminalConsole(screen, interval=0)
    status = RunProgress()
    status.node(0)
    console.status(status, 5)
    assert screen.getvalue() == "\r\x1b[K[00:05] nodes 1/1 up | rounds 0 | restarts 0 | world -"
    console.log("node-0", "hello")  # clears the status line first (the log goes to stdout)
    assert screen.getvalue().endswith("\r\x1b[K")
    metric = 'KDIST_METRIC {"event": "step", "step": 3}'
    assert console.shows("hello") and not console.shows(metric)  # it feeds the status line
    quiet = TerminalConsole(None)
    quiet.status(status, 5)  # not a terminal: no status line, nothing to clear
    quiet.clear()
    assert quiet.shows(metric)  # piped or logged: every line, as before


def test_kdist_events_on_the_terminal() -> None:
    assert describe_event("exit", {"node": 1, "code": -9, "killed": True}) == (
        "node-1 lost (killed on purpose, exit code -9)")
    assert describe_event("exit", {"node": 0, "code": 0, "killed": False}) == "node-0 finished"
    assert describe_event("exit", {"node": 2, "code": 1, "killed": False}) == (
        "node-2 failed (exit code 1)")
    assert describe_event("round", {"round": 1, "world_size": 3, "restart": 0,
                                     "members": ["node-0", "node-1", "node-2"]}) == (
        "round 1: world size 3, members node-0, node-1, node-2")
    assert describe_event("resumed", {"round": 2, "world_size": 2, "restart": 1,
                                       "members": ["node-0", "node-2"]}) == (
        "resumed: round 2, world size 2 after 1 restart, members node-0, node-2")
    assert describe_event("kill", {"node": 1, "signal": "SIGKILL", "processes": 2}) == (
        "kill node=1 signal=SIGKILL processes=2")

