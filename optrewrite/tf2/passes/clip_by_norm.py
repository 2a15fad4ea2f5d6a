"""Post-update clip-by-norm inside a function body (VariableClippingOptimizer).

After the site's writes to ``v`` (control edges from them: the clip reads the updated value),
every step:

1. dense gradient, or a sparse one with 0 in ``dims``::

       t = ReadVariableOp(v, ^writes);  AssignSubVariableOp(v, t - clip_by_norm(t, max_norm, dims))

2. sparse gradient otherwise — only the rows the step touched, each exactly once::

       rows = Unique(indices);  t = ResourceGather(v, rows, ^writes)
       ResourceScatterSub(v, rows, t - clip_by_norm(t, max_norm, dims))

``clip_by_norm`` is TensorFlow's exact op sequence (:func:`optrewrite.tf.passes.clip_by_norm.
clip_by_norm_subgraph`, run on the function editor). The new write becomes a control output of
the function, and every node that waited for the variable's last write (the function's NoOp,
later reads of ``v``) waits for it too.

``formula: exact`` (the TF graph pass's, :mod:`optrewrite.tf.passes.clip_by_norm`) computes
``t * Select(norm > c, c / norm, 1)`` and assigns it (``AssignVariableOp``, or
``ResourceScatterUpdate`` of the rows): a slice within the norm is written back with its own
bits (``t * 1``), one exceeding it gets the clipped value itself. A function body has no
v1 cond, so the write happens every step, unchanged bits included.

The clip runs every step, also when the update does not (the guard's skip is no exception,
nor a loss-scale optimizer's skip of a non-finite step): a site inside an ``If`` / ``Case``
branch gets the same clip in the other branches (:func:`mirror`). With
``on_skipped_steps: false`` it runs only with the update: a guarded site's clip is gated by
the guard's ``apply`` (the seed's delta becomes ``+0.0``, the exact factor ``1``), and no
branch mirrors it.
"""
from __future__ import annotations

from typing import Sequence

from optrewrite.core import Skip
from optrewrite.passes import Pass, PassResult
from optrewrite.spec import ClipGroup
from optrewrite.tf import proto
from optrewrite.tf.passes.clip_by_norm import _resolve_dims, clip_by_norm_subgraph
from optrewrite.tf2.functions import FunctionEditor, LibraryEditor, node_of
from optrewrite.tf2.passes.state import SiteState
from optrewrite.tf2.sites import WRITES, Variable


class ClipByNorm(Pass):
    name = "clip"

    def run(self, editor: LibraryEditor, states: Sequence[SiteState]) -> PassResult:
        result = PassResult()
        for state in states:
            for action in state.selection.of(self.name):
                clip(state.editor, state, action.options)
                result.inserted.setdefault(state.site.key, []).append(action.label)
                if editor is not None and action.options.on_skipped_steps:
                    result.skipped += mirror(editor, state, action.options)
        return result


def clip(g: FunctionEditor, state: SiteState, group: ClipGroup) -> None:
    site = state.site
    resource = site.resource[site.var_writes[-1]]
    waits = list(state.after)
    write = insert(g, site.scope, site.var, group, resource, site.indices, site.indices_dtype, waits,
                   rows_only=rows_only(state, group), gate=None if group.on_skipped_steps else state.applied)
    # what waited for the variable's last write waits for the clip too: it is downstream of
    # that write, so not upstream of the clip (an earlier write's waiters may be: AdamW's
    # decay is written before the update, and the update's own reads wait for it)
    last = waits[-1]
    waiting = g.users(last) - set(g.added)
    for name in sorted(waiting, key=g.index.__getitem__):
        if f"^{last}" in g.node(name).input:
            g.add_control_input(name, write)
    state.after = [write]


def rows_only(state: SiteState, group: ClipGroup) -> bool:
    site = state.site
    dims = _resolve_dims(group.dims, None if site.var.shape is None else len(site.var.shape), site.var.path)
    return site.sparse and site.indices is not None and 0 not in dims


def insert(g: FunctionEditor, scope: str, var: Variable, group: ClipGroup, resource: str,
           indices: str | None, indices_dtype: int, waits: list[str], *, rows_only: bool,
           gate: str | None = None) -> str:
    """The clip of ``var`` (read through ``resource``) after ``waits``; returns its write,
    made a control output of the function. ``gate``, a scalar bool, must hold for the clip
    to change the variable."""
    tag = group.field
    scope = g.unique_name(f"{scope}/optrewrite_clip_{group.index}")
    dims = _resolve_dims(group.dims, None if var.shape is None else len(var.shape), var.path)
    dtype = var.dtype
    T = {"T": g.type_attr(dtype)}
    if rows_only:
        assert indices is not None
        rows = g.add(f"{scope}/Unique", "Unique", [indices],
                     attrs={"T": g.type_attr(indices_dtype), "out_idx": g.type_attr(proto.DT_INT32)}, tag=tag)
        value = g.add(f"{scope}/ResourceGather", "ResourceGather", [resource, rows], control=waits,
                      attrs={"dtype": g.type_attr(dtype), "Tindices": g.type_attr(indices_dtype),
                             "batch_dims": g.int_attr(0), "validate_indices": g.bool_attr(True)}, tag=tag)
    else:
        value = g.add(f"{scope}/ReadVariableOp", "ReadVariableOp", [resource], control=waits,
                      attrs={"dtype": g.type_attr(dtype)}, tag=tag)
    if group.formula == "exact":  # assign the clipped value
        written = _exact(g, scope, value, dtype, group.max_norm, dims, tag, gate)
        ops = ("ResourceScatterUpdate", "AssignVariableOp")
    else:  # subtract the delta
        clipped = clip_by_norm_subgraph(g, f"{scope}/clip_by_norm", value, dtype, group.max_norm, dims,  # type: ignore[arg-type]
                                        placement=None, colocate=False, tag=tag)  # type: ignore[arg-type]
        written = g.add(f"{scope}/sub", "Sub", [value, clipped], attrs=T, tag=tag)
        if gate is not None:  # x - (+0.0) is x bit for bit
            written = g.add(f"{scope}/gated", "SelectV2", [gate, written, g.const(f"{scope}/zero", 0.0, dtype, tag=tag)],
                            attrs=T, tag=tag)
        ops = ("ResourceScatterSub", "AssignSubVariableOp")
    if rows_only:
        write = g.add(f"{scope}/{ops[0]}", ops[0], [resource, rows, written],
                      attrs={"dtype": g.type_attr(dtype), "Tindices": g.type_attr(indices_dtype)}, tag=tag)
    else:
        write = g.add(f"{scope}/{ops[1]}", ops[1], [resource, written],
                      attrs={"dtype": g.type_attr(dtype)}, tag=tag)
    g.add_control_output(write)
    return write


