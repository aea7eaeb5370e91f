"""A single-node Kubernetes cluster with real pods, as host processes in the manner of Kubernetes'
hack/local-up-cluster.sh: the control plane of tests/kube_server.py (with controller-manager and
scheduler), a containerd of its own (Docker's is untouched), kubelet, kube-proxy in iptables mode
and CoreDNS answering cluster names only (no upstream). Binaries come from `make cluster-build`
(scripts/cluster.sh); the pause and probe images (cluster/images) are built with Go and Docker and
imported into that containerd.

Network: HOST_IP is a /32 on lo. The apiserver, kubelet and CoreDNS listen there; pods reach it
through the cni0 bridge's gateway, so the `kubernetes` Service and cluster DNS work from pods,
and nothing listens on the machine's outside address.

down() undoes everything start() did: processes, pod sandboxes, mounts under the folder,
iptables chains (KUBE-*, CNI-*), cni0, the lo address, kubepods cgroups, sysctls, the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kube_server import CONTROL_PLANE, CONTROLLERS, ROOT, KubeServer, bin_dir
from kube_server import _stop_pid as stop_pid

NODE = "kdist-node"
HOST_IP = "10.89.0.1"
POD_CIDR = "10.88.0.0/16"
BRIDGE = "cni0"
DOMAIN = "cluster.local"
CNI_BIN = Path("/usr/lib/cni")
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
PROBE_IMAGE = "kdist.local/probe:0.1.0"
IMAGES = {"pause": PAUSE_IMAGE, "probe": PROBE_IMAGE}  # cluster/images/<dir> -> tag
NODE_BINARIES = ("kubelet", "kube-proxy", "coredns", "crictl")
HOST_TOOLS = ("go", "docker", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip",
              "iptables", "iptables-save", "mount", "umount")
NODE_PROCS = ("coredns", "kube-proxy", "kubelet")  # stopped before the sandboxes go
# kubelet and this module set these; down() puts back what was there before
SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "vm/overcommit_memory",
           "kernel/panic", "kernel/panic_on_oops")
PV_COUNT = 16  # each claim binds one for good (Retain): enough for every e2e or bench job of a session
NODE_TIMEOUT = 120.0


def missing() -> str:
    """Why this host cannot run the cluster ("" when it can)."""
    if os.geteuid() != 0:
        return "the cluster's node needs root (containerd, kubelet, iptables)"
    tools = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if tools:
        return f"not on PATH: {', '.join(tools)} (Debian: containerd runc iptables; Go; Docker)"
    if not (CNI_BIN / "bridge").exists():
        return f"no CNI plugins in {CNI_BIN}: apt-get install containernetworking-plugins"
    absent = [n for n in CONTROL_PLANE + CONTROLLERS + NODE_BINARIES
              if not os.access(bin_dir() / n, os.X_OK)]
    if absent:
        return f"{', '.join(absent)} not built in {bin_dir()}: `make cluster-build` builds them"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "the Docker daemon does not answer `docker info` (it builds the pause image)"
    return ""


def run(*args: str, stdin: Any = None, check: bool = True) -> str:
    """Run a command; a failure is a RuntimeError carrying its output."""
    done = subprocess.run(list(args), stdin=stdin, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


@dataclass
class KubeCluster:
    """The cluster in `folder`: start(), then `server` (the API), import_image(); stop()."""

    folder: Path
    bin: Path = field(default_factory=bin_dir)
    server: KubeServer = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per start phase

    def __post_init__(self) -> None:
        self.server = KubeServer(self.folder, CONTROL_PLANE + CONTROLLERS, self.bin, HOST_IP)

    @property
    def sock(self) -> Path:
        return self.folder / "containerd" / "containerd.sock"

    @property
    def kubeconfig(self) -> Path:
        return self.server.kubeconfig

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KubeCluster:
        if (self.folder / "pids.json").exists():
            raise RuntimeError(f"already up in {self.folder} (scripts/cluster.sh down stops it)")
        began = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._phase("host network", self._host_network)
            self._phase("control plane", self.server.start)
            self._phase("containerd", self._start_containerd)
            self._phase("images", self._load_images)
            self._phase("cluster objects", self._create_objects)
            self._phase("kubelet", self._start_kubelet)
            self._phase("kube-proxy", self._start_proxy)
            self._phase("coredns", self._start_dns)
            self._phase("default ServiceAccount", self._wait_default_account)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - began
        return self

    def stop(self) -> None:
        down(self.folder, self.bin, self.server.procs)

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _phase(self, name: str, step: Any) -> None:
        began = time.monotonic()
        step()
        self.timings[name] = time.monotonic() - began

    # ---- host --------------------------------------------------------------------------------

    def _host_network(self) -> None:
        saved = {key: Path("/proc/sys", key).read_text().strip() for key in SYSCTLS}
        (self.folder / "sysctl.json").write_text(json.dumps(saved), encoding="utf-8")
        for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
            Path("/proc/sys", key).write_text("1")
        if f"{HOST_IP}/32" not in run("ip", "-4", "addr", "show", "dev", "lo"):
            run("ip", "addr", "add", f"{HOST_IP}/32", "dev", "lo")
        (self.folder / "resolv.conf").write_text(f"nameserver {HOST_IP}\n", encoding="utf-8")

    # ---- containerd and images ---------------------------------------------------------------

    def _start_containerd(self) -> None:
        base = self.folder / "containerd"
        net_d = self.folder / "cni" / "net.d"
        net_d.mkdir(parents=True, exist_ok=True)
        (net_d / "10-kdist.conflist").write_text(json.dumps(self._cni_config(), indent=1))
        base.mkdir(parents=True, exist_ok=True)
        config = base / "config.toml"
        config.write_text(containerd_config(base, net_d), encoding="utf-8")
        self.server.spawn("containerd", [f"--config={config}"], Path(shutil.which("containerd") or ""))
        self.server.wait(lambda: self.ctr("version", check=False) != "", "containerd")

    def _cni_config(self) -> dict[str, Any]:
        ipam = {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.folder / "cni" / "ipam")}
        return {"cniVersion": "1.0.0", "name": "kdist", "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
             "hairpinMode": True, "ipam": ipam},
            # accepts the pods' traffic in FORWARD, whose policy may be DROP (Docker sets it)
            {"type": "firewall", "backend": "iptables"},
            {"type": "portmap", "capabilities": {"portMappings": True},
             "externalSetMarkChain": "KUBE-MARK-MASQ"},
        ]}

    def ctr(self, *args: str, stdin: Any = None, check: bool = True) -> str:
        return run("ctr", f"--address={self.sock}", "-n", "k8s.io", *args, stdin=stdin, check=check)

    def _load_images(self) -> None:
        work = self.folder / "images"
        for name, tag in IMAGES.items():
            src = ROOT / "cluster" / "images" / name
            out = work / name
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "Dockerfile", out / "Dockerfile")
            env = {**os.environ, "CGO_ENABLED": "0"}
            subprocess.run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(out / name),
                            f"./images/{name}"], cwd=ROOT / "cluster", env=env, check=True,
                           capture_output=True)
            run("docker", "build", "-q", "-t", tag, str(out))
            self.import_image(tag)

    def import_image(self, tag: str) -> None:
        """docker save TAG | ctr import: the image is then on the node, no registry involved."""
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        try:
            self.ctr("images", "import", "-", stdin=save.stdout)
        finally:
            if save.stdout:
                save.stdout.close()
            if save.wait() != 0:
                raise RuntimeError(f"docker save {tag} exited {save.returncode}")

    # ---- API objects -------------------------------------------------------------------------

    def _create_objects(self) -> None:
        volumes = self.folder / "volumes"
        for i in range(PV_COUNT):  # writable by the non-root users of restricted pods
            (volumes / f"pv-{i}").mkdir(parents=True, exist_ok=True)
            (volumes / f"pv-{i}").chmod(0o1777)
        for path, body in cluster_objects(volumes):
            self.server.create(path, body)

    # ---- kubelet, kube-proxy, CoreDNS ---------------------------------------------------------

    def _kubeconfig_for(self, user: str) -> Path:
        path = self.folder / f"{user.rsplit(':', 1)[-1]}.kubeconfig"
        self.server.write_kubeconfig(path, user)
        return path

    def _start_kubelet(self) -> None:
        root = self.folder / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        config = self.folder / "kubelet.yaml"
        config.write_text(yaml.safe_dump(kubelet_config(self.folder, self.sock)), encoding="utf-8")
        self.server.spawn("kubelet", [
            f"--config={config}", f"--kubeconfig={self._kubeconfig_for('system:node:' + NODE)}",
            f"--root-dir={root}", f"--hostname-override={NODE}", f"--node-ip={HOST_IP}"])
        self.server.wait(self._node_ready, f"node {NODE} Ready", NODE_TIMEOUT)

    def _node_ready(self) -> bool:
        status, node = self.server.request("GET", f"/api/v1/nodes/{NODE}")
        if status != 200:
            return False
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in node.get("status", {}).get("conditions", []))

    def _wait_default_account(self) -> None:
        """Pods are refused until the controller-manager made the namespace's account."""
        self.server.wait(lambda: self.server.request(
            "GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            "ServiceAccount default/default")

    def _start_proxy(self) -> None:
        config = self.folder / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump(proxy_config(self._kubeconfig_for("system:kube-proxy"))),
                          encoding="utf-8")
        self.server.spawn("kube-proxy", [f"--config={config}"])
        self.server.wait(lambda: _http_ok("http://127.0.0.1:10256/healthz"), "kube-proxy healthz")

    def _start_dns(self) -> None:
        corefile = self.folder / "Corefile"
        kubeconfig = self._kubeconfig_for("kdist:coredns")
        corefile.write_text(
            f"{DOMAIN}:53 {{\n  bind {HOST_IP}\n  errors\n  ready 127.0.0.1:8181\n"
            f"  kubernetes {DOMAIN} {{\n    kubeconfig {kubeconfig} kdist-coredns\n"
            "    pods disabled\n  }\n}\n", encoding="utf-8")
        self.server.spawn("coredns", [f"-conf={corefile}"])
        self.server.wait(lambda: _http_ok("http://127.0.0.1:8181/ready"), "coredns ready")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return int(resp.status) == 200


# ---- configuration ---------------------------------------------------------------------------


def containerd_config(base: Path, net_d: Path) -> str:
    """containerd's config, version-2 schema; root, state and socket under `base`."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f'''version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
[grpc]
  address = "{base / 'containerd.sock'}"
[ttrpc]
  address = "{base / 'containerd.sock.ttrpc'}"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  tolerate_missing_hugepages_controller = true
  # kubelet asks -998 for sandboxes; lowering oom_score_adj needs CAP_SYS_RESOURCE, which a
  # host may lack (then runc fails: "failed to update /proc/self/oom_score_adj")
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
[{cri}.containerd]
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{base / 'runc'}"
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{net_d}"
'''


def kubelet_config(folder: Path, sock: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": HOST_IP, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(folder / "certs" / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{sock}",
        "clusterDNS": [HOST_IP], "clusterDomain": DOMAIN,
        "resolvConf": str(folder / "resolv.conf"), "podLogsDir": str(folder / "pod-logs"),
        # a test machine's disk is shared: never evict, never collect the preloaded images
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                         "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "rotateCertificates": False,
    }


def proxy_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)}, "hostnameOverride": NODE,
        "mode": "iptables", "clusterCIDR": POD_CIDR, "nodePortAddresses": [f"{HOST_IP}/32"],
        "bindAddress": HOST_IP, "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "iptables": {"localhostNodePorts": False},
        # no sysctl writes for conntrack
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
    }


def cluster_objects(volumes: Path) -> list[tuple[str, dict[str, Any]]]:
    """CoreDNS's read access, the default StorageClass and its static ReadWriteMany volumes."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "kdist:coredns"}, "rules": [
                {"apiGroups": [""], "resources": ["services", "namespaces"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "verbs": ["list", "watch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "kdist:coredns"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "kdist:coredns"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                             "name": "kdist:coredns"}]}
    storage = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "kdist-local", "annotations": {
                   "storageclass.kubernetes.io/is-default-class": "true"}},
               "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"}
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    objects: list[tuple[str, dict[str, Any]]] = [
        (f"{rbac}/clusterroles", role), (f"{rbac}/clusterrolebindings", binding),
        ("/apis/storage.k8s.io/v1/storageclasses", storage)]
    for i in range(PV_COUNT):
        objects.append(("/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"kdist-pv-{i}"},
            "spec": {"capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteMany"],
                     "storageClassName": "kdist-local",
                     "persistentVolumeReclaimPolicy": "Retain",
                     "hostPath": {"path": str(volumes / f"pv-{i}"), "type": "DirectoryOrCreate"}}}))
    return objects


