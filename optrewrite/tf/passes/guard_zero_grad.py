"""All-zero-gradient guard (MultitaskOptimizerWrapper).

For each selected update site, with g its gradient (the values of a sparse gradient)::

    flat    = Reshape(g, [-1])
    nonzero = Any(Cast(flat, bool), [0])                  # NaN counts as non-zero, -0.0 as zero
    finite  = Equal(Sum(flat - flat, [0]), 0)             # NaN or +-inf make flat - flat NaN
    apply   = nonzero | finite | LogicalAnd(nonzero, finite)   # guard.when: zero | nonfinite | both
    switch  = Switch(apply, apply)
    pivot_t = Identity(switch:1)                            # dead when g is all zero
    pivot_f = Identity(switch:0)                            # dead otherwise
    every state write of the update  +=  ^pivot_t          # skipped when g is all zero
    applied = Identity(pivot_t, ^update)                    # live once the update ran
    merge   = Merge(pivot_f, applied)                       # live every step

This is the v1 ``cond`` structure: a dead control input makes the writes dead, so the
variable and its slots keep their values (docs/semantics.md#guard), while the Merge keeps everything that waited
for the update (the train op, global_step, Adam's beta powers) running every step.

With ``scope: step`` the ``finite`` test is one for the whole step, built once before the
sites (:meth:`GuardZeroGrad.prepare`)::

    finite_i = Equal(Sum(flat_i - flat_i, [0]), 0)          # per selected gradient, at its site
    finite   = All(Pack(finite_1, ..., finite_n), [0])

With ``granularity: row | element`` (:func:`guard_parts`) the update always runs, and the
variable and each slot s (of the variable's shape) get their old value back where the rule
skips::

    mask    = NotEqual(g, 0) [& Equal(g - g, 0)]            # per element; rows: Any / All over dims 1..
            (sparse: UnsortedSegmentMax over the indices onto the variable's rows)
    old_s   = ReadVariableOp(s)  (a ref variable: Snapshot(s));  every write of the update += ^old_s
    s       = Select(mask, ReadVariableOp(s, ^update), old_s)  # AssignVariableOp / Assign

With ``counters``, per reason an int64 resource variable ``<variable>/optrewrite_skipped_<reason>``
counts the steps whose whole-tensor test failed (:func:`count`).
"""
from __future__ import annotations

from typing import Sequence

from optrewrite.errors import InputError, SpecError
from optrewrite.passes import Pass, PassResult, Rule
from optrewrite.tf import proto
from optrewrite.tf.graph import GraphEditor, Placement
from optrewrite.tf.passes.global_norm_clip import check_acyclic
from optrewrite.tf.passes.state import SiteState

TAG = "guard"


class GuardZeroGrad(Pass):
    name = TAG

    def prepare(self, g: GraphEditor, states: Sequence[SiteState]) -> None:
        """What spans the step: ``counters`` find the init op once; ``scope: step`` builds one
        test that every selected gradient is finite, which each site's guard takes instead
        of its own."""
        rule = states[0].selection.of(TAG)[0]
        if rule.options.counters:
            init_op = find_init_op(g, rule)
            for st in states:
                st.init_op = init_op
        if rule.options.scope != "step":
            return
        check_acyclic(g, list(states), "guard scope step", "testing them together")
        scope = g.unique_name("optrewrite/guard_step")
        at = Placement(device=states[0].site.device)
        tests = [applies(g, f"{st.site.scope}/optrewrite_guard_step", st.gradient, st.site.dtype, "nonfinite",
                         st.placement) for st in states]
        finite = tests[0]
        if len(tests) > 1:
            T = g.type_attr
            stack = g.add(f"{scope}/stack", "Pack", tests,
                          attrs={"T": T(proto.DT_BOOL), "N": g.int_attr(len(tests)), "axis": g.int_attr(0)},
                          placement=at, tag=TAG)
            axis = g.const(f"{scope}/axis", [0], proto.DT_INT32, placement=at, tag=TAG)
            finite = g.add(f"{scope}/all_finite", "All", [stack, axis],
                           attrs={"keep_dims": g.bool_attr(False), "Tidx": T(proto.DT_INT32)}, placement=at, tag=TAG)
        for st in states:
            st.step_finite = finite

    def run(self, g: GraphEditor, states: Sequence[SiteState]) -> PassResult:
        for state in states:
            guard(g, state)
        return PassResult(inserted={st.site.key: [TAG] for st in states},
                          state={st.site.key: list(st.counters) for st in states if st.counters})