def _exact(g: FunctionEditor, scope: str, value: str, dtype: int, max_norm: float, dims: list[int], tag: str,
           gate: str | None) -> str:
    """``value * Select(norm > max_norm, max_norm / norm, 1)``, the factor 1 where ``gate`` is false."""
    T = {"T": g.type_attr(dtype)}
    sq = g.add(f"{scope}/square", "Mul", [value, value], attrs=T, tag=tag)
    axes = g.const(f"{scope}/norm/axes", dims, proto.DT_INT32, tag=tag)
    l2sum = g.add(f"{scope}/norm/sum", "Sum", [sq, axes],
                  attrs={**T, "keep_dims": g.bool_attr(True), "Tidx": g.type_attr(proto.DT_INT32)}, tag=tag)
    norm = g.add(f"{scope}/norm", "Sqrt", [l2sum], attrs=T, tag=tag)
    c = g.const(f"{scope}/max_norm", max_norm, dtype, tag=tag)
    over = g.add(f"{scope}/over", "Greater", [norm, c], attrs=T, tag=tag)
    if gate is not None:
        over = g.add(f"{scope}/over_and_applied", "LogicalAnd", [over, gate], tag=tag)
    ratio = g.add(f"{scope}/ratio", "RealDiv", [c, norm], attrs=T, tag=tag)
    factor = g.add(f"{scope}/factor", "SelectV2", [over, ratio, g.const(f"{scope}/one", 1.0, dtype, tag=tag)],
                   attrs=T, tag=tag)
    return g.add(f"{scope}/clipped", "Mul", [value, factor], attrs=T, tag=tag)


def mirror(library: LibraryEditor, state: SiteState, group: ClipGroup) -> list[Skip]:
    """The clip runs every step: a site inside a branch (a loss-scale optimizer's "apply when
    finite") gets the same clip in every alternative branch that does not write the variable,
    reading the variable (and the touched rows) through the same branch inputs. A branch
    input is followed back through ``Identity`` (and, for rows, ``Unique``: the clip takes
    each row once anyway). Returns a skip where that cannot be done."""
    site = state.site
    alternatives = library.alternatives(site.function)
    if not alternatives:
        return []
    sig = library.functions[site.function].signature
    positions = {a.name: k for k, a in enumerate(sig.input_arg)}
    g = state.editor
    var_pos = positions.get(_back_to_arg(g, site.resource[site.var_writes[-1]], ()))
    rows = rows_only(state, group)
    idx_pos = positions.get(_back_to_arg(g, site.indices, ("Unique", "UniqueV2"))) if rows and site.indices else None
    if var_pos is None or (rows and idx_pos is None):
        what = "the variable" if var_pos is None else "the rows it touches"
        return [Skip(site.key, site.var.path,
                     f"clip group {group.index} runs only when {site.function} does: {what} "
                     "cannot be traced to the branch's inputs")]
    for name in alternatives:
        if (name, site.var.node_id, group.index) in library.mirrored:
            continue
        alt = library.function(name)
        args = [a.name for a in alt.fn.signature.input_arg]
        if var_pos >= len(args) or _writes(alt, args[var_pos]):
            continue
        waits = library.mirrored.get((name, site.var.node_id), [])
        write = insert(alt, site.scope, site.var, group, args[var_pos],
                       None if idx_pos is None else args[idx_pos], site.indices_dtype, waits, rows_only=rows)
        library.mirrored[(name, site.var.node_id)] = [write]
        library.mirrored[(name, site.var.node_id, group.index)] = [write]
    return []


def _back_to_arg(g: FunctionEditor, ref: str | None, through: tuple[str, ...]) -> str | None:
    """The function input ``ref`` is, through ``Identity`` and the ops ``through`` (first input)."""
    while ref is not None:
        name = node_of(ref)
        if name in g.args:
            return name
        if name not in g.index:
            return None
        node = g.node(name)
        if node.op != "Identity" and not (node.op in through and ref.split(":")[1:2] in (["y"], ["output"])):
            return None
        ref = next((i for i in node.input if not i.startswith("^")), None)
    return None


def _writes(g: FunctionEditor, arg: str) -> bool:
    """Whether the body writes the variable its input ``arg`` carries (through ``Identity``)."""
    for node in g.fn.node_def:
        if (node.op in WRITES or node.op.startswith("ResourceApply") or node.op.startswith("ResourceSparseApply")) \
                and node.input and _back_to_arg(g, node.input[0], ()) == arg:
            return True
    return False


PASS = ClipByNorm()
