"""All-zero-gradient guard inside a function body, by ``SelectV2`` on each write.

With g the site's gradient (a sparse gradient's values) and ``guard.when`` choosing the rule
(the TF graph pass's, :mod:`optrewrite.tf.passes.guard_zero_grad`)::

    flat    = Reshape(g, [-1])
    nonzero = Any(Cast(flat, bool), [0])                  # NaN counts as non-zero, -0.0 as zero
    finite  = Equal(Sum(flat - flat, [0]), 0)             # NaN or +-inf make flat - flat NaN
    apply   = nonzero | finite | LogicalAnd(nonzero, finite)   # when: zero | nonfinite | zero_or_nonfinite

every write of the site (the variable's and its slots') keeps its op and name; its value input
is gated:

1. ``AssignSubVariableOp(r, d)``  -> ``AssignSubVariableOp(r, SelectV2(nonzero, d, +0.0))``;
2. ``AssignAddVariableOp(r, d)``  -> ``AssignAddVariableOp(r, SelectV2(nonzero, d, -0.0))``
   (x - (+0) and x + (-0) are x bit for bit, -0.0 included);
3. ``AssignVariableOp(r, x)``     -> ``AssignVariableOp(r, SelectV2(nonzero, x, ReadVariableOp(r)))``,
   the new read carrying the write's control inputs, so it reads the value the write replaces;
4. ``ResourceScatterAdd/Sub(r, i, u)`` -> the same on ``u`` with -0.0 / +0.0;
   ``ResourceScatterUpdate(r, i, u)`` -> ``u`` or ``ResourceGather(r, i)`` (the old rows).

5. a fused ``ResourceApply*`` / ``ResourceSparseApply*`` op (tf.compat.v1 optimizers) is
   kept, run every step, and undone where the guard says skip: for each of its state
   variables r (the variable, then its slots)::

       old_r = ReadVariableOp(r, ^<the op's control inputs>)        # the value the op sees
       op(..., ^old_r ...)                                            # the fused update, unchanged
       AssignVariableOp(r, SelectV2(apply, ReadVariableOp(r, ^op), old_r))

   Gating the op's gradient would not do: Adam, Momentum, RMSProp, Ftrl move var and slots
   at a zero gradient. The snapshot is a true copy (a resource read is the value at the time
   of the read: the op copies a buffer that a read still holds before writing in place), the
   assignment back of the new value is that value bit for bit, and every node that waited for
   the op (the NoOp the function returns, the beta-power updates) waits for the assignments
   too, which are control outputs of the function. The v1 ``Switch``/``Merge`` form would
   skip the op instead, but dead tensors in a function body hang on its control outputs'
   semantics and TFLite converts neither op; the snapshot costs two reads and one assignment
   per state variable each step.

With ``scope: step`` the ``finite`` test spans the step: per function (a step is one
function, as for the global-norm clip), ``LogicalAnd`` over every selected gradient's finite
test, built once before the sites (``prepare``) and taken by each site's ``apply``.

With ``granularity: row | element`` ``apply`` is a mask (:class:`Masks`) instead of a scalar,
``NotEqual(g, 0)`` [``& Equal(g - g, 0)``] per element, ``Any`` / ``All`` over dims 1.. kept
as ``[rows, 1, ...]`` per row; each gated value and each fused op's restore selects with it
elementwise, a scatter's values with the mask of the gradient's values, a dense write with
the mask scattered onto the variable's rows (``UnsortedSegmentMax``).

With ``counters``, per reason of ``when`` the tensor-level test (``zero``: some element
non-zero; ``nonfinite``: every element finite, or the step-wide test) feeds
``AssignAddVariableOp(<variable>/optrewrite_skipped_<reason>, Cast(LogicalNot(test)))``, a
control output of the function; the counter is a variable the rewrite adds to the SavedModel,
its handle a new input arg of the body (:mod:`optrewrite.tf2.state_vars`).

A skipped step thus leaves the variable and its slots bit for bit; shared state (the iteration
counter, learning rates, loss scales) is not among the site's writes and advances. ``Select``
keeps every stateful op where it was: grappler drops nothing and TFLite converts it, where
``StatelessIf`` or ``Switch`` would not.
"""
from __future__ import annotations

