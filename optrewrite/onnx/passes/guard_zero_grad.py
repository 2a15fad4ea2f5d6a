"""All-zero-gradient guard (MultitaskOptimizerWrapper), one ``If`` per guarded tensor.

::

    update = Not(ReduceL1(G, keepdims=0) <= 0)               # some element is non-zero (when: zero)
           | Equal(ReduceSum(G - G, keepdims=0), 0)          # every element finite (when: nonfinite)
           | And(both)                                       # (when: zero_or_nonfinite)
    X', S'_1.. = If(update,
                    then: the update's ops (moved inside, so a skipped step does no work),
                    else: Identity(X), Identity(S_1), ..)

The sum of absolute values is zero exactly when every element is zero or -0.0; a NaN makes it
NaN, for which ``<= 0`` is false, so a NaN gradient is applied, as MultitaskOptimizerWrapper does (an infinity
likewise). The branch outputs take the types of X and the states.

onnxruntime's CUDA provider has no ``If`` kernel for ai.onnx opset 21 and newer. For such
models, and only when the update is made of standard ops, the guard selects instead::

    X' = Where(update, <X updated>, X)   (and each state likewise)

which computes the update on every step and keeps the old values on a skipped one.

With ``scope: step`` the finite test spans the step: ``And`` over every selected gradient's
``Equal(ReduceSum(G_i - G_i), 0)``, built once before the first guard (``prepare``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import onnx

from optrewrite.errors import InputError
from optrewrite.onnx.graph import PREFIX, Block, Editor, branch, value_info
from optrewrite.passes import Pass, PassResult

if TYPE_CHECKING:
    from optrewrite.onnx.passes.state import Declared, SiteState

TAG = "guard"


class GuardZeroGrad(Pass):
    name = TAG

    def prepare(self, ed: Editor, states: Sequence[SiteState]) -> None:
        """``scope: step``: one test that every selected gradient is finite, which each
        site's guard takes instead of its own, placed before the first update that reads one
        of them (the editor's final ordering moves it later where a gradient comes later)."""
        if states[0].selection.of(TAG)[0].options.scope != "step":
            return
        from optrewrite.onnx.passes.global_norm_clip import first_use  # noqa: PLC0415

        b = ed.block(f"{PREFIX}/guard_step")
        tests = [applies(b, st.gradient, st.site.elem_type, "nonfinite") for st in states]
        finite = tests[0]
        for test in tests[1:]:
            finite = b.op("And", [finite, test])
        ed.insert_before(first_use(ed, states), b.nodes)
        for st in states:
            st.step_finite = finite

    def run(self, ed: Editor, states: Sequence[SiteState]) -> PassResult:
        for st in states:
            if st.group is not None:
                _guard_tensor(ed, st)
            else:
                _guard_declared(ed, st)
        return PassResult(inserted={st.site.key: [TAG] for st in states},
                          state={st.site.key: list(st.counters) for st in states if st.counters})


def _guard_tensor(ed: Editor, st: SiteState) -> None:
    """A training-node tensor: its update, as a one-tensor node or lowered, inside the ``If``."""
    site = st.site
    outs = st.outs
    results = [ed.fresh(f"{o}/{PREFIX}_updated") for o in outs]
    then = ed.block(f"{st.scope}/update")
    st.place_update(then, results)
    guard = ed.block(f"{st.scope}/guard")
    cond = _condition(guard, st)
    parts = _granularity(st) != "tensor"
    guarded(guard, cond, then, results, st.olds, outs, [ed.types.get(o) for o in st.olds],
            select=parts or (st.lowered and not branches(ed.opset or 0)))
    st.tails.append(guard)


def _guard_declared(ed: Editor, st: SiteState) -> None:
    """A declared site: the ops only its results need move into the ``If``; when something
    else reads them, the update is computed every step and the guard selects its results."""
    from optrewrite.onnx.passes.state import cycle_error  # noqa: PLC0415

    site = st.site
    d = st.declared
    assert d is not None
    nodes = ed.graph.node
    producer = d.producer
    outs = st.site_outs
    cone = st.cone
    fed = next((o for o in outs if producer[o] in d.gradient_side), None)
    if fed is not None:
        raise cycle_error(site, fed)
    parts = _granularity(st) != "tensor"
    moved = _movable(nodes, d, cone, set(outs)) if branches(ed.opset or 0) and not parts else set()
    if any(producer[o] not in moved for o in outs):
        # Some of the update's results are read elsewhere: it runs every step and the
        # guard selects its results (computed, then discarded on a skipped step).
        moved = set()
    renamed = {o: ed.fresh(f"{o}/{PREFIX}_updated") for o in outs}
    for i in cone:
        node = nodes[i]
        ed.set_io(i, inputs=[renamed.get(x, x) for x in node.input],
                  outputs=[renamed.get(x, x) for x in node.output])
    then = ed.block(f"{st.scope}/update")
    for i in sorted(moved):
        then.nodes.append(nodes[i])
        ed.replace_node(i, [])
    select = parts or not branches(ed.opset or 0)
    results = [renamed[o] if moved or select else then.op("Identity", [renamed[o]]) for o in outs]
    guard = ed.block(f"{st.scope}/guard")
    cond = _condition(guard, st)
    guarded(guard, cond, then, results, st.olds, st.outs, [ed.types.get(o) for o in st.olds], select=select)
    ed.insert_after(max(producer[o] for o in outs), guard.nodes)
    st.placed = True


def _movable(nodes: Sequence[onnx.NodeProto], d: Declared, cone: set[int], site_outputs: set[str]) -> set[int]:
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
                outside = d.readers.get(out, set()) - moved
                if out in site_outputs:
                    outside &= cone
                if outside:
                    moved.discard(i)
                    changed = True
                    break
    return moved


def _when(st: SiteState) -> str:
    return st.selection.of(TAG)[0].options.when  # type: ignore[no-any-return]


def _granularity(st: SiteState) -> str:
    return st.selection.of(TAG)[0].options.granularity  # type: ignore[no-any-return]


def _condition(b: Block, st: SiteState) -> str:
    """The guard's condition for the site: a scalar, or with ``granularity: row | element``
    a mask that broadcasts against X (rows: ``[rows, 1, ...]``); sets ``st.applied``, the
    scalar "some of the update applied"."""
    granularity, elem = _granularity(st), st.site.elem_type
    counters = st.selection.of(TAG)[0].options.counters
    if granularity == "tensor":
        passed = reason_tests(b, st.gradient, elem, _when(st), finite=st.step_finite)
        tests = list(passed.values())
        st.applied = tests[0] if len(tests) == 1 else b.op("And", tests)
        if counters:
            count(b, st, passed)
        return st.applied
    if counters:  # the tensor-level tests count the steps
        count(b, st, reason_tests(b, st.gradient, elem, _when(st), finite=st.step_finite))
    rank = b.editor.rank(st.site.variable)  # the gradient has X's shape (a clipped one has no type here)
    if rank is None:
        raise InputError(f"{st.site.key}: guard granularity {granularity} needs the rank of {st.site.variable!r}")
    shape = _shape(b.editor, st.site.variable)
    for old in st.olds[1:]:  # each state is restored with X's mask
        other = _shape(b.editor, old)
        if other is not None and shape is not None and other != shape:
            raise InputError(f"{st.site.key}: guard granularity {granularity}: state {old!r} has shape {other}, "
                             f"not {st.site.variable!r}'s {shape}")
    mask = parts(b, st.gradient, elem, _when(st), granularity, rank, finite=st.step_finite)
    as_float = b.op("Cast", [mask], to=onnx.TensorProto.FLOAT)
    st.applied = b.op("Greater", [b.reduce("ReduceMax", as_float, None, keepdims=0),
                                  b.const(0.0, onnx.TensorProto.FLOAT)])
    return mask


def _shape(ed: Editor, name: str) -> list[int | str] | None:
    """A tensor's static shape as the graph declares it (a symbolic dim by its name)."""
    t = ed.types.get(name)
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.tensor_type.shape.dim]


