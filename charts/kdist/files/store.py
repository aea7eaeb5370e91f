"""The standalone c10d store: a TCPStore server in its own process that every node joins as a
client, so losing any node (node 0 included) does not take the store down. Run as
`python3 -c TEXT PORT TIMEOUT [BIND]` (kdist/plan.py, store_argv); the Helm chart ships the
same bytes as charts/kdist/files/store.py.
"""

from __future__ import annotations

import datetime
import signal
import sys


def main(argv: list[str]) -> int:
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # the image's torch

    port, timeout, bind = int(argv[0]), int(argv[1]), (argv[2:] or ["0.0.0.0"])[0]
    _store = TCPStore(bind, port, is_master=True, wait_for_workers=False,
                      timeout=datetime.timedelta(seconds=timeout))  # serves while referenced
    print(f"kdist: rendezvous store listening on port {port}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    while True:  # until SIGTERM/SIGINT ends the process
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
