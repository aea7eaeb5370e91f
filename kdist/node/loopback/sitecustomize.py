"""Keeps the c10d stores that torch opens in a simulated node's processes on one address.

A TCPStore server listens on every interface whatever host name it is given, and neither
torchrun nor init_process_group lets a launcher choose otherwise. `kdist run` puts this folder
first on PYTHONPATH of every node (kdist/targets/local/job.py) with KDIST_LISTEN_HOST set; Python
then imports this module at start-up, before any user code. When torch loads the two modules that
start store servers (rank 0's store in init_process_group, and the rendezvous store of a node
that hosts it), their `TCPStore` is replaced by a factory that first binds a socket to
KDIST_LISTEN_HOST and hands it over (`master_listen_fd`). Nothing else is changed; a
sitecustomize of the user's own further down the path still runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import socket
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

PATCHED = ("torch.distributed.rendezvous", "torch.distributed.elastic.rendezvous.c10d_rendezvous_backend")
HERE = os.path.dirname(os.path.abspath(__file__))


def listen_fd(host: str, port: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(socket.SOMAXCONN)
    return sock.detach()  # the store owns it from here on


def store_factory(store_class: Any, host: str) -> Any:
    """`store_class(...)`, but a server (is_master) listens on `host` only."""

    def make(*args: Any, **kwargs: Any) -> Any:
        names = ("host_name", "port", "world_size", "is_master")
        given = {**dict(zip(names, args, strict=False)), **kwargs}
        if given.get("is_master") and given.get("master_listen_fd") is None:
            kwargs["master_listen_fd"] = listen_fd(host, int(given["port"]))
        return store_class(*args, **kwargs)

    return make


class Patcher(importlib.abc.MetaPathFinder):
    """Finds PATCHED modules with the other finders and patches them once they have run."""

    def __init__(self, host: str) -> None:
        self.host = host

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in PATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = PatchingLoader(spec.loader, self.host)
                return spec
        return None


class PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, host: str) -> None:
        self.loader, self.host = loader, host

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        store_class = getattr(module, "TCPStore", None)
        if store_class is not None:
            module.TCPStore = store_factory(store_class, self.host)  # type: ignore[attr-defined]


def chain_user_sitecustomize() -> None:
    """Run the next sitecustomize on the path, which this module shadows."""
    rest = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


if os.environ.get("KDIST_LISTEN_HOST"):
    sys.meta_path.insert(0, Patcher(os.environ["KDIST_LISTEN_HOST"]))
chain_user_sitecustomize()
