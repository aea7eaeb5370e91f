"""kdist.torchlog over node logs captured from real torchrun runs (`kdist run`, torch 2.13 CPU, gloo).

tests/fixtures/torchrun/<case>/ holds the spec and the node logs of one run (see its README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kdist.torchlog import (
    PEER_LOST,
    NodeLog,
    certain_failure,
    first_failure,
    is_agent_line,
    is_peer_error,
    stuck_at_barrier,
)

FIXTURES = Path(__file__).parent / "fixtures" / "torchrun"


def read(case: str) -> list[NodeLog]:
    return [NodeLog().feed_all(path.read_text(encoding="utf-8").splitlines())
            for path in sorted((FIXTURES / case).glob("node-*.log"))]


def shown(case: str, node: int) -> list[str]:
    log, lines = NodeLog(), []
    for line in (FIXTURES / case / f"node-{node}.log").read_text(encoding="utf-8").splitlines():
        lines += log.feed(line)
    return lines


def test_rank_prefixed_traceback_names_the_error_without_record() -> None:
    node0, _ = read("raise-no-restarts")
    failure = node0.failure()
    assert failure is not None
    assert (failure.rank, failure.exit_code, failure.signal) == (0, 1, "")
    assert failure.exception == "RuntimeError: tutorial trainer: deliberate failure at epoch 3"
    assert failure.traceback[-2].strip().startswith("raise RuntimeError(")
    assert not failure.secondary
    assert failure.summary(tail=1).splitlines() == [
        "rank 0 exited with code 1: RuntimeError: tutorial trainer: deliberate failure at epoch 3",
        '      raise RuntimeError(f"tutorial trainer: deliberate failure at epoch {epoch}")']


def test_a_signal_and_a_lost_peer_are_read_from_the_report_and_the_rank_lines() -> None:
    _, node1 = read("raise-no-restarts")
    failure = node1.failure()
    assert failure is not None
    assert (failure.rank, failure.exit_code, failure.signal) == (1, -6, "SIGABRT")
    assert "Connection closed by peer" in failure.exception
    assert failure.secondary


def test_the_first_genuine_failure_wins_over_an_earlier_follow_on_error() -> None:
    node0, node1 = read("raise-no-restarts")
    f0, f1 = node0.failure(), node1.failure()
    assert f0 is not None and f1 is not None
    assert f1.time < f0.time  # node-1's agent noticed its broken connection first
    assert first_failure([("node-0", f0), ("node-1", f1)]) == 0
    assert first_failure([("node-1", f1), ("node-0", f0)]) == 1
    assert first_failure([("node-0", None), ("node-1", f1)]) == 1
    assert first_failure([]) is None


def test_plain_traceback_before_init_process_group() -> None:
    node0, _ = read("bad-import")
    failure = node0.failure()
    assert failure is not None and failure.rank == 0
    assert failure.exception == "ModuleNotFoundError: No module named 'no_such_module_for_kdist'"
    assert [e.attempt for e in node0.exits] == [0, 1, 2]
    assert node0.restarts == 2
    assert "ModuleNotFoundError: No module named 'no_such_module_for_kdist'" in shown("bad-import", 0)


def test_rendezvous_rounds_restart_and_world_sizes_from_the_agent() -> None:
    node0, node1, node2 = read("node-lost")
    assert [(r.restart_count, r.world_size, r.group_rank) for r in node0.rounds] == [(0, 3, 0), (1, 2, 0)]
    assert [(r.restart_count, r.world_size, r.group_rank) for r in node2.rounds] == [(0, 3, 2), (1, 2, 1)]
    assert node0.rounds[1].key == node2.rounds[1].key != node0.rounds[0].key
    assert node0.rounds[0].global_ranks == (0,) and node2.rounds[0].global_ranks == (2,)
    assert node0.restarts == 1 and node1.restarts == 0
    assert node0.phase == node2.phase == "finished"  # waited in the exit barrier, then done
    assert node2.exits[0].rank == 2  # its global rank in the round it failed in


def test_certain_failures() -> None:
    assert certain_failure(read("bad-import")).startswith(
        "every node's first attempt failed the same way: ModuleNotFoundError")
    assert certain_failure(read("raise-one-restart")).startswith(
        "the same error again after a restart, so restarts would repeat it: RuntimeError: tutorial")
    node0, _, node2 = read("node-lost")
    assert certain_failure([node0, node2]) == ""  # the survivors' errors say a peer went away
    assert certain_failure(read("raise-no-restarts")) == ""
    assert certain_failure([]) == ""


@pytest.mark.parametrize("case", ["raise-no-restarts", "bad-import", "node-lost", "interrupted"])
def test_quiet_lines_keep_the_trainer_and_drop_the_agent(case: str) -> None:
    lines = shown(case, 0)
    assert not any(is_agent_line(x) for x in lines)
    assert not any("torch.distributed.elastic" in x or "Root Cause" in x for x in lines)
    full = (FIXTURES / case / "node-0.log").read_text(encoding="utf-8").splitlines()
    assert any(is_agent_line(x) for x in full)
    trainer = [x for x in full if x.startswith(("[RANK0]", "[rank0]"))]
    assert [x for x in lines if x.startswith(("[RANK0]", "[rank0]"))] == trainer


def test_ctrl_c_leaves_no_traceback_to_show() -> None:
    for node in (0, 1):
        assert not any("Traceback" in x or "SignalException" in x for x in shown("interrupted", node))
    assert all(log.failure() is None for log in read("interrupted"))


def test_exit_barrier() -> None:
    agent = "I1130 03:44:55.462000 20037 torch/distributed/elastic/agent/server/api.py:932] "
    log = NodeLog()
    log.feed(agent + "[default] worker group successfully finished. Waiting 300 seconds for "
             "other agents to finish.")
    assert (log.phase, log.barrier_seconds) == ("barrier", 300.0)
    log.feed(agent + "Done waiting for other agents. Elapsed: 0.0038 seconds")
    assert (log.phase, log.barrier_seconds) == ("finished", 0.0)


# One error line per PEER_LOST marker, in the form gloo, the c10d store and the elastic agent
# print it (some taken from this project's logs, the others written after torch's messages).
PEER_LINES = [
    "RuntimeError: [../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1",
    "RuntimeError: Connection reset by peer",
    "RuntimeError: [../gloo/transport/tcp/pair.cc:598] Connection reset",
    "RuntimeError: ... this failure was caused by a remote worker",
    "RuntimeError: [../gloo/transport/tcp/pair.cc:534] Read error [10.0.0.3]:45678: Bad address",
    "RuntimeError: Broken pipe",
    "torch.distributed.DistNetworkError: Connection refused",
    "torch.distributed.elastic.rendezvous.api.RendezvousClosedError",
    "torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: The connection to the "
    "C10d store has failed. See inner exception for details.",
    "torch.distributed.DistNetworkError: failed to recv, got 0 bytes",
    "torch.distributed.elastic.multiprocessing.api.SignalException: Process 41 got signal: 15",
    "RuntimeError: [../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 1800000ms",
    "RuntimeError: Socket Timeout",
]


@pytest.mark.parametrize("text", PEER_LINES)
def test_peer_markers(text: str) -> None:
    assert is_peer_error([text])
    assert not is_peer_error(["RuntimeError: tutorial trainer: deliberate failure at epoch 3"])


@pytest.mark.parametrize("marker", PEER_LOST)
def test_every_peer_marker_has_a_real_line(marker: str) -> None:
    assert any(marker in line.lower() for line in PEER_LINES), marker


def test_stderr_outside_a_traceback_is_no_error_and_tracebacks_are_bounded() -> None:
    log = NodeLog()
    log.feed("[rank0]: RuntimeError: printed by the trainer, not raised")
    log.feed("[rank0]: /app/train.py:3: UserWarning: something")
    assert log.errors == {}
    log.feed("[rank0]: Traceback (most recent call last):")
    for i in range(5000):
        log.feed(f'[rank0]:   File "/app/deep.py", line {i}, in f')
    log.feed("[rank0]: RecursionError: maximum recursion depth exceeded")
    error = log.errors[0]  # its first lines and the error line are kept
    assert error.exception == "RecursionError: maximum recursion depth exceeded"
    assert len(error.traceback) == 401 and error.traceback[-1] == error.exception
    log.feed("[rank0]: Traceback (most recent call last):")
    log.feed('[rank0]:   File "/app/train.py", line 9, in <module>')
    log.feed("[rank0]: ValueError: bad argument")
    assert log.errors[0].exception == "ValueError: bad argument"
    assert log.errors[0].traceback[0] == "Traceback (most recent call last):"


def test_a_failure_after_another_node_finished_is_stuck_at_the_barrier() -> None:
    node0, node1 = read("late-failure")
    assert node0.phase == "barrier" and node0.barrier_since == "1130 04:16:50.121000"
    assert stuck_at_barrier({0: node0, 1: node1}, minimum=2) == (
        "node-1's workers failed after node-0 finished: fewer than nodes.min=2 nodes can "
        "rendezvous again, so the job cannot succeed any more")
    assert stuck_at_barrier({0: node0, 1: node1}, minimum=1) == ""  # node-1 may go on alone
    assert stuck_at_barrier({1: node1}, minimum=2) == ""  # nobody waits
    _, node1_ok = read("raise-no-restarts")
    assert stuck_at_barrier({0: node0, 1: node1_ok}, minimum=2) == ""  # failed before the wait
