"""kdist.targets.k8s.kube: kubeconfig loading and the REST client, against a real local HTTP server.

There is no API server here and none is faked beyond the HTTP boundary: FakeApi is an
http.server on 127.0.0.1 that records every request exactly (method, path, query, headers, body)
and answers what a test tells it to. test_k8s_backend.py imports it from here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from kdist.targets.k8s.kube import (
    ClusterUnreachable,
    ContextNotFound,
    Forbidden,
    KubeConfigError,
    NotFound,
    Rejected,
    Unauthorized,
)
from kdist.targets.k8s.kube.client import APPLY_PATCH, KubeClient, Target
from kdist.targets.k8s.kube.config import IN_CLUSTER, connect, load_kubeconfig

# ---- the HTTP boundary ---------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    client_cn: str = ""  # the TLS client certificate's common name, if one was sent

    def json(self) -> Any:
        return json.loads(self.body)

    def key(self) -> tuple[str, str, str, str | None, str | None, bytes]:
        """Everything a client decides about a request (not Host/ports or lengths)."""
        query = json.dumps(self.query, sort_keys=True)
        return (self.method, self.path, query, self.headers.get("content-type"),
                self.headers.get("authorization"), self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON, str/bytes as they are
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] | None = None  # a chunked (streaming) body instead
    drop: bool = False  # hang up without answering, or after `chunks` (a dropped watch/stream)

    def payload(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "text/plain"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain"
        return json.dumps(self.body if self.body is not None else {}).encode(), "application/json"


Handler = Callable[[Recorded], Reply]


def _client_cn(sock: Any) -> str:
    cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
    return next((v for rdn in (cert or {}).get("subject", ()) for k, v in rdn if k == "commonName"), "")


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """A metav1.Status as the API server sends it."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


def default_reply(req: Recorded) -> Reply:
    """Server-side apply echoes the object, access reviews allow; anything else is not found."""
    if req.method == "PATCH" and req.headers.get("content-type") == APPLY_PATCH:
        return Reply(200, req.json())
    if req.method == "POST" and req.path.endswith("/selfsubjectaccessreviews"):
        return Reply(201, {**req.json(), "status": {"allowed": True}})
    return Reply(404, status_body(404, "NotFound", f'"{req.path.rsplit("/", 1)[-1]}" not found',
                                  {"name": req.path.rsplit("/", 1)[-1]}))


