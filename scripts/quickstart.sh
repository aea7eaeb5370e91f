#!/usr/bin/env bash
# The README's Quickstart, line by line, in a fresh clone of this repository's committed HEAD.
#
#   scripts/quickstart.sh              # clone HEAD into a temporary folder, run, remove it
#   scripts/quickstart.sh --worktree   # a copy of the working tree instead (uncommitted edits)
#   scripts/quickstart.sh --list       # only print the lines and their needs (no clone, no run)
#   KEEP=1 scripts/quickstart.sh       # keep the folder afterwards
#
# The lines are read from README.md between `<!-- quickstart:begin -->` and
# `<!-- quickstart:end -->` (one command per line, four spaces of indent) and run one after the
# other in this one shell, as a reader would type them. A line ending in `needs: a, b` runs only
# when each need is met here (docker, network, image, cluster, helm); otherwise the script prints
# `skipped: <why>`. The first failing line stops the script with its README line number.
set -euo pipefail

BEGIN_MARK='<!-- quickstart:begin -->'
END_MARK='<!-- quickstart:end -->'
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
case "${1:-}" in
  "") mode="head" ;;
  --worktree) mode=worktree ;;
  --list) mode=list ;;
  *) echo "usage: $0 [--worktree | --list]" >&2; exit 2 ;;
esac
KNOWN_NEEDS=" docker network image cluster helm "

say() { printf 'quickstart: %s\n' "$*" >&2; }

# ---- the lines -------------------------------------------------------------------------------

# `LINENO<TAB>command` for every command line between the markers of README.md ($1).
quickstart_lines() {
  awk -v b="$BEGIN_MARK" -v e="$END_MARK" '
    $0 == b { inside = 1; found = 1; next }
    $0 == e { inside = 0; next }
    inside && /^    [^ ]/ { print NR "\t" substr($0, 5) }
    END { if (!found) exit 3 }' "$1"
}

# The needs of one line: the words after a trailing `needs:`, comma-separated.
needs_of() {
  if [[ $1 =~ needs:\ *([a-z, ]+)$ ]]; then
    tr ',' ' ' <<<"${BASH_REMATCH[1]}"
  fi
}

# ---- the needs: each check prints why it is not met (nothing when it is) ---------------------

missing_docker() {
  command -v docker >/dev/null || { echo "the docker CLI is not installed"; return; }
  docker info --format '{{.ServerVersion}}' >/dev/null 2>&1 || { echo "no Docker Engine answers \`docker info\`"; return; }
  docker compose version >/dev/null 2>&1 || echo "Docker Compose v2 is not installed"
}

missing_network() {
  # the image build installs torch from pip's index: ask that index the way pip would
  timeout 60 python3 -m pip index versions torch >/dev/null 2>&1 \
    || echo "pip's package index cannot be reached (the image build installs torch from it)"
}

missing_image() {
  local image
  image=$(python3 -c 'import sys, yaml; print(yaml.safe_load(open("kdist.yaml"))["image"])' 2>/dev/null) \
    || { echo "no kdist.yaml with an image here"; return; }
  [ -n "$(missing_docker)" ] && { missing_docker; return; }
  docker image inspect "$image" >/dev/null 2>&1 || echo "image $image is not on this Docker host (build it first)"
}

missing_cluster() {
  local err
  if ! err=$(kdist status --target k8s 2>&1 >/dev/null); then
    echo "no Kubernetes API server answers: ${err%%$'\n'*}"
  fi
}

missing_helm() {
  command -v helm >/dev/null || echo "the helm binary is not installed"
}

# Why the needs of a line are not met here ("" when they are).
unmet() {
  local need why
  for need in $1; do
    if [[ $KNOWN_NEEDS == *" $need "* ]]; then
      why=$("missing_$need")
    else
      why="unknown need '$need' (known:$KNOWN_NEEDS)"
    fi
    if [ -n "$why" ]; then
      echo "needs $need: $why"
      return
    fi
  done
}

# `--list`: the lines of this checkout's README.md and their needs; exit 2 on an unknown need.
list_lines() {
  local lines number command need bad=0
  lines=$(quickstart_lines "$repo/README.md") || { say "README.md has no quickstart section"; exit 2; }
  while IFS=$'\t' read -r number command; do
    printf 'README.md:%s\t%s\t%s\n' "$number" "$(needs_of "$command" | xargs)" "$command"
    for need in $(needs_of "$command"); do
      [[ $KNOWN_NEEDS == *" $need "* ]] || { say "README.md:$number: unknown need '$need'"; bad=1; }
    done
  done <<<"$lines"
  exit $((bad * 2))
}
[ "$mode" = list ] && list_lines

# ---- the fresh copy --------------------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/kdist-quickstart.XXXXXX")
# the folder's name becomes the job's name (kdist init): unique, so jobs of parallel runs differ
clone="$work/kdist-quickstart-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
ran_up=""

cleanup() {
  local code=$?
  set +e
  if [ -n "$ran_up" ] && [ -z "$(missing_docker)" ]; then
    (cd "$clone" && kdist down --volumes >/dev/null 2>&1)
  fi
  if [ -n "${KEEP:-}" ]; then
    say "kept $clone"
  else
    rm -rf "$work"
  fi
  exit "$code"
}
trap cleanup EXIT

if [ "$mode" = head ]; then
  git clone --quiet --no-local "$repo" "$clone"
  say "fresh clone of $repo at $(git -C "$clone" rev-parse --short HEAD) in $clone"
else
  mkdir -p "$clone"
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -cf - -T - 2>/dev/null) | tar -xf - -C "$clone"
  say "copy of the working tree of $repo (uncommitted edits included) in $clone"
fi
cd "$clone"

lines=$(quickstart_lines README.md) || { say "README.md has no '$BEGIN_MARK' ... '$END_MARK' section"; exit 2; }
[ -n "$lines" ] || { say "the quickstart section of README.md has no command lines"; exit 2; }

# ---- run them --------------------------------------------------------------------------------

started=$SECONDS
ran=0
skipped=0
while IFS=$'\t' read -r -u 3 number command; do
  printf '\n==> README.md:%s: %s\n' "$number" "$command"
  why=$(unmet "$(needs_of "$command")")
  if [ -n "$why" ]; then
    echo "skipped: $why"
    skipped=$((skipped + 1))
    continue
  fi
  [[ $command == "kdist up"* ]] && ran_up=1
  line_start=$SECONDS
  # in this shell, as typed at a prompt (no -e/-u; a pipeline fails when any part fails), so
  # that `. .venv/bin/activate` and `cd` carry over to the next lines
  set +eu
  eval "$command" </dev/null
  status=$?
  set -eu
  if [ $status -ne 0 ]; then
    say "README.md:$number failed with exit code $status: $command"
    exit 1
  fi
  ran=$((ran + 1))
  echo "ok ($((SECONDS - line_start)) s)"
done 3<<<"$lines"

say "$ran lines ran, $skipped skipped, in $((SECONDS - started)) s"
