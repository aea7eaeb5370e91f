"""Inputs: files, directories (recursively *.yaml / *.yml), globs and `-` (stdin).

Inputs may be hostile (a pull request can add any file): kdist validate stays inside the paths
it was given (a symlink may point only inside the folder it was found in), reads regular files
only (no FIFOs or devices, which would hang), and refuses files above MAX_BYTES before reading.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kdist.validate.model import Finding
from kdist.validate.rules import RULES

YAML_SUFFIXES = (".yaml", ".yml")
SKIP_DIRS = {"node_modules", "__pycache__", "venv"}
MAX_BYTES = 4 * 2**20  # per file; the API server refuses requests above 3 MiB anyway
MAGIC = "*?["


@dataclass(frozen=True)
class Source:
    name: str  # as shown in findings
    path: Path | None  # None for stdin
    data: bytes
    recursed: bool  # found in a directory or by a glob: unrecognised files are skipped


@dataclass(frozen=True)
class Target:
    path: Path
    root: Path  # the resolved folder the file must stay inside
    recursed: bool


def unreadable(name: str, message: str, rule_id: str = "input-unreadable") -> Finding:
    rule = RULES[rule_id]
    return Finding(rule.id, rule.severity, name, 0, 0, "", "", message, rule.hint)


def _inside(path: Path, root: Path) -> bool:
    """Both resolved: is `path` root itself or below it?"""
    base = str(root)
    return str(path) == base or str(path).startswith(base.rstrip(os.sep) + os.sep)


def _walk(root: Path) -> list[Path]:
    """YAML files under root, sorted; hidden folders and Helm charts (templates are not YAML).

    Symlinked folders are not entered (no loops); symlinked files are listed and checked later.
    """
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not (here / d).is_symlink()
                         and not (here / d / "Chart.yaml").exists())
        found += [here / f for f in sorted(files)
                  if f.endswith(YAML_SUFFIXES) and not f.startswith(".")]
    return found


def _glob(pattern: str) -> tuple[Path, list[Path]]:
    """(the folder before the first wildcard, matches) with glob.glob's rules, except that `**`
    never enters a symlinked folder (glob.glob does, and loops)."""
    parts = Path(pattern).parts
    cut = next(i for i, p in enumerate(parts) if any(ch in p for ch in MAGIC))
    base = Path(*parts[:cut]) if cut else Path(".")
    return base, sorted(set(_match(base, parts[cut:]))) if base.is_dir() else []


def _match(folder: Path, parts: tuple[str, ...]) -> Iterator[Path]:
    head, rest = parts[0], parts[1:]
    if head == "**":  # any depth; a trailing ** names the folder (collect walks it)
        for sub in _folders(folder) if rest else [folder]:
            yield from _match(sub, rest) if rest else [sub]
        return
    try:
        names = os.listdir(folder)
    except OSError:
        return
    hidden = head.startswith(".")
    for name in fnmatch.filter(names, head):
        path = folder / name
        if name.startswith(".") and not hidden:
            continue
        if not rest:
            yield path
        elif path.is_dir():
            yield from _match(path, rest)


def _folders(root: Path) -> list[Path]:
    """root and every folder below it; hidden and symlinked folders are not entered."""
    out = []
    for folder, dirs, _ in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out.append(Path(folder))
    return out


def _targets(arg: str) -> tuple[list[Target], str]:
    """The files one command-line argument names, or why there are none."""
    path = Path(arg)
    if path.exists() or path.is_symlink():
        parent = path.absolute().parent.resolve()
        if not path.is_dir():
            return [Target(path, parent, False)], ""
        root = path.resolve()
        if not _inside(root, parent):
            return [], f"a symlink to outside {parent}; not followed"
        return [Target(p, root, True) for p in _walk(path)], ""
    if any(ch in arg for ch in MAGIC):
        base, matches = _glob(arg)
        if not matches:
            return [], "no files match this pattern"
        root = base.resolve()
        out: list[Target] = []
        for m in matches:
            if m.is_dir() and not m.is_symlink():
                out += [Target(p, root, True) for p in _walk(m)]
            elif not m.is_dir():
                out.append(Target(m, root, True))
        return out, ""
    return [], "no such file or directory"


def read_regular(target: Target, real: Path) -> bytes | Finding:
    """The content (of `real`, the resolved path), or why not: inside its root, a regular file,
    at most MAX_BYTES."""
    name = str(target.path)
    if not _inside(real, target.root):
        return unreadable(name, f"a symlink to outside {target.root}; not followed")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        return unreadable(name, f"cannot read: {e.strerror or e}")
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return unreadable(name, f"not a regular file ({_file_type(info.st_mode)}); not read")
        if info.st_size > MAX_BYTES:
            return too_large(name, info.st_size)
        data = f.read(info.st_size + 1)  # not MAX_BYTES: that allocates 4 MiB per file
        if len(data) > info.st_size:  # growing, or a pseudo file that reports size 0
            data += f.read(MAX_BYTES + 1 - len(data))
    return too_large(name, len(data)) if len(data) > MAX_BYTES else data


def too_large(name: str, size: int) -> Finding:
    return unreadable(name, f"{size / 2**20:.1f} MiB is above the {MAX_BYTES // 2**20} MiB "
                      "budget per file; split it into several files", "input-budget")


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a directory" if stat.S_ISDIR(mode) else "not a plain file"


def collect(args: list[str], stdin: Callable[[int], bytes] | None
            ) -> tuple[list[Source], list[Finding]]:
    sources: list[Source] = []
    problems: list[Finding] = []
    seen: set[str] = set()
    for arg in args:
        if arg == "-":
            if "-" not in seen and stdin is not None:
                seen.add("-")
                data = stdin(MAX_BYTES + 1)
                if len(data) > MAX_BYTES:
                    problems.append(too_large("<stdin>", len(data)))
                else:
                    sources.append(Source("<stdin>", None, data, False))
            continue
        targets, error = _targets(arg)
        if error:
            problems.append(unreadable(arg, error))
        for target in targets:
            key = os.path.realpath(target.path)
            if key in seen:
                continue
            seen.add(key)
            content = read_regular(target, Path(key))
            if isinstance(content, Finding):
                problems.append(content)
            else:
                sources.append(Source(str(target.path), target.path, content, target.recursed))
    return sources, problems


def decode(source: Source) -> tuple[str, str]:
    """(text, '') or ('', why it is not text)."""
    if b"\x00" in source.data:
        return "", "binary file (contains NUL bytes), not YAML"
    try:
        return source.data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as e:
        return "", f"not UTF-8 text (invalid byte at offset {e.start})"
