"""The TF rewrite: find update sites, select them by the spec, run the passes, record the plan.

Order per site: global-norm clip of the gradient, then the zero-gradient guard (which tests
the clipped gradient), then the clip groups in spec order. The update's original consumers
are rewired at the end to wait for the last inserted step.

The applied plan (which site got which action with which parameters) is recorded as a digest
on a NoOp ``optrewrite/plan``. Rewriting a graph that carries a plan with the same spec
changes nothing; with a different spec it is an input error, since actions do not stack.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from optrewrite.errors import InputError
from optrewrite.report import Report, SiteEntry, SkipEntry
from optrewrite.selection import Selection, select
from optrewrite.spec import Spec
from optrewrite.tf import io
from optrewrite.tf.graph import TAG_ATTR, GraphEditor, Placement
from optrewrite.tf.passes import SiteState
from optrewrite.tf.passes.clip_by_norm import clip
from optrewrite.tf.passes.global_norm_clip import global_norm_clip
from optrewrite.tf.passes.guard_zero_grad import guard
from optrewrite.tf.sites import Discovery, UpdateSite, find_update_sites

PLAN_NODE = "optrewrite/plan"
PLAN_ATTR = "_optrewrite_plan"
PLAN_TAG = "plan"


@dataclass
class Outcome:
    data: bytes
    report: Report
    changed: tuple[str, ...] = ()  # the existing nodes the rewrite changed (rewired)


def _select(sites: list[UpdateSite], spec: Spec) -> list[Selection[UpdateSite]]:
    return [select(site, site.variable, spec) for site in sites]


def _plan_digest(selections: list[Selection[UpdateSite]], spec: Spec) -> str:
    """A digest of every action with its parameters, recorded on the plan node."""
    gnc = spec.global_norm_clip
    plan = {
        "format": 1,
        "global_norm_clip": gnc.clip_norm if gnc is not None else None,
        "sites": [
            [
                sel.site.key,
                sel.site.variable,
                [*(["global_norm_clip"] if sel.global_norm else []), *(["guard"] if sel.guard else []),
                 *(f"clip[{g.index}] max_norm={g.max_norm!r} "
                   f"dims={list(g.dims) if g.dims is not None else None} "
                   f"colocate={g.colocate_with_variable} use_locking={g.use_locking}" for g in sel.clips)],
            ]
            for sel in selections
        ],
    }
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def discover(loaded: io.TfGraphFile, g: GraphEditor) -> Discovery:
    """The graph's update sites; an input error names the file."""
    try:
        return find_update_sites(g)
    except InputError as exc:
        raise InputError(f"{loaded.path}: {exc}") from None


def rewrite_tf(loaded: io.TfGraphFile, spec: Spec) -> Outcome:
    g = GraphEditor(loaded.graph, loaded.topology)
    report = Report(input=str(loaded.path), format=loaded.format_name)
    found = discover(loaded, g)
    sites, skips = found.sites, found.skips
    report.skipped = [SkipEntry(s.key, s.variable, s.reason) for s in skips]
    spec.bind({s.variable: s.rank for s in sites}, {s.variable: s.reason for s in skips if s.variable},
              {s.variable: s.dtype_name for s in sites})
    selections = _select(sites, spec)
    digest = _plan_digest(selections, spec)

    if found.tagged:
        records = [g.node(n) for n in found.tagged if g.node(n).attr[TAG_ATTR].s == PLAN_TAG.encode()]
        recorded = records[0].attr[PLAN_ATTR].s.decode(errors="replace") if records else None
        if recorded != digest:
            raise InputError(
                f"{loaded.path}: already rewritten by optrewrite with a different spec; "
                "rewrite the original graph instead"
            )
        report.sites = [_entry(sel.site, sel.actions()) for sel in selections]
        report.note = "already rewritten with this spec: nothing to do"
        return Outcome(data=loaded.raw, report=report)

    states = {site.key: SiteState.start(site) for site in sites}
    # Who waits for each update, taken before any edit: these are rewired at the end.
    waiting = {
        site.key: {sink: [g.graph.node[i].name for i in g.control_consumers(sink)
                          if g.graph.node[i].name not in site.members] for sink in site.sinks}
        for site in sites
    }

    selected = [states[sel.site.key] for sel in selections if sel.global_norm]
    if spec.global_norm_clip is not None and selected:
        global_norm_clip(g, selected, spec.global_norm_clip.clip_norm)
    for sel in selections:
        if sel.guard:
            guard(g, states[sel.site.key])
        for group in sel.clips:
            clip(g, states[sel.site.key], group)

    rewire: dict[str, dict[str, str]] = {}
    for sel in selections:
        if not (sel.guard or sel.clips):
            continue
        state = states[sel.site.key]
        (final,) = state.after
        for sink, consumers in waiting[state.site.key].items():
            for consumer in consumers:
                rewire.setdefault(consumer, {})[sink] = final
    for consumer, mapping in rewire.items():
        g.reroute_controls(consumer, mapping)

    g.add(PLAN_NODE, "NoOp", placement=Placement(device=""), tag=PLAN_TAG)
    g.node(PLAN_NODE).attr[PLAN_ATTR].s = digest.encode()
    _verify(g)

    report.sites = [_entry(st.site, st.actions) for st in states.values()]
    report.changed = True
    report.nodes_added = len(g.graph.node) - g.first_new
    report.nodes_changed = len(g.changed)
    return Outcome(data=io.serialize(loaded, g.changed, g.first_new), report=report,
                   changed=tuple(g.graph.node[i].name for i in sorted(g.changed)))


def _entry(site: UpdateSite, actions: list[str]) -> SiteEntry:
    return SiteEntry(
        variable=site.variable,
        update=site.key,
        kind=site.kind,
        sparse=site.sparse,
        device=site.device,
        inserted=list(actions),
    )


def _verify(g: GraphEditor) -> None:
    """Every input of a new or changed node names an existing node; names are unique."""
    if len(g.index) != len(g.graph.node):
        raise AssertionError("duplicate node names after rewrite")
    touched = [g.graph.node[i] for i in sorted(g.changed)] + list(g.graph.node[g.first_new:])
    for node in touched:
        for inp in node.input:
            src = inp[1:] if inp.startswith("^") else inp.split(":", 1)[0]
            if src not in g.index:
                raise AssertionError(f"rewrite left {node.name!r} with dangling input {inp!r}")