from typing import Sequence

from optrewrite.errors import InputError
from optrewrite.passes import Pass, PassResult
from optrewrite.spec import GuardSpec
from optrewrite.tf import proto
from optrewrite.tf2.functions import FunctionEditor, node_of
from optrewrite.tf2.passes.state import SiteState, check_acyclic

TAG = "guard"


class GuardZeroGrad(Pass):
    name = TAG

    def prepare(self, editor: object, states: Sequence[SiteState]) -> None:
        """``scope: step``: per function (a step is one function, as for the global-norm
        clip), one test that every selected gradient in it is finite."""
        if _options(states[0]).scope != "step":
            return
        by_fn: dict[str, list[SiteState]] = {}
        for st in states:
            by_fn.setdefault(st.site.function, []).append(st)
        for chosen in by_fn.values():
            g = chosen[0].editor
            check_acyclic(g, chosen, "guard scope step", "testing them together")
            scope = g.unique_name("optrewrite/guard_step")
            tests = [apply_of(g, f"{scope}/{k}", st.gradient, st.site.var.dtype, tag=TAG, when="nonfinite")
                     for k, st in enumerate(chosen)]
            finite = tests[0]
            for k, test in enumerate(tests[1:], 1):  # LogicalAnd, which TFLite converts
                finite = g.add(f"{scope}/all_finite_{k}", "LogicalAnd", [finite, test], tag=TAG)
            for st in chosen:
                st.step_finite = finite

    def run(self, editor: object, states: Sequence[SiteState]) -> PassResult:
        for state in states:
            guard(state.editor, state)
        return PassResult(inserted={st.site.key: [TAG] for st in states},
                          state={st.site.key: list(st.counters) for st in states if st.counters})


def apply_of(g: FunctionEditor, scope: str, gradient: str, dtype: int, *, tag: str, when: str = "zero",
             finite: str | None = None) -> str:
    """The scalar bool "run the update" for ``gradient`` under the rule ``when`` (see above);
    ``finite``, when given, is the non-finite test to use (``scope: step``)."""
    return all_of(g, scope, reason_tests(g, scope, gradient, dtype, tag=tag, when=when, finite=finite), tag=tag)


def all_of(g: FunctionEditor, scope: str, passed: dict[str, str], *, tag: str) -> str:
    """The update runs when every reason's test passes."""
    tests = list(passed.values())
    return tests[0] if len(tests) == 1 else g.add(f"{scope}/apply", "LogicalAnd", tests, tag=tag)


def reason_tests(g: FunctionEditor, scope: str, gradient: str, dtype: int, *, tag: str, when: str,
                 finite: str | None = None) -> dict[str, str]:
    """Per reason of ``when`` (``zero``, ``nonfinite``), the scalar bool that passes it:
    some element non-zero; every element finite (or ``finite``, the step-wide test)."""
    T = g.type_attr
    shape = g.const(f"{scope}/flat/shape", [-1], proto.DT_INT32, tag=tag)
    flat = g.add(f"{scope}/flat", "Reshape", [gradient, shape],
                 attrs={"T": T(dtype), "Tshape": T(proto.DT_INT32)}, tag=tag)
    tests: dict[str, str] = {}
    if when in ("zero", "zero_or_nonfinite"):
        as_bool = g.add(f"{scope}/as_bool", "Cast", [flat],
                        attrs={"SrcT": T(dtype), "DstT": T(proto.DT_BOOL), "Truncate": g.bool_attr(False)}, tag=tag)
        axis = g.const(f"{scope}/nonzero/axis", [0], proto.DT_INT32, tag=tag)
        tests["zero"] = g.add(f"{scope}/nonzero", "Any", [as_bool, axis],
                              attrs={"keep_dims": g.bool_attr(False), "Tidx": T(proto.DT_INT32)}, tag=tag)
    if when in ("nonfinite", "zero_or_nonfinite") and finite is not None:
        tests["nonfinite"] = finite
    elif when in ("nonfinite", "zero_or_nonfinite"):
        nan_if_not = g.add(f"{scope}/finite/sub", "Sub", [flat, flat], attrs={"T": T(dtype)}, tag=tag)
        axis = g.const(f"{scope}/finite/axis", [0], proto.DT_INT32, tag=tag)
        total = g.add(f"{scope}/finite/sum", "Sum", [nan_if_not, axis],
                      attrs={"T": T(dtype), "keep_dims": g.bool_attr(False), "Tidx": T(proto.DT_INT32)}, tag=tag)
        zero = g.const(f"{scope}/finite/zero", 0.0, dtype, tag=tag)
        tests["nonfinite"] = g.add(f"{scope}/finite", "Equal", [total, zero],
                                   attrs={"T": T(dtype), "incompatible_shape_error": g.bool_attr(True)}, tag=tag)
    if not tests:
        raise AssertionError(f"guard.when {when!r}")
    return tests