def guard(g: GraphEditor, state: SiteState) -> None:
    site = state.site
    at = state.placement
    scope = f"{site.scope}/optrewrite_guard"
    options = state.selection.of(TAG)[0].options
    when = options.when
    if options.granularity != "tensor":
        guard_parts(g, state, options.granularity, scope)
        return
    passed = reason_tests(g, scope, state.gradient, site.dtype, when, at, finite=state.step_finite)
    apply = combined(g, scope, passed, at)
    pivot_t, pivot_f = pivots(g, scope, apply, at, TAG)
    for write in site.writes:
        g.add_control_input(write, pivot_t)
    state.after = [merge(g, scope, pivot_t, pivot_f, state.after, at, TAG)]
    state.applied = apply
    if options.counters:
        count(g, state, passed, scope)


def applies(g: GraphEditor, scope: str, gradient: str, dtype: int, when: str, at: Placement,
            *, finite: str | None = None) -> str:
    """The scalar bool "run the update" for ``gradient`` under the rule ``when`` (module
    docstring); ``finite``, when given, is the non-finite test to take (``scope: step``)."""
    return combined(g, scope, reason_tests(g, scope, gradient, dtype, when, at, finite=finite), at)


def combined(g: GraphEditor, scope: str, passed: dict[str, str], at: Placement) -> str:
    values = list(passed.values())
    return values[0] if len(values) == 1 else g.add(f"{scope}/apply", "LogicalAnd", values, placement=at, tag=TAG)


def count(g: GraphEditor, state: SiteState, passed: dict[str, str], scope: str) -> None:
    """``guard.counters``: per reason, an int64 resource variable beside the variable, set to
    0 by the init op, incremented on each step whose test for that reason failed; the
    increments run before the update counts as done (``state.after``).

    A counter also starts itself at 0 when a step finds it uninitialized: a session that
    restores the model from a checkpoint runs no init op, and the counters are in no Saver
    (a checkpoint written before the rewrite must still restore)::

        ready = Merge(Identity(Switch(0, VarIsInitializedOp(c))[false], ^AssignVariableOp(c, <that 0>)),
                      Identity(Switch(...)[true]))
        AssignAddVariableOp(c, Cast(LogicalNot(test)), ^ready)
    """
    site = state.site
    assert state.init_op is not None
    var_device = g.node(site.variable).device
    i64 = g.type_attr(proto.DT_INT64)
    increments = []
    for reason, test in passed.items():
        name = g.unique_name(f"{site.variable}/optrewrite_skipped_{reason}")
        here = Placement(device=var_device)
        handle = g.add(name, "VarHandleOp", attrs={
            "dtype": i64, "shape": proto.AttrValue(shape=proto.TensorShapeProto()), "container": proto.AttrValue(s=b""),
            "shared_name": proto.AttrValue(s=name.encode()), "allowed_devices": proto.AttrValue(list=proto.AttrValue.ListValue()),
        }, placement=here, tag=TAG)
        zero = g.const(f"{name}/Initializer/zeros", 0, proto.DT_INT64, placement=here, tag=TAG)
        init = g.add(f"{name}/Assign", "AssignVariableOp", [handle, zero], attrs={"dtype": i64}, placement=here, tag=TAG)
        g.add_control_input(state.init_op, init)
        skipped = g.add(f"{scope}/skipped_{reason}", "LogicalNot", [test], placement=state.placement, tag=TAG)
        one = g.add(f"{scope}/skipped_{reason}/as_int", "Cast", [skipped],
                    attrs={"SrcT": g.type_attr(proto.DT_BOOL), "DstT": i64, "Truncate": g.bool_attr(False)},
                    placement=state.placement, tag=TAG)
        at = Placement(device=var_device, colocate_with=name)
        ready = _initialized(g, f"{scope}/count_{reason}", handle, zero, at)
        increments.append(g.add(f"{scope}/count_{reason}", "AssignAddVariableOp", [handle, one], attrs={"dtype": i64},
                                placement=at, colocate=True, tag=TAG, control=[ready]))
        state.counters.append(name)
    state.after = [g.add(f"{scope}/counted", "NoOp", control=[*state.after, *increments], placement=state.placement,
                         tag=TAG)]


