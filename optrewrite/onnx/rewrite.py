"""The ONNX rewrite: find update sites, select them by the spec, run the pass pipeline, record the plan.

Order per tensor, as on the TensorFlow path (:data:`optrewrite.passes.PASSES`): global-norm
clip of the gradient, then the zero-gradient guard (which tests the clipped gradient), then
the clip groups in spec order, then the lowering of what is left of the training op.
Every rewritten update keeps its output names: the last inserted op of a tensor produces
the name the original update produced, so graph outputs and consumers are unchanged.

1. A preview-training node whose tensors are selected is replaced. Lowered, each tensor's
   update becomes standard ops (:mod:`.lowering`); otherwise unguarded
   tensors stay in one reduced node of the same kind and name, and each guarded tensor
   gets a one-tensor node of its own inside its ``If``.
2. A decomposed site's update ops (those the update's outputs need and nothing else does)
   move inside the guard's ``If``, so a skipped step does not compute them.

The plan (:func:`optrewrite.passes.plan_digest`, each site's actions) is recorded in the
model's ``metadata_props``: ``optrewrite.plan`` the digest, ``optrewrite.sites`` the sites it
covers (a rewritten model no longer shows them as the input did). Rewriting a model that
carries one with the same spec changes nothing, with a different spec it is an input error,
since actions do not stack. Models rewritten before per-site plans carry a digest of the
spec's selectors (:func:`_selector_digest`), which is still honoured.

Nothing here serializes: :func:`optrewrite.onnx.io.serialize` does, when the caller saves.

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
from typing import Iterator

import onnx

from optrewrite import passes
from optrewrite.core import Outcome
from optrewrite.errors import InputError, shorten
from optrewrite.onnx import io
from optrewrite.onnx.graph import PREFIX, PREVIEW_DOMAIN, Editor, check_graph
from optrewrite.onnx.passes import REGISTRY
from optrewrite.onnx.passes.state import site_states
from optrewrite.onnx.sites import UpdateSite, find_update_sites
from optrewrite.report import Report, SiteEntry
from optrewrite.spec import Spec

PLAN_KEY = "optrewrite.plan"
SITES_KEY = "optrewrite.sites"
_NOT_LOWERED = tuple(k.name for k in passes.PASSES if k.name != "lower")  # a declared site has no training op


@dataclass
class Rewritten:
    """An ONNX rewrite's model state: the parsed input, edited in place, and its editor
    (None when the model is the input, unchanged)."""

    loaded: io.OnnxFile
    editor: Editor | None = None


@dataclass(frozen=True)
class _Recorded:
    """A site as a rewritten model's plan records it."""

    key: str
    variable: str
    lowerable: bool


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


def applicable(site: UpdateSite) -> tuple[str, ...] | None:
    """The passes that can act on a site (None: all): a declared site has no training op to lower."""
    return None if site.node is not None else _NOT_LOWERED


