"""JSON Schemas (draft 2020-12) of the rewrite spec and of the JSON report, shipped as package data.

``spec.schema.json`` describes what :func:`optrewrite.spec.load_spec` accepts, for editors
(hover text, completion) and other tools; the loader stays the authority and also checks
what a schema cannot (regular expressions compile, no repeated keys, selectors against the
graph). ``report.schema.json`` is the contract of :meth:`optrewrite.report.Report.to_json`.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

NAMES = ("spec", "report")


def schema_text(name: str) -> str:
    """The text of the schema file ``name`` ("spec" or "report"), as shipped."""
    if name not in NAMES:
        raise ValueError(f"unknown schema {name!r} (expected one of: {', '.join(NAMES)})")
    return resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a rewrite spec."""
    return json.loads(schema_text("spec"))


def report_schema() -> dict[str, Any]:
    """The JSON Schema of the JSON report."""
    return json.loads(schema_text("report"))