class FakeApi:
    """A real HTTP server on 127.0.0.1 that records requests and answers from `routes`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.routes: dict[tuple[str, str], Handler] = {}
        self.tokens: set[str] | None = None  # when set: other Authorization headers get 401
        api = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # kept-alive connections: no 40 ms delayed-ACK stalls

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                url = urlsplit(self.path)
                req = Recorded(self.command, url.path, parse_qs(url.query),
                               {k.lower(): v for k, v in self.headers.items()},
                               self.rfile.read(length) if length else b"", _client_cn(self.connection))
                api.requests.append(req)
                if api.tokens is not None and req.headers.get("authorization") not in api.tokens:
                    api.send(self, Reply(401, status_body(401, "Unauthorized", "Unauthorized")))
                    return
                handler = api.routes.get((req.method, req.path), default_reply)
                api.send(self, handler(req))

            do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    @staticmethod
    def send(h: BaseHTTPRequestHandler, reply: Reply) -> None:
        if reply.drop and reply.chunks is None:
            FakeApi.hang_up(h)
            return
        h.send_response(reply.status)
        for name, value in reply.headers.items():
            h.send_header(name, value)
        if reply.chunks is not None:
            h.send_header("Content-Type", "text/plain")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for chunk in reply.chunks:
                h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                h.wfile.flush()
            if reply.drop:  # mid-stream
                FakeApi.hang_up(h)
                return
            h.wfile.write(b"0\r\n\r\n")
            return
        data, ctype = reply.payload()
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def hang_up(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def on(self, method: str, path: str, reply: Reply | Handler) -> None:
        self.routes[(method, path)] = reply if callable(reply) else (lambda _req: reply)

    def __enter__(self) -> FakeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi() as server:
        yield server


def write_kubeconfig(path: Path, server: str, token: str = "t0ken-abc", namespace: str = "",
                     contexts: tuple[str, ...] = ("kind-kdist",), **user: Any) -> Path:
    """A kubeconfig whose contexts all point at `server` as user `kdist-user`."""
    ctx: dict[str, Any] = {"cluster": "kdist", "user": "kdist-user"}
    if namespace:
        ctx["namespace"] = namespace
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": contexts[0],
        "clusters": [{"name": "kdist", "cluster": {"server": server}}],
        "contexts": [{"name": c, "context": ctx} for c in contexts],
        "users": [{"name": "kdist-user", "user": user or {"token": token}}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def client_for(tmp_path: Path, server: str, context: str | None = None, **kw: Any) -> KubeClient:
    cfg = write_kubeconfig(tmp_path / "kubeconfig", server, **kw)
    return KubeClient(connect(context, {"KUBECONFIG": str(cfg), "HOME": str(tmp_path)}),
                      timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- kubeconfig --------------------------------------------------------------------------------


def test_kubeconfig_list_merges_first_wins_and_resolves_relative_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "config", tmp_path / "b" / "config"
    a.parent.mkdir()
    (a.parent / "ca.crt").write_text("CA")
    (a.parent / "token").write_text("from-file\n")
    a.write_text(yaml.safe_dump({
        "clusters": [{"name": "c1", "cluster": {"server": "https://one:6443/",
                                                "certificate-authority": "ca.crt"}}],
        "contexts": [{"name": "one", "context": {"cluster": "c1", "user": "u1", "namespace": "ml"}}],
        "users": [{"name": "u1", "user": {"tokenFile": "token"}}],
    }))
    write_kubeconfig(b, "https://two:6443", contexts=("two", "one"))
    env = {"KUBECONFIG": os.pathsep.join([str(tmp_path / "missing"), str(a), str(b)])}
    config = load_kubeconfig(env)
    assert config is not None and config.files == [a, b]
    assert config.current_context == "two"  # a sets none; b's wins
    one = connect("one", env)  # a defines "one" first
    assert (one.server, one.namespace) == ("https://one:6443", "ml")
    cfg = one.configuration()  # the kubernetes client's, from the same files
    assert (cfg.host, cfg.ssl_ca_cert, cfg.api_key) == (
        "https://one:6443", str(a.parent / "ca.crt"), {"BearerToken": "Bearer from-file\n"})
    two = connect(None, env)
    assert (two.context, two.server, two.user) == ("two", "https://two:6443", "kdist-user")
    assert two.configuration().api_key == {"BearerToken": "Bearer t0ken-abc"}


def test_client_certificate_data_and_insecure_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text(yaml.safe_dump({
        "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "https://x:6443",
                                               "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {
            "client-certificate-data": base64.b64encode(b"CERT").decode(),
            "client-key-data": base64.b64encode(b"KEY").decode()}}],
    }))
    conf = connect(None, {"KUBECONFIG": str(cfg)}).configuration()
    assert conf.verify_ssl is False
    assert (Path(conf.cert_file).read_bytes(), Path(conf.key_file).read_bytes()) == (b"CERT", b"KEY")


def test_unknown_context_lists_contexts_with_did_you_mean(tmp_path: Path) -> None:
    cfg = write_kubeconfig(tmp_path / "config", "http://x", contexts=("kind-kdist", "prod-gpu"))
    with pytest.raises(ContextNotFound) as e:
        connect("kind-kdsit", {"KUBECONFIG": str(cfg)})
    msg = str(e.value)
    assert "context 'kind-kdsit' (from --context) is not in" in msg
    assert "(contexts: kind-kdist, prod-gpu)" in msg
    assert "did you mean 'kind-kdist'?" in msg


def test_in_cluster_config_without_kubeconfig(tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("pod-token")
    (sa / "namespace").write_text("ml\n")
    (sa / "ca.crt").write_text("CA")
    env = {"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "KUBERNETES_SERVICE_PORT": "443"}
    conn = connect(None, env, sa_dir=sa)
    assert (conn.server, conn.context, conn.namespace) == ("https://10.96.0.1:443", IN_CLUSTER, "ml")
    cfg = conn.configuration()
    assert (cfg.host, cfg.ssl_ca_cert, cfg.api_key) == (
        "https://10.96.0.1:443", str(sa / "ca.crt"), {"BearerToken": "bearer pod-token"})
    with pytest.raises(KubeConfigError, match=r"no kubeconfig .* and not running inside a cluster"):
        connect(None, {"HOME": str(tmp_path)}, sa_dir=sa)


def test_bad_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text("clusters: [oops\n")
    with pytest.raises(KubeConfigError, match=f"kubeconfig {cfg} is not valid YAML"):
        connect(None, {"KUBECONFIG": str(cfg)})


# ---- requests ----------------------------------------------------------------------------------


def test_get_sends_bearer_token_and_accepts_json(tmp_path: Path, api: FakeApi) -> None:
    api.on("GET", "/api/v1/namespaces/ml/pods", Reply(200, {"kind": "PodList", "items": [{"a": 1}]}))
    client = client_for(tmp_path, api.url)
    assert client.list("/api/v1/namespaces/ml/pods", "a=b,c=d") == [{"a": 1}]
    (req,) = api.requests
    assert (req.method, req.path, req.query) == ("GET", "/api/v1/namespaces/ml/pods",
                                                 {"labelSelector": ["a=b,c=d"]})
    assert req.headers["authorization"] == "Bearer t0ken-abc"
    assert req.headers["accept"] == "application/json"


def test_server_path_prefix_and_token_file_reread(tmp_path: Path, api: FakeApi) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    client = client_for(tmp_path, api.url + "/k8s/clusters/c-1", tokenFile=str(token))
    current = ["Bearer one"]
    denied = Reply(401, status_body(401, "Unauthorized", "Unauthorized"))
    api.on("GET", "/k8s/clusters/c-1/version", lambda req: Reply(200, {"gitVersion": "v1.31.0"})
           if req.headers["authorization"] == current[0] else denied)
    client.get("/version")
    token.write_text("two\n")  # projected tokens rotate: the old one stops working
    current[0] = "Bearer two"
    client.get("/version")  # 401, then the file is read again
    assert [r.headers["authorization"] for r in api.requests] == ["Bearer one", "Bearer one",
                                                                  "Bearer two"]


def test_apply_patch_sends_exact_body_and_content_type(tmp_path: Path, api: FakeApi) -> None:
    client = client_for(tmp_path, api.url)
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "ml"}}
    path = "/api/v1/namespaces/ml/services/s"
    assert client.patch(path, obj, APPLY_PATCH, {"fieldManager": "kdist", "force": "true"}) == obj
    (req,) = api.requests
    assert req.headers["content-type"] == "application/apply-patch+yaml"
    assert req.query == {"fieldManager": ["kdist"], "force": ["true"]}
    assert yaml.safe_load(req.body) == obj  # JSON is YAML


def test_exec_plugin_token(tmp_path: Path, api: FakeApi) -> None:
    plugin = tmp_path / "bin" / "get-token"
    plugin.parent.mkdir()
    plugin.write_text(f"""#!{sys.executable}
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["kind"] == "ExecCredential" and sys.argv[1:] == ["--cluster", "kdist"]
print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                  "status": {{"token": "exec-" + os.environ["TEAM"]}}}}))
""")
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    client = client_for(tmp_path, api.url, exec={
        "apiVersion": "client.authentication.k8s.io/v1", "command": "bin/get-token",
        "args": ["--cluster", "kdist"], "env": [{"name": "TEAM", "value": "ml"}]})
    api.on("GET", "/version", Reply(200, {}))
    client.get("/version")
    client.get("/version")  # the plugin runs once per client
    assert [r.headers["authorization"] for r in api.requests] == ["Bearer exec-ml"] * 2


def test_exec_plugin_missing_names_it_with_install_hint(tmp_path: Path, api: FakeApi) -> None:
    client = client_for(tmp_path, api.url, exec={
        "apiVersion": "client.authentication.k8s.io/v1", "command": "kdist-no-such-plugin",
        "installHint": "install it with brew"})
    with pytest.raises(KubeConfigError) as e:
        client.get("/version")
    assert str(e.value) == ("exec credential plugin 'kdist-no-such-plugin' of user 'kdist-user' is "
                            "not installed (not on PATH): install it with brew")
    assert api.requests == []


def _plugin(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\nimport json, pathlib, sys\n{body}\n")
    path.chmod(0o755)
    return path


def test_the_client_reruns_a_plugin_whose_token_expires_within_5_minutes(tmp_path: Path,
                                                                         api: FakeApi) -> None:
    """What the official client does by itself: it re-runs the plugin before every request once
    expirationTimestamp is less than 5 minutes away (kube_config.EXPIRY_SKEW_PREVENTION_DELAY)."""
    runs = tmp_path / "runs"
    plugin = _plugin(tmp_path / "soon", f"""
