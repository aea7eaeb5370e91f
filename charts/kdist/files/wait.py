"""Before torchrun starts: wait until the rendezvous store's DNS name resolves (and, for a
standalone store, its port accepts connections). Headless-Service records appear late on real
clusters. Run as: python3 -c TEXT HOST PORT TIMEOUT CONNECT (kdist/plan.py, wait_argv); the
Helm chart ships the same bytes as charts/kdist/files/wait.py.
"""

from __future__ import annotations

import socket
import sys
import time


def main(argv: list[str]) -> int:
    host, port, timeout, connect = argv[0], int(argv[1]), float(argv[2]), argv[3]
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.getaddrinfo(host, port)
            if connect == "1":
                socket.create_connection((host, port), timeout=2).close()
            return 0
        except OSError as e:
            if time.monotonic() > deadline:
                print(f"kdist: rendezvous store {host}:{port} not reachable after {timeout:.0f}s: "
                      f"{e}", file=sys.stderr, flush=True)
                return 1
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
