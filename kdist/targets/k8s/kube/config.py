"""kubeconfig -> Connection: which context, server, user and default namespace kdist talks to.

kdist picks the context itself (for messages with a did-you-mean) and leaves everything about
the connection to the official `kubernetes` client (Connection.configuration): credentials
(token, tokenFile, basic auth, client certificates, `exec` plugins), TLS (certificate-authority,
insecure-skip-tls-verify, tls-server-name), proxies (`proxy-url`, HTTPS_PROXY/NO_PROXY) and the
in-cluster service account. That package is imported only here, only when a command connects.

Loading follows kubectl: `KUBECONFIG` is a list of files (os.pathsep-separated, missing files
skipped), the first file that defines a cluster/context/user name wins, the first non-empty
current-context wins. Without KUBECONFIG, ~/.kube/config; without any, the in-cluster config.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdist.targets.k8s.kube import ContextNotFound, KubeConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
IN_CLUSTER = "(in-cluster)"
INSTALL = "pip install 'kdist[k8s]'"


@dataclass(frozen=True)
class Connection:
    """One API server as one user: names for messages, and where the rest is configured."""

    server: str
    context: str
    cluster: str = ""
    user: str = ""
    namespace: str = ""  # the context's namespace; "" when it names none
    kubeconfig: str = ""  # the kubeconfig files, os.pathsep-joined; "" in a cluster
    exec_command: str = ""  # the user's exec credential plugin, if any
    install_hint: str = ""  # its installHint
    sa_dir: str = str(SERVICE_ACCOUNT_DIR)  # in a cluster: token, ca.crt
    env: tuple[tuple[str, str], ...] = ()  # in a cluster: KUBERNETES_SERVICE_HOST/PORT

    def configuration(self) -> Any:
        """A fresh kubernetes.client.Configuration: loading runs exec plugins, reads token files."""
        k8s = kubernetes_package()
        cfg = k8s.client.Configuration()
        with _logged_errors() as errors:
            try:
                if self.kubeconfig:
                    k8s.config.load_kube_config(config_file=self.kubeconfig, context=self.context,
                                                client_configuration=cfg, persist_config=False)
                else:
                    k8s.config.incluster_config.InClusterConfigLoader(
                        token_filename=f"{self.sa_dir}/token", cert_filename=f"{self.sa_dir}/ca.crt",
                        environ=dict(self.env)).load_and_set(cfg)
            except (k8s.config.ConfigException, OSError, ValueError) as e:
                raise KubeConfigError(f"context {self.context!r}: {e}") from None
        if self.exec_command and errors and not cfg.api_key and not cfg.cert_file:
            raise KubeConfigError(self._exec_failed(errors[-1]))
        return cfg

    def _exec_failed(self, error: str) -> str:
        what = f"exec credential plugin {self.exec_command!r} of user {self.user!r}"
        if "No such file or directory" in error:
            hint = f": {self.install_hint.strip()}" if self.install_hint else ""
            return f"{what} is not installed (not on PATH){hint}"
        return f"{what} failed: {error}"


def kubernetes_package() -> Any:
    """The official client, or a message that says how to install it."""
    try:
        import kubernetes
        import kubernetes.config.incluster_config
    except ImportError:
        raise KubeConfigError("the Kubernetes commands need the `kubernetes` Python package: "
                              f"{INSTALL}") from None
    return kubernetes


@contextmanager
def _logged_errors() -> Iterator[list[str]]:
    """The client logs (and swallows) exec plugin failures on the root logger: collect them."""
    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())

    handler, root = Collect(logging.ERROR), logging.getLogger()
    root.addHandler(handler)
    try:
        yield errors
    finally:
        root.removeHandler(handler)


@dataclass
class KubeConfig:
    """The merged kubeconfig: name -> (entry, folder of the file that defined it)."""

    files: list[Path]
    clusters: dict[str, tuple[dict[str, Any], Path]] = field(default_factory=dict)
    contexts: dict[str, tuple[dict[str, Any], Path]] = field(default_factory=dict)
    users: dict[str, tuple[dict[str, Any], Path]] = field(default_factory=dict)
    current_context: str = ""

    @property
    def where(self) -> str:
        return ", ".join(str(f) for f in self.files)


def kubeconfig_paths(env: Mapping[str, str]) -> list[Path]:
    value = env.get("KUBECONFIG", "")
    if value:
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    home = env.get("HOME") or str(Path.home())
    return [Path(home) / ".kube" / "config"]


def _read_file(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise KubeConfigError(f"kubeconfig {path} is not valid YAML: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise KubeConfigError(f"kubeconfig {path} is not a mapping (kind: Config)")
    return doc


def _merge(config: KubeConfig, doc: dict[str, Any], path: Path) -> None:
    for key, inner, table in (("clusters", "cluster", config.clusters),
                              ("contexts", "context", config.contexts),
                              ("users", "user", config.users)):
        items = doc.get(key) or []
        if not isinstance(items, list):
            raise KubeConfigError(f"kubeconfig {path}: `{key}` must be a list")
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise KubeConfigError(f"kubeconfig {path}: every entry of `{key}` needs a name")
            body = item.get(inner) or {}
            if not isinstance(body, dict):
                raise KubeConfigError(f"kubeconfig {path}: {key} {item['name']!r} is not a mapping")
            table.setdefault(item["name"], (body, path.parent))
    if not config.current_context and isinstance(doc.get("current-context"), str):
        config.current_context = doc["current-context"]


def load_kubeconfig(env: Mapping[str, str] | None = None) -> KubeConfig | None:
    """The merged kubeconfig, or None when none of its files exists."""
    env = os.environ if env is None else env
    existing = [p for p in kubeconfig_paths(env) if p.is_file()]
    if not existing:
        return None
    config = KubeConfig(files=existing)
    for path in existing:
        _merge(config, _read_file(path), path)
    return config


def in_cluster(env: Mapping[str, str], sa_dir: Path = SERVICE_ACCOUNT_DIR) -> Connection | None:
    """The pod's own service-account connection, or None outside a cluster."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port or not (sa_dir / "token").is_file():
        return None
    ns_file = sa_dir / "namespace"
    namespace = ns_file.read_text(encoding="utf-8").strip() if ns_file.is_file() else ""
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Connection(server=server, context=IN_CLUSTER, cluster=IN_CLUSTER, user="serviceaccount",
                      namespace=namespace, sa_dir=str(sa_dir),
                      env=(("KUBERNETES_SERVICE_HOST", host), ("KUBERNETES_SERVICE_PORT", port)))


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _pick_context(config: KubeConfig, context: str | None) -> tuple[str, dict[str, Any]]:
    names = sorted(config.contexts)
    listing = ", ".join(names) if names else "none"
    name = context or config.current_context
    if not name:
        raise ContextNotFound(f"no current-context in {config.where}; pass --context "
                              f"(contexts: {listing})")
    if name not in config.contexts:
        source = "--context" if context else "current-context"
        raise ContextNotFound(f"context {name!r} (from {source}) is not in {config.where} "
                              f"(contexts: {listing}){did_you_mean(name, names)}")
    return name, config.contexts[name][0]


