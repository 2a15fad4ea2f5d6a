"""The SavedModel rewrite: find the sites inside functions, select them, run the pipeline, record the plan.

1. Bind function inputs to the object graph's variables and find every function's sites
   (:mod:`optrewrite.tf2.sites`); ``Spec.bind`` checks selectors against the variables' paths.
2. Run :data:`optrewrite.tf2.passes.REGISTRY` through :func:`optrewrite.passes.run_pipeline`
   on a :class:`~optrewrite.tf2.functions.LibraryEditor`: one
   :class:`~optrewrite.tf2.functions.FunctionEditor` per function body it changes.
3. Report one row per **variable**: a Keras SavedModel holds the training step twice (the
   ``train`` signature's function and the object graph's own trace of the same
   ``tf.function``), and either may run, so both are rewritten; the report (and explain) list
   the variable once, its ``update`` naming every function's update (``F1/w, F2/w``, in
   library order) and its actions once. Skips are merged the same way (same variable, same
   reason). The plan digest still covers every function's site (in library order), so it
   changes when the set of rewritten functions does, and a rerun reproduces it.
4. With ``guard.counters``, make the counters the guard asked each body for real variables of
   the SavedModel (:func:`optrewrite.tf2.state_vars.thread`: input args down the call chain,
   object graph, graph, a reading signature; the checkpoint is written when saving).
5. Record the plan digest as the MetaGraphDef's ``collection_def["optrewrite_plan"]`` (a
   bytes list); ``tf.saved_model.load`` ignores collections. A SavedModel that carries the
   record with the same digest is "nothing to do"; with another, the rewrite is refused.

Nothing here serializes; :func:`serialize` splices the output bytes (optrewrite.tf2.io).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from optrewrite import passes, seal
from optrewrite.core import Outcome, Skip
from optrewrite.errors import InputError, SpecError, shorten
from optrewrite.report import Report, SiteEntry
from optrewrite.spec import Spec
from optrewrite.tf import proto
from optrewrite.tf2 import io
from optrewrite.tf2.functions import FunctionEditor, LibraryEditor
from optrewrite.tf2.passes import REGISTRY
from optrewrite.tf2.passes.state import SiteState
from optrewrite.tf2.sites import WRITES, Body, FunctionSite, bindings, find_sites
from optrewrite.tf2.state_vars import MetaEdit, thread

PLAN_COLLECTION = "optrewrite_plan"
SEAL_COLLECTION = "optrewrite_seal"
# where the output's seal lies (optrewrite.seal): the collection_def map entry for it, as
# io.serialize writes it (key, then a CollectionDef whose bytes_list holds the 64 digits)
SEAL_MARKER = b"\x0a\x0f" + SEAL_COLLECTION.encode() + b"\x12\x44\x12\x42\x0a\x40"
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
    seal_key: bytes = b""  # what the output's seal binds it to (optrewrite.seal)
    edit: MetaEdit = field(default_factory=MetaEdit)  # what changed: functions and (new variables) the rest


def discover(loaded: io.SavedModelFile) -> Discovery:
    """Every function's update sites, in library order, and what was skipped."""
    bound = bindings(loaded.meta)
    sites: list[FunctionSite] = []
    skips: list[Skip] = []
    library = LibraryEditor(loaded.meta.graph_def.library.function)
    # A Keras SavedModel holds its training step twice (the signature's trace and the
    # object's), equal but for the custom-gradient name of its IdentityN: a body seen before,
    # with its inputs bound the same way, has the same sites (bodies are compared only when
    # their node counts and bindings agree).
    done: dict[tuple[object, ...], list[_Seen]] = {}
    accumulates: dict[tuple[str, int], bool] = {}  # (branch, input position) -> writes that input into a variable
    for fn in loaded.meta.graph_def.library.function:
        name = fn.signature.name
        local = bound.get(name)
        if local is None:
            continue
        key = (len(fn.node_def), tuple((a.name, a.type) for a in fn.signature.input_arg),
               tuple(sorted((arg, v.node_id if v else -1) for arg, v in local.items())))
        same = next((seen for seen in done.get(key, ()) if _same_body(seen.fn, fn)), None)
        if same is not None:
            first = same.fn.signature.name
            found = [replace(site, function=name) for site in same.found]
            skipped = [replace(skip, update=name + skip.update[len(first):]) if skip.update.startswith(first + "/")
                       else skip for skip in same.skipped]
        else:
            found, skipped = find_sites(fn, local)
            done.setdefault(key, []).append(_Seen(fn, found, skipped))
        for site in found:
            accumulated = _accumulated_in(library, site, accumulates)
            if accumulated:
                skips.append(Skip(site.key, site.var.path,
                                  "gradient accumulation: another branch adds this gradient to optimizer state; the "
                                  "update consumes gradients summed over several steps, which the guard cannot test"))
            else:
                sites.append(site)
        skips += skipped
    return Discovery(sites, skips)


