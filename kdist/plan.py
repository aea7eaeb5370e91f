"""Target-independent decisions, made once: names, labels, the torchrun argv, env, ports.

Every target (local, compose, k8s, helm) launches `torchrun_argv(...)`; only the rendezvous
endpoint host differs between targets (invariant 1 in DESIGN.md).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from kdist.spec import JobSpec

STORE_COMPONENT = "rdzv"
NODE_COMPONENT = "node"
CHECKPOINT_ENV = "KDIST_CHECKPOINT_DIR"

# Standalone c10d store: a TCPStore server in its own process that every node joins as a client,
# so losing any node (node 0 included) does not take the store down.
STORE_CODE = """\
import datetime, signal, sys
from torch.distributed import TCPStore
port, timeout, bind = int(sys.argv[1]), int(sys.argv[2]), (sys.argv[3:] or ["0.0.0.0"])[0]
store = TCPStore(bind, port, is_master=True, wait_for_workers=False,
                 timeout=datetime.timedelta(seconds=timeout))
print(f"kdist: rendezvous store listening on port {port}", flush=True)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: sys.exit(0))
signal.pause()
"""

# Before torchrun starts: wait until the store's DNS name resolves (and, for a standalone store,
# its port accepts connections). Headless-Service records appear late on real clusters.
WAIT_CODE = """\
import socket, sys, time
host, port, timeout, connect = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + timeout
while True:
    try:
        socket.getaddrinfo(host, port)
        if connect == "1":
            socket.create_connection((host, port), timeout=2).close()
        break
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"kdist: rendezvous store {host}:{port} not reachable after {timeout:.0f}s: {e}")
        time.sleep(1)
"""


# A StatefulSet restarts containers that exit, so a Kubernetes node finishes the job itself:
# a failing torchrun is retried by restarting the container up to `max_restarts` times (counted
# in $TMPDIR or /tmp, an emptyDir that outlives container restarts); then, or on success, the node records
# the outcome on its StatefulSet and scales it to zero (FINISH_CODE), and idles until stopped.
FINISH_SCRIPT = """\
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true; wait "$child" || true; exit 143' TERM INT
set +e
wait "$child"
rc=$?
set -e
trap 'exit 0' TERM INT
attempts="${{TMPDIR:-/tmp}}/kdist-attempts"
attempt=$(( $(cat "$attempts" 2>/dev/null || echo 0) + 1 ))
echo "$attempt" > "$attempts"
if [ "$rc" -ne 0 ] && [ "$attempt" -le {retries} ]; then exit "$rc"; fi
{finish} || echo "kdist: could not record the outcome; idling anyway" >&2
while :; do sleep 3600 & wait $!; done
"""

# Records kdist.dev/outcome on the job's StatefulSet (unless a node already did) and scales it
# to zero, with the pod's service account (a Role allows only this StatefulSet and its scale).
FINISH_CODE = """\
import json, os, ssl, sys, urllib.request
rc, name = sys.argv[1], sys.argv[2]
sa = os.environ.get("KDIST_SERVICEACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount") + "/"
ns, token = (open(sa + f).read().strip() for f in ("namespace", "token"))
host = os.environ["KUBERNETES_SERVICE_HOST"]
host = f"[{host}]" if ":" in host else host
port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
url = f"https://{host}:{port}/apis/apps/v1/namespaces/{ns}/statefulsets/{name}"
tls = ssl.create_default_context(cafile=sa + "ca.crt")
def call(path, body=None):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"}
    data = json.dumps(body).encode() if body else None
    req = urllib.request.Request(url + path, data, headers, method="PATCH" if body else "GET")
    with urllib.request.urlopen(req, context=tls, timeout=10) as response:
        return json.load(response)
outcome = "Succeeded" if rc == "0" else "Failed"
if "kdist.dev/outcome" not in (call("")["metadata"].get("annotations") or {}):
    notes = {"kdist.dev/outcome": outcome, "kdist.dev/exit-code": rc,
             "kdist.dev/finished-by": os.environ.get("HOSTNAME", "")}
    call("", {"metadata": {"annotations": notes}})
