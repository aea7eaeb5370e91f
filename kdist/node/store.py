"""The standalone c10d store: a TCPStore server in its own process that every node joins as a
client, so losing any node (node 0 included) does not take the store down. Run as
`python3 -c TEXT PORT TIMEOUT [BIND [IDLE]]` (kdist/plan.py, store_argv): with BIND it listens on
that address only ("": every interface); with IDLE (Compose) it exits 0 once no node has been
connected for IDLE seconds after one was: every agent holds a connection while the job runs, so
the job has ended. The Helm chart ships the same bytes as charts/kdist/files/store.py.
"""

from __future__ import annotations

import datetime
import signal
import socket
import sys
import time
from pathlib import Path

ESTABLISHED = "01"
LOOPBACK = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")


def listen(bind: str, port: int) -> int:
    """A listening socket on `bind` only (a TCPStore server alone listens on every interface)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    sock.listen(socket.SOMAXCONN)
    return sock.detach()  # the store owns the descriptor from here on


def clients(port: int) -> int:
    """Connections to `port` from other hosts (the healthcheck's loopback probes do not count),
    from /proc/net/tcp and tcp6: local address, remote address and state are fields 1-3."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, remote, state = row.split()[1:4]
            if int(local.rsplit(":", 1)[1], 16) == port and state == ESTABLISHED \
                    and remote.rsplit(":", 1)[0] not in LOOPBACK:
                count += 1
    return count


def serve_until_idle(port: int, idle: float) -> None:
    """Return once nobody has been connected for `idle` seconds after somebody was."""
    seen, quiet_since = False, time.monotonic()
    while True:
        time.sleep(1)
        if clients(port):
            seen, quiet_since = True, time.monotonic()
        elif seen and time.monotonic() - quiet_since >= idle:
            return


def main(argv: list[str]) -> int:
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # the image's torch

    port, timeout = int(argv[0]), int(argv[1])
    bind, idle = argv[2] if argv[2:] else "", float(argv[3]) if argv[3:] else 0.0
    # without BIND (containers) every interface, IPv6 included, as TCPStore does by itself
    _store = TCPStore(bind or "0.0.0.0", port, is_master=True, wait_for_workers=False,
                      timeout=datetime.timedelta(seconds=timeout),
                      master_listen_fd=listen(bind, port) if bind else None)  # serves while referenced
    print(f"kdist: rendezvous store listening on port {port}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    if idle:
        serve_until_idle(port, idle)
        print(f"kdist: no node connected for {idle:g} s: the job has ended, the store exits",
              flush=True)
        return 0
    while True:  # until SIGTERM/SIGINT ends the process
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
