"""The ONNX rewrite: find update sites, select them by the spec, emit the passes, record the plan.

Order per tensor, as on the TensorFlow path: global-norm clip of the gradient, then the
zero-gradient guard (which tests the clipped gradient), then the clip groups in spec order.
Every rewritten update keeps its output names: the last inserted op of a tensor produces
the name the original update produced, so graph outputs and consumers are unchanged.

1. A preview-training node whose tensors are selected is replaced. Lowered, each tensor's
   update becomes standard ops (:mod:`.passes.lower_training_ops`); otherwise unguarded
   tensors stay in one reduced node of the same kind and name, and each guarded tensor
   gets a one-tensor node of its own inside its ``If``.
2. A decomposed site's update ops (those the update's outputs need and nothing else does)
   move inside the guard's ``If``, so a skipped step does not compute them.

The plan (spec digest) is recorded in the model's ``metadata_props`` under ``optrewrite.plan``:
rewriting a model that carries one with the same spec changes nothing, with a different spec
it is an input error, since actions do not stack.

The input is not validated up front (a full pass costs a third of the rewrite of a large
model, and the output goes through the onnx checker before it is written); when the rewrite
fails other than with an InputError, the input is checked and, if it is malformed (dangling
inputs, a cycle, a name defined twice, names that are not UTF-8), that is the error.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from typing import Iterator, Sequence

import onnx

from optrewrite.errors import InputError, SpecError, shorten
from optrewrite.onnx import io
from optrewrite.onnx.graph import PREFIX, PREVIEW_DOMAIN, Block, Editor, check_graph, elem_type_name, node_uses
from optrewrite.onnx.passes import lower_training_ops as lowering
from optrewrite.onnx.passes.clip_by_norm import clip_by_norm
from optrewrite.onnx.passes.global_norm_clip import global_norm_clip
from optrewrite.onnx.passes.guard_zero_grad import any_nonzero, branches, guarded
from optrewrite.onnx.sites import Discovery, TrainingNode, UpdateSite, find_update_sites
from optrewrite.report import Report, SiteEntry, SkipEntry
from optrewrite.selection import Selection, select
from optrewrite.spec import ClipGroup, Spec

PLAN_KEY = "optrewrite.plan"


@dataclass
class Outcome:
    data: bytes
    report: Report
    model: onnx.ModelProto


def plan_digest(spec: Spec, lower: bool) -> str:
    body = {
        "format": 1,
        "lower": lower,
        "guard": _selector(spec.guard.select) if spec.guard else None,
        "clip": [{**_selector(g.select), "max_norm": g.max_norm, "dims": g.dims} for g in spec.clip],
        "global_norm_clip": {**_selector(spec.global_norm_clip.select), "clip_norm": spec.global_norm_clip.clip_norm}
        if spec.global_norm_clip else None,
        "updates": [[u.variable, u.gradient, u.updated, u.state] for u in spec.updates],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _selector(sel) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {"include": [p.text for p in sel.include], "exclude": [p.text for p in sel.exclude]}


def rewrite_onnx(loaded: io.OnnxFile, spec: Spec, *, lower: bool = False) -> Outcome:
    with blaming_malformed_input(loaded):
        return _rewrite_onnx(loaded, spec, lower=lower)


@contextlib.contextmanager
def blaming_malformed_input(loaded: io.OnnxFile) -> Iterator[None]:
    """Turn a failure other than an InputError into one when the input itself is malformed."""
    try:
        yield
    except InputError:
        raise
    except Exception:
        why = malformed(loaded.raw)
        if why:
            raise InputError(f"{loaded.path}: not a valid ONNX model: {shorten(why, 200)}") from None
        raise


def malformed(raw: bytes) -> str | None:
    """Why the serialized model's main graph is malformed (:func:`.graph.check_graph`), or None."""
    model = onnx.ModelProto()
    model.ParseFromString(raw)  # afresh: the failed rewrite may have edited the loaded model
    return check_graph(model.graph)