def _options(state: SiteState) -> GuardSpec:
    (rule,) = state.selection.of(TAG)
    return rule.options  # type: ignore[no-any-return]


def guard(g: FunctionEditor, state: SiteState) -> None:
    site = state.site
    scope = g.unique_name(f"{site.scope}/optrewrite_guard")
    options = _options(state)
    masks = None
    if options.granularity == "tensor":
        passed = reason_tests(g, scope, state.gradient, site.var.dtype, tag=TAG, when=options.when,
                              finite=state.step_finite)
        nonzero = all_of(g, scope, passed, tag=TAG)
        state.applied = nonzero
        if options.counters:
            count(g, state, passed, scope)
    else:
        if options.counters:
            count(g, state, reason_tests(g, f"{scope}/count", state.gradient, site.var.dtype, tag=TAG,
                                         when=options.when, finite=state.step_finite), scope)
        masks = Masks(g, state, options, scope)
        if site.fused and site.sparse:
            guard_fused_rows(g, state, masks, scope)
            return
        nonzero = masks.dense()
        state.applied = masks.applied(nonzero)
    if site.fused:
        guard_fused(g, state, nonzero, scope)
        return
    for k, write in enumerate(site.writes):
        node = g.node(write)
        dtype = node.attr["dtype"].type if "dtype" in node.attr else site.var.dtype
        T = {"T": g.type_attr(dtype)}
        resource = node.input[0]
        controls = [i for i in node.input if i.startswith("^")]
        pos = 2 if "Scatter" in node.op else 1
        value = node.input[pos]
        here = f"{scope}/{k}"
        if node.op in ("AssignSubVariableOp", "ResourceScatterSub"):
            keep = g.const(f"{here}/zero", 0.0, dtype, tag=TAG)
        elif node.op in ("AssignAddVariableOp", "ResourceScatterAdd"):
            keep = g.const(f"{here}/neg_zero", -0.0, dtype, tag=TAG)
        elif node.op == "AssignVariableOp":
            keep = g.add(f"{here}/old", "ReadVariableOp", [resource], control=[node_of(c) for c in controls],
                         attrs={"dtype": g.type_attr(dtype)}, tag=TAG)
        elif node.op == "ResourceScatterUpdate":
            keep = g.add(f"{here}/old", "ResourceGather", [resource, node.input[1]],
                         control=[node_of(c) for c in controls],
                         attrs={"dtype": g.type_attr(dtype), "Tindices": node.attr["Tindices"],
                                "batch_dims": g.int_attr(0), "validate_indices": g.bool_attr(True)}, tag=TAG)
        else:  # sites.find_sites admits no other write
            raise AssertionError(f"cannot gate {node.op}")
        mask = nonzero
        if masks is not None and "Scatter" in node.op:
            mask = masks.values(node.input[1])
        gated = g.add(f"{here}/select", "SelectV2", [mask, value, keep], attrs=T, tag=TAG)
        g.set_input(write, pos, gated)