def _initialized(g: GraphEditor, scope: str, handle: str, zero: str, at: Placement) -> str:
    """A node that is done once the int64 resource ``handle`` holds a value: its own, or 0
    assigned here when it had none (a v1 cond: the assignment runs only on the false branch)."""
    i64 = g.type_attr(proto.DT_INT64)
    is_set = g.add(f"{scope}/is_set", "VarIsInitializedOp", [handle], placement=at, colocate=True, tag=TAG)
    switch = g.add(f"{scope}/switch", "Switch", [zero, is_set], attrs={"T": i64}, placement=at, colocate=True, tag=TAG)
    start = g.add(f"{scope}/start", "AssignVariableOp", [handle, f"{switch}:0"], attrs={"dtype": i64},
                  placement=at, colocate=True, tag=TAG)
    unset = g.add(f"{scope}/unset", "Identity", [f"{switch}:0"], attrs={"T": i64}, placement=at, colocate=True,
                  tag=TAG, control=[start])
    already = g.add(f"{scope}/already", "Identity", [f"{switch}:1"], attrs={"T": i64}, placement=at, colocate=True,
                    tag=TAG)
    return g.add(f"{scope}/ready", "Merge", [unset, already], attrs={"T": i64, "N": g.int_attr(2)},
                 placement=at, colocate=True, tag=TAG)


def reason_tests(g: GraphEditor, scope: str, gradient: str, dtype: int, when: str, at: Placement,
                 *, finite: str | None = None) -> dict[str, str]:
    """The tests of the rule ``when``, each a scalar bool that holds when the update may
    apply: ``zero`` (some element is non-zero), ``nonfinite`` (every element is finite;
    ``finite``, when given, is the step-wide test to take)."""
    T = g.type_attr
    shape = g.const(f"{scope}/flat/shape", [-1], proto.DT_INT32, placement=at, tag=TAG)
    flat = g.add(f"{scope}/flat", "Reshape", [gradient, shape],
                 attrs={"T": T(dtype), "Tshape": T(proto.DT_INT32)}, placement=at, tag=TAG)
    passed = {}
    if when in ("zero", "zero_or_nonfinite"):
        as_bool = g.add(f"{scope}/as_bool", "Cast", [flat],
                        attrs={"SrcT": T(dtype), "DstT": T(proto.DT_BOOL), "Truncate": g.bool_attr(False)},
                        placement=at, tag=TAG)
        axis = g.const(f"{scope}/nonzero/axis", [0], proto.DT_INT32, placement=at, tag=TAG)
        passed["zero"] = g.add(f"{scope}/nonzero", "Any", [as_bool, axis],
                               attrs={"keep_dims": g.bool_attr(False), "Tidx": T(proto.DT_INT32)}, placement=at, tag=TAG)
    if when in ("nonfinite", "zero_or_nonfinite") and finite is not None:
        passed["nonfinite"] = finite
    elif when in ("nonfinite", "zero_or_nonfinite"):
        nan_if_not = g.add(f"{scope}/finite/sub", "Sub", [flat, flat], attrs={"T": T(dtype)}, placement=at, tag=TAG)
        axis = g.const(f"{scope}/finite/axis", [0], proto.DT_INT32, placement=at, tag=TAG)
        total = g.add(f"{scope}/finite/sum", "Sum", [nan_if_not, axis],
                      attrs={"T": T(dtype), "keep_dims": g.bool_attr(False), "Tidx": T(proto.DT_INT32)},
                      placement=at, tag=TAG)
        zero = g.const(f"{scope}/finite/zero", 0.0, dtype, placement=at, tag=TAG)
        passed["nonfinite"] = g.add(f"{scope}/finite", "Equal", [total, zero], attrs={"T": T(dtype)},
                                    placement=at, tag=TAG)
    return passed


