"""Checks of the spec against the project folder and the pods' filesystem, made before anything
starts (`kdist run`) and by `kdist validate`: the entrypoint exists in the project, and the
job's working directory (the checkpoint volume, checkpoint.path) is a place a node can write.

A node's root filesystem is read-only (Kubernetes `readOnlyRootFilesystem`, Compose
`read_only`); the writable places are the checkpoint volume, /tmp and /dev/shm (emptyDirs or
tmpfs, private to a node) and nothing else. The project's code is in the image at /app.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from kdist.errors import Problem, SpecError
from kdist.load import Pos, _pos_of, parse_yaml, read_text
from kdist.plan import IMAGE_PROJECT_DIR
from kdist.spec import JobSpec

# mount points a node already has, or kernel filesystems: never the checkpoint volume's path
TAKEN = {
    "/tmp": "each node's private /tmp (an emptyDir on Kubernetes, a tmpfs on Compose): not shared "
            "between nodes and lost with the node",
    "/dev": "the device filesystem (/dev/shm is each node's shared memory)",
    "/proc": "the kernel's process filesystem",
    "/sys": "the kernel's sysfs",
}


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def workdir_problem(path: str) -> str:
    """Why no node can use `path` as the shared, writable working directory ("" when it can)."""
    path = posixpath.normpath(path)
    if path == "/":
        return "the root filesystem is read-only on every node; use a folder like /checkpoints"
    for top, what in TAKEN.items():
        if _under(path, top):
            return f"{path} is {what}; use a folder like /checkpoints"
    if _under(IMAGE_PROJECT_DIR, path):
        return (f"mounting the volume at {path} would hide the project's code in the image "
                f"({IMAGE_PROJECT_DIR}); use a folder like /checkpoints")
    return ""


def entrypoint_problem(entrypoint: str, project: Path, local: bool) -> str:
    """Why the entrypoint cannot start ("" when it can). An absolute path names a file in the
    image, checked only for `kdist run` (`local`), where it must exist on this host."""
    path = Path(entrypoint)
    if path.is_absolute():
        if local and not path.is_file():
            return f"{entrypoint} does not exist on this host (kdist run starts it here)"
        return ""
    if posixpath.normpath(entrypoint).startswith("../"):
        return (f"{entrypoint} is outside the project folder {project}; the image holds the "
                f"project at {IMAGE_PROJECT_DIR}")
    full = project / path
    if full.is_file():
        return ""
    near = _files_named(project, path.name)[:3]
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return (f"{entrypoint} not found in the project folder {project} (a relative entrypoint is "
            f"resolved against it, and against {IMAGE_PROJECT_DIR} in the image){hint}")


def _files_named(project: Path, name: str) -> list[str]:
    """Files called `name` in the project, hidden folders (.venv, .git) left out."""
    found = []
    for folder, dirs, files in os.walk(project):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        if name in files:
            found.append(str((Path(folder) / name).relative_to(project)))
    return sorted(found)


def check(job: JobSpec, text: str, file: str, project: Path, local: bool = False) -> list[Problem]:
    """Problems located at the spec's lines: the entrypoint, then checkpoint.path."""
    doc = parse_yaml(text, file)
    out = []
    for path, message in (("entrypoint", entrypoint_problem(job.entrypoint, project, local)),
                          ("checkpoint.path", workdir_problem(job.checkpoint.path))):
        if message:
            pos: Pos = _pos_of(doc, path)
            out.append(Problem(file, pos[0] + 1, pos[1] + 1, path, message))
    return out


def check_file(job: JobSpec, spec_file: Path, project: Path, local: bool = False) -> None:
    """SpecError with every problem `check` finds in the spec file (nothing has started yet)."""
    problems = check(job, read_text(spec_file), str(spec_file), project, local)
    if problems:
        raise SpecError(problems)
