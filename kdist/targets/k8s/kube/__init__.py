"""kdist's Kubernetes API access: kubeconfig (config) and REST (client), over the official
`kubernetes` package (the `k8s` extra), imported only when a command connects
(kdist.targets.k8s.kube.config.kubernetes_package).

Every failure is a KdistError subclass below whose message names the server, the context and,
for API errors, the verb, resource and namespace, so that kdist.cli can print it as it is.
"""

from __future__ import annotations

from typing import Any

from kdist.errors import KdistError


class KubeError(KdistError):
    """Talking to a Kubernetes cluster failed."""


class KubeConfigError(KubeError):
    """No usable kubeconfig / in-cluster config, or a credential plugin failed."""

    exit_code = 2


class ContextNotFound(KubeConfigError):
    """--context (or current-context) names a context the kubeconfig does not have."""


class ClusterUnreachable(KubeError):
    """Connection refused, DNS failure, TLS failure or timeout talking to the API server."""

    exit_code = 3


class ApiError(KubeError):
    """The API server answered with an error Status; `status` is that object (may be empty).
    Exit 1 (a conflict, a server error); the subclasses below are bad input: exit 2."""

    def __init__(self, message: str, code: int, status: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status: dict[str, Any] = status or {}

    @property
    def reason(self) -> str:
        return str(self.status.get("reason", ""))

    @property
    def status_message(self) -> str:
        return str(self.status.get("message", ""))


class Unauthorized(ApiError):
    """401: the credentials were missing, expired or wrong."""

    exit_code = 2


class Forbidden(ApiError):
    """403 from RBAC: the user may not do this verb on this resource."""

    exit_code = 2


class Rejected(ApiError):
    """400/422, or a 403 from an admission controller: the object was refused."""

    exit_code = 2


class NotFound(ApiError):
    """404: the object, its namespace, or its API (a missing CRD/group) does not exist."""

    exit_code = 2


__all__ = ["ApiError", "ClusterUnreachable", "ContextNotFound", "Forbidden", "KubeConfigError",
           "KubeError", "NotFound", "Rejected", "Unauthorized"]