def guard_parts(g: GraphEditor, state: SiteState, granularity: str, scope: str) -> None:
    """``granularity: row | element``: the update runs; then the variable and each slot get
    their old value back where the rule skips (module docstring)."""
    site = state.site
    at, dtype = state.placement, site.dtype
    if site.rank is None or site.shape is None or (site.sparse and site.shape[0] < 0):
        raise InputError(f"{site.key}: guard granularity {granularity} needs the variable's shape")
    for slot in site.slots:
        shape = _var_shape(g.node(slot))
        if shape is not None and shape != site.shape:
            raise InputError(f"{site.key}: guard granularity {granularity}: slot {slot!r} has shape "
                             f"{list(shape)}, not the variable's {list(site.shape)}")
    T, i32 = g.type_attr, g.type_attr(proto.DT_INT32)
    kw = {"placement": at, "tag": TAG}
    when = state.selection.of(TAG)[0].options.when
    grad = state.gradient
    tests = []
    if when in ("zero", "zero_or_nonfinite"):
        zero = g.const(f"{scope}/zero", 0.0, dtype, **kw)
        tests.append(g.add(f"{scope}/nonzero", "NotEqual", [grad, zero], attrs={"T": T(dtype)}, **kw))
    if when in ("nonfinite", "zero_or_nonfinite") and state.step_finite is None:
        zero = g.const(f"{scope}/finite/zero", 0.0, dtype, **kw)
        nan_if_not = g.add(f"{scope}/finite/sub", "Sub", [grad, grad], attrs={"T": T(dtype)}, **kw)
        tests.append(g.add(f"{scope}/finite", "Equal", [nan_if_not, zero], attrs={"T": T(dtype)}, **kw))
    rank = site.rank
    if granularity == "row" and rank > 1:  # a row applies when its slice passes every test
        axes = g.const(f"{scope}/row/axes", list(range(1, rank)), proto.DT_INT32, **kw)
        tests = [g.add(f"{t}/row", "Any" if t.endswith("nonzero") else "All", [t, axes],
                       attrs={"keep_dims": g.bool_attr(False), "Tidx": i32}, **kw) for t in tests]
    mask = tests[0] if tests else None
    for k, t in enumerate(tests[1:], 1):
        mask = g.add(f"{scope}/mask_{k}", "LogicalAnd", [mask, t], **kw)
    if site.sparse and not site.kind.endswith("(decomposed)"):
        # a fused sparse op writes only the rows it is given: restore just those
        _restore_rows(g, state, mask, scope)
        if state.selection.of(TAG)[0].options.counters:
            count(g, state, reason_tests(g, f"{scope}/count", grad, dtype, when, at, finite=state.step_finite), scope)
        return
    if site.sparse and mask is not None:
        # scatter the values' mask onto the variable's rows. A row the gradient does not
        # touch has a zero gradient: it keeps under a zero test, and applies otherwise.
        assert site.indices is not None
        keeps_untouched = when != "nonfinite"
        flag = mask if keeps_untouched else g.add(f"{scope}/mask/skip", "LogicalNot", [mask], **kw)
        ones = g.add(f"{scope}/mask/as_int", "Cast", [flag],
                     attrs={"SrcT": T(proto.DT_BOOL), "DstT": i32, "Truncate": g.bool_attr(False)}, **kw)
        rows = g.const(f"{scope}/mask/rows", site.shape[0], proto.DT_INT32, **kw)
        top = g.add(f"{scope}/mask/scatter", "UnsortedSegmentMax", [ones, site.indices, rows],
                    attrs={"T": i32, "Tindices": T(site.indices_dtype), "Tnumsegments": i32}, **kw)
        mask = g.add(f"{scope}/mask/dense", "Greater", [top, g.const(f"{scope}/mask/zero", 0, proto.DT_INT32, **kw)],
                     attrs={"T": i32}, **kw)
        if not keeps_untouched:
            mask = g.add(f"{scope}/mask/applies", "LogicalNot", [mask], **kw)
    # ``Select`` takes a mask of the variable's shape, or (rows) a vector along dim 0
    mask = _with_step(g, state, mask, f"{scope}/mask")
    restores = []
    for k, ref in enumerate((site.variable, *site.slots)):
        here = {"placement": Placement(device=at.device, colocate_with=ref), "tag": TAG}
        if site.resource:
            old = g.add(f"{scope}/state_{k}/old", "ReadVariableOp", [ref], attrs={"dtype": T(dtype)}, **here)
            new = g.add(f"{scope}/state_{k}/new", "ReadVariableOp", [ref], control=site.writes,
                        attrs={"dtype": T(dtype)}, **here)
        else:  # a ref read aliases the buffer the update writes in place: Snapshot copies it
            old = g.add(f"{scope}/state_{k}/old", "Snapshot", [ref], attrs={"T": T(dtype)}, **here)
            new = g.add(f"{scope}/state_{k}/new", "Identity", [ref], control=site.writes, attrs={"T": T(dtype)}, **here)
        for write in site.writes:  # the snapshot is taken before the update writes
            g.add_control_input(write, old)
        kept = g.add(f"{scope}/state_{k}/select", "Select", [mask, new, old], attrs={"T": T(dtype)}, **here)
        if site.resource:
            restores.append(g.add(f"{scope}/state_{k}/assign", "AssignVariableOp", [ref, kept],
                                  attrs={"dtype": T(dtype)}, colocate=True, **here))
        else:
            restores.append(g.add(f"{scope}/state_{k}/assign", "Assign", [ref, kept],
                                  attrs={"T": T(dtype), "use_locking": g.bool_attr(False),
                                         "validate_shape": g.bool_attr(True)}, colocate=True, **here))
    state.after = [g.add(f"{scope}/restored", "NoOp", [], control=[*state.after, *restores], **kw)]
    if state.selection.of(TAG)[0].options.counters:  # the tensor-level tests count the steps
        count(g, state, reason_tests(g, f"{scope}/count", grad, dtype, when, at, finite=state.step_finite), scope)


