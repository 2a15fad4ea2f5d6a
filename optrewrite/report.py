"""What a rewrite found and did: a short human summary and the same as JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from optrewrite.core import Skip
from optrewrite.errors import plural, printable
from optrewrite.passes import PASSES, pass_of


@dataclass
class SiteEntry:
    variable: str
    update: str  # the Apply op or the decomposed group's scope
    kind: str
    sparse: bool
    device: str
    inserted: list[str] = field(default_factory=list)
    state: list[str] = field(default_factory=list)  # what the rewrite added that keeps a value (counters)


SkipEntry = Skip  # the report's name for a skipped update


@dataclass
class Report:
    input: str
    format: str
    mode: str = "write"  # "write", "dry-run" (nothing written) or "check" (nothing written)
    output: str | None = None
    changed: bool = False
    note: str = ""
    sites: list[SiteEntry] = field(default_factory=list)
    skipped: list[SkipEntry] = field(default_factory=list)
    nodes_added: int = 0
    nodes_changed: int = 0
    verified: str | None = None  # what --verify ran, when asked
    sealed: bool = False  # a check answered by the graph's seal: nothing searched, no sites listed

    def counts(self) -> dict[str, int]:
        """The sites found, the sites each counted pass acted on, and the skipped updates."""
        counts = {"updates_found": len(self.sites)}
        for kind in PASSES:
            if kind.count is not None:
                counts[kind.count] = sum(1 for s in self.sites if any(pass_of(a) == kind.name for a in s.inserted))
        counts["skipped"] = len(self.skipped)
        return counts

    def to_json(self) -> str:
        data = {"schema": "optrewrite.report/1", **asdict(self), "counts": self.counts()}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def summary(self) -> str:
        """A few lines for a terminal; every name and path in them :func:`printable`."""
        p = printable
        if self.sealed:
            return (f"optrewrite: {p(self.input)} ({p(self.format)}): sealed by a rewrite with this spec "
                    f"(updates not searched)\n  {self.mode}: rewriting would not change the graph")
        c = self.counts()
        # the per-site passes first, then those over the whole step
        counted = sorted((k for k in PASSES if k.count is not None and k.summary), key=lambda k: k.scope != "site")
        done = "".join(f"{c[k.count]} {k.summary}, " for k in counted)
        lines = [f"optrewrite: {p(self.input)} ({p(self.format)}): {plural(c['updates_found'], 'update')} found, "
                 f"{done}{c['skipped']} skipped"]
        if self.note:
            lines.append(f"  {p(self.note)}")
        for s in self.skipped:
            variable = f" ({p(s.variable)})" if s.variable else ""
            lines.append(f"  skipped {p(s.update)}{variable}: {p(s.reason)}")
        counts = f"(+{plural(self.nodes_added, 'node')}, {self.nodes_changed} changed)"
        if self.output:
            verb = "wrote" if self.changed else "wrote unchanged"
            lines.append(f"  {verb} {p(self.output)} {counts}")
        elif self.mode != "write":
            lines.append(f"  {self.mode}: " + (f"rewriting would change the graph {counts}" if self.changed
                                                else "rewriting would not change the graph"))
        if self.verified:
            lines.append(f"  verified: {p(self.verified)}")
        return "\n".join(lines)