def _rewrite_onnx(loaded: io.OnnxFile, spec: Spec, *, lower: bool) -> Outcome:
    lower = lower or spec.lower
    model = loaded.model
    report = Report(input=str(loaded.path), format=loaded.format_name)
    rules = passes.rules(spec, lower=lower)
    recorded = {p.key: p.value for p in model.metadata_props if p.key in (PLAN_KEY, SITES_KEY)}
    if SITES_KEY in recorded and PLAN_KEY not in recorded:  # a second record would make the model invalid
        raise InputError(f"{loaded.path}: carries optrewrite's {SITES_KEY!r} record but no {PLAN_KEY!r}: it was "
                         "edited after optrewrite rewrote it; rewrite the original model instead")
    if PLAN_KEY in recorded:
        if not _same_plan(recorded, spec, rules, lower):
            raise InputError(
                f"{loaded.path}: already rewritten by optrewrite with a different spec; "
                "rewrite the original model instead"
            )
        report.note = "already rewritten with this spec: nothing to do"
        return Outcome(report=report, graph=Rewritten(loaded))

    ed = Editor(model, known_names=PREFIX.encode() in loaded.raw)
    found = find_update_sites(ed, spec, loaded.path)
    report.skipped = list(found.skips)
    spec.bind({s.variable: s.rank for s in found.sites}, {s.variable: s.reason for s in found.skips if s.variable},
              {s.variable: onnx.helper.tensor_dtype_to_np_dtype(s.elem_type).name for s in found.sites})
    if lower and not found.nodes:
        raise InputError(f"{loaded.path}: nothing to lower: the model has no {PREVIEW_DOMAIN} update node")

    selections = [passes.select(s, s.variable, rules, applies=applicable(s)) for s in found.sites]
    if any(sel.touched for sel in selections):
        ed.require_opset(loaded.path)
    states, groups = site_states(ed, found.nodes, selections, lower=lower)
    done = passes.run_pipeline(REGISTRY, ed, [st for st in states if st.selection.touched])
    for group in groups:
        if group.touched:
            group.assemble()
    ed.finish()
    model.metadata_props.add(key=PLAN_KEY, value=passes.plan_digest(selections, spec))
    model.metadata_props.add(key=SITES_KEY, value=_sites_record(selections))

    report.sites = [
        SiteEntry(variable=s.variable, update=s.key, kind=s.kind, sparse=False, device="",
                  inserted=done.inserted.get(s.key, []), state=done.state.get(s.key, []))
        for s in found.sites
    ]
    report.skipped += done.skipped
    report.changed = True
    report.nodes_added = ed.created
    report.nodes_changed = ed.replaced
    if model.ir_version > io.MAX_IR_VERSION:
        report.note = f"IR version {model.ir_version} written as {io.MAX_IR_VERSION}, the newest onnxruntime 1.31 loads"
    return Outcome(report=report, changed=frozenset(ed.edited_keys()), graph=Rewritten(loaded, ed))


def serialize(rewritten: Rewritten) -> bytes:
    """The output bytes: the input's own when nothing changed."""
    if rewritten.editor is None:
        return rewritten.loaded.raw
    return io.serialize(rewritten.loaded.model)


def _sites_record(selections: list[passes.Selection[UpdateSite]]) -> str:
    return json.dumps([[sel.site.key, sel.site.variable, sel.site.node is not None] for sel in selections],
                      separators=(",", ":"))


def _same_plan(recorded: dict[str, str], spec: Spec, rules: list[passes.Rule], lower: bool) -> bool:
    """Whether the recorded plan is what ``spec`` asks of the sites it records."""
    digest = recorded[PLAN_KEY]
    if SITES_KEY not in recorded:
        return digest == _selector_digest(spec, lower)
    try:
        sites = [_Recorded(str(k), str(v), bool(n)) for k, v, n in json.loads(recorded[SITES_KEY])]
    except (ValueError, TypeError):
        return False
    selections = [passes.select(s, s.variable, rules, applies=None if s.lowerable else _NOT_LOWERED) for s in sites]
    return digest == passes.plan_digest(selections, spec)


def _selector_digest(spec: Spec, lower: bool) -> str:
    """The plan digest of models rewritten before per-site plans: the spec's selector texts."""

    def selector(sel):  # type: ignore[no-untyped-def]
        return {"include": [p.text for p in sel.include], "exclude": [p.text for p in sel.exclude]}

    body = {
        "format": 1,
        "lower": lower,
        "guard": selector(spec.guard.select) if spec.guard else None,
        "clip": [{**selector(g.select), "max_norm": g.max_norm, "dims": g.dims} for g in spec.clip],
        "global_norm_clip": {**selector(spec.global_norm_clip.select), "clip_norm": spec.global_norm_clip.clip_norm}
        if spec.global_norm_clip else None,
        "updates": [[u.variable, u.gradient, u.updated, u.state] for u in spec.updates],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