def count(g: FunctionEditor, state: SiteState, passed: dict[str, str], scope: str) -> None:
    """``guard.counters``: per reason, ``AssignAddVariableOp(counter, Cast(LogicalNot(test)))``
    on the counter ``<variable>/optrewrite_skipped_<reason>``, a variable the rewrite adds to
    the SavedModel (:mod:`optrewrite.tf2.state_vars`: object graph, checkpoint, the handle
    passed down to this body as an input arg). The increment is a control output of the
    function, so it runs every step; nothing waits for it."""
    i64 = g.type_attr(proto.DT_INT64)
    for reason, test in passed.items():
        name = f"{state.site.var.path}/optrewrite_skipped_{reason}"
        handle = g.capture(name)
        skipped = g.add(f"{scope}/skipped_{reason}", "LogicalNot", [test], tag=TAG)
        one = g.add(f"{scope}/skipped_{reason}/as_int", "Cast", [skipped],
                    attrs={"SrcT": g.type_attr(proto.DT_BOOL), "DstT": i64, "Truncate": g.bool_attr(False)}, tag=TAG)
        g.add_control_output(g.add(f"{scope}/count_{reason}", "AssignAddVariableOp", [handle, one],
                                   attrs={"dtype": i64}, tag=TAG))
        state.counters.append(name)


