"""Atomic file output: temp files in the targets' folders, then renames. Nothing half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kdist.errors import KdistError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _stage(path: Path, text: str, mode: int | None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask() if mode is None else mode)  # mkstemp creates 0600
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def write_all(files: dict[Path, str], mode: int | None = None) -> None:
    """Stage every file as a temp file first; rename only when all of them were written.

    `mode` (e.g. 0o600 for a secret) is set before anything is written; default: the umask's.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, text in files.items():
            staged.append((_stage(path, text, mode), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as e:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise KdistError(f"cannot write {e.filename or ''}: {e.strerror}") from None
