"""A small REST client for the Kubernetes API on http.client: GET, LIST, PATCH, DELETE, log streams.

One HTTP(S) connection per request (kdist makes a handful). Failures become the errors in
kdist.kube, with messages that say which server and context, and for API errors which verb,
resource and namespace, and the Status message the API server returned.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from kdist import __version__
from kdist.kube import (
    ApiError,
    ClusterUnreachable,
    Forbidden,
    KubeConfigError,
    NotFound,
    Rejected,
    Unauthorized,
)
from kdist.kube.config import Connection, Credential, run_exec_plugin

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
    """Requests against one API server as one user (a kdist.kube.config.Connection)."""

    def __init__(self, conn: Connection, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.conn = conn
        self.timeout = timeout
        self.warnings: list[str] = []  # `Warning:` headers the server sent (PodSecurity, ...)
        self._ssl: ssl.SSLContext | None = None
        self._exec: Credential | None = None
        url = urlsplit(conn.server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise KubeConfigError(f"cluster {conn.cluster!r} (context {conn.context!r}): server "
                                  f"{conn.server!r} is not an http(s) URL")
        self._url = url

    # ---- verbs -----------------------------------------------------------------------------

    def get(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        return dict(self.request("GET", path, query).json())

    def get_text(self, path: str, query: dict[str, str] | None = None) -> str:
        return self.request("GET", path, query).body.decode("utf-8", errors="replace")

    def list(self, path: str, label_selector: str = "") -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        return list(self.request("GET", path, query).json().get("items") or [])

    def patch(self, path: str, body: dict[str, Any], content_type: str,
              query: dict[str, str] | None = None) -> dict[str, Any]:
        data = json.dumps(body, separators=(",", ":")).encode()
        return dict(self.request("PATCH", path, query, data, content_type).json())

    def delete(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        return dict(self.request("DELETE", path, query).json())

    def stream(self, path: str, query: dict[str, str] | None = None) -> Iterator[str]:
        """Lines of a streaming response (pod logs with follow=true) until the server ends it."""
        conn, resp = self._send("GET", path, query, None, None, timeout=None)
        try:
            if resp.status >= 400:
                self._raise("GET", path, Response(resp.status, resp.read()))
            for raw in resp:
                yield raw.decode("utf-8", errors="replace").rstrip("\r\n")
        finally:
            conn.close()

    def request(self, method: str, path: str, query: dict[str, str] | None = None,
                body: bytes | None = None, content_type: str | None = None) -> Response:
        conn, resp = self._send(method, path, query, body, content_type, self.timeout)
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from None
        finally:
            conn.close()
        result = Response(resp.status, data, resp.headers.get_all("Warning") or [])
        self.warnings += [_warning_text(w) for w in result.warnings]
        if result.status >= 400:
            self._raise(method, path, result)
        return result

    # ---- transport ---------------------------------------------------------------------------

    def _send(self, method: str, path: str, query: dict[str, str] | None, body: bytes | None,
              content_type: str | None, timeout: float | None
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        url = self._url.path.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": JSON, "User-Agent": f"kdist/{__version__}", **self._auth_headers()}
        if content_type:
            headers["Content-Type"] = content_type
        conn = self._connection(timeout)
        try:
            conn.request(method, url, body=body, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise self._unreachable(e) from None

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        host, port = self._url.hostname or "", self._url.port
        if self._url.scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=timeout)
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls())

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            c = self.conn
            ctx = ssl.create_default_context(cafile=c.ca_file or None,
                                             cadata=c.ca_data.decode() if c.ca_data else None)
            if c.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            cert, key = self._client_cert()
            if cert and key:
                _load_cert_chain(ctx, cert, key)
            self._ssl = ctx
        return self._ssl

    def _client_cert(self) -> tuple[bytes, bytes]:
        c = self.conn
        cert = c.cert_data or (_read(c.cert_file, "client-certificate") if c.cert_file else b"")
        key = c.key_data or (_read(c.key_file, "client-key") if c.key_file else b"")
        cred = self._credential()
        if cred and cred.cert_pem:
            cert, key = cred.cert_pem.encode(), cred.key_pem.encode()
        return cert, key

    def _credential(self) -> Credential | None:
        if self.conn.exec_plugin is None:
            return None
        if self._exec is None:
            self._exec = run_exec_plugin(self.conn.exec_plugin)
        return self._exec

    def _auth_headers(self) -> dict[str, str]:
        c = self.conn
        token = c.token
        if not token and c.token_file:
            token = _read(c.token_file, "token file").decode().strip()
        cred = self._credential()
        if cred and cred.token:
            token = cred.token
        if token:
            return {"Authorization": f"Bearer {token}"}
        if c.username:
            basic = base64.b64encode(f"{c.username}:{c.password}".encode()).decode()
            return {"Authorization": f"Basic {basic}"}
        return {}

    # ---- errors ------------------------------------------------------------------------------

    def _unreachable(self, e: BaseException) -> ClusterUnreachable:
        c = self.conn
        if isinstance(e, ssl.SSLCertVerificationError):
            why = (f"its TLS certificate is not trusted ({e.verify_message}); check the "
                   f"certificate-authority of cluster {c.cluster!r}")
        elif isinstance(e, ssl.SSLError):
            why = f"TLS handshake failed ({e.reason or e})"
        elif isinstance(e, socket.gaierror):
            why = f"cannot resolve host {self._url.hostname!r} ({e.strerror})"
        elif isinstance(e, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(e, TimeoutError):
            why = f"no answer within {self.timeout:.0f}s"
        elif isinstance(e, http.client.HTTPException):
            why = f"it did not answer HTTP properly ({type(e).__name__}); is the URL's scheme right?"
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


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KubeConfigError(f"cannot read the {what} {path}: {e.strerror}") from None


def _load_cert_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl only loads client certificates from files: write them to private temp files."""
    paths = []
    try:
        for data in (cert, key):
            fd, path = tempfile.mkstemp(prefix="kdist-", suffix=".pem")  # mode 0600
            paths.append(path)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(paths[0], paths[1])
    except ssl.SSLError as e:
        raise KubeConfigError(f"cannot use the client certificate/key: {e.reason or e}") from None
    finally:
        for path in paths:
            os.unlink(path)
