"""The SavedModel rewrite: find the sites inside functions, select them, run the pipeline, record the plan.

1. Bind function inputs to the object graph's variables and find every function's sites
   (:mod:`optrewrite.tf2.sites`); ``Spec.bind`` checks selectors against the variables' paths.
2. Run :data:`optrewrite.tf2.passes.REGISTRY` through :func:`optrewrite.passes.run_pipeline`,
   one :class:`~optrewrite.tf2.functions.FunctionEditor` per function body.
3. Record the plan digest as the MetaGraphDef's ``collection_def["optrewrite_plan"]`` (a
   bytes list); ``tf.saved_model.load`` ignores collections. A SavedModel that carries the
   record with the same digest is "nothing to do"; with another, the rewrite is refused.

Nothing here serializes; :func:`serialize` splices the output bytes (optrewrite.tf2.io).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from optrewrite import passes
from optrewrite.core import Outcome, Skip
from optrewrite.errors import InputError
from optrewrite.report import Report, SiteEntry
from optrewrite.spec import Spec
from optrewrite.tf import proto
from optrewrite.tf2 import io
from optrewrite.tf2.functions import FunctionEditor
from optrewrite.tf2.passes import REGISTRY
from optrewrite.tf2.passes.state import SiteState
from optrewrite.tf2.sites import FunctionSite, bindings, find_sites

PLAN_COLLECTION = "optrewrite_plan"
FORMAT_NAME = "TensorFlow SavedModel"


@dataclass
class Discovery:
    sites: list[FunctionSite]
    skips: list[Skip]


@dataclass
class Rewritten:
    """A SavedModel rewrite's state: the parsed input and the editors of the functions it changed."""

    loaded: io.SavedModelFile
    editors: dict[str, FunctionEditor] = field(default_factory=dict)
    plan: str | None = None  # the digest to record; None: nothing changed

    @property
    def changed_functions(self) -> set[str]:
        return {name for name, e in self.editors.items() if e.touched}


def discover(loaded: io.SavedModelFile) -> Discovery:
    """Every function's update sites, in library order, and what was skipped."""
    bound = bindings(loaded.meta)
    sites: list[FunctionSite] = []
    skips: list[Skip] = []
    for fn in loaded.meta.graph_def.library.function:
        local = bound.get(fn.signature.name)
        if local is None:
            continue
        found, skipped = find_sites(fn, local)
        sites += found
        skips += skipped
    return Discovery(sites, skips)


def recorded_plan(meta: proto.MetaGraphDef) -> str | None:
    if PLAN_COLLECTION not in meta.collection_def:
        return None
    values = meta.collection_def[PLAN_COLLECTION].bytes_list.value
    return values[0].decode(errors="replace") if values else ""


def rewrite_savedmodel(loaded: io.SavedModelFile, spec: Spec) -> Outcome:
    report = Report(input=str(loaded.path), format=FORMAT_NAME)
    found = discover(loaded)
    sites = found.sites
    report.skipped = list(found.skips)
    if not sites and _selects(spec):
        what = "; ".join(f"{s.variable or s.update}: {s.reason}" for s in found.skips[:3])
        raise InputError(f"{loaded.path}: the SavedModel has no optimizer update the spec could select"
                         + (f" (found: {what})" if what else " (no function writes a trainable variable from a gradient)"))
    ranks: dict[str, int | None] = {}
    dtypes: dict[str, str] = {}
    for s in sites:
        ranks[s.var.path] = None if s.var.shape is None else len(s.var.shape)
        dtypes[s.var.path] = proto.FLOAT_NAMES[s.var.dtype]
    spec.bind(ranks, {s.variable: s.reason for s in found.skips if s.variable and s.variable not in ranks}, dtypes)
    rules = passes.rules(spec)
    selections = [passes.select(site, site.var.path, rules) for site in sites]
    digest = passes.plan_digest(selections, spec)

    recorded = recorded_plan(loaded.meta)
    if recorded is not None:
        if recorded != digest:
            raise InputError(f"{loaded.path}: already rewritten by optrewrite with a different spec; "
                             "rewrite the original SavedModel instead")
        report.sites = [_entry(sel.site, sel.labels) for sel in selections]
        report.note = "already rewritten with this spec: nothing to do"
        return Outcome(report=report, graph=Rewritten(loaded))

    functions = {f.signature.name: f for f in loaded.meta.graph_def.library.function}
    editors: dict[str, FunctionEditor] = {}
    states = []
    for sel in selections:
        name = sel.site.function
        editor = editors.get(name) or editors.setdefault(name, FunctionEditor(functions[name]))
        states.append(SiteState.start(sel, editor))
    done = passes.run_pipeline(REGISTRY, None, states)
    rewritten = Rewritten(loaded, editors, plan=digest)
    report.sites = [_entry(site, done.inserted.get(site.key, [])) for site in sites]
    report.skipped += done.skipped
    report.changed = True
    report.nodes_added = sum(len(e.added) for e in editors.values())
    report.nodes_changed = sum(len(e.changed) for e in editors.values())
    changed = frozenset(f"{name}/{n}" for name, e in editors.items() for n in e.changed)
    return Outcome(report=report, changed=changed, graph=rewritten)


def _selects(spec: Spec) -> bool:
    return bool(passes.rules(spec))


def serialize(rewritten: Rewritten) -> bytes:
    """The output ``saved_model.pb``: the input's own bytes when nothing changed."""
    if rewritten.plan is None:
        return rewritten.loaded.raw
    record = proto.CollectionDef()
    record.bytes_list.value.append(rewritten.plan.encode())
    return io.serialize(rewritten.loaded, rewritten.changed_functions,
                        {PLAN_COLLECTION: record.SerializeToString(deterministic=True)})


def _entry(site: FunctionSite, actions: list[str]) -> SiteEntry:
    return SiteEntry(variable=site.var.path, update=site.key, kind=site.kind, sparse=site.sparse,
                     device="", inserted=list(actions))