class Masks:
    """``granularity: row | element``: where the rule lets the update apply, as bool tensors
    that broadcast against what a write writes: the variable's shape (a row mask is
    ``[rows, 1, ...]``), or a scatter's rows of values. A sparse gradient's mask is scattered
    onto the variable's rows (``UnsortedSegmentMax``); a row it does not touch has a zero
    gradient, kept under a zero test and applied under ``when: nonfinite`` alone. The
    step-wide finite test (``scope: step``), a scalar, joins last."""

    def __init__(self, g: FunctionEditor, state: SiteState, options: GuardSpec, scope: str) -> None:
        site = state.site
        shape = site.var.shape
        if shape is None or (site.sparse and (not shape or shape[0] < 0)):
            raise InputError(f"{site.key}: guard granularity {options.granularity} needs the variable's shape")
        for slot in site.slots:
            if slot.shape is not None and slot.shape != shape:
                raise InputError(f"{site.key}: guard granularity {options.granularity}: slot {slot.path!r} has "
                                 f"shape {list(slot.shape)}, not the variable's {list(shape)}")
        self.g, self.state, self.options, self.scope = g, state, options, scope
        self.shape = shape
        self._values: str | None = None
        self._dense: str | None = None

    def _tests(self) -> str | None:
        """The per-element (per-row) test on the gradient as the site has it (a sparse
        gradient's values), without the step-wide part; None when only that is asked."""
        g, scope, when = self.g, self.scope, self.options.when
        grad, dtype = self.state.gradient, self.state.site.var.dtype
        T = {"T": g.type_attr(dtype)}
        tests = []
        if when in ("zero", "zero_or_nonfinite"):
            tests.append(g.add(f"{scope}/nonzero", "NotEqual", [grad, g.const(f"{scope}/zero", 0.0, dtype, tag=TAG)],
                               attrs={**T, "incompatible_shape_error": g.bool_attr(True)}, tag=TAG))
        if when in ("nonfinite", "zero_or_nonfinite") and self.state.step_finite is None:
            sub = g.add(f"{scope}/finite/sub", "Sub", [grad, grad], attrs=T, tag=TAG)
            tests.append(g.add(f"{scope}/finite", "Equal", [sub, g.const(f"{scope}/finite/zero", 0.0, dtype, tag=TAG)],
                               attrs={**T, "incompatible_shape_error": g.bool_attr(True)}, tag=TAG))
        if self.options.granularity == "row" and len(self.shape) > 1:
            axes = g.const(f"{scope}/row/axes", list(range(1, len(self.shape))), proto.DT_INT32, tag=TAG)
            tests = [g.add(f"{scope}/row_{k}", "Any" if k == 0 and when != "nonfinite" else "All", [t, axes],
                           attrs={"keep_dims": g.bool_attr(True), "Tidx": g.type_attr(proto.DT_INT32)}, tag=TAG)
                     for k, t in enumerate(tests)]
        mask = tests[0] if tests else None
        for k, t in enumerate(tests[1:], 1):
            mask = g.add(f"{scope}/mask_{k}", "LogicalAnd", [mask, t], tag=TAG)
        return mask

    def _with_step(self, mask: str | None) -> str:
        finite = self.state.step_finite
        if finite is None or self.options.when == "zero":
            assert mask is not None
            return mask
        return finite if mask is None else self.g.add(f"{self.scope}/mask/step", "LogicalAnd", [mask, finite], tag=TAG)

    def values(self, indices: str) -> str:
        """The mask for a scatter of the gradient's values (at the gradient's ``indices``)."""
        if indices != self.state.site.indices:
            raise InputError(f"{self.state.site.key}: guard granularity {self.options.granularity}: a scatter "
                             "at other indices than the gradient's")
        if self._values is None:
            self._values = self._with_step(self._tests())
        return self._values

    def dense(self) -> str:
        """The mask over the whole variable."""
        if self._dense is not None:
            return self._dense
        g, scope, site = self.g, self.scope, self.state.site
        mask = self._tests()
        if site.sparse and mask is not None:
            assert site.indices is not None
            i32 = g.type_attr(proto.DT_INT32)
            keeps_untouched = self.options.when != "nonfinite"
            flag = mask if keeps_untouched else g.add(f"{scope}/mask/skip", "LogicalNot", [mask], tag=TAG)
            ints = g.add(f"{scope}/mask/as_int", "Cast", [flag],
                         attrs={"SrcT": g.type_attr(proto.DT_BOOL), "DstT": i32, "Truncate": g.bool_attr(False)}, tag=TAG)
            top = g.add(f"{scope}/mask/scatter", "UnsortedSegmentMax",
                        [ints, site.indices, g.const(f"{scope}/mask/rows", self.shape[0], proto.DT_INT32, tag=TAG)],
                        attrs={"T": i32, "Tindices": g.type_attr(site.indices_dtype), "Tnumsegments": i32}, tag=TAG)
            mask = g.add(f"{scope}/mask/dense", "Greater", [top, g.const(f"{scope}/mask/zero", 0, proto.DT_INT32, tag=TAG)],
                         attrs={"T": i32}, tag=TAG)
            if not keeps_untouched:
                mask = g.add(f"{scope}/mask/applies", "LogicalNot", [mask], tag=TAG)
        self._dense = self._with_step(mask)
        return self._dense

    def rows(self, position: str, count: str) -> str:
        """The mask per row of ``Unique(indices)`` (``position``: its idx output, ``count``:
        how many rows): a row applies when any of its entries does."""
        g, scope = self.g, self.scope
        mask = self._tests()
        if mask is not None:
            i32 = g.type_attr(proto.DT_INT32)
            ints = g.add(f"{scope}/rows/as_int", "Cast", [mask],
                         attrs={"SrcT": g.type_attr(proto.DT_BOOL), "DstT": i32, "Truncate": g.bool_attr(False)}, tag=TAG)
            top = g.add(f"{scope}/rows/scatter", "UnsortedSegmentMax", [ints, position, count],
                        attrs={"T": i32, "Tindices": i32, "Tnumsegments": i32}, tag=TAG)
            mask = g.add(f"{scope}/rows/applies", "Greater", [top, g.const(f"{scope}/rows/zero", 0, proto.DT_INT32, tag=TAG)],
                         attrs={"T": i32}, tag=TAG)
        return self._with_step(mask)

    def applied(self, mask: str) -> str:
        """Whether any part of the update applied (some element of ``mask``): the clip's
        ``on_skipped_steps`` gate."""
        g, scope = self.g, self.scope
        i32 = proto.DT_INT32
        flat = g.add(f"{scope}/applied/flat", "Reshape", [mask, g.const(f"{scope}/applied/shape", [-1], i32, tag=TAG)],
                     attrs={"T": g.type_attr(proto.DT_BOOL), "Tshape": g.type_attr(i32)}, tag=TAG)
        return g.add(f"{scope}/applied", "Any", [flat, g.const(f"{scope}/applied/axis", [0], i32, tag=TAG)],
                     attrs={"keep_dims": g.bool_attr(False), "Tidx": g.type_attr(i32)}, tag=TAG)


