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
the function, and every node that waited for the variable's writes (the function's NoOp, later
reads of ``v``) waits for it too.
"""
from __future__ import annotations

from typing import Sequence

from optrewrite.passes import PassResult
from optrewrite.spec import ClipGroup
from optrewrite.tf import proto
from optrewrite.tf.passes.clip_by_norm import _resolve_dims, clip_by_norm_subgraph
from optrewrite.tf2.functions import FunctionEditor, node_of
from optrewrite.tf2.passes.state import SiteState


class ClipByNorm:
    name = "clip"

    def run(self, editor: object, states: Sequence[SiteState]) -> PassResult:
        result = PassResult()
        for state in states:
            for action in state.selection.of(self.name):
                clip(state.editor, state, action.options)
                result.inserted.setdefault(state.site.key, []).append(action.label)
        return result


def clip(g: FunctionEditor, state: SiteState, group: ClipGroup) -> None:
    site = state.site
    var = site.var
    tag = group.field
    scope = g.unique_name(f"{site.scope}/optrewrite_clip_{group.index}")
    dims = _resolve_dims(group.dims, None if var.shape is None else len(var.shape), var.path)
    dtype = var.dtype
    T = {"T": g.type_attr(dtype)}
    resource = site.resource[site.var_writes[-1]]
    waits = list(state.after)
    rows_only = site.sparse and site.indices is not None and 0 not in dims
    if rows_only:
        idx_dtype = site.indices_dtype
        unique = g.add(f"{scope}/Unique", "Unique", [site.indices],
                       attrs={"T": g.type_attr(idx_dtype), "out_idx": g.type_attr(proto.DT_INT32)}, tag=tag)
        rows = unique
        value = g.add(f"{scope}/ResourceGather", "ResourceGather", [resource, rows], control=waits,
                      attrs={"dtype": g.type_attr(dtype), "Tindices": g.type_attr(idx_dtype),
                             "batch_dims": g.int_attr(0), "validate_indices": g.bool_attr(True)}, tag=tag)
    else:
        value = g.add(f"{scope}/ReadVariableOp", "ReadVariableOp", [resource], control=waits,
                      attrs={"dtype": g.type_attr(dtype)}, tag=tag)
    clipped = clip_by_norm_subgraph(g, f"{scope}/clip_by_norm", value, dtype, group.max_norm, dims,  # type: ignore[arg-type]
                                    placement=None, colocate=False, tag=tag)  # type: ignore[arg-type]
    delta = g.add(f"{scope}/sub", "Sub", [value, clipped], attrs=T, tag=tag)
    if rows_only:
        write = g.add(f"{scope}/ResourceScatterSub", "ResourceScatterSub", [resource, rows, delta],
                      attrs={"dtype": g.type_attr(dtype), "Tindices": g.type_attr(site.indices_dtype)}, tag=tag)
    else:
        write = g.add(f"{scope}/AssignSubVariableOp", "AssignSubVariableOp", [resource, delta],
                      attrs={"dtype": g.type_attr(dtype)}, tag=tag)
    g.add_control_output(write)
    ours = set(g.added) | _ancestors(g, write)
    for name in list(g.index):
        if name in ours:
            continue
        node = g.node(name)
        if any(i.startswith("^") and node_of(i) in waits for i in node.input):
            g.add_control_input(name, write)
    state.after = [write]



def _ancestors(g: FunctionEditor, name: str) -> set[str]:
    """The body nodes ``name`` depends on (it included): they must not wait for it."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        n = stack.pop()
        if n in seen or n not in g.index:
            continue
        seen.add(n)
        stack.extend(node_of(i) for i in g.node(n).input)
    return seen


PASS = ClipByNorm()