def _restore_rows(g: GraphEditor, state: SiteState, mask: str | None, scope: str) -> None:
    """Row and element guards on a fused sparse op (``SparseApply*``), which writes only the
    rows at its indices: per touched row (each once), the old rows are gathered before the
    op and put back where the values' mask (``mask``, per value row; None with only the
    step-wide test) says skip::

        rows, idx = Unique(indices)
        keep      = UnsortedSegmentMax(Cast(mask), idx, Size(rows)) > 0   # a row applies when any entry does
        old_s     = Gather(s, rows)  before the op;  s[rows] = Select(keep, Gather(s, rows, ^op), old_s)
    """
    site = state.site
    at, dtype = state.placement, site.dtype
    T, i32 = g.type_attr, g.type_attr(proto.DT_INT32)
    kw = {"placement": at, "tag": TAG}
    assert site.indices is not None
    idx_t = T(site.indices_dtype)
    unique = g.add(f"{scope}/rows", "Unique", [site.indices], attrs={"T": idx_t, "out_idx": i32}, **kw)
    rows, position = f"{unique}:0", f"{unique}:1"
    keep = mask
    if mask is not None:
        ints = g.add(f"{scope}/rows/as_int", "Cast", [mask],
                     attrs={"SrcT": T(proto.DT_BOOL), "DstT": i32, "Truncate": g.bool_attr(False)}, **kw)
        count_rows = g.add(f"{scope}/rows/size", "Size", [rows], attrs={"T": idx_t, "out_type": i32}, **kw)
        top = g.add(f"{scope}/rows/scatter", "UnsortedSegmentMax", [ints, position, count_rows],
                    attrs={"T": i32, "Tindices": i32, "Tnumsegments": i32}, **kw)
        keep = g.add(f"{scope}/rows/applies", "Greater", [top, g.const(f"{scope}/rows/zero", 0, proto.DT_INT32, **kw)],
                     attrs={"T": i32}, **kw)
    keep = _with_step(g, state, keep, f"{scope}/rows")
    restores = []
    for k, ref in enumerate((site.variable, *site.slots)):
        here = {"placement": Placement(device=at.device, colocate_with=ref), "tag": TAG}
        if site.resource:
            gather = {"dtype": T(dtype), "Tindices": idx_t, "batch_dims": g.int_attr(0), "validate_indices": g.bool_attr(True)}
            old = g.add(f"{scope}/state_{k}/old", "ResourceGather", [ref, rows], attrs=gather, colocate=True, **here)
            new = g.add(f"{scope}/state_{k}/new", "ResourceGather", [ref, rows], control=site.writes, attrs=gather,
                        colocate=True, **here)
        else:  # GatherV2 of a ref variable copies the rows
            axis = g.const(f"{scope}/state_{k}/axis", 0, proto.DT_INT32, **kw)
            gather = {"Tparams": T(dtype), "Tindices": idx_t, "Taxis": i32, "batch_dims": g.int_attr(0)}
            old = g.add(f"{scope}/state_{k}/old", "GatherV2", [ref, rows, axis], attrs=gather, colocate=True, **here)
            new = g.add(f"{scope}/state_{k}/new", "GatherV2", [ref, rows, axis], control=site.writes, attrs=gather,
                        colocate=True, **here)
        for write in site.writes:
            g.add_control_input(write, old)
        kept = g.add(f"{scope}/state_{k}/select", "Select", [keep, new, old], attrs={"T": T(dtype)}, **here)
        if site.resource:
            restores.append(g.add(f"{scope}/state_{k}/assign", "ResourceScatterUpdate", [ref, rows, kept],
                                  attrs={"dtype": T(dtype), "Tindices": idx_t}, colocate=True, **here))
        else:
            restores.append(g.add(f"{scope}/state_{k}/assign", "ScatterUpdate", [ref, rows, kept],
                                  attrs={"T": T(dtype), "Tindices": idx_t, "use_locking": g.bool_attr(False)},
                                  colocate=True, **here))
    state.after = [g.add(f"{scope}/restored", "NoOp", [], control=[*state.after, *restores], **kw)]