# ---- teardown ----------------------------------------------------------------------------------


def down(folder: Path, binaries: Path, procs: dict[str, subprocess.Popen[bytes]] | None = None) -> None:
    """Undo start(): safe to call again, and on a half-started cluster."""
    procs = procs if procs is not None else {}
    pids = _read_pids(folder)
    _stop(NODE_PROCS, procs, pids)
    sock = folder / "containerd" / "containerd.sock"
    if sock.exists() and "containerd" in procs.keys() | pids.keys():
        run(str(binaries / "crictl"), f"--runtime-endpoint=unix://{sock}", "rmp", "-a", "-f",
            check=False)
    _stop(("containerd",), procs, pids)
    _kill_shims(sock)
    _stop(tuple(reversed(CONTROL_PLANE + CONTROLLERS)), procs, pids)
    (folder / "pids.json").unlink(missing_ok=True)
    _unmount_under(folder)
    if (binaries / "kube-proxy").exists():
        run(str(binaries / "kube-proxy"), "--cleanup", check=False)
    _drop_chains()
    run("ip", "link", "delete", BRIDGE, check=False)
    run("ip", "addr", "del", f"{HOST_IP}/32", "dev", "lo", check=False)
    _remove_cgroups()
    _remove_log_links(folder)
    _restore_sysctls(folder)
    if folder.exists():
        shutil.rmtree(folder)


