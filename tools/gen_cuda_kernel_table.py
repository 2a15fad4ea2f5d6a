"""Regenerate optrewrite/onnx/cuda_kernels.json from the vendored CUDA kernel list.

tools/data/cuda_operator_kernels.md is a verbatim excerpt of onnxruntime's
docs/OperatorKernels.md (the CUDAExecutionProvider section); its leading HTML comment
names the onnxruntime commit. This script parses the markdown table into

    {"provider": "CUDAExecutionProvider",
     "source": {"repo": ..., "path": ..., "commit": ..., ...},
     "domains": {"ai.onnx": {"Add": [{"since": 14, "until": null,
                                      "types": {"T": ["bfloat16", "double", ...]}}, ...]}}}

Version cells: ``14+`` is a kernel registered from opset 14 with no end (``until`` null),
``[7, 12]`` one registered for 7..12, ``13`` one registered for exactly 13. Type cells:
``tensor(x)`` becomes ``x``; other types (``seq(tensor(x))``) are kept as written.
optrewrite/onnx/cuda_table.py reads the JSON; tests/onnx/test_cuda_table.py runs the check.

    python tools/gen_cuda_kernel_table.py            # rewrite the JSON
    python tools/gen_cuda_kernel_table.py --check    # exit 1 when the JSON is stale
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = ROOT / "tools" / "data" / "cuda_operator_kernels.md"
TABLE = ROOT / "optrewrite" / "onnx" / "cuda_kernels.json"

PROVIDER = "CUDAExecutionProvider"
SECTION = f"## Operators implemented by {PROVIDER}"
DOMAIN_ROW = re.compile(r"^\|\*\*Operator Domain:\*\* \*([\w.]+)\*\|\|\|\|$")
SEPARATOR_ROW = "| |"
SINCE_OPEN = re.compile(r"^(\d+)\+$")
SINCE_RANGE = re.compile(r"^\[(\d+), (\d+)\]$")
SINCE_EXACT = re.compile(r"^(\d+)$")
CONSTRAINT = re.compile(r"^\*\*(\w+)\*\* = (.+)$")
TYPE_NAME = re.compile(r"^(?:tensor|seq|optional)\([\w()]+\)$")
META = re.compile(r"^([a-z-]+): (.*)$")
META_KEYS = ("source-repo", "source-path", "source-commit", "onnxruntime-version")


class TableFormatError(ValueError):
    """The markdown does not have the shape onnxruntime's gen_opkernel_doc.py writes."""


def _versions(cell: str, where: str) -> tuple[int, int | None]:
    if m := SINCE_OPEN.match(cell):
        return int(m[1]), None
    if m := SINCE_RANGE.match(cell):
        return int(m[1]), int(m[2])
    if m := SINCE_EXACT.match(cell):
        return int(m[1]), int(m[1])
    raise TableFormatError(f"{where}: cannot read opset version cell {cell!r}")


def _type(raw: str, where: str) -> str:
    if not TYPE_NAME.match(raw):
        raise TableFormatError(f"{where}: cannot read type {raw!r}")
    if raw.startswith("tensor(") and raw.count("(") == 1:
        return raw[len("tensor(") : -1]
    return raw


def _types(cell: str, where: str) -> dict[str, list[str]]:
    """``**T** = tensor(a), tensor(b)<br/> **T1** = ...`` -> {"T": ["a", "b"], "T1": [...]}.

    onnxruntime writes constraint names and type lists sorted; a cell that is not sorted
    was mangled (by hand or in copying), so it is refused rather than parsed.
    """
    types: dict[str, list[str]] = {}
    for part in cell.split("<br/> "):
        m = CONSTRAINT.match(part)
        if not m:
            raise TableFormatError(f"{where}: cannot read type constraint {part!r}")
        raw = m[2].split(", ")
        if raw != sorted(raw) or len(set(raw)) != len(raw):
            raise TableFormatError(f"{where}: types of {m[1]} are not sorted and unique: {m[2]!r}")
        types[m[1]] = [_type(t, where) for t in raw]
    if list(types) != sorted(types):
        raise TableFormatError(f"{where}: type constraints are not sorted: {list(types)}")
    return types


def _source(text: str) -> dict[str, str]:
    """The ``key: value`` lines of the leading HTML comment (repo, path, commit, version)."""
    if not text.startswith("<!--"):
        raise TableFormatError("line 1: expected the provenance comment (<!-- ... -->)")
    comment = text[: text.index("-->")]
    meta = {m[1]: m[2] for line in comment.splitlines() if (m := META.match(line))}
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise TableFormatError(f"provenance comment lacks {', '.join(missing)}")
    return {k.removeprefix("source-").replace("-", "_"): meta[k] for k in META_KEYS}


def parse(text: str) -> dict:
    """The JSON table (as a dict) for the vendored markdown ``text``."""
    lines = text.splitlines()
    try:
        start = lines.index(SECTION)
    except ValueError:
        raise TableFormatError(f"no line {SECTION!r}") from None
    domains: dict[str, dict[str, list[dict]]] = {}
    ops: dict[str, list[dict]] | None = None
    op: str | None = None
    for number, line in enumerate(lines[start + 1 :], start=start + 2):
        where = f"line {number}"
        if not line or line.startswith(("| Op Name |", "|---")):
            continue
        if line.startswith("## ") or line.startswith("<a name="):
            break
        if m := DOMAIN_ROW.match(line):
            if m[1] in domains:
                raise TableFormatError(f"{where}: domain {m[1]} listed twice")
            ops, op = domains.setdefault(m[1], {}), None
            continue
        if line == SEPARATOR_ROW:
            op = None
            continue
        cells = line.split("|")
        if len(cells) != 6 or cells[0] or cells[5]:
            raise TableFormatError(f"{where}: expected |name|parameters|version|types|, got {line[:80]!r}")
        name, _params, version, types = cells[1:5]
        if ops is None:
            raise TableFormatError(f"{where}: kernel row before any 'Operator Domain' row")
        if name:
            if name in ops:
                raise TableFormatError(f"{where}: {name} listed twice")
            op = name
            ops[op] = []
        elif op is None:
            raise TableFormatError(f"{where}: continuation row without an operator")
        since, until = _versions(version, where)
        ops[op].append({"since": since, "until": until, "types": _types(types, where)})
    if not domains:
        raise TableFormatError(f"no kernels found under {SECTION!r}")
    return {
        "generated_by": "tools/gen_cuda_kernel_table.py",
        "markdown": MARKDOWN.relative_to(ROOT).as_posix(),
        "provider": PROVIDER,
        "source": _source(text),
        "domains": domains,
    }


def render(table: dict) -> str:
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the JSON is not what the markdown gives")
    parser.add_argument("--markdown", type=Path, default=MARKDOWN, help="vendored kernel list (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=TABLE, help="JSON table (default: %(default)s)")
    args = parser.parse_args(argv)
    text = render(parse(args.markdown.read_text(encoding="utf-8")))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale; run python tools/gen_cuda_kernel_table.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    ops = sum(len(v) for v in json.loads(text)["domains"].values())
    print(f"wrote {args.output} ({ops} ops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
