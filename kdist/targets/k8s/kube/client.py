"""REST requests to the Kubernetes API over the official `kubernetes` client's connection.

kdist addresses the API by path (kdist.targets.k8s.job) and sends its own bodies (server-side apply
as application/apply-patch+yaml); the client's Configuration and urllib3 pool do the rest:
credentials, TLS, tls-server-name, proxies. What the client does not do, this does:

- refresh credentials on 401 and retry once (an exec plugin's token that expired early or has
  no expirationTimestamp, a rotated tokenFile): the client refreshes only by that timestamp;
- name the server, context, verb, resource and namespace in every error (kdist.targets.k8s.kube).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from kdist import __version__
from kdist.targets.k8s.kube import (
    ApiError,
    ClusterUnreachable,
    Forbidden,
    NotFound,
    Rejected,
    Unauthorized,
)
from kdist.targets.k8s.kube.config import Connection, kubernetes_package

JSON = "application/json"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
DEFAULT_TIMEOUT = 30.0
RBAC_RE = re.compile(r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) resource "(?P<resource>[^"]+)"'
                     r'(?: in API group "(?P<group>[^"]*)")?(?: in the namespace "(?P<ns>[^"]+)")?')
VERBS = {"GET": "get", "PATCH": "patch", "DELETE": "delete", "POST": "create", "PUT": "update"}


@dataclass(frozen=True)
class Target:
    """What a request path addresses: for messages (`patch statefulsets.apps in namespace ml`)."""

    verb: str
    resource: str  # plural[.group][/subresource]
    namespace: str
    name: str

    @classmethod
    def of(cls, method: str, path: str) -> Target:
        parts = [p for p in path.split("?")[0].split("/") if p]
        core = parts[:1] == ["api"]  # /api/v1/... or /apis/<group>/<version>/...
        group = "" if core else (parts[1] if len(parts) > 1 else "")
        rest = parts[2:] if core else parts[3:]
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        plural = rest[0] if rest else ""
        name = rest[1] if len(rest) > 1 else ""
        sub = "/" + "/".join(rest[2:]) if len(rest) > 2 else ""
        verb = VERBS.get(method, method.lower())
        if method == "GET" and not name:
            verb = "list"
        return cls(verb, f"{plural}{'.' + group if group else ''}{sub}", namespace, name)

    def __str__(self) -> str:
        where = f" in namespace {self.namespace!r}" if self.namespace else ""
        return f"{self.verb} {self.resource}{' ' + self.name if self.name else ''}{where}"


@dataclass
class Response:
    status: int
    body: bytes
    warnings: list[str] = field(default_factory=list)

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError:
            return {}


class KubeClient:
    """Requests against one API server as one user (a kdist.targets.k8s.kube.config.Connection)."""

    def __init__(self, conn: Connection, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.conn = conn
        self.timeout = timeout
        self.warnings: list[str] = []  # `Warning:` headers the server sent (PodSecurity, ...)
        self.refreshes = 0  # credential reloads after a 401
        self._pool: Any = None
        self._config: Any = None
        self._lock = threading.Lock()  # `logs -f` sends from one thread per pod

    # ---- verbs -----------------------------------------------------------------------------

    def get(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        return dict(self.request("GET", path, query).json())

    def get_text(self, path: str, query: dict[str, str] | None = None) -> str:
        return self.request("GET", path, query).body.decode("utf-8", errors="replace")

    def list(self, path: str, label_selector: str = "", field_selector: str = ""
             ) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("labelSelector", label_selector),
                                   ("fieldSelector", field_selector)) if v}
        return list(self.request("GET", path, query or None).json().get("items") or [])

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body, separators=(",", ":")).encode()
        return dict(self.request("POST", path, None, data, JSON).json())

    def patch(self, path: str, body: dict[str, Any], content_type: str,
              query: dict[str, str] | None = None) -> dict[str, Any]:
        data = json.dumps(body, separators=(",", ":")).encode()
        return dict(self.request("PATCH", path, query, data, content_type).json())

    def delete(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        return dict(self.request("DELETE", path, query).json())

    def stream(self, path: str, query: dict[str, str] | None = None) -> Iterator[str]:
        """Lines of a streaming response (pod logs with follow=true) until the server ends it."""
        resp = self._send("GET", path, query, None, None, stream=True)
        try:
            if resp.status >= 400:
                self._raise("GET", path, Response(resp.status, resp.read()))
            for raw in resp:
                yield raw.decode("utf-8", errors="replace").rstrip("\r\n")
        except self._transport_errors() as e:
            raise self._unreachable(e) from None
        finally:
            resp.release_conn()

    def request(self, method: str, path: str, query: dict[str, str] | None = None,
                body: bytes | None = None, content_type: str | None = None) -> Response:
        resp = self._send(method, path, query, body, content_type)
        result = Response(resp.status, resp.data, resp.headers.getlist("Warning"))
        self.warnings += [_warning_text(w) for w in result.warnings]
        if result.status >= 400:
            self._raise(method, path, result)
        return result

    # ---- transport ---------------------------------------------------------------------------

    def _send(self, method: str, path: str, query: dict[str, str] | None, body: bytes | None,
              content_type: str | None, stream: bool = False) -> Any:
        """The urllib3 response; after a 401, reload the credentials and send it once more."""
        pool = self._connect()
        resp = self._send_once(pool, method, path, query, body, content_type, stream)
        if resp.status == 401:
            resp.drain_conn()
            resp = self._send_once(self._reconnect(pool), method, path, query, body, content_type,
                                   stream)
        return resp

    def _send_once(self, pool: Any, method: str, path: str, query: dict[str, str] | None,
                   body: bytes | None, content_type: str | None, stream: bool) -> Any:
        url = self._config.host + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": JSON, "User-Agent": f"kdist/{__version__}", **self._auth_headers()}
        if content_type:
            headers["Content-Type"] = content_type
        timeout = None if stream else self.timeout
        try:
            return pool.request(method, url, body=body, headers=headers, timeout=timeout,
                                preload_content=not stream, retries=False)
        except self._transport_errors() as e:
            raise self._unreachable(e) from None

    def _connect(self) -> Any:
        with self._lock:
            if self._pool is None:
                k8s = kubernetes_package()
                self._config = self.conn.configuration()
                self._pool = k8s.client.rest.RESTClientObject(self._config).pool_manager
            return self._pool

    def _reconnect(self, stale: Any) -> Any:
        """A fresh Configuration (runs the exec plugin, rereads tokenFile) unless another thread
        already replaced `stale`."""
        with self._lock:
            if self._pool is stale:
                self._pool = None
                self.refreshes += 1
        return self._connect()

    def _auth_headers(self) -> dict[str, str]:
        """The client's own choice (it refreshes exec tokens that carry an expirationTimestamp)."""
        value = self._config.get_api_key_with_prefix("BearerToken", alias="authorization")
        return {"Authorization": _bearer(value)} if value else {}

    @staticmethod
    def _transport_errors() -> tuple[type[BaseException], ...]:
        import urllib3

        return (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException)

    # ---- errors ------------------------------------------------------------------------------

    def _unreachable(self, e: BaseException) -> ClusterUnreachable:
        c = self.conn
        e = _cause_of(e)
        host = c.server.split("://")[-1].split("/")[0].rsplit(":", 1)[0]
        if isinstance(e, ssl.SSLCertVerificationError):
            why = (f"its TLS certificate is not trusted ({e.verify_message}); check the "
                   f"certificate-authority and tls-server-name of cluster {c.cluster!r}")
        elif isinstance(e, ssl.SSLError):
            why = f"TLS handshake failed ({e.reason or e})"
        elif isinstance(e, socket.gaierror) or "NameResolutionError" in type(e).__name__:
            why = f"cannot resolve host {host!r}"
        elif isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower():
            why = "connection refused"
        elif isinstance(e, TimeoutError) or "timed out" in str(e).lower():
            why = f"no answer within {self.timeout:.0f}s"
        elif "ProxyError" in type(e).__name__:
            why = f"the proxy failed ({e})"
        elif isinstance(e, http.client.HTTPException) or "ProtocolError" in type(e).__name__:
            why = f"the connection broke or did not speak HTTP ({e}); is the URL's scheme right?"
        else:
            why = str(e) or type(e).__name__
        return ClusterUnreachable(
            f"cannot reach the Kubernetes API server {c.server} (context {c.context!r}): {why}. "
            f"Is the cluster running? Check with `kubectl cluster-info --context {c.context}`")

    def _raise(self, method: str, path: str, resp: Response) -> None:
        raise api_error(Target.of(method, path), resp.status, resp.json(), resp.body, self.conn)