@dataclass
class _Seen:
    """A body whose sites were found."""

    fn: proto.FunctionDef
    found: list[FunctionSite]
    skipped: list[Skip]


_UNIQUE_ATTRS = ("_gradient_op_type",)  # names TensorFlow makes unique per trace; no site depends on them


def _same_body(a: proto.FunctionDef, b: proto.FunctionDef) -> bool:
    """Whether two bodies have equal nodes in the same order, the attrs of
    :data:`_UNIQUE_ATTRS` left out."""
    if len(a.node_def) != len(b.node_def):
        return False
    for x, y in zip(a.node_def, b.node_def):
        if x == y:
            continue
        if not any(k in x.attr or k in y.attr for k in _UNIQUE_ATTRS):
            return False
        x, y = proto.NodeDef.FromString(x.SerializeToString()), proto.NodeDef.FromString(y.SerializeToString())
        for node in (x, y):
            for k in _UNIQUE_ATTRS:
                if k in node.attr:
                    del node.attr[k]
        if x != y:
            return False
    return True


def _accumulated_in(library: LibraryEditor, site: FunctionSite, accumulates: dict[tuple[str, int], bool]) -> str | None:
    """The alternative branch that writes the site's gradient into a variable (Keras 3
    ``gradient_accumulation_steps``: one branch accumulates, the other applies the sum), or
    None. The gradient must be a branch input; the alternative takes it in the same place.
    ``accumulates`` remembers each (branch, input position) answered: every site of a
    branch asks about the same alternatives."""
    alternatives = library.alternatives(site.function)
    if not alternatives:
        return None
    fn = library.functions[site.function]
    names = [a.name for a in fn.signature.input_arg]
    if site.gradient not in names:
        return None
    pos = names.index(site.gradient)
    for name in alternatives:
        if (name, pos) not in accumulates:
            alt = library.functions[name]
            writes = False
            if pos < len(alt.signature.input_arg):
                body = Body.of(alt)
                below = body.tensor_descendants(alt.signature.input_arg[pos].name, data_only=True)
                writes = any(body.nodes[n].op in WRITES for n in below if n in body.nodes)
            accumulates[(name, pos)] = writes
        if accumulates[(name, pos)]:
            return name
    return None


def recorded_plan(meta: proto.MetaGraphDef) -> str | None:
    if PLAN_COLLECTION not in meta.collection_def:
        return None
    values = meta.collection_def[PLAN_COLLECTION].bytes_list.value
    return values[0].decode(errors="replace") if values else ""


def _found(skips: Sequence[Skip]) -> str:
    """What a refusal for lack of updates names: the first update found and why it is
    skipped, short enough for one line (the names come from the graph), and how many more."""
    if not skips:
        return " (no function writes a trainable variable from a gradient)"
    first = skips[0]
    more = f", and {len(skips) - 1} more: optrewrite explain lists them" if len(skips) > 1 else ""
    return f" (found: {shorten(first.variable or first.update, 60)}: {shorten(first.reason, 80)}{more})"