def guard_fused(g: FunctionEditor, state: SiteState, apply: str, scope: str) -> None:
    """Snapshot the fused op's state, run it, assign the snapshot back where ``apply`` is false."""
    site = state.site
    op = site.writes[0]
    node = g.node(op)
    dtype = node.attr["T"].type if "T" in node.attr else site.var.dtype
    controls = [node_of(c) for c in node.input if c.startswith("^")]
    olds = [g.add(f"{scope}/state_{k}/old", "ReadVariableOp", [ref], control=controls,
                  attrs={"dtype": g.type_attr(dtype)}, tag=TAG) for k, ref in enumerate(site.fused)]
    for old in olds:
        g.add_control_input(op, old)
    restores = []
    for k, (ref, old) in enumerate(zip(site.fused, olds)):
        new = g.add(f"{scope}/state_{k}/new", "ReadVariableOp", [ref], control=[op],
                    attrs={"dtype": g.type_attr(dtype)}, tag=TAG)
        kept = g.add(f"{scope}/state_{k}/select", "SelectV2", [apply, new, old], attrs={"T": g.type_attr(dtype)}, tag=TAG)
        write = g.add(f"{scope}/state_{k}/assign", "AssignVariableOp", [ref, kept],
                      attrs={"dtype": g.type_attr(dtype)}, tag=TAG)
        g.add_control_output(write)
        restores.append(write)
    ours = set(g.added)
    for name in sorted(g.users(op), key=g.index.__getitem__):
        if name in ours:
            continue
        if f"^{op}" in g.node(name).input:
            for write in restores:
                g.add_control_input(name, write)
    state.after = restores


def guard_fused_rows(g: FunctionEditor, state: SiteState, masks: Masks, scope: str) -> None:
    """Row and element guards on a fused sparse op (``ResourceSparseApply*``), which writes
    only the rows at its indices: those rows (each once) are gathered before the op and put
    back where the rule skips, as :func:`guard_fused` does for a whole tensor."""
    site = state.site
    op = site.writes[0]
    node = g.node(op)
    dtype = g.type_attr(node.attr["T"].type if "T" in node.attr else site.var.dtype)
    assert site.indices is not None
    idx_t, i32 = g.type_attr(site.indices_dtype), g.type_attr(proto.DT_INT32)
    rows = g.add(f"{scope}/rows", "Unique", [site.indices], attrs={"T": idx_t, "out_idx": i32}, tag=TAG)
    position = f"{node_of(rows)}:idx:0"
    count = g.add(f"{scope}/rows/size", "Size", [rows], attrs={"T": idx_t, "out_type": i32}, tag=TAG)
    keep = masks.rows(position, count)
    state.applied = masks.applied(keep)
    controls = [node_of(c) for c in node.input if c.startswith("^")]
    gather = {"dtype": dtype, "Tindices": idx_t, "batch_dims": g.int_attr(0), "validate_indices": g.bool_attr(True)}
    olds = [g.add(f"{scope}/state_{k}/old", "ResourceGather", [ref, rows], control=controls, attrs=gather, tag=TAG)
            for k, ref in enumerate(site.fused)]
    for old in olds:
        g.add_control_input(op, old)
    restores = []
    for k, (ref, old) in enumerate(zip(site.fused, olds)):
        new = g.add(f"{scope}/state_{k}/new", "ResourceGather", [ref, rows], control=[op], attrs=gather, tag=TAG)
        kept = g.add(f"{scope}/state_{k}/select", "SelectV2", [keep, new, old], attrs={"T": dtype}, tag=TAG)
        write = g.add(f"{scope}/state_{k}/assign", "ResourceScatterUpdate", [ref, rows, kept],
                      attrs={"dtype": dtype, "Tindices": idx_t}, tag=TAG)
        g.add_control_output(write)
        restores.append(write)
    ours = set(g.added)
    for name in sorted(g.users(op), key=g.index.__getitem__):
        if name not in ours and f"^{op}" in g.node(name).input:
            for write in restores:
                g.add_control_input(name, write)
    state.after = restores


PASS = GuardZeroGrad()