def _rewrite_onnx(loaded: io.OnnxFile, spec: Spec, *, lower: bool) -> Outcome:
    lower = lower or spec.lower
    model = loaded.model
    report = Report(input=str(loaded.path), format=loaded.format_name)
    digest = plan_digest(spec, lower)
    recorded = next((p.value for p in model.metadata_props if p.key == PLAN_KEY), None)
    if recorded is not None:
        if recorded != digest:
            raise InputError(
                f"{loaded.path}: already rewritten by optrewrite with a different spec; "
                "rewrite the original model instead"
            )
        report.note = "already rewritten with this spec: nothing to do"
        return Outcome(data=loaded.raw, report=report, model=model)

    ed = Editor(model, known_names=PREFIX.encode() in loaded.raw)
    found = find_update_sites(ed, spec, loaded.path)
    report.skipped = [SkipEntry(s.key, s.variable, s.reason) for s in found.skips]
    spec.bind({s.variable: s.rank for s in found.sites}, {s.variable: s.reason for s in found.skips if s.variable},
              {s.variable: onnx.helper.tensor_dtype_to_np_dtype(s.elem_type).name for s in found.sites})
    if lower and not found.nodes:
        raise InputError(f"{loaded.path}: nothing to lower: the model has no {PREVIEW_DOMAIN} update node")

    selections = {s.key: select(s, s.variable, spec, lower=lower and s.node is not None) for s in found.sites}
    if any(sel.touched for sel in selections.values()):
        ed.require_opset(loaded.path)
    gradients = _global_norm_clip(ed, found, selections, spec)
    for tn in found.nodes:
        _rewrite_training_node(ed, tn, [selections[s.key] for s in tn.sites], gradients, lower)
    declared = [selections[s.key] for s in found.sites if s.node is None and selections[s.key].touched]
    if declared:
        index = _Index.build(ed, [sel.site for sel in declared])
        for sel in declared:
            _rewrite_decomposed(ed, index, sel, gradients)
    ed.finish()
    model.metadata_props.add(key=PLAN_KEY, value=digest)

    report.sites = [
        SiteEntry(variable=s.variable, update=s.key, kind=s.kind, sparse=False, device="",
                  inserted=selections[s.key].actions())
        for s in found.sites
    ]
    report.changed = True
    report.nodes_added = ed.created
    report.nodes_changed = len(ed.replace)
    if model.ir_version > io.MAX_IR_VERSION:
        report.note = f"IR version {model.ir_version} written as {io.MAX_IR_VERSION}, the newest onnxruntime 1.31 loads"
    return Outcome(data=io.serialize(model), report=report, model=model)


def _scope(site: UpdateSite) -> str:
    return f"{PREFIX}/{site.variable}"


def _global_norm_clip(ed: Editor, found: Discovery, selections: dict[str, Selection[UpdateSite]],
                      spec: Spec) -> dict[str, str]:
    """Emit the global-norm clip; return each clipped site's new gradient name."""
    chosen = [s for s in found.sites if selections[s.key].global_norm]
    if not chosen:
        return {}
    types = sorted({elem_type_name(s.elem_type) for s in chosen})
    if len(types) != 1:
        assert spec.global_norm_clip is not None
        raise SpecError(spec.source, "global_norm_clip",
                        f"the selected gradients have different element types ({', '.join(types)})")
    assert spec.global_norm_clip is not None
    b = ed.block(f"{PREFIX}/global_norm_clip")
    clipped = global_norm_clip(b, [s.gradient for s in chosen], spec.global_norm_clip.clip_norm, chosen[0].elem_type)
    # Placed before the first update that reads a clipped gradient; the final ordering pass
    # moves it later when a gradient is produced after that point.
    ed.before.setdefault(_first_use(ed, chosen), []).extend(b.nodes)
    return {s.key: c for s, c in zip(chosen, clipped)}


def _first_use(ed: Editor, sites: list[UpdateSite]) -> int:
    """The first node that reads one of the sites' gradients for its update."""
    firsts = [s.node for s in sites if s.node is not None]
    wanted = {s.gradient for s in sites if s.node is None}
    if wanted:
        firsts += [next((i for i, n in enumerate(ed.graph.node) if not wanted.isdisjoint(n.input)),
                        len(ed.graph.node) - 1)]
    return min(firsts)


