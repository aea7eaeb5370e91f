"""Which TCP ports the processes of a local job listen on, read from /proc (Linux).

A socket belongs to a process when one of its /proc/<pid>/fd entries is `socket:[INODE]`; the
listening sockets of the process's network namespace are in /proc/<pid>/net/tcp and tcp6.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LISTEN_STATE = "0A"


@dataclass(frozen=True, order=True)
class Listener:
    address: str  # "127.0.0.1", "::", "0.0.0.0"
    port: int
    pid: int

    @property
    def loopback_only(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def decode_address(text: str) -> tuple[str, int]:
    """`0100007F:1F90` (tcp) or 32 hex digits:port (tcp6), as the kernel writes them."""
    hexaddr, hexport = text.split(":")
    raw = bytes.fromhex(hexaddr)
    # the kernel prints each 32-bit word in host (little-endian) order
    packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(packed)), int(hexport, 16)


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:  # gone, or not ours
        pass
    return inodes


def listening_in_namespace(pid: int) -> dict[str, tuple[str, int]]:
    """inode -> (address, port) for every listening TCP socket of pid's network namespace."""
    found = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN_STATE:
                found[fields[9]] = decode_address(fields[1])
    return found


def listeners(pids: Iterable[int]) -> list[Listener]:
    """The listening TCP sockets held by `pids`, sorted."""
    out = set()
    for pid in pids:
        inodes = socket_inodes(pid)
        if not inodes:
            continue
        for inode, (address, port) in listening_in_namespace(pid).items():
            if inode in inodes:
                out.add(Listener(address, port, pid))
    return sorted(out)


def running_jobs(name: str, marker: str = "KDIST_RUN_ID") -> dict[str, list[int]]:
    """run id -> pids of the live processes of each local run of job `name` (`marker` in their
    environment names the run, `<name>-<date>-<time>-<hex>`: kdist/targets/local/job.py)."""
    run_id = re.compile(re.escape(f"{marker}={name}-").encode() + rb"(\d{8}-\d{6}-[0-9a-f]{4})$")
    runs: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if match := run_id.match(item):
                runs.setdefault(f"{name}-{match[1].decode()}", []).append(int(entry))
    return runs
