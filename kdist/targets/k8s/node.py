"""A Kubernetes node's two programs: the node container's script (wait for the store, torchrun,
hand the exit code over) and the finish sidecar's command (kdist/node/finish.py), which reports
the job's outcome through the API. The chart's templates/_helpers.tpl renders the same text."""

from __future__ import annotations

from kdist.plan import LaunchPlan, program, sh_join

# A StatefulSet restarts containers that exit, so a Kubernetes node finishes the job itself. The
# trainer container holds no API token: its script starts in the image's working directory
# (kept as $project), moves to the job's, waits for the store, runs torchrun, and a
# failure (of either) is retried by restarting the container up to `max_restarts` times (counted
# in $TMPDIR or /tmp, an emptyDir that outlives container restarts). Then, or on success, it
# hands the exit code to the finish sidecar (kdist/node/finish.py) through the shared folder
# $KDIST_FINISH_DIR (default FINISH_DIR) and idles until stopped. A pod whose sidecar found the
# job finished already (DIR/finished) does not train.
FINISH_DIR = "/var/run/kdist"
FINISH_SCRIPT = """\
{enter}finish="${{KDIST_FINISH_DIR:-{folder}}}"
idle() {{ trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done; }}
if [ -e "$finish/finished" ] || [ -e "$finish/exit-code" ]; then idle; fi
trap 'kill -TERM "$child" 2>/dev/null || true; wait "$child" || true; exit 143' TERM INT
{wait} &
child=$!
wait "$child"
rc=$?
if [ "$rc" -eq 0 ]; then
{torchrun}
  child=$!
  wait "$child"
  rc=$?
fi
trap 'exit 0' TERM INT
attempts="${{TMPDIR:-/tmp}}/kdist-attempts"
attempt=$(( $(cat "$attempts" 2>/dev/null || echo 0) + 1 ))
echo "$attempt" > "$attempts"
if [ "$rc" -ne 0 ] && [ "$attempt" -le {retries} ]; then exit "$rc"; fi
echo "$rc" > "$finish/exit-code.tmp" && mv "$finish/exit-code.tmp" "$finish/exit-code"
echo "kdist: exit code $rc after $attempt attempt(s); the finish sidecar takes over" >&2
idle
"""


FINISH_CODE = program("finish.py")  # the finish sidecar's program


def node_script(plan: LaunchPlan, host: str) -> str:
    """POSIX sh for a Kubernetes node: wait, run torchrun, then finish (see FINISH_SCRIPT).

    One pod template serves every node, so with the store on node 0 a shell test on the
    pod's hostname picks the hosting command line (`is_host=true`) for `<name>-0` only.
    """
    client = sh_join(plan.torchrun_argv(host))
    if plan.standalone_store:
        lines = [f"  {client} &"]
    else:
        hosting = sh_join(plan.torchrun_argv(host, is_host=True))
        lines = [f'  if [ "$HOSTNAME" = "{plan.name}-0" ]; then', f"    {hosting} &",
                 "  else", f"    {client} &", "  fi"]
    return FINISH_SCRIPT.format(enter=plan.enter_workdir(), folder=FINISH_DIR,
                                wait=sh_join(plan.wait_argv(host)),
                                torchrun="\n".join(lines), retries=plan.spec.max_restarts)


def finish_argv(plan: LaunchPlan, folder: str = FINISH_DIR) -> list[str]:
    """The finish sidecar (kdist/node/finish.py): NAME STORE NODES_MIN DIR."""
    store = plan.store_name if plan.standalone_store else ""
    # -I -S: no PYTHON* variables, user or site packages run beside the token; stdlib only
    return ["python3", "-I", "-S", "-c", FINISH_CODE, plan.name, store, str(plan.spec.nodes.min),
            folder]