def _rewrite_training_node(ed: Editor, tn: TrainingNode, sels: list[Selection[UpdateSite]],
                           gradients: dict[str, str], lower: bool) -> None:
    if not any(sel.touched for sel in sels):
        return
    node = ed.graph.node[tn.index]
    attrs = lowering.attributes(node, tn.sites[0].key)
    r, t = node.input[0], node.input[1]
    b = ed.block(f"{PREFIX}/{node.name or tn.kind}")
    shared = None
    if lower:
        r_type = ed.elem_type(r) or tn.sites[0].elem_type
        shared = {elem: lowering.shared_scalars(b, tn.kind, attrs, r, t, r_type, elem)
                  for elem in sorted({s.elem_type for s in tn.sites})}
    kept: list[tuple[UpdateSite, str, str]] = []  # unguarded, not lowered: (site, gradient, X')
    tails: list[Block] = []
    for sel in sels:
        site = sel.site
        g = gradients.get(site.key, site.gradient)
        x_out = ed.fresh(f"{site.updated}/{PREFIX}_unclipped") if sel.clips else site.updated
        outs = [x_out, *(new for _, new in site.states)]
        olds = [site.variable, *(old for old, _ in site.states)]
        if sel.guard:
            then = ed.block(f"{_scope(site)}/update")
            results = [ed.fresh(f"{o}/{PREFIX}_updated") for o in outs]
            if lower:
                assert shared is not None
                lowering.update(then, tn.kind, attrs, shared[site.elem_type], site.variable, g,
                                olds[1:], site.elem_type, results)
            else:
                then.emit(tn.kind, [r, t, *olds[:1], g, *olds[1:]], outs=results,
                          domain=PREVIEW_DOMAIN, **attrs)
            guard = ed.block(f"{_scope(site)}/guard")
            cond = any_nonzero(guard, g, site.elem_type)
            guarded(guard, cond, then, results, olds, outs, [ed.types.get(o) for o in olds],
                    select=lower and not branches(ed.opset or 0))
            tails.append(guard)
        elif lower:
            assert shared is not None
            lowering.update(b, tn.kind, attrs, shared[site.elem_type], site.variable, g, olds[1:],
                            site.elem_type, outs)
        else:
            kept.append((site, g, x_out))
        if sel.clips:
            tails.append(_clip_chain(ed, site, sel.clips, x_out))
    replacement = list(b.nodes)
    if kept:
        states = len(kept[0][0].states)
        inputs = [r, t, *(s.variable for s, _, _ in kept), *(g for _, g, _ in kept)]
        outputs = [x for _, _, x in kept]
        for k in range(states):
            inputs += [s.states[k][0] for s, _, _ in kept]
            outputs += [s.states[k][1] for s, _, _ in kept]
        reduced = onnx.NodeProto()
        reduced.CopyFrom(node)
        del reduced.input[:], reduced.output[:]
        reduced.input.extend(inputs)
        reduced.output.extend(outputs)
        replacement.append(reduced)
    for tail in tails:
        replacement.extend(tail.nodes)
    ed.replace[tn.index] = replacement


def _clip_chain(ed: Editor, site: UpdateSite, groups: tuple[ClipGroup, ...], x: str) -> Block:
    b = ed.block(f"{_scope(site)}/clip")
    for k, group in enumerate(groups):
        last = k == len(groups) - 1
        out = site.updated if last else ed.fresh(f"{site.updated}/{PREFIX}_{group.field}")
        clip_by_norm(b, x, group, site.elem_type, out, ed.types.get(site.variable))
        x = out
    return b


@dataclass
class _Index:
    """Who produces and who reads each tensor, and which nodes the gradients need.

    Built once for all declared sites: a site's edits rename only its own results and move
    only nodes no other site reads, so the index stays valid for the next site.
    """

    producer: dict[str, int]
    readers: dict[str, set[int]]
    gradient_side: set[int]  # nodes some selected gradient depends on: they always run

    @classmethod
    def build(cls, ed: Editor, sites: list[UpdateSite]) -> "_Index":
        nodes = ed.graph.node
        producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
        readers: dict[str, set[int]] = {}
        for i, n in enumerate(nodes):
            for name in node_uses(n):
                readers.setdefault(name, set()).add(i)
        for o in ed.graph.output:
            readers.setdefault(o.name, set()).add(-1)
        starts = [producer[s.gradient] for s in sites if s.gradient in producer]
        return cls(producer, readers, _ancestors(nodes, producer, starts, stop=set()))


