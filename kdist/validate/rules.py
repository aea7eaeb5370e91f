"""Every rule `kdist validate` knows: a stable kebab-case id, a severity, what it checks, a fix.

Ids are part of the interface (`--disable ID`, `validate.disable` in kdist.yaml, CI annotations):
never rename one; retire it instead.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from kdist.errors import UsageError
from kdist.validate.model import Severity


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    group: str  # input, schema, distributed, pss, practice, compose, rbac
    summary: str
    hint: str
    source: str = "kdist"


def _r(id_: str, severity: Severity, group: str, summary: str, hint: str, source: str = "kdist"
       ) -> Rule:
    return Rule(id_, severity, group, summary, hint, source)


E: Severity = "error"
W: Severity = "warning"
PSS = "Pod Security Standards (restricted)"

_ALL = [
    # ---- inputs and schemas ---------------------------------------------------------------
    _r("input-unreadable", E, "input", "A path is missing, unreadable, binary or not UTF-8 text.",
       "Check the path; kdist validate reads UTF-8 YAML files, directories, globs and -."),
    _r("input-budget", E, "input",
       "A file is above a budget: 4 MiB, 10 000 documents, 1 000 000 nodes after aliases, "
       "100 levels of nesting, 10 s.",
       "Split the file; replace alias chains with plain YAML."),
    _r("yaml-syntax", E, "input", "The file is not valid YAML.",
       "Fix the YAML syntax at the reported position."),
    _r("yaml-duplicate-key", E, "input", "A mapping has the same key twice.",
       "Remove one of the keys; the API server and docker compose reject duplicates."),
    _r("yaml-empty", W, "input", "The file has no YAML documents.",
       "Delete the file or add content."),
    _r("spec", E, "schema", "kdist.yaml does not load (kdist's own spec checks).",
       "Fix the field named in the message; `kdist render` reports the same problem."),
    _r("spec-entrypoint", E, "schema",
       "kdist.yaml's entrypoint is not a file in the project folder (the current directory), "
       "from which the image is built (compose.build).",
       "Give the training script's path relative to the project root, as kdist run resolves it."),
    _r("spec-entrypoint-image", W, "schema",
       "kdist.yaml's entrypoint is not a file in the project folder; the image is not built from "
       "it (no compose.build), so it may hold the script in its working directory.",
       "Check that the image has the script under its WORKDIR, or give an absolute path in the "
       "image; `kdist run` needs it in the project folder."),
    _r("k8s-object", E, "schema",
       "A document in a manifest is not a Kubernetes object (needs apiVersion, kind, metadata.name).",
       "Every document needs apiVersion, kind and metadata.name."),
    _r("k8s-schema", E, "schema",
       "The object does not match the Kubernetes OpenAPI schema (strict: unknown fields are errors).",
       "Fix the field; `kubectl explain KIND.FIELD` shows the expected shape.",
       "Kubernetes OpenAPI (kubernetes-validate schemas)"),
    _r("k8s-unknown-kind", W, "schema",
       "No schema for this apiVersion/kind (a custom resource?); it is not schema-checked.",
       "Nothing to fix for CRDs; for built-in kinds check the apiVersion."),
    _r("k8s-duplicate-object", E, "schema", "Two documents define the same kind/namespace/name.",
       "Remove or rename one of them; the second silently overwrites the first on apply."),
    _r("k8s-metadata", E, "schema",
       "A name or label that the schema accepts but the API server or controllers reject.",
       "Use DNS-1123 names and label values of at most 63 characters."),
    _r("compose-schema", E, "schema", "The Compose file is not valid Compose.",
       "Fix the key named in the message; `docker compose config` reports the same."),
    # ---- what breaks distributed jobs ---------------------------------------------------------
    _r("statefulset-service", E, "distributed",
       "A StatefulSet's serviceName does not name a headless Service (clusterIP: None) in the file.",
       "Add a Service with clusterIP: None whose name is the StatefulSet's serviceName."),
    _r("service-publish-not-ready", E, "distributed",
       "The headless Service of a torchrun StatefulSet does not publish not-ready pods.",
       "Set publishNotReadyAddresses: true, or node 0's DNS record appears only when it is Ready."),
    _r("selector-labels", E, "distributed",
       "A workload's selector does not match its own pod template labels.",
       "Make spec.selector match spec.template.metadata.labels."),
    _r("service-no-pods", E, "distributed", "A Service selects no pod template in the file.",
       "Fix the Service selector or the pod labels."),
    _r("pdb-no-pods", E, "distributed", "A PodDisruptionBudget selects no pod template in the file.",
       "Fix the PodDisruptionBudget selector or the pod labels."),
    _r("service-target-port", E, "distributed",
       "A Service targetPort is not a port the selected containers declare.",
       "Use a containerPort number or name of the selected pods as targetPort."),
    _r("rdzv-endpoint", E, "distributed",
       "The torchrun --rdzv-endpoint host is not a Service or pod DNS name defined in the file.",
       "Point --rdzv-endpoint at <statefulset>-0.<headless-service> or at the store's Service."),
    _r("torchrun-nnodes", E, "distributed",
       "The torchrun --nnodes MIN:MAX range does not contain the number of nodes started.",
       "Keep replicas (or the number of node services) within MIN:MAX."),
    _r("pdb-min-available", E, "distributed",
       "A PodDisruptionBudget lets evictions take a torchrun job below its minimum node count.",
       "Set minAvailable to the MIN of --nnodes MIN:MAX."),
    _r("network-policy-job", E, "distributed",
       "A NetworkPolicy blocks traffic between a job's own pods (collectives use random ports).",
       "Allow ingress and egress between the job's pods on all ports (a rule without ports)."),
    _r("torchrun-shm", E, "distributed",
       "/dev/shm is missing or too small for torchrun (Docker's default is 64 MB).",
       "Mount an emptyDir {medium: Memory} at /dev/shm (Compose: shm_size), >= 1Gi for "
       "several processes per node."),
    _r("torchrun-gpus", E, "distributed",
       "--nproc-per-node starts more processes than the GPUs the node gets.",
       "Use at most one process per GPU (nproc-per-node <= GPU limit)."),
    _r("torchrun-elastic-env", E, "distributed",
       "An elastic job (MIN < MAX) without TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1.",
       "Set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in the container environment (pytorch#135712)."),
    _r("torchrun-max-restarts", E, "distributed",
       "An elastic job with --max-restarts 0: the first membership change ends it.",
       "Pass --max-restarts >= 1."),
    _r("torchrun-rdzv-conf", E, "distributed",
       "--rdzv-conf has an unknown key or a value torch rejects.",
       "Use the keys torch's c10d/dynamic rendezvous reads (join_timeout, read_timeout, ...)."),
    _r("compose-gpu-devices", E, "distributed",
       "Several Compose node services reserve the same GPUs.",
       "Give every node service its own device_ids."),
    # ---- Pod Security Standards, restricted ---------------------------------------------------
    _r("pss-host-process", E, "pss", "Windows HostProcess containers are forbidden.",
       "Remove windowsOptions.hostProcess.", PSS),
    _r("pss-host-namespaces", E, "pss", "hostNetwork, hostPID and hostIPC are forbidden.",
       "Remove hostNetwork/hostPID/hostIPC or set them to false.", PSS),
    _r("pss-privileged", E, "pss", "Privileged containers are forbidden.",
       "Remove securityContext.privileged or set it to false.", PSS),
    _r("pss-capabilities", E, "pss",
       "Containers must drop ALL capabilities and may add back only NET_BIND_SERVICE.",
       "Set securityContext.capabilities: {drop: [ALL]}.", PSS),
    _r("pss-host-path", E, "pss", "hostPath volumes are forbidden.",
       "Use a PersistentVolumeClaim, emptyDir, configMap or secret instead.", PSS),
    _r("pss-host-ports", E, "pss", "hostPort is forbidden.",
       "Remove hostPort; reach the pod through a Service.", PSS),
    _r("pss-host-probes", E, "pss", "Probes and lifecycle hooks must not set a host.",
       "Remove httpGet.host / tcpSocket.host.", PSS),
    _r("pss-apparmor", E, "pss", "AppArmor must stay RuntimeDefault or Localhost.",
       "Remove the Unconfined AppArmor profile.", PSS),
    _r("pss-selinux", E, "pss",
       "SELinux type must be a container type; user and role must not be set.",
       "Remove seLinuxOptions.user/role and use a container_* type.", PSS),
    _r("pss-proc-mount", E, "pss", "procMount must be Default.",
       "Remove securityContext.procMount.", PSS),
    _r("pss-seccomp", E, "pss", "A seccomp profile RuntimeDefault or Localhost is required.",
       "Set securityContext.seccompProfile.type: RuntimeDefault on the pod.", PSS),
    _r("pss-sysctls", E, "pss", "Only the safe, namespaced sysctls are allowed.",
       "Remove the sysctl or set it on the node.", PSS),
    _r("pss-volume-types", E, "pss",
       "Only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected "
       "and secret volumes are allowed.", "Use a PersistentVolumeClaim for other storage.", PSS),
    _r("pss-allow-privilege-escalation", E, "pss",
       "Containers must set allowPrivilegeEscalation: false.",
       "Set securityContext.allowPrivilegeEscalation: false in every container.", PSS),
    _r("pss-run-as-non-root", E, "pss", "runAsNonRoot: true is required (pod or every container).",
       "Set securityContext.runAsNonRoot: true on the pod.", PSS),
    _r("pss-run-as-user", E, "pss", "runAsUser must not be 0.",
       "Run as a non-zero uid (kdist.yaml: run_as_user).", PSS),
    # ---- kube-score / kube-linter / Polaris checks that apply ---------------------------------
    _r("image-tag", E, "practice", "Images need a pinned tag or digest, not latest or none.",
       "Use an explicit version tag or @sha256 digest.",
       "kube-score container-image-tag, kube-linter latest-tag, Polaris tagNotSpecified"),
    _r("image-pull-policy", W, "practice", "imagePullPolicy is not set explicitly.",
       "Set imagePullPolicy (IfNotPresent for pinned tags).", "kube-score container-image-pull-policy"),
    _r("container-resources", E, "practice", "A container lacks cpu/memory requests or limits.",
       "Set resources.requests and resources.limits for cpu and memory.",
       "kube-score container-resources, kube-linter unset-*-requirements, Polaris"),
    _r("read-only-root-filesystem", W, "practice", "The root filesystem is writable.",
       "Set securityContext.readOnlyRootFilesystem: true and mount emptyDirs where writes happen.",
       "kube-linter no-read-only-root-fs, Polaris notReadOnlyRootFilesystem"),
    _r("readiness-probe", W, "practice",
       "A container behind a (non-headless) Service has no readinessProbe.",
       "Add a readinessProbe so the Service only routes to pods that can answer.",
       "kube-score pod-probes, Polaris readinessProbeMissing"),
    _r("automount-service-account-token", W, "practice",
       "The pod mounts the token of the default ServiceAccount.",
       "Set automountServiceAccountToken: false, or use a ServiceAccount of its own.",
       "Polaris automountServiceAccountToken, kube-linter default-service-account"),
    _r("pod-network-policy", W, "practice",
       "No NetworkPolicy in the file selects the pod for both ingress and egress.",
       "Add a NetworkPolicy (kdist renders one that allows the job's own traffic).",
       "kube-score pod-networkpolicy, Polaris missingNetworkPolicy"),
    _r("env-var-secret", W, "practice", "A secret-looking environment variable has a literal value.",
       "Use valueFrom.secretKeyRef (Compose: secrets or env_file; kdist.yaml: secret_env).",
       "kube-linter env-var-secret, Polaris sensitiveContainerEnvVar"),
    # ---- Compose security ---------------------------------------------------------------------
    _r("compose-user", E, "compose", "The service runs as root (no user, or uid 0).",
       "Set user: \"1000:1000\" (kdist.yaml: run_as_user)."),
    _r("compose-cap-drop", E, "compose", "The service does not drop all capabilities.",
       "Set cap_drop: [ALL]."),
    _r("compose-no-new-privileges", E, "compose", "The service may gain privileges (setuid).",
       "Add security_opt: [\"no-new-privileges:true\"]."),
    _r("compose-privileged", E, "compose", "The service is privileged.", "Remove privileged: true."),
    _r("compose-cap-add", E, "compose",
       "The service adds a capability (kdist's netem helper: NET_ADMIN only, excepted).",
       "Remove cap_add; keep cap_drop: [ALL]."),
    _r("compose-unconfined", E, "compose",
       "security_opt turns off seccomp, AppArmor, SELinux labels or masked /proc paths.",
       "Remove seccomp:unconfined / apparmor:unconfined / label:disable / "
       "systempaths:unconfined."),
    _r("compose-host-namespaces", E, "compose",
       "The service shares a host namespace (network_mode, pid, ipc, uts, userns_mode, cgroup).",
       "Remove the `host` setting; use a Compose network."),
    _r("compose-ports-host-ip", E, "compose",
       "A port is published on every interface (no host IP, 0.0.0.0 or ::).",
       "Publish on 127.0.0.1 (\"127.0.0.1:29400:29400\"), or use expose between services."),
    _r("compose-host-mount", E, "compose",
       "A bind mount of the host's root, a system folder or a runtime socket (docker.sock).",
       "Use a named volume or a project-relative folder (./data)."),
    _r("compose-devices", E, "compose",
       "The service maps a host memory, kernel or disk device (/dev/mem, /dev/sda, ...).",
       "Remove the device; GPUs go through deploy.resources.reservations.devices."),
    # ---- Kubernetes RBAC and NetworkPolicy ----------------------------------------------------
    _r("rbac-wildcard", E, "rbac", "A Role or ClusterRole grants `*` verbs or resources.",
       "List the verbs and resources the workload needs.",
       "kube-linter wildcard-in-rules"),
    _r("rbac-secrets", E, "rbac", "A Role or ClusterRole grants access to secrets.",
       "Mount the secrets the pod needs instead of granting API access to them.",
       "kube-linter access-to-secrets"),
    _r("rbac-controller-patch", E, "rbac",
       "Pods may patch or update their own controller or pods (a changed template runs any "
       "image with the same service account).",
       "Grant only the scale subresource (statefulsets/scale), or keep the token out of the "
       "trainer container."),
    _r("network-policy-targets-pod", E, "practice",
       "A NetworkPolicy selects no pod of the file, so the pods it was meant for are unprotected.",
       "Make spec.podSelector match the pod template labels.",
       "kube-score networkpolicy-targets-pod"),
]

RULES: dict[str, Rule] = {r.id: r for r in _ALL}
NOT_DISABLEABLE = frozenset({"input-unreadable", "input-budget", "yaml-syntax", "spec"})


def rule_ids() -> list[str]:
    return list(RULES)


def unknown_rule_message(rule_id: str) -> str:
    close = difflib.get_close_matches(rule_id, list(RULES), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown rule id {rule_id!r}{hint}; `kdist validate --list-rules` lists them"


def parse_disabled(values: list[str] | tuple[str, ...]) -> frozenset[str]:
    """`--disable a --disable b,c` -> {a, b, c}; an unknown id is a UsageError (exit 2)."""
    ids = {part.strip() for v in values for part in v.split(",") if part.strip()}
    for rule_id in sorted(ids):
        if rule_id not in RULES:
            raise UsageError(unknown_rule_message(rule_id))
        if rule_id in NOT_DISABLEABLE:
            raise UsageError(f"rule {rule_id!r} cannot be disabled")
    return frozenset(ids)