def _with_step(g: GraphEditor, state: SiteState, mask: str | None, scope: str) -> str:
    """``mask`` joined by the step-wide finite test (a scalar: it decides for every row), and
    ``state.applied`` set: whether any of it holds (the clip's ``on_skipped_steps`` gate)."""
    kw = {"placement": state.placement, "tag": TAG}
    i32 = g.type_attr(proto.DT_INT32)
    if state.step_finite is not None and state.selection.of(TAG)[0].options.when != "zero":
        mask = state.step_finite if mask is None else g.add(f"{scope}/step", "LogicalAnd", [mask, state.step_finite], **kw)
    assert mask is not None
    applied = scope.rsplit("/", 1)[0] + "/applied"
    flat = g.add(f"{applied}/flat", "Reshape", [mask, g.const(f"{applied}/shape", [-1], proto.DT_INT32, **kw)],
                 attrs={"T": g.type_attr(proto.DT_BOOL), "Tshape": i32}, **kw)
    state.applied = g.add(applied, "Any", [flat, g.const(f"{applied}/axis", [0], proto.DT_INT32, **kw)],
                          attrs={"keep_dims": g.bool_attr(False), "Tidx": i32}, **kw)
    return mask


def _var_shape(node: proto.NodeDef) -> tuple[int, ...] | None:
    """A variable node's static shape, where it has one."""
    if "shape" not in node.attr or node.attr["shape"].shape.unknown_rank:
        return None
    return tuple(d.size for d in node.attr["shape"].shape.dim)


def find_init_op(g: GraphEditor, rule: Rule) -> str:
    """The op that initializes the counters: the spec's ``init_op``, or the NoOp ``init``
    (what ``tf.compat.v1.global_variables_initializer()`` makes)."""
    options = rule.options
    name = options.init_op or "init"
    if name in g.index and (options.init_op is not None or g.node(name).op == "NoOp"):
        return name
    field = "guard.init_op" if options.init_op is not None else "guard.counters"
    problem = (f"the graph has no op {name!r}" if options.init_op is not None else
               "the graph has no NoOp named 'init' to initialize the counters; name one with guard.init_op")
    raise SpecError(rule.source, field, problem, options.counters_line)


def pivots(g: GraphEditor, scope: str, pred: str, at: Placement, tag: str) -> tuple[str, str]:
    """A v1 cond on the scalar bool ``pred``: (pivot_t, pivot_f), each dead when ``pred`` is
    not its branch; a control input from a pivot makes a node run only in that branch."""
    T = {"T": g.type_attr(proto.DT_BOOL)}
    switch = g.add(f"{scope}/switch", "Switch", [pred, pred], attrs=T, placement=at, tag=tag)
    pivot_t = g.add(f"{scope}/pivot_t", "Identity", [f"{switch}:1"], attrs=T, placement=at, tag=tag)
    pivot_f = g.add(f"{scope}/pivot_f", "Identity", [f"{switch}:0"], attrs=T, placement=at, tag=tag)
    return pivot_t, pivot_f


def merge(g: GraphEditor, scope: str, pivot_t: str, pivot_f: str, done: list[str], at: Placement, tag: str) -> str:
    """The cond's end: a node live on every step once the true branch's ``done`` ran."""
    T = {"T": g.type_attr(proto.DT_BOOL)}
    applied = g.add(f"{scope}/applied", "Identity", [pivot_t], control=done, attrs=T, placement=at, tag=tag)
    return g.add(f"{scope}/merge", "Merge", [pivot_f, applied], attrs={**T, "N": g.int_attr(2)}, placement=at, tag=tag)


PASS = GuardZeroGrad()
