"""``optrewrite explain``: what a graph's update sites are and what a spec would do to them.

For every update site: the variable, its shape and dtype, the optimizer op (or decomposed
group), its slots, dense or sparse, its device, which spec rule selects it and what the
rewrite would insert; then what was skipped and why. With a spec, the rewrite runs in
memory, so the counts are the real rewrite's, and :func:`write_drawing` draws what it
inserted (see :mod:`optrewrite.drawing`). Nothing here imports TensorFlow or onnxruntime.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from optrewrite import passes
from optrewrite.core import Site, Skip
from optrewrite.drawing import Drawing, group
from optrewrite.errors import InputError, plural, printable, shorten
from optrewrite.fileio import read_spec
from optrewrite.formats import format_for, read_graph
from optrewrite.spec import UnmatchedSelector, load_spec

if TYPE_CHECKING:
    from optrewrite.writeplan import WritePlan


@dataclass
class Row:
    site: Site
    selected_by: list[str] = field(default_factory=list)  # "guard: '*'", "clip[0]: 'emb*'", ...
    not_selected: list[str] = field(default_factory=list)  # "guard: excluded by 'b*'"
    inserted: list[str] = field(default_factory=list)  # the actions, as the report names them
    nodes: int = 0  # nodes the rewrite inserts for this site (nested ONNX branches included)
    state: list[str] = field(default_factory=list)  # state the rewrite adds for this site (counters)


@dataclass
class Explanation:
    input: str
    format: str
    spec: str | None
    rows: list[Row]
    skipped: list[Skip]
    note: str = ""
    shared_nodes: int = 0  # inserted nodes that belong to no one site (global-norm clip, plan, ...)
    unmatched: list[str] = field(default_factory=list)  # the spec's selectors that match no update, why
    drawing: Drawing | None = field(default=None, repr=False)  # with a spec; its view is built on first use

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "drawing"}
        data["rows"] = [asdict(r) for r in self.rows]
        data["skipped"] = [asdict(s) for s in self.skipped]
        return json.dumps({"schema": "optrewrite.explain/1", **data}, indent=2, sort_keys=True) + "\n"


def explain_file(input_path: Path | str, spec_path: Path | str | None = None, *, lower: bool = False) -> Explanation:
    """Find the update sites of ``input_path``; with a spec, also rewrite in memory and say what changes."""
    src = Path(input_path)
    spec = load_spec(spec_path, read=read_spec) if spec_path is not None else None
    raw = read_graph(src)
    fmt = format_for(src)
    unmatched: list[str] = []
    while True:
        # explain is where selectors are debugged: one that matches nothing is listed, and
        # the table shows what the rest of the spec does
        try:
            found = fmt.analyse(src, raw, spec, lower=lower)
            break
        except UnmatchedSelector as exc:
            if spec is None:
                raise
            unmatched.append(str(exc))
            spec = spec.without(exc.field)
            if not spec.selectors() and not spec.updates:
                spec = None  # nothing left to explain but the sites
    explanation = Explanation(input=str(src), format=found.format, spec=str(spec_path) if spec_path else None,
                              rows=[Row(site) for site in found.sites], skipped=found.skipped, unmatched=unmatched)
    if spec is None or found.report is None or found.changes is None or found.view is None:
        return explanation

    report = found.report
    explanation.note = report.note.replace(" written as ", " would be written as ")  # explain writes nothing
    explanation.skipped = report.skipped
    inserted = {entry.update: entry.inserted for entry in report.sites}
    state = {entry.update: entry.state for entry in report.sites}
    rules = passes.rules(spec, lower=lower)
    for row in explanation.rows:
        row.inserted = list(inserted.get(row.site.update, []))
        row.state = list(state.get(row.site.update, []))
        row.selected_by, row.not_selected = passes.explain_rules(row.site.variable, rules, row.inserted)
    grouping = group(found.changes, [(r.site.update, r.site.scope, f"{r.site.variable}: {', '.join(r.inserted)}")
                                     for r in explanation.rows if r.inserted])
    for row in explanation.rows:
        row.nodes = grouping.count(row.site.update)
    explanation.shared_nodes = grouping.count(None)
    explanation.drawing = Drawing(grouping, found.view)
    return explanation


MIN_COLUMN = 10  # a column is cut no narrower than this to fit the width


def _table(header: list[str], rows: list[list[str]], width: int | None = None) -> list[str]:
    """A fixed-width table; with ``width``, the widest columns are cut (ending in ``…``)
    until the table fits, none narrower than :data:`MIN_COLUMN` nor than its header, the
    first column only when no other can be cut."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    if width is not None:
        while (excess := sum(widths) + 2 * (len(widths) - 1) - width) > 0:
            # the first column (the variable) is cut last
            order = sorted(range(1, len(widths)), key=lambda k: -widths[k]) + [0]
            order = [k for k in order if widths[k] > max(MIN_COLUMN, len(header[k]))]
            if not order:
                break
            i = order[0]
            floor = max(MIN_COLUMN, len(header[i]))
            target = max(floor, widths[i] - excess)
            runner_up = widths[order[1]] if len(order) > 1 else floor
            if runner_up < widths[i]:  # first down to the next widest, so that cuts spread
                target = max(target, runner_up)
            widths[i] = target
        header, rows = _cut(header, widths), [_cut(r, widths) for r in rows]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return [fmt.format(*header).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


def _cut(cells: list[str], widths: list[int]) -> list[str]:
    return [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(cells, widths)]


def render_table(ex: Explanation, width: int | None = None) -> str:
    """The explanation as a fixed-width table, then the skipped updates. Every name, path and
    reason is :func:`~optrewrite.errors.printable`: graphs and specs are untrusted text.
    ``width``: cut the widest columns so that the table fits (see :func:`_table`)."""
    p = printable
    sites = f"{len(ex.rows)} update site" + ("" if len(ex.rows) == 1 else "s")
    lines = [f"{p(ex.input)} ({p(ex.format)}): {sites}" + (f", spec {p(ex.spec)}" if ex.spec else "")]
    header = ["variable", "shape", "dtype", "optimizer", "update", "slots", "grad", "device"]
    if ex.spec:
        header += ["selected by", "inserts"]
    body = []
    for r in ex.rows:
        s = r.site
        cells = [s.variable, s.shape, s.dtype, s.kind, s.update,
                 ", ".join(s.slots) or "-", "sparse" if s.sparse else "dense", s.device or "-"]
        if ex.spec:
            rules = "; ".join(r.selected_by + r.not_selected) or "-"
            counters = f"; counters {', '.join(r.state)}" if r.state else ""
            cells += [rules, f"{', '.join(r.inserted)} (+{plural(r.nodes, 'node')}{counters})" if r.inserted else "-"]
        body.append([p(cell) for cell in cells])
    lines += _table(header, body, width) if body else ["(no optimizer update found)"]
    if ex.spec and ex.shared_nodes:
        lines.append(f"shared by several sites: +{plural(ex.shared_nodes, 'node')}")
    if ex.note:
        lines.append(p(ex.note))
    for problem in ex.unmatched:
        lines.append(f"matches nothing: {p(problem)}")
    if ex.skipped:
        lines.append(f"skipped ({len(ex.skipped)}):")
        lines += [f"  {p(s.update)}" + (f" ({p(s.variable)})" if s.variable else "") + f": {p(s.reason)}"
                  for s in ex.skipped]
    return "\n".join(lines)


SVG_TIMEOUT_S = 120
AUTO_SVG_MAX_LINES = 20_000  # a DOT file this long is not rendered unless SVG is asked for


def write_drawing(ex: Explanation, path: Path, *, plan: WritePlan | None = None) -> list[Path]:
    """Write the DOT drawing to ``path``; render SVG beside it when graphviz's ``dot`` is installed
    and the drawing is small enough for graphviz to lay out in reasonable time.

    A ``path`` ending in ``.svg`` asks for SVG only, which needs ``dot``. Returns what was written.
    What it writes is checked against the input graph, its external data and the spec (and
    against what ``plan`` holds) before anything is written, and written all or nothing:
    ``plan`` (default: a new one) is committed here.
    """
    from optrewrite.writeplan import WritePlan, drawing_targets, graph_reads  # noqa: PLC0415

    assert ex.drawing is not None, "a drawing needs a spec"
    dot = shutil.which("dot")
    wants_svg = path.suffix.lower() == ".svg"
    if wants_svg and dot is None:
        raise InputError(f"{path}: SVG needs graphviz's dot on PATH; install graphviz or write a .dot file")
    with plan if plan is not None else WritePlan() as plan:
        plan.read(Path(ex.input), "the input graph")
        if ex.spec:
            plan.read(Path(ex.spec), "the spec")
        for target, role in drawing_targets(path, dot_installed=dot is not None):
            plan.write(target, role)
        for read, role in graph_reads(Path(ex.input)):
            plan.read(read, role)
        text = ex.drawing.to_dot(title=f"optrewrite: {Path(ex.input).name} by {Path(ex.spec or '').name}")
        written = []
        if not wants_svg:
            plan.stage(path, text.encode())
            written.append(path)
        if dot is not None and (wants_svg or text.count("\n") <= AUTO_SVG_MAX_LINES):
            svg_path = path if wants_svg else path.with_name(path.name + ".svg")
            try:
                proc = subprocess.run([dot, "-Tsvg"], input=text.encode(), capture_output=True,
                                      timeout=SVG_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                raise InputError(f"{svg_path}: graphviz dot did not finish in {SVG_TIMEOUT_S} s; "
                                 "draw fewer sites (a narrower spec) or write a .dot file") from None
            if proc.returncode != 0:
                first = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[0]
                raise InputError(f"{svg_path}: graphviz dot failed: {shorten(first, 160)}")
            plan.stage(svg_path, proc.stdout)
            written.append(svg_path)
        plan.commit()
    return written
