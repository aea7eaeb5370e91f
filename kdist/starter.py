"""The starter spec written by `kdist init`."""

from __future__ import annotations

import re

from kdist.load import MAX_NAME


def job_name(folder: str) -> str:
    """A folder name made into a DNS-1035 label: `My_Project 2` -> `my-project-2`."""
    name = re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:MAX_NAME].rstrip("-")
    return name or "my-job"


def starter_spec(template: str, name: str) -> str:
    return template.replace("name: my-job ", f"name: {job_name(name)} ", 1)