runs = pathlib.Path({str(runs)!r})
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {{"token": "t" + str(len(runs.read_text())),
                             "expirationTimestamp": "2000-01-01T00:00:00Z"}}}}))""")
    client = client_for(tmp_path, api.url, exec={"apiVersion": "client.authentication.k8s.io/v1",
                                                 "command": str(plugin)})
    api.on("GET", "/version", Reply(200, {}))
    client.get("/version")
    client.get("/version")
    assert [r.headers["authorization"] for r in api.requests] == ["Bearer t2", "Bearer t3"]


def test_a_failing_exec_plugin_is_a_clear_error(tmp_path: Path, api: FakeApi) -> None:
    plugin = _plugin(tmp_path / "sso", 'sys.exit("error: the SSO session has expired; run aws sso login")')
    client = client_for(tmp_path, api.url, exec={"apiVersion": "client.authentication.k8s.io/v1",
                                                 "command": str(plugin)})
    with pytest.raises(KubeConfigError) as e:
        client.get("/version")
    assert str(e.value) == (f"exec credential plugin {str(plugin)!r} of user 'kdist-user' failed: "
                            "exec: process returned 1. error: the SSO session has expired; run aws "
                            "sso login")
    assert api.requests == []


# ---- errors ------------------------------------------------------------------------------------


def test_rbac_denial_names_user_verb_resource_namespace(tmp_path: Path, api: FakeApi) -> None:
    message = ('statefulsets.apps "cifar-cpu" is forbidden: User "system:serviceaccount:ci:deployer" '
               'cannot patch resource "statefulsets" in API group "apps" in the namespace "ml"')
    api.on("PATCH", "/apis/apps/v1/namespaces/ml/statefulsets/cifar-cpu", Reply(403, status_body(
        403, "Forbidden", message, {"name": "cifar-cpu", "group": "apps", "kind": "statefulsets"})))
    client = client_for(tmp_path, api.url)
    with pytest.raises(Forbidden) as e:
        client.patch("/apis/apps/v1/namespaces/ml/statefulsets/cifar-cpu", {}, APPLY_PATCH)
    assert str(e.value) == (
        "permission denied: user 'system:serviceaccount:ci:deployer' cannot patch statefulsets.apps "
        "in namespace 'ml' (context 'kind-kdist'). Ask a cluster admin for a Role that allows it; "
        "check with `kubectl auth can-i patch statefulsets.apps -n ml --context kind-kdist`")
    assert e.value.code == 403 and e.value.reason == "Forbidden"


def test_unauthorized(tmp_path: Path, api: FakeApi) -> None:
    api.on("GET", "/api/v1/namespaces/default/pods", Reply(401, status_body(
        401, "Unauthorized", "Unauthorized")))
    with pytest.raises(Unauthorized, match="rejected the credentials of user 'kdist-user' "
                                           r"\(context 'kind-kdist'\): Unauthorized"):
        client_for(tmp_path, api.url).list("/api/v1/namespaces/default/pods")


def test_validation_rejection_shows_status_message_and_causes(tmp_path: Path, api: FakeApi) -> None:
    path = "/apis/apps/v1/namespaces/ml/statefulsets/cifar-cpu"
    api.on("PATCH", path, Reply(422, status_body(
        422, "Invalid", 'StatefulSet.apps "cifar-cpu" is invalid: spec.replicas: Invalid value: -1: '
                        "must be greater than or equal to 0",
        {"name": "cifar-cpu", "group": "apps", "kind": "StatefulSet", "causes": [
            {"reason": "FieldValueInvalid", "field": "spec.replicas",
             "message": "Invalid value: -1: must be greater than or equal to 0"},
            {"reason": "FieldValueRequired", "field": "spec.selector", "message": "Required value"}]})))
    with pytest.raises(Rejected) as e:
        client_for(tmp_path, api.url).patch(path, {}, APPLY_PATCH)
    assert str(e.value) == (
        "the API server refused to patch statefulsets.apps cifar-cpu in namespace 'ml' (context "
        "'kind-kdist'): StatefulSet.apps \"cifar-cpu\" is invalid: spec.replicas: Invalid value: -1: "
        "must be greater than or equal to 0\n  spec.selector: Required value")


def test_admission_webhook_denial_is_a_rejection_not_rbac(tmp_path: Path, api: FakeApi) -> None:
    path = "/api/v1/namespaces/ml/services/cifar-cpu"
    message = ('admission webhook "validation.gatekeeper.sh" denied the request: [must-have-team] '
               'you must provide labels: {"team"}')
    api.on("PATCH", path, Reply(403, status_body(403, "Forbidden", message)))
    with pytest.raises(Rejected, match=r"refused to patch services cifar-cpu in namespace 'ml' "
                                       r"\(context 'kind-kdist'\): admission webhook"):
        client_for(tmp_path, api.url).patch(path, {}, APPLY_PATCH)


def test_missing_namespace(tmp_path: Path, api: FakeApi) -> None:
    path = "/api/v1/namespaces/ml/services/cifar-cpu"
    api.on("PATCH", path, Reply(404, status_body(404, "NotFound", 'namespaces "ml" not found',
                                                 {"name": "ml", "kind": "namespaces"})))
    with pytest.raises(NotFound, match=r"namespace 'ml' does not exist .* `kubectl create namespace ml`"):
        client_for(tmp_path, api.url).patch(path, {}, APPLY_PATCH)


def test_connection_refused_names_server_and_context(tmp_path: Path) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ClusterUnreachable) as e:
        client_for(tmp_path, server).get("/version")
    assert str(e.value) == (f"cannot reach the Kubernetes API server {server} (context 'kind-kdist'): "
                            "connection refused. Is the cluster running? Check with "
                            "`kubectl cluster-info --context kind-kdist`")
    assert e.value.exit_code == 3


def test_unresolvable_host(tmp_path: Path) -> None:
    with pytest.raises(ClusterUnreachable, match=r"cannot resolve host 'kdist-api\.invalid'"):
        client_for(tmp_path, "https://kdist-api.invalid:6443").get("/version")


def test_warning_headers_are_kept(tmp_path: Path, api: FakeApi) -> None:
    text = 'would violate PodSecurity "restricted:latest": host namespaces'
    escaped = text.replace('"', '\\"')
    api.on("GET", "/version", Reply(200, {}, headers={"Warning": f'299 - "{escaped}"'}))
    client = client_for(tmp_path, api.url)
    client.get("/version")
    assert client.warnings == [text]


def test_stream_yields_lines_as_chunks_arrive(tmp_path: Path, api: FakeApi) -> None:
    path = "/api/v1/namespaces/default/pods/cifar-cpu-0/log"
    api.on("GET", path, Reply(200, chunks=[b"step 1\nst", b"ep 2\n", b"done\n"]))
    lines = list(client_for(tmp_path, api.url).stream(path, {"follow": "true"}))
    assert lines == ["step 1", "step 2", "done"]
    assert api.requests[0].query == {"follow": ["true"]}


def test_target_describes_paths() -> None:
    assert str(Target.of("GET", "/api/v1/namespaces/ml/pods")) == "list pods in namespace 'ml'"
    assert str(Target.of("PATCH", "/apis/apps/v1/namespaces/ml/statefulsets/x/scale")) == (
        "patch statefulsets.apps/scale x in namespace 'ml'")
    assert str(Target.of("DELETE", "/apis/rbac.authorization.k8s.io/v1/namespaces/a/roles/r")) == (
        "delete roles.rbac.authorization.k8s.io r in namespace 'a'")


# ---- TLS (with a CA generated here; skipped without openssl) -----------------------------------


def _make_ca_and_cert(folder: Path, san: str = "IP:127.0.0.1") -> tuple[Path, Path, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=kdist-test-ca")
    (folder / "ext.cnf").write_text(f"subjectAltName={san}\n")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")
def test_https_with_certificate_authority(tmp_path: Path, api: FakeApi) -> None:
    ca, cert, key = _make_ca_and_cert(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    api.server.socket = tls.wrap_socket(api.server.socket, server_side=True)
    server = api.url.replace("http://", "https://")
    api.on("GET", "/version", Reply(200, {"gitVersion": "v1.31.0"}))
    cfg = tmp_path / "kubeconfig"
    write_kubeconfig(cfg, server)
    doc = yaml.safe_load(cfg.read_text())
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
        ca.read_bytes()).decode()
    cfg.write_text(yaml.safe_dump(doc))
    env = {"KUBECONFIG": str(cfg)}
    assert KubeClient(connect(None, env), timeout=5).get("/version") == {"gitVersion": "v1.31.0"}
    untrusted = tmp_path / "untrusted"
    write_kubeconfig(untrusted, server)
    with pytest.raises(ClusterUnreachable, match="TLS certificate is not trusted"):
        KubeClient(connect(None, {"KUBECONFIG": str(untrusted)}), timeout=5).get("/version")


def serve_tls(api: FakeApi, folder: Path, san: str) -> tuple[str, Path]:
    """Make `api` answer HTTPS with a certificate for `san`: (its https URL, the CA file)."""
    ca, cert, key = _make_ca_and_cert(folder, san)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    api.server.socket = tls.wrap_socket(api.server.socket, server_side=True)
    return api.url.replace("http://", "https://"), ca


def tls_kubeconfig(path: Path, server: str, ca: Path, **cluster: Any) -> dict[str, str]:
    write_kubeconfig(path, server)
    doc = yaml.safe_load(path.read_text())
    doc["clusters"][0]["cluster"] |= {"certificate-authority": str(ca), **cluster}
    path.write_text(yaml.safe_dump(doc))
    return {"KUBECONFIG": str(path)}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")
def test_tls_server_name_checks_the_certificate_for_that_name(tmp_path: Path, api: FakeApi) -> None:
    server, ca = serve_tls(api, tmp_path, "DNS:api.kdist.internal")  # not valid for 127.0.0.1
    api.on("GET", "/version", Reply(200, {"gitVersion": "v1.31.0"}))
    named = tls_kubeconfig(tmp_path / "named", server, ca, **{"tls-server-name": "api.kdist.internal"})
    assert KubeClient(connect(None, named), timeout=5).get("/version") == {"gitVersion": "v1.31.0"}
    unnamed = tls_kubeconfig(tmp_path / "unnamed", server, ca)
    with pytest.raises(ClusterUnreachable, match=r"TLS certificate is not trusted .*IP address mismatch"):
        KubeClient(connect(None, unnamed), timeout=5).get("/version")
    wrong = tls_kubeconfig(tmp_path / "wrong", server, ca, **{"tls-server-name": "other.internal"})
    with pytest.raises(ClusterUnreachable, match="Hostname mismatch"):
        KubeClient(connect(None, wrong), timeout=5).get("/version")
    assert [(r.method, r.path) for r in api.requests] == [("GET", "/version")]


class ConnectProxy:
    """A real HTTP CONNECT proxy on 127.0.0.1 that records the tunnels it opened."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        self.tunnels.append(f"{method} {target}")
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def __enter__(self) -> ConnectProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")
def test_proxy_url_and_https_proxy_tunnel_unless_no_proxy(tmp_path: Path, api: FakeApi,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server, ca = serve_tls(api, tmp_path, "IP:127.0.0.1")
    api.on("GET", "/version", Reply(200, {"gitVersion": "v1.31.0"}))
    port = server.rsplit(":", 1)[1]
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with ConnectProxy() as proxy:
        env = tls_kubeconfig(tmp_path / "proxied", server, ca, **{"proxy-url": proxy.url})
        assert KubeClient(connect(None, env), timeout=5).get("/version") == {"gitVersion": "v1.31.0"}
        assert proxy.tunnels == [f"CONNECT 127.0.0.1:{port}"]
        plain = tls_kubeconfig(tmp_path / "plain", server, ca)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        KubeClient(connect(None, plain), timeout=5).get("/version")
        assert len(proxy.tunnels) == 2  # the environment's proxy
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        KubeClient(connect(None, plain), timeout=5).get("/version")
        assert len(proxy.tunnels) == 2  # bypassed
    assert [(r.method, r.path, r.headers["authorization"]) for r in api.requests] == [
        ("GET", "/version", "Bearer t0ken-abc")] * 3


def _client_cert(folder: Path, name: str) -> tuple[str, str]:
    """A client certificate for CN=`name` signed by folder/ca.crt: (cert PEM, key PEM)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={name}")
    run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2")
    return (folder / f"{name}.crt").read_text(), (folder / f"{name}.key").read_text()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")
def test_exec_client_certificate_is_replaced_after_a_401(tmp_path: Path, api: FakeApi) -> None:
    """An exec plugin that returns client certificates (no token): when the API server stops
    accepting the first one (401, as kube-apiserver answers for an expired client certificate),
    kdist reloads, the plugin issues another, and the request goes through on a new connection."""
    ca, cert, key = _make_ca_and_cert(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.load_verify_locations(ca)
    tls.verify_mode = ssl.CERT_OPTIONAL
    api.server.socket = tls.wrap_socket(api.server.socket, server_side=True)
    for n in (1, 2):
        pem, key_pem = _client_cert(tmp_path, f"kdist-user-{n}")
        (tmp_path / f"cred-{n}.json").write_text(json.dumps({
            "apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
            "status": {"clientCertificateData": pem, "clientKeyData": key_pem}}))
    runs = tmp_path / "runs"
    plugin = _plugin(tmp_path / "issue-cert", f"""
runs = pathlib.Path({str(runs)!r})
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
print(pathlib.Path({str(tmp_path)!r}, f"cred-{{len(runs.read_text())}}.json").read_text())""")
    accepted = ["kdist-user-1"]
    api.on("GET", "/version", lambda req: Reply(200, {"gitVersion": "v1.31.0"})
           if req.client_cn == accepted[0] else Reply(401, status_body(401, "Unauthorized", "Unauthorized")))
    env = tls_kubeconfig(tmp_path / "kubeconfig", api.url.replace("http://", "https://"), ca)
    doc = yaml.safe_load(Path(env["KUBECONFIG"]).read_text())
    doc["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                        "command": str(plugin)}}
    Path(env["KUBECONFIG"]).write_text(yaml.safe_dump(doc))
    client = KubeClient(connect(None, env), timeout=5)
    client.get("/version")
    accepted[0] = "kdist-user-2"  # the first certificate expired
    client.get("/version")
    assert [(r.client_cn, "authorization" in r.headers) for r in api.requests] == [
        ("kdist-user-1", False), ("kdist-user-1", False), ("kdist-user-2", False)]
    assert runs.read_text() == "xx"
