"""kdist.progress over lines captured from real torch 2.13 runs (`kdist run`, gloo, CPU)."""

from __future__ import annotations

from kdist.progress import (
    RunProgress,
    format_elapsed,
    format_progress,
    parse_metric,
)
from kdist.torchlog import Failure, NodeLog


def parse_root_cause(lines: list[str]) -> Failure | None:
    """torchrun's own report (the Root Cause block) among one node's lines."""
    return NodeLog().feed_all(lines).report

# node-0 of a 3-node job (nodes 2:3) whose node-2 was SIGKILLed: first round, the restart
# after the loss, the second round with 2 nodes, and the end.
AGENT = "torch/distributed/elastic/agent/server/api.py"
NODE0_LOG = f"""\
I1124 00:48:06.773000 13490 {AGENT}:707] [default] Rendezvous'ing worker group
I1124 00:48:08.015000 13490 {AGENT}:553] [default] Rendezvous complete for workers. Result:
I1124 00:48:08.015000 13490 {AGENT}:553]   restart_count=0
I1124 00:48:08.015000 13490 {AGENT}:553]   master_addr=127.0.0.1
I1124 00:48:08.015000 13490 {AGENT}:553]   master_port=56215
I1124 00:48:08.015000 13490 {AGENT}:553]   group_rank=0
I1124 00:48:08.015000 13490 {AGENT}:553]   group_world_size=3
I1124 00:48:08.015000 13490 {AGENT}:553]   local_ranks=[0]
I1124 00:48:08.015000 13490 {AGENT}:553]   role_ranks=[0]
I1124 00:48:08.015000 13490 {AGENT}:553]   global_ranks=[0]
I1124 00:48:08.015000 13490 {AGENT}:553]   role_world_sizes=[3]
I1124 00:48:08.015000 13490 {AGENT}:553]   global_world_sizes=[3]
I1124 00:48:08.015000 13490 {AGENT}:553]   event_log_handler=null
I1124 00:48:08.015000 13490 {AGENT}:553]\x20
I1124 00:48:08.015000 13490 {AGENT}:715] [default] Starting worker group
KDIST_METRIC {{"event":"start","restart":0,"resumed_step":0,"world_size":3}}
[kdist rank0] 2026-11-24 00:48:15,266 INFO world_size=3 restart=0 epoch=0 step=0 consumed=0
KDIST_METRIC {{"epoch":0,"event":"step","loss":2.003317,"samples_per_s":2973.2,"step":10,\
"time":1795480158.803774,"world_size":3}}
KDIST_METRIC {{"event":"checkpoint","step":10}}
E1124 00:48:20.827000 13490 torch/distributed/elastic/multiprocessing/api.py:1002] failed \
(exitcode: 1) local_rank: 0 (pid: 13629) of binary: /tmp/venv/bin/python
I1124 00:48:20.827000 13490 {AGENT}:942] [default] Worker group FAILED. 3/3 attempts left; \
will restart worker group
I1124 00:48:20.827000 13490 {AGENT}:733] [default] Stopping worker group
I1124 00:48:20.827000 13490 {AGENT}:707] [default] Rendezvous'ing worker group
I1124 00:48:27.007000 13490 {AGENT}:553] [default] Rendezvous complete for workers. Result:
I1124 00:48:27.007000 13490 {AGENT}:553]   restart_count=1
I1124 00:48:27.007000 13490 {AGENT}:553]   master_addr=127.0.0.1
I1124 00:48:27.007000 13490 {AGENT}:553]   master_port=43625
I1124 00:48:27.007000 13490 {AGENT}:553]   group_rank=0
I1124 00:48:27.007000 13490 {AGENT}:553]   group_world_size=2
I1124 00:48:27.007000 13490 {AGENT}:553]   event_log_handler=null
[kdist rank0] 2026-11-24 00:48:31,565 INFO loaded checkpoint /tmp/lr/run3/checkpoints/checkpoint.pt \
(step 10)
KDIST_METRIC {{"event":"start","restart":1,"resumed_step":10,"world_size":2}}
KDIST_METRIC {{"epoch":0,"event":"step","loss":2.299,"samples_per_s":1523.4,"step":11,\
"time":1795480311.59,"world_size":2}}
KDIST_METRIC {{"event":"done","step":40,"world_size":2}}
I1124 00:48:45.516000 13490 {AGENT}:932] [default] worker group successfully finished. Waiting \
300 seconds for other agents to finish.
"""

