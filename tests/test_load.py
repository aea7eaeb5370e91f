"""The loader: defaults, accepted forms, and no exception but SpecError for malformed input."""

from __future__ import annotations

import contextlib
import random

import pytest
import yaml

from kdist.errors import SpecError
from kdist.spec.load import load_text
from kdist.spec.model import Nodes

BASE = {"name": "job", "image": "img:1", "entrypoint": "train.py", "nodes": 2}


def dump(doc: object) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.mark.parametrize(("value", "expected"), [
    (3, Nodes(3, 3, 3)),
    ("2:4", Nodes(2, 4, 4)),
    ({"min": 1, "max": 4, "count": 2}, Nodes(1, 4, 2)),
])
def test_node_forms(value: object, expected: Nodes) -> None:
    assert load_text(dump({**BASE, "nodes": value})).nodes == expected


def test_unquoted_range_is_a_range_not_sexagesimal() -> None:
    text = "name: job\nimage: img:1\nentrypoint: train.py\nnodes: 2:4\n"
    assert load_text(text).nodes == Nodes(2, 4, 4)


def test_defaults_are_the_robust_ones() -> None:
    job = load_text(dump(BASE))
    assert job.rendezvous.store == "standalone" and job.max_restarts >= 1
    r = job.rendezvous
    assert r.keep_alive_interval * r.keep_alive_max_attempt >= 5 and r.last_call_timeout == 1


def test_scalars_become_strings_for_env_and_args() -> None:
    job = load_text(dump({**BASE, "args": ["--lr", 0.1, True], "env": {"B": 1, "A": "x"}}))
    assert job.args == ("--lr", "0.1", "true")
    assert job.env == (("A", "x"), ("B", "1"))  # sorted


BAD_VALUES = [None, [], {}, "", "x", -1, 0, 1.5, True, "2:", "::", 10**12, ["a", {"b": 1}]]
FIELDS = ["name", "image", "entrypoint", "nodes", "args", "procs_per_node", "resources",
          "resources.cpu", "resources.memory", "resources.gpu", "resources.shm", "rendezvous",
          "rendezvous.port", "rendezvous.store", "rendezvous.join_timeout", "max_restarts", "env",
          "checkpoint", "checkpoint.path", "checkpoint.size", "network_interface", "network",
          "network.latency", "network.jitter", "network.loss", "compose",
          "compose.build", "k8s", "k8s.tolerations", "k8s.node_selector", "k8s.queue"]


def with_value(path: str, value: object) -> dict[str, object]:
    doc: dict[str, object] = dict(BASE)
    head, _, tail = path.partition(".")
    doc[head] = {tail: value} if tail else value
    return doc


@pytest.mark.parametrize("path", FIELDS)
def test_malformed_values_raise_spec_error_only(path: str) -> None:
    for value in BAD_VALUES:
        try:
            load_text(dump(with_value(path, value)))
        except SpecError as e:
            assert e.problems and all(p.file == "kdist.yaml" for p in e.problems)


def test_random_bytes_and_truncations_never_raise_anything_else() -> None:
    rng = random.Random(1234)
    good = dump({**BASE, "resources": {"cpu": 2}, "k8s": {"tolerations": [{"key": "a"}]}})
    samples = [good[:i] for i in range(len(good))]
    samples += ["".join(rng.choice(":-{}[]#&*!|>'\"%@` \n\tab1") for _ in range(60))
                for _ in range(300)]
    for text in samples:
        with contextlib.suppress(SpecError):
            load_text(text)