def api_error(target: Target, code: int, status: Any, body: bytes, conn: Connection) -> ApiError:
    """An error Status -> the ApiError subclass with a message a user can act on."""
    status = status if isinstance(status, dict) else {}
    message = str(status.get("message") or body.decode("utf-8", errors="replace").strip()[:500]
                  or http.client.responses.get(code, ""))
    context = f"context {conn.context!r}"
    if code == 401:
        return Unauthorized(
            f"the API server {conn.server} rejected the credentials of user {conn.user!r} "
            f"({context}): {message}; the token or certificate is missing, expired or wrong",
            code, status)
    rbac = RBAC_RE.search(message) if code == 403 else None
    if rbac:
        return Forbidden(_rbac_message(rbac, target, conn.context), code, status)
    if code in (400, 403, 422):
        causes = [_cause(c) for c in (status.get("details") or {}).get("causes") or []
                  if isinstance(c, dict) and str(c.get("message", "")) not in message]
        return Rejected("\n".join([f"the API server refused to {target} ({context}): {message}",
                                   *causes]), code, status)
    if code == 404:
        return NotFound(_not_found_message(target, status, message, context), code, status)
    return ApiError(f"{target} failed ({context}): HTTP {code}: {message}", code, status)


def _cause(cause: dict[str, Any]) -> str:
    where = f"{cause['field']}: " if cause.get("field") else ""
    return f"  {where}{cause.get('message') or cause.get('reason') or ''}"


