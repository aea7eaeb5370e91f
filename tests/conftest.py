from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_server import KubeServer, missing

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite golden files from the current output (then review the diff)")


class Golden:
    """Compares text with a golden file, or rewrites the file under --update-golden."""

    def __init__(self, update: bool) -> None:
        self.update = update

    def check(self, path: Path, actual: str) -> None:
        if self.update:
            path.write_text(actual, encoding="utf-8")
            return
        assert path.exists(), f"{path} is missing: run `make golden`"
        expected = path.read_text(encoding="utf-8")
        assert actual == expected, f"{path} differs from the output: run `make golden` and review"


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    return Golden(bool(request.config.getoption("--update-golden")))


@pytest.fixture(scope="session")
def kube_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeServer]:
    """etcd + kube-apiserver for the session (tests/kube_server.py); skips when not built."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    with KubeServer(tmp_path_factory.mktemp("apiserver")) as server:
        yield server