def _rewrite_decomposed(ed: Editor, index: _Index, sel: Selection[UpdateSite], gradients: dict[str, str]) -> None:
    """Guard and clip an update written in plain ops (a spec ``updates:`` entry)."""
    site = sel.site
    nodes = ed.graph.node
    producer = index.producer
    outs = [site.updated, *(new for _, new in site.states)]
    olds = [site.variable, *(old for old, _ in site.states)]
    cone = _ancestors(nodes, producer, [producer[o] for o in outs], stop=index.gradient_side)

    g = site.gradient
    if site.key in gradients:
        g = gradients[site.key]
        for i in index.readers.get(site.gradient, set()) & cone:
            nodes[i].input[:] = [g if name == site.gradient else name for name in nodes[i].input]

    final = ed.fresh(f"{site.updated}/{PREFIX}_unclipped") if sel.clips else site.updated
    if sel.guard:
        fed = next((o for o in outs if producer[o] in index.gradient_side), None)
        if fed is not None:
            raise InputError(f"{site.key}: a selected gradient depends on this update's result {fed!r}; "
                             "guarding it would make a cycle")
        moved = _movable(nodes, index, cone, set(outs)) if branches(ed.opset or 0) else set()
        if any(producer[o] not in moved for o in outs):
            # Some of the update's results are read elsewhere: it runs every step and the
            # guard selects its results (computed, then discarded on a skipped step).
            moved = set()
        renamed = {o: ed.fresh(f"{o}/{PREFIX}_updated") for o in outs}
        for i in cone:
            node = nodes[i]
            node.input[:] = [renamed.get(x, x) for x in node.input]
            node.output[:] = [renamed.get(x, x) for x in node.output]
        then = ed.block(f"{_scope(site)}/update")
        for i in sorted(moved):
            then.nodes.append(nodes[i])
            ed.replace[i] = []
        select = not branches(ed.opset or 0)
        results = [renamed[o] if moved or select else then.op("Identity", [renamed[o]]) for o in outs]
        guard = ed.block(f"{_scope(site)}/guard")
        cond = any_nonzero(guard, g, site.elem_type)
        guarded(guard, cond, then, results, olds, [final, *outs[1:]], [ed.types.get(o) for o in olds],
                select=select)
        ed.after.setdefault(max(producer[o] for o in outs), []).extend(guard.nodes)
    elif sel.clips:
        i = producer[site.updated]
        nodes[i].output[:] = [final if o == site.updated else o for o in nodes[i].output]
    if sel.clips:
        ed.after.setdefault(max(producer[o] for o in outs), []).extend(
            _clip_chain(ed, site, sel.clips, final).nodes)


def _ancestors(nodes: Sequence[onnx.NodeProto], producer: dict[str, int], start: list[int], *,
               stop: set[int]) -> set[int]:
    """``start`` and the nodes they depend on, not walking into ``stop``."""
    seen: set[int] = set()
    stack = [i for i in start if i not in stop]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(j for name in node_uses(nodes[i]) if (j := producer.get(name)) is not None and j not in stop)
    return seen


def _movable(nodes: Sequence[onnx.NodeProto], index: _Index, cone: set[int], site_outputs: set[str]) -> set[int]:
    """The cone's nodes that can run inside the guard's branch.

    A node stays outside when something outside the branch reads one of its results: a node
    outside the cone (except for the site's results, which the ``If`` provides), or a cone
    node that stays outside itself.
    """
    moved = set(cone)
    changed = True
    while changed:
        changed = False
        for i in sorted(moved):
            for out in nodes[i].output:
                outside = index.readers.get(out, set()) - moved
                if out in site_outputs:
                    outside &= cone
                if outside:
                    moved.discard(i)
                    changed = True
                    break
    return moved
