"""The TF rewrite: find update sites, select them by the spec, run the pass pipeline, record the plan.

Order per site (:data:`optrewrite.passes.PASSES`): global-norm clip of the gradient, then the
zero-gradient guard (which tests the clipped gradient), then the clip groups in spec order.
The update's original consumers are rewired at the end to wait for the last inserted step.

The applied plan (:func:`optrewrite.passes.plan_digest`) is recorded on a NoOp
``optrewrite/plan``. Rewriting a graph that carries a plan with the same spec changes
nothing; with a different spec it is an input error, since actions do not stack. A binary
output also carries a seal on that node (:mod:`optrewrite.seal`), which lets ``--check``
answer for a file it wrote without searching it.

Nothing here serializes: the outcome holds the edited graph, which
:func:`optrewrite.tf.io.serialize` writes when the caller saves it.
"""
from __future__ import annotations

from dataclasses import dataclass

from optrewrite import passes, seal
from optrewrite.core import Outcome
from optrewrite.errors import InputError
from optrewrite.report import Report, SiteEntry
from optrewrite.spec import Spec
from optrewrite.tf import io
from optrewrite.tf.graph import TAG_ATTR, GraphEditor, Placement
from optrewrite.tf.passes import REGISTRY
from optrewrite.tf.passes.state import SiteState
from optrewrite.tf.sites import Discovery, UpdateSite, find_update_sites

PLAN_NODE = "optrewrite/plan"
PLAN_ATTR = "_optrewrite_plan"
PLAN_TAG = "plan"
SEAL_ATTR = "_optrewrite_seal"
# where a binary output's seal lies (optrewrite.seal): the plan node's attr entry for it,
# serialized deterministically (key, then an AttrValue whose ``s`` is the 64-digit seal)
SEAL_MARKER = b"\x0a\x10" + SEAL_ATTR.encode() + b"\x12\x42\x12\x40"


@dataclass
class Rewritten:
    """A TF rewrite's graph state: the parsed input and, when it changed, the editor."""

    loaded: io.TfGraphFile
    editor: GraphEditor | None = None  # None: the graph is the input, unchanged
    seal_key: bytes = b""  # what a binary output's seal binds it to (optrewrite.seal)
    plan_node: str = ""  # the node that records the plan (and, in binary output, the seal)


def discover(loaded: io.TfGraphFile, g: GraphEditor) -> Discovery:
    """The graph's update sites; an input error names the file."""
    try:
        return find_update_sites(g)
    except InputError as exc:
        raise InputError(f"{loaded.path}: {exc}") from None


def rewrite_tf(loaded: io.TfGraphFile, spec: Spec, *,
               discovered: tuple[GraphEditor, Discovery] | None = None) -> Outcome:
    """Rewrite the parsed graph in place; ``discovered``: its editor and sites, when found already."""
    if discovered is None:
        g = GraphEditor(loaded.graph, loaded.topology)
        found = discover(loaded, g)
    else:
        g, found = discovered
    report = Report(input=str(loaded.path), format=loaded.format_name)
    sites = found.sites
    report.skipped = list(found.skips)
    spec.bind({s.variable: s.rank for s in sites}, {s.variable: s.reason for s in found.skips if s.variable},
              {s.variable: s.dtype_name for s in sites})
    rules = passes.rules(spec)
    selections = [passes.select(site, site.variable, rules) for site in sites]
    digest = passes.plan_digest(selections, spec)

    if found.tagged:
        records = [g.node(n) for n in found.tagged if g.node(n).attr[TAG_ATTR].s == PLAN_TAG.encode()]
        recorded = records[0].attr[PLAN_ATTR].s.decode(errors="replace") if records else None
        if recorded != digest:
            raise InputError(
                f"{loaded.path}: already rewritten by optrewrite with a different spec; "
                "rewrite the original graph instead"
            )
        report.sites = [_entry(sel.site, sel.labels) for sel in selections]
        report.note = "already rewritten with this spec: nothing to do"
        return Outcome(report=report, graph=Rewritten(loaded))

    states = [SiteState.start(sel) for sel in selections]
    # Who waits for each update, taken before any edit: these are rewired at the end.
    waiting = {
        site.key: {sink: [g.graph.node[i].name for i in g.control_consumers(sink)
                          if g.graph.node[i].name not in site.members] for sink in site.sinks}
        for site in sites
    }
    done = passes.run_pipeline(REGISTRY, g, states, lint=GraphEditor.lint)

    rewire: dict[str, dict[str, str]] = {}
    for state in states:
        if not (state.selection.has("guard") or state.selection.has("clip")):
            continue
        (final,) = state.after
        for sink, consumers in waiting[state.site.key].items():
            for consumer in consumers:
                rewire.setdefault(consumer, {})[sink] = final
    for consumer, mapping in rewire.items():
        g.reroute_controls(consumer, mapping)

    plan_node = g.add(PLAN_NODE, "NoOp", placement=Placement(device=""), tag=PLAN_TAG)
    g.node(plan_node).attr[PLAN_ATTR].s = digest.encode()
    g.lint()

    report.sites = [_entry(site, done.inserted.get(site.key, []), done.state.get(site.key, [])) for site in sites]
    report.skipped += done.skipped
    report.changed = True
    report.nodes_added = len(g.graph.node) - g.first_new
    report.nodes_changed = len(g.changed)
    return Outcome(report=report, changed=frozenset(g.graph.node[i].name for i in g.changed),
                   graph=Rewritten(loaded, g, seal.spec_key(spec), plan_node))


def serialize(rewritten: Rewritten) -> bytes:
    """The output bytes: the input's own when nothing changed; a binary output sealed."""
    g = rewritten.editor
    if g is None:
        return rewritten.loaded.raw
    binary = rewritten.loaded.encoding == io.BINARY
    mark_for_seal(rewritten, binary=binary)
    raw = io.serialize(rewritten.loaded, g.changed, g.first_new)
    return seal.fill(raw, SEAL_MARKER, rewritten.seal_key) if binary else raw


def mark_for_seal(rewritten: Rewritten, *, binary: bool) -> None:
    """Before the rewritten graph is serialized: a binary output's plan node holds the seal's
    placeholder (:func:`optrewrite.seal.fill` fills it in the bytes); a text output's none
    (text is not sealed)."""
    if rewritten.editor is None:
        return
    attrs = rewritten.editor.node(rewritten.plan_node).attr
    if binary:
        attrs[SEAL_ATTR].s = seal.PLACEHOLDER
    elif SEAL_ATTR in attrs:
        del attrs[SEAL_ATTR]


def _entry(site: UpdateSite, actions: list[str], state: list[str] | None = None) -> SiteEntry:
    return SiteEntry(
        variable=site.variable,
        update=site.key,
        kind=site.kind,
        sparse=site.sparse,
        device=site.device,
        inserted=list(actions),
        state=list(state or []),
    )
