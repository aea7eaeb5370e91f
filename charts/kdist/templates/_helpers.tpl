{{/*
Helpers for charts/kdist. Every string here mirrors kdist/plan.py and kdist/render/k8s.py:
`helm template` must equal `kdist render --target k8s` object by object (tests/test_helm.py).
Object names come from .Values.name, never from the release name.
*/}}

{{/* The job name: names every object (DNS-1123, at most 63 characters). */}}
{{- define "kdist.fullname" -}}
{{- .Values.name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The standalone store's Service and Deployment: <name>-rdzv. */}}
{{- define "kdist.storeName" -}}
{{- printf "%s-rdzv" (include "kdist.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The checkpoint PersistentVolumeClaim: <name>-checkpoints. */}}
{{- define "kdist.checkpointClaim" -}}
{{- printf "%s-checkpoints" (include "kdist.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The namespace the objects go to, for NOTES.txt. */}}
{{- define "kdist.namespace" -}}
{{- .Values.namespace | default .Release.Namespace -}}
{{- end }}

{{/* Matches every pod of the job (nodes, store, test). */}}
{{- define "kdist.jobSelectorLabels" -}}
app.kubernetes.io/name: kdist
app.kubernetes.io/instance: {{ include "kdist.fullname" . | quote }}
{{- end }}

{{/* Selector of one component. Call with (dict "root" $ "component" "node"). */}}
{{- define "kdist.selectorLabels" -}}
{{ include "kdist.jobSelectorLabels" .root }}
app.kubernetes.io/component: {{ .component | quote }}
{{- end }}

{{/* Labels of one component's objects and pods. Call with (dict "root" $ "component" "node"). */}}
{{- define "kdist.labels" -}}
{{ include "kdist.selectorLabels" . }}
app.kubernetes.io/managed-by: kdist
{{- end }}

{{/*
metadata: name, namespace (when set) and labels.
Call with (dict "root" $ "name" NAME "component" COMPONENT), optionally "extraLabels" (a dict).
*/}}
{{- define "kdist.metadata" -}}
name: {{ .name | quote }}
{{- with .root.Values.namespace }}
namespace: {{ . | quote }}
{{- end }}
labels:
  {{- include "kdist.labels" . | nindent 2 }}
  {{- with .extraLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Python's shlex.quote: a word of safe characters ([a-zA-Z0-9_@%+=:,./-]) as is, '' for the
empty word, anything else in single quotes with each ' written as '"'"'.
*/}}
{{- define "kdist.shquote" -}}
{{- $s := toString . -}}
{{- if eq $s "" -}}
''
{{- else if regexMatch "^[a-zA-Z0-9_@%+=:,./-]+$" $s -}}
{{- $s -}}
{{- else -}}
'{{ replace "'" "'\"'\"'" $s }}'
{{- end -}}
{{- end }}

{{/* Python's shlex.join: a list of words, each quoted by kdist.shquote, joined by spaces. */}}
{{- define "kdist.shjoin" -}}
{{- $words := list -}}
{{- range . -}}
{{- $words = append $words (include "kdist.shquote" .) -}}
{{- end -}}
{{- join " " $words -}}
{{- end }}

{{/* torchrun --rdzv-conf (plan.rdzv_conf). Call with (dict "root" $ "isHost" BOOL). */}}
{{- define "kdist.rdzvConf" -}}
{{- $r := .root.Values.rendezvous -}}
{{- printf "join_timeout=%d,last_call_timeout=%d,close_timeout=%d,keep_alive_interval=%d,keep_alive_max_attempt=%d,read_timeout=%d,is_host=%t" (int $r.joinTimeout) (int $r.lastCallTimeout) (int $r.closeTimeout) (int $r.keepAliveInterval) (int $r.keepAliveMaxAttempt) (int $r.readTimeout) .isHost -}}
{{- end }}

{{/*
The one torchrun command line (plan.torchrun_argv), shell-quoted.
Call with (dict "root" $ "host" HOST "isHost" BOOL).
*/}}
{{- define "kdist.torchrun" -}}
{{- $v := .root.Values -}}
{{- $argv := list "torchrun"
      "--nnodes" (printf "%d:%d" (int $v.nodes.min) (int $v.nodes.max))
      "--nproc-per-node" (toString (int $v.procsPerNode))
      "--rdzv-backend" "c10d"
      "--rdzv-endpoint" (printf "%s:%d" .host (int $v.rendezvous.port))
      "--rdzv-id" $v.name
      "--rdzv-conf" (include "kdist.rdzvConf" .)
      "--max-restarts" (toString (int $v.maxRestarts))
      $v.entrypoint -}}
{{- range $v.args -}}
{{- $argv = append $argv (toString .) -}}
{{- end -}}
{{- include "kdist.shjoin" $argv -}}
{{- end }}

{{/* plan.WAIT_CODE, verbatim: wait until the store's name resolves (and its port accepts). */}}
{{- define "kdist.waitCode" -}}
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
{{ end -}}

{{/* plan.STORE_CODE, verbatim: the standalone c10d store (a TCPStore server). */}}
{{- define "kdist.storeCode" -}}
import datetime, signal, sys
from torch.distributed import TCPStore
port, timeout, bind = int(sys.argv[1]), int(sys.argv[2]), (sys.argv[3:] or ["0.0.0.0"])[0]
store = TCPStore(bind, port, is_master=True, wait_for_workers=False,
                 timeout=datetime.timedelta(seconds=timeout))
print(f"kdist: rendezvous store listening on port {port}", flush=True)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: sys.exit(0))
signal.pause()
{{ end -}}

{{/* The store's address as the nodes see it: the store Service, or node 0's DNS name. */}}
{{- define "kdist.storeHost" -}}
{{- if eq .Values.rendezvous.store "standalone" -}}
{{- include "kdist.storeName" . -}}
{{- else -}}
{{- printf "%s-0.%s" (include "kdist.fullname" .) (include "kdist.fullname" .) -}}
{{- end -}}
{{- end }}

{{/*
The wait command (plan.wait_argv) as a list of words.
Call with (dict "root" $ "connect" "1"|"0").
*/}}
{{- define "kdist.waitArgv" -}}
{{- $r := .root.Values.rendezvous -}}
{{- toJson (list "python3" "-c" (include "kdist.waitCode" .root) (include "kdist.storeHost" .root) (toString (int $r.port)) (toString (int $r.waitTimeout)) .connect) -}}
{{- end }}

{{/*
The node container's POSIX sh script (plan.k8s_node_script): wait for the store, run torchrun,
then finish (plan.FINISH_SCRIPT). With the store on node 0, node 0's torchrun hosts it.
*/}}
{{- define "kdist.nodeScript" -}}
{{- $standalone := eq .Values.rendezvous.store "standalone" -}}
{{- $host := include "kdist.storeHost" . -}}
set -e
{{ include "kdist.shjoin" (include "kdist.waitArgv" (dict "root" . "connect" (ternary "1" "0" $standalone)) | fromJsonArray) }}
{{- if $standalone }}
{{ include "kdist.torchrun" (dict "root" . "host" $host "isHost" false) }} &
{{- else }}
if [ "$HOSTNAME" = "{{ include "kdist.fullname" . }}-0" ]; then
  {{ include "kdist.torchrun" (dict "root" . "host" $host "isHost" true) }} &
else
  {{ include "kdist.torchrun" (dict "root" . "host" $host "isHost" false) }} &
fi
{{- end }}
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true; wait "$child" || true; exit 143' TERM INT
set +e
wait "$child"
rc=$?
set -e
trap 'exit 0' TERM INT
attempts="${TMPDIR:-/tmp}/kdist-attempts"
attempt=$(( $(cat "$attempts" 2>/dev/null || echo 0) + 1 ))
echo "$attempt" > "$attempts"
if [ "$rc" -ne 0 ] && [ "$attempt" -le {{ int .Values.maxRestarts }} ]; then exit "$rc"; fi
{{ include "kdist.shjoin" (list "python3" "-c" (include "kdist.finishCode" .)) }} "$rc" {{ include "kdist.shquote" (include "kdist.fullname" .) }} || echo "kdist: could not record the outcome; idling anyway" >&2
while :; do sleep 3600 & wait $!; done
{{ end -}}

{{/* plan.FINISH_CODE, verbatim: record the outcome on the StatefulSet and scale it to zero. */}}
{{- define "kdist.finishCode" -}}
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
{{ end -}}

{{/* Environment of a node container (k8s._env): PET_LOCAL_ADDR, then plan.env() sorted, HOME. */}}
{{- define "kdist.nodeEnv" -}}
{{- $env := dict "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" "1" "PYTHONUNBUFFERED" "1" "LOGLEVEL" "INFO" "KDIST_CHECKPOINT_DIR" .Values.checkpoint.path -}}
{{- with .Values.networkInterface -}}
{{- $_ := set $env "NCCL_SOCKET_IFNAME" . -}}
{{- $_ := set $env "GLOO_SOCKET_IFNAME" . -}}
{{- end -}}
{{- range $name, $value := .Values.env -}}
{{- $_ := set $env $name $value -}}
{{- end -}}
{{- $_ := set $env "HOME" "/tmp" -}}
- name: PET_LOCAL_ADDR
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- range $name, $value := $env }}
{{- if or (ne $name "HOME") (hasKey $.Values.env "HOME") }}
- name: {{ $name | quote }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- if not (hasKey .Values.env "HOME") }}
- name: HOME
  value: /tmp
{{- end }}
{{- end }}

{{/* Node resources; requests equal limits (Guaranteed QoS). */}}
{{- define "kdist.nodeAmounts" -}}
cpu: {{ .Values.resources.cpu | quote }}
memory: {{ .Values.resources.memory | quote }}
{{- if .Values.resources.gpu }}
nvidia.com/gpu: {{ int .Values.resources.gpu }}
{{- end }}
{{- end }}

{{/* Pod Security Standards "restricted", plus a read-only root filesystem. */}}
{{- define "kdist.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop:
  - ALL
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ int .Values.runAsUser }}
runAsGroup: {{ int .Values.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "kdist.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ int .Values.runAsUser }}
runAsGroup: {{ int .Values.runAsUser }}
fsGroup: {{ int .Values.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Scheduling fields shared by the node and store pods (k8s._pod_spec). Node pods get the token of
the finishing ServiceAccount; the store pod gets none. Call with (dict "root" $ "node" BOOL).
*/}}
{{- define "kdist.podScheduling" -}}
{{- $node := .node -}}
{{- with .root -}}
automountServiceAccountToken: {{ $node }}
{{- if $node }}
serviceAccountName: {{ include "kdist.serviceAccount" . | quote }}
{{- end }}
{{- with .Values.priorityClass }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
{{- range . }}
- {{- with .key }}
  key: {{ . | quote }}
  {{- end }}
  operator: {{ .operator | default "Equal" | quote }}
  {{- with .value }}
  value: {{ . | quote }}
  {{- end }}
  {{- with .effect }}
  effect: {{ . | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- include "kdist.imagePullSecrets" . }}
{{- end }}
{{- end }}

{{/* The ServiceAccount node pods run as: the one named in values, or <name>. */}}
{{- define "kdist.serviceAccount" -}}
{{- .Values.serviceAccount | default (include "kdist.fullname" .) -}}
{{- end }}

{{/* Role and RoleBinding that let a finished job stop itself: <name>-finish. */}}
{{- define "kdist.finishRole" -}}
{{- printf "%s-finish" (include "kdist.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "kdist.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
- name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks across values that values.schema.json cannot express (kdist/load.py's cross checks).
Renders nothing; fails the render with a message naming the values.
*/}}
{{- define "kdist.validate" -}}
{{- $v := .Values -}}
{{- $n := $v.nodes -}}
{{- if gt (int $n.min) (int $n.max) -}}
{{- fail (printf "nodes.min (%d) is greater than nodes.max (%d)" (int $n.min) (int $n.max)) -}}
{{- end -}}
{{- if or (lt (int $n.count) (int $n.min)) (gt (int $n.count) (int $n.max)) -}}
{{- fail (printf "nodes.count (%d) must be within nodes.min:nodes.max (%d:%d)" (int $n.count) (int $n.min) (int $n.max)) -}}
{{- end -}}
{{- if and (int $v.resources.gpu) (gt (int $v.procsPerNode) (int $v.resources.gpu)) -}}
{{- fail (printf "procsPerNode is %d but resources.gpu is %d: use at most one process per GPU" (int $v.procsPerNode) (int $v.resources.gpu)) -}}
{{- end -}}
{{- $r := $v.rendezvous -}}
{{- if lt (mul (int $r.keepAliveInterval) (int $r.keepAliveMaxAttempt)) 5 -}}
{{- fail "rendezvous.keepAliveInterval x rendezvous.keepAliveMaxAttempt must be >= 5 s; tighter settings drop live nodes" -}}
{{- end -}}
{{- if ge (int $r.lastCallTimeout) (int $r.joinTimeout) -}}
{{- fail (printf "rendezvous.lastCallTimeout must be less than rendezvous.joinTimeout (%d)" (int $r.joinTimeout)) -}}
{{- end -}}
{{- end }}
