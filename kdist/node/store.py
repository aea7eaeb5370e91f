"""The standalone c10d store: a TCPStore server in its own process that every node joins as a
client, so losing any node (node 0 included) does not take the store down. Run as
`python3 -c TEXT PORT TIMEOUT [BIND]` (kdist/plan.py, store_argv): with BIND it listens on that
address only. The Helm chart ships the same bytes as charts/kdist/files/store.py.
"""

from __future__ import annotations

import datetime
import signal
import socket
import sys


def listen(bind: str, port: int) -> int:
    """A listening socket on `bind` only (a TCPStore server alone listens on every interface)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    sock.listen(socket.SOMAXCONN)
    return sock.detach()  # the store owns the descriptor from here on


def main(argv: list[str]) -> int:
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # the image's torch

    port, timeout, bind = int(argv[0]), int(argv[1]), argv[2] if argv[2:] else ""
    # without BIND (containers) every interface, IPv6 included, as TCPStore does by itself
    _store = TCPStore(bind or "0.0.0.0", port, is_master=True, wait_for_workers=False,
                      timeout=datetime.timedelta(seconds=timeout),
                      master_listen_fd=listen(bind, port) if bind else None)  # serves while referenced
    print(f"kdist: rendezvous store listening on port {port}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    while True:  # until SIGTERM/SIGINT ends the process
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