# torchrun's report after `--fail-at-step 3` (the trainer raises on global rank 0).
FAILED_LOG = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\x20
============================================================
/work/main/trainers/train.py FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-24_00:47:51
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 12614)\x20
  error_file: /tmp/torchelastic_694rvem0/tfail_u42kt200/attempt_1/0/error.json
  traceback : Traceback (most recent call last):
    File "/tmp/venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/\
errors/__init__.py", line 367, in wrapper
      return f(*args, **kwargs)
             ^^^^^^^^^^^^^^^^^^
    File "/work/main/trainers/train.py", line 499, in main
      state = train(cfg, info, dataset)
              ^^^^^^^^^^^^^^^^^^^^^^^^^
    File "/work/main/trainers/train.py", line 472, in train
      run_epoch(cfg, model, ddp, opt, loader, state, info)
    File "/work/main/trainers/train.py", line 412, in run_epoch
      raise RuntimeError(f"injected failure at step {cfg.fail_at_step}")
  RuntimeError: injected failure at step 3
\x20\x20
============================================================
"""

# torchrun's report when its worker was SIGKILLed (no error file, no traceback).
KILLED_LOG = """\
Root Cause (first observed failure):
[0]:
  time      : 2026-11-24_00:51:28
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -9 (pid: 24049)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 24049
======================================================
"""

PEER_ERROR = ("RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] "
              "Connection closed by peer [127.0.0.1]:53381. This is typically caused by a remote "
              "worker crashing. Check the logs of the remote worker before reporting an error.")


def observe_all(status: RunProgress, node: int, text: str) -> list[dict[str, object]]:
    metrics = [status.observe(node, line) for line in text.splitlines()]
    return [m for m in metrics if m is not None]


def test_metric_lines_are_parsed_and_others_ignored() -> None:
    assert parse_metric('KDIST_METRIC {"event":"smoke","world_size":2}') == {
        "event": "smoke", "world_size": 2}
    assert parse_metric('node-0 | KDIST_METRIC {"event":"done","step":3}') == {
        "event": "done", "step": 3}
    assert parse_metric("KDIST_METRIC {not json") is None
    assert parse_metric('KDIST_METRIC ["event"]') is None
    assert parse_metric("[kdist rank0] INFO world_size=3") is None


def test_a_node_loss_shows_as_a_new_round_a_restart_and_a_smaller_world() -> None:
    status = RunProgress()
    metrics = observe_all(status, 0, NODE0_LOG)
    assert [m["event"] for m in metrics] == ["start", "step", "checkpoint", "start", "step", "done"]
    node = status.nodes[0]
    assert len(status.rounds) == 2
    assert status.restarts == 1
    assert node.worker_failures == 1
    assert node.group_rank == 0 and node.group_world_size == 2
    assert node.phase == "barrier"  # the agent waits in torchrun's exit barrier for the others
    assert status.waiting_in_barrier() == [0]
    assert status.world_size == 2 and status.world_sizes == [3, 2]
    assert (status.step, status.checkpoint, status.done) == (40, 10, True)


def test_rounds_are_counted_once_across_nodes() -> None:
    status = RunProgress()
    block = NODE0_LOG.split("KDIST_METRIC")[0]
    observe_all(status, 0, block)
    observe_all(status, 1, block.replace("group_rank=0", "group_rank=1"))
    assert len(status.rounds) == 1
    assert status.nodes[1].group_rank == 1
    assert status.world_size == 3  # from the rendezvous, before any metric


def test_node_exits_update_the_nodes_up() -> None:
    status = RunProgress()
    for index in range(3):
        status.node(index)
    status.node_exited(2, -9, killed=True)
    status.node_exited(1, 1)
    assert status.nodes_up == 1
    assert [status.nodes[i].phase for i in range(3)] == ["starting", "failed", "killed"]


def test_status_line() -> None:
    status = RunProgress()
    assert format_progress(status, 3.2) == "[00:03] nodes 0/0 up | rounds 0 | restarts 0 | world -"
    observe_all(status, 0, NODE0_LOG)
    status.node(1)
    status.node_exited(1, -9, killed=True)
    assert format_progress(status, 3725) == (
        "[1:02:05] nodes 1/2 up | rounds 2 | restarts 1 | world 2 | step 40 loss 2.2990 "
        "| 1523 samples/s | done")
    assert format_elapsed(59.9) == "00:59"


def test_root_cause_of_a_trainer_exception() -> None:
    cause = parse_root_cause(("noise\n" + FAILED_LOG).splitlines())
    assert cause is not None
    assert (cause.rank, cause.exit_code, cause.signal) == (0, 1, "")
    assert cause.time == "2026-11-24_00:47:51"
    assert cause.exception == "RuntimeError: injected failure at step 3"
    assert cause.traceback[0] == "Traceback (most recent call last):"
    assert cause.traceback[-1] == "RuntimeError: injected failure at step 3"
    assert not any(set(line.strip()) == {"^"} for line in cause.traceback)
    assert not cause.secondary
    summary = cause.summary(tail=2)
    assert summary.splitlines() == [
        "rank 0 exited with code 1: RuntimeError: injected failure at step 3",
        '    File "/work/main/trainers/train.py", line 412, in run_epoch',
        '      raise RuntimeError(f"injected failure at step {cfg.fail_at_step}")',
    ]


def test_root_cause_of_a_killed_worker() -> None:
    cause = parse_root_cause(KILLED_LOG.splitlines())
    assert cause is not None
    assert (cause.rank, cause.exit_code, cause.signal) == (0, -9, "SIGKILL")
    assert cause.traceback == ("Signal 9 (SIGKILL) received by PID 24049",)
    assert cause.summary().startswith("rank 0 was killed by SIGKILL")


def test_a_lost_peer_is_a_secondary_cause() -> None:
    text = FAILED_LOG.replace("RuntimeError: injected failure at step 3", PEER_ERROR)
    cause = parse_root_cause(text.splitlines())
    assert cause is not None and cause.secondary


def test_the_last_report_wins_and_no_report_is_none() -> None:
    second = KILLED_LOG.replace("rank      : 0 (local_rank: 0)", "rank      : 3 (local_rank: 1)")
    cause = parse_root_cause((FAILED_LOG + second).splitlines())
    assert cause is not None and (cause.rank, cause.exit_code) == (3, -9)
    assert parse_root_cause(NODE0_LOG.splitlines()) is None
    assert parse_root_cause(["Root Cause (first observed failure):", "[0]:", "garbage"]) is None


def test_round_events_name_world_size_restart_and_members() -> None:
    """Real logs of 3 nodes, node-1 killed (tests/fixtures/torchrun/node-lost); an agent that a
    peer's failure restarted logs restart_count=0, so the round takes the highest count."""
    from pathlib import Path

    status = RunProgress()
    folder = Path(__file__).parent / "fixtures" / "torchrun" / "node-lost"
    for index in range(3):
        for line in (folder / f"node-{index}.log").read_text(encoding="utf-8").splitlines():
            status.observe(index, line)
    assert status.events == [
        ("round", {"round": 1, "world_size": 3, "restart": 0,
                   "members": ["node-0", "node-1", "node-2"]}),
        ("resumed", {"round": 2, "world_size": 2, "restart": 1, "members": ["node-0", "node-2"]}),
    ]
    assert (status.restarts, status.world_sizes, len(status.rounds)) == (1, [3, 2], 2)


def test_barrier_note_names_the_nodes_in_torchruns_exit_barrier() -> None:
    from kdist.progress import barrier_note

    status = RunProgress()
    observe_all(status, 0, NODE0_LOG)  # ends in "Waiting 300 seconds for other agents"
    observe_all(status, 1, NODE0_LOG.split("KDIST_METRIC")[0])
    assert barrier_note(status) == "; node-0 was waiting in torchrun's exit barrier (up to 300 s)"
    status.node_exited(0, 0)
    assert barrier_note(status) == ""
