"""`kdist validate`: strict schema, cross-object and security checks for specs and manifests.

Library code: returns a Report, never prints or exits (kdist/cli/validate.py does that).
Heavy imports stay inside this package so `kdist --help` does not pay for them.
"""

from __future__ import annotations

from kdist.validate.engine import validate
from kdist.validate.model import Finding, Options, Report
from kdist.validate.rules import RULES, parse_disabled
from kdist.validate.schema import supported_versions

__all__ = ["RULES", "Finding", "Options", "Report", "parse_disabled", "supported_versions",
           "validate"]
