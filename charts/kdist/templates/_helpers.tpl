{{/*
Helpers for charts/kdist. Every string here mirrors kdist/plan.py, kdist/targets/k8s/render.py and node.py:
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

{{/*
The entrypoint as the node's script names it (plan.image_entrypoint): a relative one under
$project, the image's working directory.
*/}}
{{- define "kdist.imageEntrypoint" -}}
{{- if hasPrefix "/" .Values.entrypoint -}}
{{- clean .Values.entrypoint -}}
{{- else -}}
{{- printf "$project/%s" (clean .Values.entrypoint) -}}
{{- end -}}
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

{{/*
plan.sh_join: a list of words, each quoted by kdist.shquote, joined by spaces; $project at the
start of a word stays a variable.
*/}}
{{- define "kdist.shjoin" -}}
{{- $words := list -}}
{{- range . -}}
{{- if eq . "$project" -}}
{{- $words = append $words "\"$project\"" -}}
{{- else if hasPrefix "$project/" . -}}
{{- $words = append $words (printf "\"$project\"%s" (include "kdist.shquote" (trimPrefix "$project" .))) -}}
{{- else -}}
{{- $words = append $words (include "kdist.shquote" .) -}}
{{- end -}}
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
      (include "kdist.imageEntrypoint" .root) -}}
{{- range $v.args -}}
{{- $argv = append $argv (toString .) -}}
{{- end -}}
{{- include "kdist.shjoin" $argv -}}
{{- end }}

{{/* files/wait.py (kdist/node/wait.py): wait until the store's name resolves (and its port accepts). */}}
{{- define "kdist.waitCode" -}}
{{ .Files.Get "files/wait.py" }}
{{- end }}

{{/* files/store.py (kdist/node/store.py): the standalone c10d store (a TCPStore server). */}}
{{- define "kdist.storeCode" -}}
{{ .Files.Get "files/store.py" }}
{{- end }}

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
Call with (dict "root" $ "connect" "1"|"0" ["project" "$project"]): with a project, it first
links the project's entries into the working directory.
*/}}
{{- define "kdist.waitArgv" -}}
{{- $r := .root.Values.rendezvous -}}
{{- $argv := list "python3" "-c" (include "kdist.waitCode" .root) (include "kdist.storeHost" .root) (toString (int $r.port)) (toString (int $r.waitTimeout)) .connect -}}
{{- if .project }}{{ $argv = append $argv .project }}{{ end -}}
{{- toJson $argv -}}
{{- end }}

{{/*
The node container's POSIX sh script (kdist/targets/k8s/node.py, node_script): keep the image's
working directory as $project, move to the checkpoint volume, wait for the store, run torchrun,
hand the exit code to the finish sidecar. With the store on node 0, node
0's torchrun hosts it.
*/}}
{{- define "kdist.nodeScript" -}}
{{- $standalone := eq .Values.rendezvous.store "standalone" -}}
{{- $host := include "kdist.storeHost" . -}}
project=$PWD
cd {{ include "kdist.shquote" .Values.checkpoint.path }} || exit 1
finish="${KDIST_FINISH_DIR:-/var/run/kdist}"
idle() { trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done; }
if [ -e "$finish/finished" ] || [ -e "$finish/exit-code" ]; then idle; fi
trap 'kill -TERM "$child" 2>/dev/null || true; wait "$child" || true; exit 143' TERM INT
{{ include "kdist.shjoin" (include "kdist.waitArgv" (dict "root" . "connect" (ternary "1" "0" $standalone) "project" "$project") | fromJsonArray) }} &
child=$!
wait "$child"
rc=$?
if [ "$rc" -eq 0 ]; then
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
  wait "$child"
  rc=$?
fi
trap 'exit 0' TERM INT
attempts="${TMPDIR:-/tmp}/kdist-attempts"
attempt=$(( $(cat "$attempts" 2>/dev/null || echo 0) + 1 ))
echo "$attempt" > "$attempts"
if [ "$rc" -ne 0 ] && [ "$attempt" -le {{ int .Values.maxRestarts }} ]; then exit "$rc"; fi
echo "$rc" > "$finish/exit-code.tmp" && mv "$finish/exit-code.tmp" "$finish/exit-code"
echo "kdist: exit code $rc after $attempt attempt(s); the finish sidecar takes over" >&2
idle
{{ end -}}

{{/*
The finish sidecar's command (plan.finish_argv): files/finish.py, the same bytes as
kdist/node/finish.py (tests/test_helm.py compares them), and NAME STORE NODES_MIN DIR; -I -S:
nothing but the standard library runs beside the token.
*/}}
{{- define "kdist.finishArgv" -}}
{{- $store := ternary (include "kdist.storeName" .) "" (eq .Values.rendezvous.store "standalone") -}}
{{- toJson (list "python3" "-I" "-S" "-c" (.Files.Get "files/finish.py") (include "kdist.fullname" .) $store (toString (int .Values.nodes.min)) "/var/run/kdist") -}}
{{- end }}

{{/* Environment of a node container (k8s._env): PET_LOCAL_ADDR, then plan.env() sorted, HOME,
   then secretEnv from the Secret <name>-env. */}}
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
{{- range .Values.secretEnv }}
- name: {{ . | quote }}
  valueFrom:
    secretKeyRef:
      name: {{ printf "%s-env" (include "kdist.fullname" $) | quote }}
      key: {{ . | quote }}
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
Scheduling fields shared by the node and store pods (k8s._pod_spec). No container gets an
automounted token: node pods run as the finishing ServiceAccount (for the finish sidecar's
projected token) with the values' scheduling; the store pod prefers nodes without GPUs.
Call with (dict "root" $ "node" BOOL).
*/}}
{{- define "kdist.podScheduling" -}}
{{- $node := .node -}}
{{- with .root -}}
automountServiceAccountToken: false
{{- if $node }}
serviceAccountName: {{ include "kdist.serviceAccount" . | quote }}
{{- end }}
{{- with .Values.priorityClass }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- if not $node }}
affinity:
  nodeAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      preference:
        matchExpressions:
        - key: nvidia.com/gpu.present
          operator: NotIn
          values:
          - "true"
{{- end }}
{{- with (ternary .Values.nodeSelector dict $node) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (ternary .Values.tolerations list $node) }}
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
Checks across values that values.schema.json cannot express (kdist/spec/load.py's cross checks).
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
