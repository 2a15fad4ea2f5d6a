"""JSON Schemas (draft 2020-12) of the rewrite spec and of the JSON report, shipped as package data.

``spec.schema.json`` describes what :func:`optrewrite.spec.load_spec` accepts, for editors
(hover text, completion) and other tools; the loader stays the authority and also checks
what a schema cannot (regular expressions compile, no repeated keys, selectors against the
graph). ``report.schema.json`` is the contract of :meth:`optrewrite.report.Report.to_json`;
what it says of the passes (the action names a site may list, the count of each pass) is
filled in from :data:`optrewrite.passes.PASSES` when it is read.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

NAMES = ("spec", "report")


def _shipped(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown schema {name!r} (expected one of: {', '.join(NAMES)})")
    return resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")


def schema_text(name: str) -> str:
    """The schema ``name`` ("spec" or "report") as JSON text."""
    if name == "report":
        return json.dumps(report_schema(), indent=2, ensure_ascii=False) + "\n"
    return _shipped(name)


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a rewrite spec."""
    return json.loads(_shipped("spec"))


def report_schema() -> dict[str, Any]:
    """The JSON Schema of the JSON report, with the passes' action names and counts."""
    from optrewrite.passes import PASSES, action_pattern  # noqa: PLC0415

    schema = json.loads(_shipped("report"))
    schema["$defs"]["site"]["properties"]["inserted"]["items"]["pattern"] = action_pattern()
    counts = schema["properties"]["counts"]
    skipped = counts["properties"].pop("skipped")
    for kind in PASSES:
        if kind.count is not None:
            counts["properties"][kind.count] = {"description": kind.count_doc, "type": "integer", "minimum": 0}
    counts["properties"]["skipped"] = skipped
    counts["required"] = list(counts["properties"])
    return schema
