"""The check of the spec against the project folder, made before anything starts (`kdist run`,
`kdist up`) and by `kdist validate`: the entrypoint exists in the project.

In an image the project's code is in the image's working directory (its WORKDIR; /app in kdist's
images), which a relative entrypoint is resolved against; nodes then start in the checkpoint
volume (a node's root filesystem is read-only, so that volume, /tmp and /dev/shm are all it can
write). So this folder stands for the image's code only where the image is built from it
(`compose.build`, `built_here`); elsewhere a missing entrypoint is a warning, since the image may
hold it. Where the volume may be mounted is a rule of the loader (kdist/spec/load.py).
"""

from __future__ import annotations

import difflib
import os
import posixpath
from pathlib import Path

from kdist.errors import Problem, SpecError
from kdist.spec.load import Pos, _pos_of, parse_yaml, read_text
from kdist.spec.model import JobSpec


def _is_file(path: Path) -> bool:
    """Path.is_file, False also for a name the system refuses (too long, for instance)."""
    try:
        return path.is_file()
    except OSError:
        return False


def entrypoint_problem(entrypoint: str, project: Path, local: bool) -> str:
    """Why the entrypoint cannot start ("" when it can). An absolute path names a file in the
    image, checked only for `kdist run` (`local`), where it must exist on this host."""
    path = Path(entrypoint)
    if path.is_absolute():
        if local and not _is_file(path):
            return f"{entrypoint} does not exist on this host (kdist run starts it here)"
        return ""
    if posixpath.normpath(entrypoint).startswith("../"):
        return (f"{entrypoint} is outside the project folder {project}; in an image a relative "
                "entrypoint is under the image's working directory (its WORKDIR)")
    full = project / path
    if _is_file(full):
        return ""
    near = _near_files(project, posixpath.normpath(entrypoint))
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return (f"{entrypoint} not found in the project folder {project} (a relative entrypoint is "
            f"resolved against it, and in an image against the image's working directory){hint}")


def _near_files(project: Path, wanted: str) -> list[str]:
    """Up to 3 scripts of the project like `wanted`: the same name elsewhere (the shallowest
    first), else a close spelling (hidden folders such as .venv and .git left out)."""
    scripts = []
    for folder, dirs, files in os.walk(project):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        scripts += [str((Path(folder) / f).relative_to(project)) for f in files if f.endswith(".py")]
    same = sorted((s for s in scripts if posixpath.basename(s) == posixpath.basename(wanted)),
                  key=lambda s: (s.count("/"), s))
    return same[:3] or difflib.get_close_matches(wanted, sorted(scripts), n=3, cutoff=0.6)


def built_here(job: JobSpec) -> bool:
    """Whether the nodes' image is built from this project (compose.build): then its working
    directory holds what this folder holds, and a missing entrypoint is an error."""
    return job.compose.build is not None


def check(job: JobSpec, text: str, file: str, project: Path, local: bool = False) -> list[Problem]:
    """The entrypoint's problem, located at its line in the spec ([] when there is none)."""
    message = entrypoint_problem(job.entrypoint, project, local)
    if not message:
        return []
    pos: Pos = _pos_of(parse_yaml(text, file), "entrypoint")
    return [Problem(file, pos[0] + 1, pos[1] + 1, "entrypoint", message)]


def check_file(job: JobSpec, spec_file: Path, project: Path, local: bool = False) -> None:
    """SpecError with every problem `check` finds in the spec file (nothing has started yet)."""
    problems = check(job, read_text(spec_file), str(spec_file), project, local)
    if problems:
        raise SpecError(problems)
