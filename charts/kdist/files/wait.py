"""Before torchrun starts: show the project in the working directory, then wait until the
rendezvous store's DNS name resolves (and, for a standalone store, its port accepts
connections). Headless-Service records appear late on real clusters. Run as:
python3 -c TEXT HOST PORT TIMEOUT CONNECT [PROJECT] (kdist/plan.py, wait_argv) in the working
directory of the node, PROJECT being the image's working directory; the Helm chart ships the
same bytes as charts/kdist/files/wait.py.
kdist run calls link_project itself (kdist/targets/local/job.py).
"""

from __future__ import annotations

import os
import socket
import sys
import time

SKIPPED = (".kdist",)  # the folder of kdist in a local project (logs and outputs of runs)


def link_project(project: str, workdir: str) -> list[str]:
    """A link in WORKDIR to each top-level entry of PROJECT that it does not hold itself, so a
    trainer reads its config and data by relative paths while what it writes lands in WORKDIR
    (the shared volume). Links to entries the project no longer has are removed. Returns the
    names linked now. Several nodes may do this at once: a link another made first is fine.
    An image without a WORKDIR starts in /, which is no project: nothing is linked."""
    project, workdir = os.path.abspath(project), os.path.abspath(workdir)
    made: list[str] = []
    if project == "/":
        return made
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if os.path.islink(path) and os.readlink(path).startswith(project + os.sep) \
                and not os.path.exists(path):
            os.unlink(path)
    for name in sorted(os.listdir(project)):
        target = os.path.join(project, name)
        if name in SKIPPED or workdir == target or workdir.startswith(target + os.sep):
            continue
        try:
            os.symlink(target, os.path.join(workdir, name))
            made.append(name)
        except FileExistsError:  # a file of the job by that name, or a link another node made
            pass
    return made


def main(argv: list[str]) -> int:
    host, port, timeout, connect = argv[0], int(argv[1]), float(argv[2]), argv[3]
    if argv[4:]:
        try:
            link_project(argv[4], os.getcwd())
        except OSError as e:  # then torchrun itself says what is wrong
            print(f"kdist: cannot show the project {argv[4]} in {os.getcwd()}: {e}",
                  file=sys.stderr, flush=True)
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
