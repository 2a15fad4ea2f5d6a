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
from optrewrite.spec import Spec
from optrewrite.tf import io
from optrewrite.tf.graph import TAG_ATTR, GraphEditor, Placement
from optrewrite.tf.passes import SiteState
from optrewrite.tf.passes.clip_by_norm import clip
from optrewrite.tf.passes.global_norm_clip import global_norm_clip
from optrewrite.tf.passes.guard_zero_grad import guard
from optrewrite.tf.sites import UpdateSite, find_update_sites

PLAN_NODE = "optrewrite/plan"
PLAN_ATTR = "_optrewrite_plan"
PLAN_TAG = "plan"


@dataclass
class Outcome:
    data: bytes
    report: Report


def _plan(sites: list[UpdateSite], spec: Spec) -> tuple[dict, str]:
    gnc = spec.global_norm_clip
    entries = []
    for site in sites:
        actions = []
        if gnc is not None and gnc.select.matches(site.variable):
            actions.append("global_norm_clip")
        if spec.guard is not None and spec.guard.select.matches(site.variable):
            actions.append("guard")
        for group in spec.clip:
            if group.select.matches(site.variable):
                actions.append(
                    f"clip[{group.index}] max_norm={group.max_norm!r} dims={list(group.dims) if group.dims is not None else None} "
                    f"colocate={group.colocate_with_variable} use_locking={group.use_locking}"
                )
        entries.append([site.key, site.variable, actions])
    plan = {
        "format": 1,
        "global_norm_clip": gnc.clip_norm if gnc is not None else None,
        "sites": entries,
    }
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    return plan, digest


def rewrite_tf(loaded: io.TfGraphFile, spec: Spec) -> Outcome:
    g = GraphEditor(loaded.graph, loaded.topology)
    report = Report(input=str(loaded.path), format=loaded.format_name)
    found = find_update_sites(g)
    sites, skips = found.sites, found.skips
    report.skipped = [SkipEntry(s.key, s.variable, s.reason) for s in skips]
    spec.bind({s.variable: s.rank for s in sites}, {s.variable: s.reason for s in skips if s.variable})
    plan, digest = _plan(sites, spec)

    if found.tagged:
        records = [g.node(n) for n in found.tagged if g.node(n).attr[TAG_ATTR].s == PLAN_TAG.encode()]
        recorded = records[0].attr[PLAN_ATTR].s.decode() if records else None
        if recorded != digest:
            raise InputError(
                f"{loaded.path}: already rewritten by optrewrite with a different spec; "
                "rewrite the original graph instead"
            )
        for site, (_key, _var, actions) in zip(sites, plan["sites"]):
            report.sites.append(_entry(site, [a.split(" ", 1)[0] for a in actions]))
        report.note = "already rewritten with this spec: nothing to do"
        return Outcome(data=loaded.raw, report=report)

    states = {site.key: SiteState.start(site) for site in sites}
    # Who waits for each update, taken before any edit: these are rewired at the end.
    waiting = {
        site.key: {sink: [g.graph.node[i].name for i in g.control_consumers(sink)
                          if g.graph.node[i].name not in site.members] for sink in site.sinks}
        for site in sites
    }

    selected = [states[key] for key, _var, actions in plan["sites"] if "global_norm_clip" in actions]
    if spec.global_norm_clip is not None and selected:
        global_norm_clip(g, selected, spec.global_norm_clip.clip_norm)
    for state in states.values():
        if spec.guard is not None and spec.guard.select.matches(state.site.variable):
            guard(g, state)
        for group in spec.clip:
            if group.select.matches(state.site.variable):
                clip(g, state, group)

    rewire: dict[str, dict[str, str]] = {}
    for state in states.values():
        if not any(a == "guard" or a.startswith("clip[") for a in state.actions):
            continue
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
    return Outcome(data=io.serialize(loaded, g.changed, g.first_new), report=report)


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
