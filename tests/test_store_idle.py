"""kdist/node/store.py's idle exit (Compose's `rdzv` ends with the job): counting the nodes'
connections from /proc/net/tcp with real sockets, loopback probes left out."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kdist.node import store


def own_address() -> str:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
        except OSError:
            pytest.skip("no default route: no non-loopback address to connect from")
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("the default route is loopback")
    return address


@contextmanager
def server() -> Iterator[tuple[socket.socket, int]]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listening:
        listening.bind(("0.0.0.0", 0))
        listening.listen()
        yield listening, listening.getsockname()[1]


def test_connections_from_another_address_count_and_loopback_probes_do_not() -> None:
    address = own_address()
    with server() as (listening, port):
        assert store.clients(port) == 0
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = listening.accept()
            assert store.clients(port) == 0  # the healthcheck's probe
            accepted.close()
        with socket.create_connection((address, port)):
            accepted, _ = listening.accept()
            assert store.clients(port) == 1
            accepted.close()


def test_serving_ends_only_after_a_node_was_connected_and_left() -> None:
    address = own_address()
    with server() as (listening, port):
        done = threading.Event()
        thread = threading.Thread(target=lambda: (store.serve_until_idle(port, 2), done.set()),
                                  daemon=True)
        thread.start()
        time.sleep(3.5)
        assert not done.is_set()  # nobody connected yet: a job still starting
        node = socket.create_connection((address, port))
        accepted, _ = listening.accept()
        time.sleep(3.5)
        assert not done.is_set()  # a node connected
        node.close()
        accepted.close()
        left = time.monotonic()
        assert done.wait(timeout=10)
        assert time.monotonic() - left >= 0.9  # IDLE (2 s) from its last look (once a second)