def parts(b: Block, g: str, elem: int, when: str, granularity: str, rank: int, *, finite: str | None = None) -> str:
    """Where the update applies, per element (``element``) or per row along axis 0
    (``row``, kept as ``[rows, 1, ...]``), under the rule ``when``, with the tensor tests'
    conventions (-0.0 is zero, NaN is not); ``finite`` is a step-wide test to join."""
    rows = granularity == "row" and rank > 1
    axes = list(range(1, rank))
    tests = []
    if when in ("zero", "zero_or_nonfinite"):
        if rows:
            total = b.reduce("ReduceL1", g, axes, keepdims=1)
            tests.append(b.op("Not", [b.op("LessOrEqual", [total, b.const(0.0, elem)])]))
        else:
            tests.append(b.op("Not", [b.op("Equal", [g, b.const(0.0, elem)])]))
    if when in ("nonfinite", "zero_or_nonfinite") and finite is None:
        nan_if_not = b.op("Sub", [g, g])
        if rows:
            nan_if_not = b.reduce("ReduceSum", nan_if_not, axes, keepdims=1)
        tests.append(b.op("Equal", [nan_if_not, b.const(0.0, elem)]))
    elif when in ("nonfinite", "zero_or_nonfinite"):
        tests.append(finite)
    mask = tests[0]
    for t in tests[1:]:
        mask = b.op("And", [mask, t])
    return mask