def rewrite_savedmodel(loaded: io.SavedModelFile, spec: Spec) -> Outcome:
    report = Report(input=str(loaded.path), format=FORMAT_NAME)
    found = discover(loaded)
    sites = found.sites
    report.skipped = merge_skips(found.skips)
    if not sites and _selects(spec):
        raise InputError(f"{loaded.path}: the SavedModel has no optimizer update the spec could select"
                         + _found(report.skipped))
    ranks: dict[str, int | None] = {}
    dtypes: dict[str, str] = {}
    for s in sites:
        ranks[s.var.path] = None if s.var.shape is None else len(s.var.shape)
        dtypes[s.var.path] = proto.FLOAT_NAMES[s.var.dtype]
    spec.bind(ranks, {s.variable: s.reason for s in found.skips if s.variable and s.variable not in ranks}, dtypes)
    rules = passes.rules(spec)
    for rule in rules:
        if getattr(rule.options, "init_op", None) is not None:
            raise SpecError(rule.source, "guard.init_op", "names a TensorFlow graph's init op; a SavedModel's "
                            "counters are restored from its checkpoint", rule.options.counters_line)
    selections = [passes.select(site, site.var.path, rules) for site in sites]
    digest = passes.plan_digest(selections, spec)

    recorded = recorded_plan(loaded.meta)
    if recorded is not None:
        if recorded != digest:
            raise InputError(f"{loaded.path}: already rewritten by optrewrite with a different spec; "
                             "rewrite the original SavedModel instead")
        labels = {sel.site.key: sel.labels for sel in selections}
        report.sites = [_entry(group, labels) for group in by_variable(sites)]
        report.note = "already rewritten with this spec: nothing to do"
        return Outcome(report=report, graph=Rewritten(loaded))

    library = LibraryEditor(loaded.meta.graph_def.library.function)
    states = [SiteState.start(sel, library.function(sel.site.function)) for sel in selections]
    done = passes.run_pipeline(REGISTRY, library, states)
    counters = list(dict.fromkeys(name for sel in selections for name in done.state.get(sel.site.key, [])))
    edit = thread(loaded.meta, library, counters)
    editors = library.editors
    edit.functions = {name for name, e in editors.items() if e.touched}
    rewritten = Rewritten(loaded, editors, plan=digest, seal_key=seal.spec_key(spec), edit=edit)
    report.sites = [_entry(group, done.inserted, done.state) for group in by_variable(sites)]
    report.skipped = merge_skips([*report.skipped, *done.skipped])
    report.changed = True
    report.nodes_added = sum(len(e.added) for e in editors.values()) + edit.new_nodes
    report.nodes_changed = sum(len(e.changed) for e in editors.values()) + len(edit.nodes)
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
    placeholder = proto.CollectionDef()
    placeholder.bytes_list.value.append(seal.PLACEHOLDER)
    raw = io.serialize(rewritten.loaded, rewritten.edit,
                       {PLAN_COLLECTION: record.SerializeToString(deterministic=True),
                        SEAL_COLLECTION: placeholder.SerializeToString(deterministic=True)})
    return seal.fill(raw, SEAL_MARKER, rewritten.seal_key)


def by_variable(sites: list[FunctionSite]) -> list[list[FunctionSite]]:
    """The sites grouped by variable, in the order each variable is first found."""
    groups: dict[str, list[FunctionSite]] = {}
    for site in sites:
        groups.setdefault(site.var.path, []).append(site)
    return list(groups.values())


def update_name(group: list[FunctionSite]) -> str:
    """The report's ``update`` of a variable updated in one or several functions."""
    return ", ".join(dict.fromkeys(s.key for s in group))


def kind_of(group: list[FunctionSite]) -> str:
    return " / ".join(dict.fromkeys(s.kind for s in group))


def merge_skips(skips: list[Skip]) -> list[Skip]:
    """One skip per (variable, reason), its ``update`` naming every function's: the copies of
    one step skip the same updates. Skips that name no variable are kept as they are."""
    merged: dict[tuple[str | None, str, str], list[str]] = {}
    for skip in skips:
        key = (skip.variable, skip.reason, "" if skip.variable else skip.update)
        merged.setdefault(key, []).append(skip.update)
    return [Skip(", ".join(dict.fromkeys(updates)), variable, reason)
            for (variable, reason, _), updates in merged.items()]


def _entry(group: list[FunctionSite], inserted: dict[str, list[str]],
           state: dict[str, list[str]] | None = None) -> SiteEntry:
    actions: list[str] = []
    for site in group:
        for label in inserted.get(site.key, []):
            if label not in actions:
                actions.append(label)
    added = list(dict.fromkeys(name for site in group for name in (state or {}).get(site.key, [])))
    first = group[0]
    return SiteEntry(variable=first.var.path, update=update_name(group), kind=kind_of(group),
                     sparse=any(s.sparse for s in group), device="", inserted=actions, state=added)
