"""kubeconfig -> Connection: which server, which credentials, which default namespace.

Follows kubectl's loading rules: `KUBECONFIG` is a list of files (os.pathsep-separated, missing
files skipped); the first file that defines a cluster/context/user name wins, and the first
non-empty current-context wins. Without KUBECONFIG, ~/.kube/config. Without any kubeconfig, the
in-cluster config (service account token and CA under /var/run/secrets/kubernetes.io/
serviceaccount, server from KUBERNETES_SERVICE_HOST/PORT). Relative paths in a kubeconfig are
relative to the file that holds them.

Credentials: token, tokenFile, username/password, client-certificate(-data)/client-key(-data) and
`exec` plugins (client.authentication.k8s.io ExecCredential: status.token or client cert/key).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdist.kube import ContextNotFound, KubeConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
IN_CLUSTER = "(in-cluster)"
EXEC_TIMEOUT = 120.0


@dataclass(frozen=True)
class ExecPlugin:
    """A `users[].user.exec` credential plugin (aws eks get-token, gke-gcloud-auth-plugin, ...)."""

    user: str
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = "client.authentication.k8s.io/v1"
    install_hint: str = ""
    base_dir: str = "."


@dataclass(frozen=True)
class Credential:
    """What an exec plugin returned (PEM text for certificates)."""

    token: str = ""
    cert_pem: str = ""
    key_pem: str = ""


@dataclass(frozen=True)
class Connection:
    """Everything needed to talk to one API server as one user."""

    server: str
    context: str
    cluster: str = ""
    user: str = ""
    namespace: str = ""  # the context's namespace; "" when it names none
    ca_file: str = ""
    ca_data: bytes = b""
    insecure: bool = False
    token: str = ""
    token_file: str = ""  # re-read on every request (projected tokens rotate)
    username: str = ""
    password: str = ""
    cert_file: str = ""
    key_file: str = ""
    cert_data: bytes = b""
    key_data: bytes = b""
    exec_plugin: ExecPlugin | None = None


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
    token = sa_dir / "token"
    if not host or not port or not token.is_file():
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    ns_file = sa_dir / "namespace"
    namespace = ns_file.read_text(encoding="utf-8").strip() if ns_file.is_file() else ""
    ca = sa_dir / "ca.crt"
    return Connection(server=f"https://{host}:{port}", context=IN_CLUSTER, cluster=IN_CLUSTER,
                      user="serviceaccount", namespace=namespace, token_file=str(token),
                      ca_file=str(ca) if ca.is_file() else "")


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


def _path(value: Any, base: Path) -> str:
    if not value:
        return ""
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else base / path)


def _b64(value: Any, what: str) -> bytes:
    if not value:
        return b""
    try:
        return base64.b64decode(str(value), validate=False)
    except (binascii.Error, ValueError):
        raise KubeConfigError(f"{what} is not valid base64") from None


def _exec_plugin(user: str, spec: Any, base: Path) -> ExecPlugin:
    if not isinstance(spec, dict) or not spec.get("command"):
        raise KubeConfigError(f"user {user!r}: `exec` needs a command")
    env = tuple((str(e.get("name", "")), str(e.get("value", "")))
                for e in spec.get("env") or [] if isinstance(e, dict))
    return ExecPlugin(user=user, command=str(spec["command"]),
                      args=tuple(str(a) for a in spec.get("args") or []), env=env,
                      api_version=str(spec.get("apiVersion") or ExecPlugin.api_version),
                      install_hint=str(spec.get("installHint") or ""), base_dir=str(base))


def _user_fields(name: str, user: dict[str, Any], base: Path) -> dict[str, Any]:
    if user.get("auth-provider"):
        provider = (user["auth-provider"] or {}).get("name", "?")
        raise KubeConfigError(f"user {name!r} uses the auth-provider {provider!r}, which kdist does "
                              "not support; use an exec credential plugin instead")
    fields: dict[str, Any] = {
        "user": name,
        "token": str(user.get("token") or ""),
        "token_file": _path(user.get("tokenFile"), base),
        "username": str(user.get("username") or ""),
        "password": str(user.get("password") or ""),
        "cert_file": _path(user.get("client-certificate"), base),
        "key_file": _path(user.get("client-key"), base),
        "cert_data": _b64(user.get("client-certificate-data"), f"user {name!r} client-certificate-data"),
        "key_data": _b64(user.get("client-key-data"), f"user {name!r} client-key-data"),
    }
    if user.get("exec"):
        fields["exec_plugin"] = _exec_plugin(name, user["exec"], base)
    return fields


def _connection(config: KubeConfig, context: str | None) -> Connection:
    name, ctx = _pick_context(config, context)
    cluster_name, user_name = str(ctx.get("cluster") or ""), str(ctx.get("user") or "")
    if cluster_name not in config.clusters:
        raise KubeConfigError(f"context {name!r} names cluster {cluster_name!r}, which is not in "
                              f"{config.where}")
    cluster, cbase = config.clusters[cluster_name]
    server = str(cluster.get("server") or "")
    if not server:
        raise KubeConfigError(f"cluster {cluster_name!r} (context {name!r}) has no server")
    user_entry = config.users.get(user_name)  # a missing user means anonymous, as in kubectl
    user = _user_fields(user_name, *user_entry) if user_entry else {"user": user_name}
    return Connection(
        server=server.rstrip("/"), context=name, cluster=cluster_name,
        namespace=str(ctx.get("namespace") or ""),
        ca_file=_path(cluster.get("certificate-authority"), cbase),
        ca_data=_b64(cluster.get("certificate-authority-data"),
                     f"cluster {cluster_name!r} certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")), **user)


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


def run_exec_plugin(plugin: ExecPlugin, env: Mapping[str, str] | None = None) -> Credential:
    """Run the plugin and read its ExecCredential (status.token, or client cert and key)."""
    command = plugin.command
    if os.sep in command and not Path(command).is_absolute():
        command = str(Path(plugin.base_dir) / command)
    info = {"apiVersion": plugin.api_version, "kind": "ExecCredential",
            "spec": {"interactive": False}}
    full_env = {**(os.environ if env is None else env), **dict(plugin.env),
                "KUBERNETES_EXEC_INFO": json.dumps(info)}
    what = f"exec credential plugin {plugin.command!r} of user {plugin.user!r}"
    try:
        done = subprocess.run([command, *plugin.args], env=full_env, capture_output=True, text=True,
                              timeout=EXEC_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        hint = f": {plugin.install_hint.strip()}" if plugin.install_hint else ""
        raise KubeConfigError(f"{what} is not installed (not on PATH){hint}") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KubeConfigError(f"{what} could not run: {e}") from None
    if done.returncode != 0:
        tail = " / ".join(done.stderr.strip().splitlines()[-3:]) or "no output"
        raise KubeConfigError(f"{what} exited with code {done.returncode}: {tail}")
    return _parse_credential(done.stdout, what)


def _parse_credential(stdout: str, what: str) -> Credential:
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        raise KubeConfigError(f"{what} did not print an ExecCredential JSON object") from None
    status = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(status, dict):
        raise KubeConfigError(f"{what} printed no ExecCredential status")
    cred = Credential(token=str(status.get("token") or ""),
                      cert_pem=str(status.get("clientCertificateData") or ""),
                      key_pem=str(status.get("clientKeyData") or ""))
    if not cred.token and not (cred.cert_pem and cred.key_pem):
        raise KubeConfigError(f"{what} returned neither status.token nor a client certificate")
    return cred