def _rbac_message(m: re.Match[str], target: Target, context: str) -> str:
    """`User "u" cannot patch resource "statefulsets" in API group "apps" in the namespace "ml"`."""
    group = m["group"] or ""
    resource = m["resource"] + (f".{group}" if group else "")
    namespace = m["ns"] or target.namespace
    where = f" in namespace {namespace!r}" if namespace else " (cluster-wide)"
    ns_flag = f" -n {namespace}" if namespace else ""
    return (f"permission denied: user {m['user']!r} cannot {m['verb']} {resource}{where} "
            f"(context {context!r}). Ask a cluster admin for a Role that allows it; check with "
            f"`kubectl auth can-i {m['verb']} {resource}{ns_flag} --context {context}`")


def _not_found_message(target: Target, status: dict[str, Any], message: str, context: str) -> str:
    details = status.get("details") or {}
    if details.get("kind") == "namespaces":
        ns = details.get("name") or target.namespace
        return (f"namespace {ns!r} does not exist ({context}); create it with "
                f"`kubectl create namespace {ns}` or pass --namespace")
    if not details.get("name") and "could not find the requested resource" in message:
        return (f"the API server does not serve {target.resource} ({context}): is the API "
                "group installed and the cluster recent enough?")
    return f"{target} failed ({context}): {message}"


def _warning_text(header: str) -> str:
    m = re.match(r'\s*\d{3}\s+\S+\s+"(?P<text>.*)"\s*$', header)
    return m["text"].replace('\\"', '"') if m else header


def _cause_of(e: BaseException) -> BaseException:
    """urllib3 wraps the socket/TLS error (MaxRetryError.reason, ProxyError.original_error,
    SSLError.args[0])."""
    for _ in range(4):
        inner = getattr(e, "reason", None) or getattr(e, "original_error", None)
        if not isinstance(inner, BaseException) and e.args and isinstance(e.args[0], BaseException):
            inner = e.args[0]
        if not isinstance(inner, BaseException):
            break
        e = inner
    return e


def _bearer(value: str) -> str:
    """The in-cluster loader prefixes `bearer `; send the canonical `Bearer `."""
    scheme, _, rest = value.partition(" ")
    return f"Bearer {rest.strip()}" if scheme.lower() == "bearer" else value
