"""The check of the spec against the project folder, made before anything starts (`kdist run`,
`kdist up`) and by `kdist validate`: the entrypoint exists in the project.

The project's code is in the image at /app; nodes start in the checkpoint volume (a node's root
filesystem is read-only, so that volume, /tmp and /dev/shm are all it can write). Where the volume
may be mounted is a rule of the loader (kdist/spec/load.py, `checkpoint.path`).
"""

from __future__ import annotations

import difflib
import os
import posixpath
from pathlib import Path

from kdist.errors import Problem, SpecError
from kdist.plan import IMAGE_PROJECT_DIR
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
        return (f"{entrypoint} is outside the project folder {project}; the image holds the "
                f"project at {IMAGE_PROJECT_DIR}")
    full = project / path
    if _is_file(full):
        return ""
    near = _near_files(project, posixpath.normpath(entrypoint))
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return (f"{entrypoint} not found in the project folder {project} (a relative entrypoint is "
            f"resolved against it, and against {IMAGE_PROJECT_DIR} in the image){hint}")


def _near_files(project: Path, wanted: str) -> list[str]:
    """Up to 3 scripts of the project like `wanted`: the same name elsewhere, else a close
    spelling (hidden folders such as .venv and .git left out)."""
    scripts = []
    for folder, dirs, files in os.walk(project):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        scripts += [str((Path(folder) / f).relative_to(project)) for f in files if f.endswith(".py")]
    same = sorted(s for s in scripts if posixpath.basename(s) == posixpath.basename(wanted))
    return same[:3] or difflib.get_close_matches(wanted, sorted(scripts), n=3, cutoff=0.6)


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