def _connection(config: KubeConfig, context: str | None) -> Connection:
    name, ctx = _pick_context(config, context)
    cluster_name, user_name = str(ctx.get("cluster") or ""), str(ctx.get("user") or "")
    if cluster_name not in config.clusters:
        raise KubeConfigError(f"context {name!r} names cluster {cluster_name!r}, which is not in "
                              f"{config.where}")
    server = str(config.clusters[cluster_name][0].get("server") or "")
    if not server:
        raise KubeConfigError(f"cluster {cluster_name!r} (context {name!r}) has no server")
    user = config.users.get(user_name, ({}, Path()))[0]  # no user entry: anonymous, as in kubectl
    plugin: dict[str, Any] = user["exec"] if isinstance(user.get("exec"), dict) else {}
    return Connection(server=server.rstrip("/"), context=name, cluster=cluster_name, user=user_name,
                      namespace=str(ctx.get("namespace") or ""),
                      kubeconfig=os.pathsep.join(str(f) for f in config.files),
                      exec_command=str(plugin.get("command") or ""),
                      install_hint=str(plugin.get("installHint") or ""))


def connect(context: str | None = None, env: Mapping[str, str] | None = None,
            sa_dir: Path = SERVICE_ACCOUNT_DIR) -> Connection:
    """The connection for `context` (default: current-context; in-cluster without kubeconfig)."""
    env = os.environ if env is None else env
    config = load_kubeconfig(env)
    if config is not None:
        return _connection(config, context)
    tried = " or ".join(str(p) for p in kubeconfig_paths(env))
    if context:
        raise ContextNotFound(f"context {context!r} not found: no kubeconfig ({tried} does not "
                              "exist); set KUBECONFIG")
    pod = in_cluster(env, sa_dir)
    if pod is None:
        raise KubeConfigError(f"no kubeconfig ({tried} does not exist) and not running inside a "
                              "cluster; set KUBECONFIG or create a cluster, e.g. `make kind-up` "
                              "(then --context kind-kdist)")
    return pod