call("/scale", {"spec": {"replicas": 0}})
print(f"kdist: recorded {outcome} (exit code {rc}); scaled statefulset {name} to 0", flush=True)
"""


@dataclass(frozen=True)
class LaunchPlan:
    spec: JobSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def store_name(self) -> str:
        return f"{self.spec.name}-{STORE_COMPONENT}"

    @property
    def standalone_store(self) -> bool:
        return self.spec.rendezvous.store == "standalone"

    @property
    def finish_role(self) -> str:
        return f"{self.spec.name}-finish"

    @property
    def checkpoint_claim(self) -> str:
        return f"{self.spec.name}-checkpoints"

    def selector_job(self) -> dict[str, str]:
        """Matches every pod of this job (nodes and store)."""
        return {"app.kubernetes.io/name": "kdist", "app.kubernetes.io/instance": self.name}

    def labels(self, component: str) -> dict[str, str]:
        """`app.kubernetes.io/*` labels; the selector subset is name + instance + component."""
        return {
            "app.kubernetes.io/name": "kdist",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "kdist",
        }

    def selector(self, component: str) -> dict[str, str]:
        labels = self.labels(component)
        del labels["app.kubernetes.io/managed-by"]
        return labels

    def rdzv_conf(self, is_host: bool) -> str:
        r = self.spec.rendezvous
        pairs = [
            ("join_timeout", r.join_timeout),
            ("last_call_timeout", r.last_call_timeout),
            ("close_timeout", r.close_timeout),
            ("keep_alive_interval", r.keep_alive_interval),
            ("keep_alive_max_attempt", r.keep_alive_max_attempt),
            ("read_timeout", r.read_timeout),
            ("is_host", "true" if is_host else "false"),
        ]
        return ",".join(f"{k}={v}" for k, v in pairs)

    def torchrun_argv(self, host: str, port: int | None = None, is_host: bool = False) -> list[str]:
        """The one torchrun command line. `host` is the only target-specific part."""
        s = self.spec
        return [
            "torchrun",
            "--nnodes", str(s.nodes),
            "--nproc-per-node", str(s.procs_per_node),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{host}:{port or s.rendezvous.port}",
            "--rdzv-id", s.name,
            "--rdzv-conf", self.rdzv_conf(is_host),
            "--max-restarts", str(s.max_restarts),
            s.entrypoint,
            *s.args,
        ]  # fmt: skip

    def store_argv(self, port: int | None = None, bind: str = "") -> list[str]:
        """The standalone store; `bind` (default: every interface) e.g. 127.0.0.1 locally."""
        timeout = self.spec.rendezvous.read_timeout
        argv = ["python3", "-c", STORE_CODE, str(port or self.spec.rendezvous.port), str(timeout)]
        return [*argv, bind] if bind else argv

    def wait_argv(self, host: str) -> list[str]:
        r = self.spec.rendezvous
        connect = "1" if self.standalone_store else "0"
        return ["python3", "-c", WAIT_CODE, host, str(r.port), str(r.wait_timeout), connect]

    def node_script(self, host: str, is_host: bool = False) -> str:
        """POSIX sh for a Compose node: wait for the store, then exec torchrun (PID 1 under init)."""
        torchrun = shlex.join(self.torchrun_argv(host, is_host=is_host))
        return f"set -e\n{shlex.join(self.wait_argv(host))}\nexec {torchrun}\n"

    def k8s_node_script(self, host: str) -> str:
        """POSIX sh for a Kubernetes node: wait, run torchrun, then finish (see FINISH_SCRIPT).

        One pod template serves every node, so with the store on node 0 a shell test on the
        pod's hostname picks the hosting command line (`is_host=true`) for `<name>-0` only.
        """
        lines = ["set -e", shlex.join(self.wait_argv(host))]
        client = shlex.join(self.torchrun_argv(host))
        if self.standalone_store:
            lines.append(f"{client} &")
        else:
            hosting = shlex.join(self.torchrun_argv(host, is_host=True))
            lines += [f'if [ "$HOSTNAME" = "{self.name}-0" ]; then', f"  {hosting} &",
                      "else", f"  {client} &", "fi"]
        finish = shlex.join(["python3", "-c", FINISH_CODE, "$rc", self.name]).replace(
            "'$rc'", '"$rc"')
        epilogue = FINISH_SCRIPT.format(retries=self.spec.max_restarts, finish=finish)
        return "\n".join(lines) + "\n" + epilogue

    def env(self) -> dict[str, str]:
        """Environment shared by every node on every target (before target-specific entries)."""
        s = self.spec
        env = {
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",  # pytorch#135712: stale peer addresses
            "PYTHONUNBUFFERED": "1",
            "LOGLEVEL": "INFO",  # torchrun's rendezvous and restart lines, read by kdist.torchlog
            CHECKPOINT_ENV: s.checkpoint.path,
        }
        if s.network_interface:
            env["NCCL_SOCKET_IFNAME"] = s.network_interface
            env["GLOO_SOCKET_IFNAME"] = s.network_interface
        env.update(dict(s.env))
        return dict(sorted(env.items()))