def _read_pids(folder: Path) -> dict[str, int]:
    path = folder / "pids.json"
    return {k: int(v) for k, v in json.loads(path.read_text()).items()} if path.exists() else {}


def _stop(names: tuple[str, ...], procs: dict[str, subprocess.Popen[bytes]],
          pids: dict[str, int]) -> None:
    for name in names:
        proc = procs.pop(name, None)
        pid = pids.pop(name, None)
        began = time.monotonic()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elif pid is not None:
            stop_pid(pid)
        if proc is not None or pid is not None:
            print(f"cluster: stopped {name} in {time.monotonic() - began:.1f}s", file=sys.stderr)


def _kill_shims(sock: Path) -> None:
    """Shims outlive containerd: end those of this containerd (their command line names it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"containerd-shim-runc-v2") and str(sock).encode() in argv:
            stop_pid(int(entry.name))


def _unmount_under(folder: Path) -> None:
    """Deepest first: kubelet's volume tmpfs, containerd's rootfs and shm mounts."""
    prefix = str(folder.resolve()) + "/"
    mounts = [line.split()[1].encode().decode("unicode_escape")
              for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            run("umount", "-l", point, check=False)


def _drop_chains() -> None:
    """Every KUBE-* and CNI-* chain, and the rules in other chains that jump to them."""
    ours = re.compile(r"^(KUBE|CNI)-")
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            rules = run(tool, "-t", table, "-S", check=False).splitlines()
            chains = [r.split()[1] for r in rules if r.startswith("-N ") and ours.match(r.split()[1])]
            for rule in rules:
                words = shlex.split(rule)
                if words[:1] == ["-A"] and not ours.match(words[1]) and any(
                        ours.match(w) for w in words[2:]):
                    run(tool, "-t", table, "-D", *words[1:], check=False)
            for chain in chains:
                run(tool, "-t", table, "-F", chain, check=False)
            for chain in chains:
                run(tool, "-t", table, "-X", chain, check=False)


def _remove_cgroups() -> None:
    """kubelet's kubepods tree in each cgroup v1 hierarchy, leaves first."""
    for hierarchy in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for dirpath, _, _ in sorted(os.walk(hierarchy), key=lambda w: len(w[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def _remove_log_links(folder: Path) -> None:
    """kubelet links each container's log into /var/log/containers; libcni caches results in
    /var/lib/cni. Each folder goes once empty."""
    logs = Path("/var/log/containers")
    if logs.is_dir():
        for link in logs.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(folder)):
                link.unlink()
    for empty in (logs, Path("/var/lib/cni/results"), Path("/var/lib/cni")):
        with contextlib.suppress(OSError):
            empty.rmdir()


def _restore_sysctls(folder: Path) -> None:
    saved = folder / "sysctl.json"
    if saved.exists():
        for key, value in json.loads(saved.read_text()).items():
            Path("/proc/sys", key).write_text(value)


# ---- `scripts/cluster.sh up | down` ------------------------------------------------------------


def up(folder: Path, binaries: Path) -> int:
    reason = missing()
    if reason:
        print(f"cluster: {reason}", file=sys.stderr)
        return 2
    cluster = KubeCluster(folder, binaries)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"cluster: {e}", file=sys.stderr)
        return 2
    cluster.server.procs.clear()  # they keep running: `down` stops them by pid
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in cluster.timings.items())
    print(f"cluster: up at {cluster.server.url}, node {NODE} Ready ({phases}); kubeconfig:",
          file=sys.stderr)
    print(cluster.kubeconfig)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kube_cluster.py")
    parser.add_argument("verb", choices=("up", "down"))
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--bin", type=Path, default=None)
    args = parser.parse_args(argv)
    binaries = args.bin or bin_dir()
    if args.verb == "up":
        return up(args.dir, binaries)
    down(args.dir, binaries)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
