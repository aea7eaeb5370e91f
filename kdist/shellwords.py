"""Shell words of the scripts kdist renders and reads: POSIX splitting, logical lines (quoted
newlines and continuations joined) and the torchrun lines among them. Shared by `kdist validate`
(kdist/validate/torchrun.py) and `kdist diff` (kdist/tools/diff.py); imports only the standard
library, so `kdist diff` does not load the validator."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Iterator


def torchrun_at(tokens: list[str]) -> int | None:
    """Index of the first option token after `torchrun` / `python -m torch.distributed.run`."""
    for i, tok in enumerate(tokens):
        base = tok.rsplit("/", 1)[-1]
        if base == "torchrun":
            return i + 1
        if base.startswith("python") and tokens[i + 1:i + 3] == ["-m", "torch.distributed.run"]:
            return i + 3
    return None


_SHELL_SPECIAL = re.compile(r"""['"\\;&|()<>#`]""")


def split_words(line: str) -> list[str] | None:
    """POSIX shell words, control operators as separate tokens; None when unbalanced."""
    if not _SHELL_SPECIAL.search(line):
        return line.split()  # same words as shlex, much faster
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    try:
        return list(lex)
    except ValueError:
        return None


PUNCT = re.compile(r"^[;&|()<>]+$")
# quotes, escapes and comments outside quotes; inside double quotes: escapes and the closing quote
_OUTSIDE = re.compile(r"""\\.|['"]|(?:^|(?<=[\s;&|()<>]))#""", re.S)
_IN_DOUBLE = re.compile(r'\\.|"', re.S)
# a whole line whose quotes all close and that has no `#` (one C-speed match, the common case)
_PLAIN = re.compile(r"""[^'"\\#]*(?:(?:'[^']*'|"[^"\\]*(?:\\.[^"\\]*)*"|\\.)[^'"\\#]*)*""",
                    re.S)
MAX_JOINED = 200


def _quote_after(line: str, state: str) -> str:
    """The quote still open after `line` ("", "'" or '"'), starting inside `state`."""
    if not state and _PLAIN.fullmatch(line):
        return ""
    i = 0
    while True:
        if state == "'":  # no escapes inside single quotes
            j = line.find("'", i)
            if j < 0:
                return state
            state, i = "", j + 1
            continue
        m = (_IN_DOUBLE if state else _OUTSIDE).search(line, i)
        if m is None:
            return state
        token, i = m[0], m.end()
        if token == "#":
            return ""  # a comment to the end of the line
        if token[0] != "\\":
            state = "" if state else token


def logical_lines(script: str) -> list[tuple[int, str]]:
    """(first physical line, text): backslash continuations and quoted newlines joined.

    A quoted argument may contain newlines (`python3 -c '...'`, an argument with a newline); its
    line goes on until the quote closes, at most MAX_JOINED physical lines.
    """
    lines = script.split("\n")
    out = []
    start = 0
    while start < len(lines):
        end, text = start, lines[start]
        state = _quote_after(text, "")
        while end + 1 < len(lines):
            if state and end - start < MAX_JOINED:
                text += "\n" + lines[end + 1]
            elif not state and text.endswith("\\"):
                text = text[:-1] + " " + lines[end + 1]
            else:
                break
            end += 1
            state = _quote_after(lines[end], state)
        out.append((start, text))
        start = end + 1
    return out


def torchrun_lines(lines: Iterable[tuple[int, tuple[int, str]]],
                    strict: bool) -> Iterator[tuple[int, list[str], list[str]]]:
    """The torchrun lines among (index, logical line): (index, the words before torchrun's
    options, its words from the options up to a control operator such as `&`)."""
    for index, (_, text) in lines:
        if "torchrun" not in text and "torch.distributed.run" not in text:
            continue  # shlex is slow: split only the lines that can launch torchrun
        tokens = split_words(text)
        if tokens is None:
            if strict:
                raise ValueError(f"unbalanced quotes in {text[:80]!r}")
            continue
        at = torchrun_at(tokens)
        if at is not None:
            words = tokens[at:]
            cut = next((i for i, w in enumerate(words) if PUNCT.match(w)), len(words))
            yield index, tokens[:at], words[:cut]


def script_torchruns(script: str) -> list[tuple[int, list[str], list[str]]]:
    """Every torchrun line of a shell script, in order (see torchrun_lines); the `kdist diff`
    parser (kdist/tools/diff.py). A line whose quotes do not close is a ValueError."""
    return list(torchrun_lines(enumerate(logical_lines(script)), strict=True))
