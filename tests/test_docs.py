"""docs/cli.md is generated from the commands themselves; `make golden` rewrites it. README.md links
every page under docs/, and every relative link of README.md and docs/ resolves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, Golden

from kdist.spec.schema import job_schema


def cli_reference() -> str:
    """The reference as a fresh process prints it (see kdist.cli.docs: no state from other tests)."""
    done = subprocess.run([sys.executable, "-m", "kdist.cli.docs"], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    return done.stdout


def test_cli_reference_is_current(golden: Golden) -> None:
    golden.check(ROOT / "docs" / "cli.md", cli_reference())


def test_readme_links_the_cli_reference() -> None:
    assert "docs/cli.md" in (ROOT / "README.md").read_text(encoding="utf-8")


PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def without_fences(text: str) -> str:
    """The text without fenced code blocks (their `#` lines are comments, not headings)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def prose(text: str) -> str:
    """The text without any code: indented, fenced or inline (links there are not links)."""
    text = re.sub(r"^    .*$", "", without_fences(text), flags=re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", without_fences(page.read_text(encoding="utf-8")), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def relative_links(page: Path) -> list[str]:
    links = LINK.findall(prose(page.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"[a-z]+:", link)]


def test_readme_links_every_docs_page() -> None:
    linked = {(ROOT / link).resolve() for link in relative_links(ROOT / "README.md")}
    assert PAGES and [page.name for page in PAGES if page.resolve() not in linked] == []


def test_relative_links_resolve() -> None:
    broken = []
    for page in [ROOT / "README.md", *PAGES]:
        for link in relative_links(page):
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists() or (anchor and anchor not in anchors(target)):
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert broken == []


def test_committed_schema_is_current(golden: Golden) -> None:
    golden.check(ROOT / "docs" / "kdist.schema.json", json.dumps(job_schema(), indent=2) + "\n")
