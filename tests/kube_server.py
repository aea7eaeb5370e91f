"""A real Kubernetes control plane for tests: etcd and kube-apiserver (envtest-style), optionally
kube-controller-manager and kube-scheduler, from the binaries `make cluster-build` puts in
/var/cache/kdist-cluster/<version>/bin (scripts/cluster.sh).

The apiserver runs as in hack/local-up-cluster.sh: RBAC and Node authorization, the default
admission plugins (PodSecurity among them), service-account token issuing. Users come from a
static token file: `admin` (system:masters), `dev` (no rights but what a test grants) and the
controllers' own identities. The kubeconfig has one context per user.

Every process started here is stopped by stop() (the tests' session fixture in tests/conftest.py,
or `scripts/cluster.sh down` for `up`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KDIST_CLUSTER_CACHE", "/var/cache/kdist-cluster"))
CONTROL_PLANE = ("etcd", "kube-apiserver")
CONTROLLERS = ("kube-controller-manager", "kube-scheduler")
SERVICE_RANGE = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"
# user -> (token, groups); system:kube-* are the names the bootstrap RBAC policy binds
USERS = {
    "admin": ("kdist-admin-token", "system:masters"),
    "dev": ("kdist-dev-token", "kdist:devs"),
    "system:kube-controller-manager": ("kdist-kcm-token", ""),
    "system:kube-scheduler": ("kdist-scheduler-token", ""),
    # the node's components (tests/kube_cluster.py); the Node authorizer needs this exact name
    "system:node:kdist-node": ("kdist-node-token", "system:nodes"),
    "system:kube-proxy": ("kdist-proxy-token", ""),
    "kdist:coredns": ("kdist-coredns-token", ""),
}
START_TIMEOUT = 90.0


def kube_version() -> str:
    """The k8s.io/kubernetes release cluster/go.mod pins (the build cache's key)."""
    for line in (ROOT / "cluster" / "go.mod").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts[:1] == ["k8s.io/kubernetes"] and len(parts) > 1:
            return parts[1]
    raise RuntimeError("cluster/go.mod does not require k8s.io/kubernetes")


def bin_dir() -> Path:
    override = os.environ.get("KDIST_CLUSTER_BIN")
    return Path(override) if override else CACHE / kube_version() / "bin"


def missing(names: tuple[str, ...] = CONTROL_PLANE) -> str:
    """Why the binaries cannot run ("" when they can)."""
    absent = [n for n in names if not os.access(bin_dir() / n, os.X_OK)]
    if not absent:
        return ""
    return (f"{', '.join(absent)} not built in {bin_dir()}: `make cluster-build` builds them "
            "(needs Go and the Go module proxy)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(folder: Path, address: str = "127.0.0.1") -> None:
    """A throwaway CA, the apiserver's serving and kubelet-client certificates, the
    service-account key pair."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=kdist-test-ca", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key",
             "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver", cwd=folder)
    names = ["IP:127.0.0.1", f"IP:{address}", "IP:10.0.0.1", "DNS:localhost", "DNS:kubernetes",
             "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
             "DNS:kubernetes.default.svc.cluster.local"]
    (folder / "san.ext").write_text(f"subjectAltName={','.join(names)}\n", encoding="utf-8")
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "apiserver.crt",
             cwd=folder)
    # the apiserver's identity towards kubelets (their webhook authorizer asks RBAC)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "kubelet-client.key",
             "-out", "kubelet-client.csr", "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client",
             cwd=folder)
    _openssl("x509", "-req", "-in", "kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", "kubelet-client.crt", cwd=folder)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=folder)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=folder)


@dataclass
class KubeServer:
    """The control plane in `folder`: start(), then `kubeconfig`, `url`; stop() ends it."""

    folder: Path
    components: tuple[str, ...] = CONTROL_PLANE
    bin: Path = field(default_factory=bin_dir)
    address: str = "127.0.0.1"  # the apiserver listens and advertises here
    port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_in: float = 0.0  # seconds from start() to a ready apiserver

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.folder / "kubeconfig"

    @property
    def certs(self) -> Path:
        return self.folder / "certs"

    def context(self, user: str) -> str:
        return f"kdist-{user.rsplit(':', 1)[-1]}"

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KubeServer:
        began = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        make_certs(self.certs, self.address)
        self._write_tokens()
        try:
            etcd = self._start_etcd()
            self.port = free_port()
            self.write_kubeconfig()
            self.spawn("kube-apiserver", self._apiserver_args(etcd))
            self._wait_ready("/readyz")
            for name in self.components:
                if name in CONTROLLERS:
                    self.spawn(name, self._controller_args(name))
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Controllers first, etcd last; SIGTERM, then SIGKILL after 10 s."""
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        (self.folder / "pids.json").unlink(missing_ok=True)

    def __enter__(self) -> KubeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- processes ---------------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], exe: Path | None = None) -> None:
        """Start `name` (from the binaries' folder unless `exe`), logging to <name>.log."""
        with open(self.folder / f"{name}.log", "wb") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen([str(exe or self.bin / name), *args], stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
        pids = {n: p.pid for n, p in self.procs.items()}
        (self.folder / "pids.json").write_text(json.dumps(pids), encoding="utf-8")

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        self.spawn("etcd", [
            "--name=kdist", f"--data-dir={self.folder / 'etcd'}",
            f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=kdist=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync", "--log-level=warn"])
        self.wait(lambda: json.loads(urllib.request.urlopen(f"{url}/health", timeout=2).read())
                   .get("health") == "true", "etcd")
        return url

    def _apiserver_args(self, etcd: str) -> list[str]:
        c = self.certs
        return [
            f"--etcd-servers={etcd}", f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={self.port}", f"--cert-dir={c}",
            f"--tls-cert-file={c / 'apiserver.crt'}", f"--tls-private-key-file={c / 'apiserver.key'}",
            f"--client-ca-file={c / 'ca.crt'}", f"--token-auth-file={self.folder / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={ISSUER}", f"--service-account-key-file={c / 'sa.pub'}",
            f"--service-account-signing-key-file={c / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_RANGE}", "--profiling=false",
            f"--kubelet-client-certificate={c / 'kubelet-client.crt'}",
            f"--kubelet-client-key={c / 'kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ]

    def _controller_args(self, name: str) -> list[str]:
        user = f"system:{name}"
        common = [f"--kubeconfig={self.folder / (name + '.kubeconfig')}", "--leader-elect=false",
                  "--bind-address=127.0.0.1", "--secure-port=0"]
        self.write_kubeconfig(self.folder / f"{name}.kubeconfig", user)
        if name == "kube-scheduler":
            return common
        c = self.certs
        return [*common, f"--service-account-private-key-file={c / 'sa.key'}",
                f"--root-ca-file={c / 'ca.crt'}", "--use-service-account-credentials",
                f"--service-cluster-ip-range={SERVICE_RANGE}", "--controllers=*"]

    def wait(self, ready: Any, what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ready() until true; fails early when a started process exits."""
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:g}s")
            time.sleep(0.2)

    def _wait_ready(self, path: str) -> None:
        self.wait(lambda: self.get(path) == "ok", f"kube-apiserver {path}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        log = self.folder / f"{name}.log"
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # ---- files and requests -------------------------------------------------------------------

    def _write_tokens(self) -> None:
        rows = [f'{token},{user},uid-{user},"{groups}"' if groups else f"{token},{user},uid-{user}"
                for user, (token, groups) in USERS.items()]
        (self.folder / "tokens.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    def write_kubeconfig(self, path: Path | None = None, only: str | None = None) -> None:
        users = [only] if only else ["admin", "dev"]
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kdist-test", "cluster": {
                "server": self.url, "certificate-authority": str(self.certs / "ca.crt")}}],
            "users": [{"name": u, "user": {"token": USERS[u][0]}} for u in users],
            "contexts": [{"name": self.context(u), "context": {"cluster": "kdist-test", "user": u}}
                         for u in users],
            "current-context": self.context(users[0]),
        }
        (path or self.kubeconfig).write_text(yaml.safe_dump(config), encoding="utf-8")

    def request(self, method: str, path: str, body: Any = None, user: str = "admin",
                content_type: str = "application/json") -> tuple[int, Any]:
        """(status, decoded body) of one request as `user`; the tests' own admin access."""
        ctx = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {USERS[user][0]}", "Content-Type": content_type,
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", errors="replace")

    def get(self, path: str) -> Any:
        return self.request("GET", path)[1]

    def create(self, path: str, body: dict[str, Any], user: str = "admin") -> dict[str, Any]:
        status, answer = self.request("POST", path, body, user)
        if status >= 300:
            raise RuntimeError(f"POST {path}: HTTP {status}: {answer}")
        return dict(answer)


# ---- `scripts/cluster.sh up | down` ------------------------------------------------------------


def up(folder: Path, binaries: Path) -> int:
    if (folder / "pids.json").exists():
        print(f"cluster: already up in {folder} (scripts/cluster.sh down stops it)", file=sys.stderr)
        return 2
    server = KubeServer(folder, CONTROL_PLANE + CONTROLLERS, binaries)
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"cluster: {e}", file=sys.stderr)
        return 2
    server.procs.clear()  # they keep running: `down` stops them by pid
    print(f"cluster: up in {server.started_in:.1f}s at {server.url}; admin and dev contexts in",
          file=sys.stderr)
    print(server.kubeconfig)
    return 0


def down(folder: Path) -> int:
    pids_file = folder / "pids.json"
    pids = json.loads(pids_file.read_text(encoding="utf-8")) if pids_file.exists() else {}
    for name, pid in reversed(list(pids.items())):
        _stop_pid(int(pid))
        print(f"cluster: stopped {name} ({pid})", file=sys.stderr)
    if folder.exists():
        shutil.rmtree(folder)
    return 0


def _stop_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kube_server.py")
    parser.add_argument("verb", choices=("up", "down"))
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--bin", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.verb == "up":
        return up(args.dir, args.bin or bin_dir())
    return down(args.dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