def applies(b: Block, g: str, elem: int, when: str = "zero", *, finite: str | None = None) -> str:
    """Whether the update applies: the gradient has a non-zero element (``zero``), every
    element is finite (``nonfinite``), or both (``zero_or_nonfinite``); ``finite``, when
    given, is the non-finite test to take (``scope: step``)."""
    tests = list(reason_tests(b, g, elem, when, finite=finite).values())
    return tests[0] if len(tests) == 1 else b.op("And", tests)


def reason_tests(b: Block, g: str, elem: int, when: str, *, finite: str | None = None) -> dict[str, str]:
    """:func:`applies`'s tests by reason, each a scalar bool that holds when the update may apply."""
    tests = {}
    if when in ("zero", "zero_or_nonfinite"):
        total = b.op("ReduceL1", [g], keepdims=0)
        tests["zero"] = b.op("Not", [b.op("LessOrEqual", [total, b.const(0.0, elem)])])
    if when in ("nonfinite", "zero_or_nonfinite") and finite is not None:
        tests["nonfinite"] = finite
    elif when in ("nonfinite", "zero_or_nonfinite"):
        nan_if_not = b.reduce("ReduceSum", b.op("Sub", [g, g]), None, keepdims=0)
        tests["nonfinite"] = b.op("Equal", [nan_if_not, b.const(0.0, elem)])
    return tests


def count(b: Block, st: SiteState, passed: dict[str, str]) -> None:
    """``guard.counters``: per reason, the state input ``<X>/optrewrite_skipped_<reason>``
    (an int64 scalar the caller starts at 0 and feeds back, as it does the optimizer's
    states) and its next value, the output ``<name>/new``: one more on each step whose test
    for that reason failed."""
    ed = b.editor
    for reason, test in passed.items():
        counter, new = ed.add_state(f"{st.site.variable}/{PREFIX}_skipped_{reason}", onnx.TensorProto.INT64)
        failed = b.op("Cast", [b.op("Not", [test])], to=onnx.TensorProto.INT64)
        b.op("Add", [counter, failed], out=new)
        st.counters.append(counter)


def branches(opset: int) -> bool:
    """Whether the guard may skip work with ``If`` at this ai.onnx opset: onnxruntime's CUDA
    provider has an ``If`` kernel for it (the shipped kernel table, :mod:`..cuda_table`)."""
    from optrewrite.onnx.cuda_table import cuda_kernel  # noqa: PLC0415

    return cuda_kernel("ai.onnx", "If", opset) is not None


def guarded(b: Block, cond: str, then: Block, results: Sequence[str], keep: Sequence[str],
            outs: Sequence[str], types: Sequence[onnx.TypeProto | None], *, select: bool = False) -> None:
    """Emit ``outs = If(cond, then's ``results``, ``keep`` unchanged)``.

    With ``select``, ``then``'s nodes run unconditionally and Where picks the results.
    """
    ed = b.editor
    if select:
        b.nodes.extend(then.nodes)
        for result, old, out in zip(results, keep, outs):
            b.op("Where", [cond, result, old], out=out)
        return
    else_ = ed.block(f"{b.scope}/else")
    kept = [else_.op("Identity", [k]) for k in keep]
    then_g = branch(ed.fresh(f"{b.scope}/then"), then.nodes,
                    [value_info(r, t) for r, t in zip(results, types)])
    else_g = branch(ed.fresh(f"{b.scope}/else"), else_.nodes,
                    [value_info(k, t) for k, t in zip(kept, types)])
    b.emit("If", [cond], outs=list(outs), then_branch=then_g, else_branch=else_g)


PASS = GuardZeroGrad()
