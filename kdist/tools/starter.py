"""The starter spec written by `kdist init`: kdist's commented template, for the user's script."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kdist.errors import UsageError
from kdist.spec.load import MAX_NAME

DEMO_ENTRYPOINT = "trainers/train.py"  # the template's own trainer (this repository's)
ENTRYPOINT_LINE = re.compile(r"^entrypoint: \S+ .*\n(?:^ +#.*\n)*", re.M)
ARGS_LINE = re.compile(r"^args: .*\n(?:^ +#.*\n)*", re.M)
PLAIN = re.compile(r"^[\w./-]+$")


def job_name(folder: str) -> str:
    """A folder name made into a DNS-1035 label: `My_Project 2` -> `my-project-2`."""
    name = re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:MAX_NAME].rstrip("-")
    return name or "my-job"


def training_scripts(folder: Path) -> list[str]:
    """Python scripts in `folder` (not below it) that import torch and run as __main__."""
    found = []
    for path in sorted(folder.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "torch" in text and "__main__" in text:
            found.append(path.name)
    return found


def pick_script(folder: Path, script: str | None) -> str | None:
    """The entrypoint: `script` when it exists, the one training script in `folder`, or None
    for the template's demo trainer when the folder has none but has that trainer."""
    if script is not None:
        if not (folder / script).is_file():
            raise UsageError(f"{script}: no such file in {folder} (the entrypoint is relative to "
                             "the project folder, where kdist runs)")
        if not script.endswith(".py"):
            raise UsageError(f"{script} is not a Python script; name the training script "
                             "(-f names the spec file)")
        inside = (folder / script).resolve()
        if not inside.is_relative_to(folder.resolve()):
            raise UsageError(f"{script} is outside the project folder {folder}; the image holds "
                             "the project, so run kdist init in the folder that contains it")
        return inside.relative_to(folder.resolve()).as_posix()
    found = training_scripts(folder)
    if len(found) == 1:
        return found[0]
    if found:
        raise UsageError(f"several training scripts here ({', '.join(found)}); name one: "
                         f"kdist init {found[0]}")
    if (folder / DEMO_ENTRYPOINT).is_file():
        return None
    raise UsageError("no training script found here (a .py file that imports torch and runs "
                     "as __main__); name it: kdist init path/to/train.py [-- ARGS]")


def _yaml_word(word: str) -> str:
    return word if PLAIN.match(word) and not word[0].isdigit() else json.dumps(word)


def starter_spec(template: str, name: str, script: str | None = None,
                 args: tuple[str, ...] = ()) -> str:
    """The template with the job's name and, for a user's script, its entrypoint and args."""
    named = f"name: {job_name(name)}"
    text = re.sub(r"^name: my-job +", f"{named:<28} ", template, count=1, flags=re.M)
    if script is None:
        return text
    entry = (_commented(f"entrypoint: {_yaml_word(script)}", "the script torchrun starts, "
                        "relative to the project folder")
             + _commented("", "(where you run kdist; /app in the image); siblings import as usual"))
    listed = ", ".join(_yaml_word(a) for a in args)
    text = ENTRYPOINT_LINE.sub(lambda _: entry, text, count=1)
    args_line = _commented(f"args: [{listed}]", "arguments for the script")
    return ARGS_LINE.sub(lambda _: args_line, text, count=1)


def _commented(line: str, comment: str) -> str:
    """A line with its comment in the template's comment column."""
    return f"{line:<28} # {comment}\n"
