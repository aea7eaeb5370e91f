"""What PyTorch's torchrun tutorial (trainers/examples/tutorial) prints, read back by the tests
that run it on every target."""

from __future__ import annotations

import re

RESUMED_RE = re.compile(r"\[RANK(\d+)\] Resuming training from snapshot at Epoch (\d+)")
SAVED = "Training snapshot saved at snapshot.pt"


def resumed(output: str, pattern: re.Pattern[str] = RESUMED_RE) -> dict[int, int]:
    """rank -> epoch of the last round's "Resuming" lines (one per rank of that round); another
    trainer's (rank, epoch) `pattern` may replace the tutorial's."""
    found = [(int(rank), int(epoch)) for rank, epoch in pattern.findall(output)]
    last: dict[int, int] = {}
    for rank, epoch in reversed(found):
        if rank in last:
            break
        last[rank] = epoch
    return last


def assert_resumed_together(output: str, ranks: int, pattern: re.Pattern[str] = RESUMED_RE) -> None:
    """The last round's `ranks` ranks all resumed from the same snapshot epoch > 0."""
    last = resumed(output, pattern)
    assert sorted(last) == list(range(ranks)), output[-3000:]
    assert len(set(last.values())) == 1 and min(last.values()) > 0, last
