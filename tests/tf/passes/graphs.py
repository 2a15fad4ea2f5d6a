"""Small TensorFlow training steps built node by node, and the site states a pass runs on.

No TensorFlow here: the graphs are GraphDef protos (:mod:`optrewrite.tf.proto`), and the
states are set up as :func:`optrewrite.tf.rewrite.rewrite_tf` sets them up.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from optrewrite import passes
from optrewrite.passes import FormatPass, PassResult
from optrewrite.spec import parse_spec
from optrewrite.tf import proto
from optrewrite.tf.graph import GraphEditor, node_of, pack_values
from optrewrite.tf.passes.state import SiteState
from optrewrite.tf.sites import find_update_sites
from tests.passes_golden import assert_golden, tf_text

GOLDEN = Path(__file__).resolve().parent / "golden"
DEVICE = "/device:CPU:0"
F = proto.DT_FLOAT


def _type(dtype: int) -> proto.AttrValue:
    return proto.AttrValue(type=dtype)


def _bool(value: bool) -> proto.AttrValue:
    return proto.AttrValue(b=value)


def _shape(shape: Sequence[int]) -> proto.AttrValue:
    value = proto.AttrValue()
    value.shape.dim.extend(proto.TensorShapeProto.Dim(size=d) for d in shape)
    return value


class Step:
    """A GraphDef under construction; each method adds one node and returns its name."""

    def __init__(self) -> None:
        self.graph = proto.GraphDef()

    def node(self, name: str, op: str, inputs: Sequence[str] = (), *, device: str = "",
             **attrs: proto.AttrValue) -> str:
        node = self.graph.node.add(name=name, op=op, input=list(inputs), device=device)
        for key, value in attrs.items():
            node.attr[key].CopyFrom(value)
        return name

    def variable(self, name: str, shape: Sequence[int], *, resource: bool = True) -> str:
        op = "VarHandleOp" if resource else "VariableV2"
        return self.node(name, op, device=DEVICE, dtype=_type(F), shape=_shape(shape),
                         container=proto.AttrValue(s=b""), shared_name=proto.AttrValue(s=name.encode()))

    def placeholder(self, name: str, shape: Sequence[int], dtype: int = F) -> str:
        return self.node(name, "Placeholder", dtype=_type(dtype), shape=_shape(shape))

    def scalar(self, name: str, value: float) -> str:
        tensor = proto.TensorProto(dtype=F, tensor_content=pack_values([value], F))
        return self.node(name, "Const", dtype=_type(F), value=proto.AttrValue(tensor=tensor))

    def train_op(self, *updates: str) -> str:
        return self.node("train", "NoOp", [f"^{u}" for u in updates])


def momentum_step() -> proto.GraphDef:
    """Resource variables dense/kernel [2,3] and dense/bias [3], one ResourceApplyMomentum each."""
    s = Step()
    lr, momentum = s.scalar("learning_rate", 0.1), s.scalar("momentum", 0.9)
    updates = []
    for var, shape in (("dense/kernel", [2, 3]), ("dense/bias", [3])):
        v, slot = s.variable(var, shape), s.variable(f"{var}/Momentum", shape)
        grad = s.placeholder(f"gradients/{var}", shape)
        updates.append(s.node(f"Momentum/update_{var}/ResourceApplyMomentum", "ResourceApplyMomentum",
                              [v, slot, lr, grad, momentum], device=DEVICE,
                              T=_type(F), use_locking=_bool(False), use_nesterov=_bool(False)))
    s.train_op(*updates)
    return s.graph


def gradient_descent_step() -> proto.GraphDef:
    """A ref variable w [4, 2] and its ApplyGradientDescent."""
    s = Step()
    w = s.variable("w", [4, 2], resource=False)
    lr = s.scalar("learning_rate", 0.5)
    grad = s.placeholder("gradients/w", [4, 2])
    update = s.node("GradientDescent/update_w/ApplyGradientDescent", "ApplyGradientDescent", [w, lr, grad],
                    device=DEVICE, T=_type(F), use_locking=_bool(False))
    s.train_op(update)
    return s.graph


def sparse_adagrad_step() -> proto.GraphDef:
    """An embedding emb [5,2] updated by ResourceSparseApplyAdagrad on 3 gradient rows."""
    s = Step()
    emb, accum = s.variable("emb", [5, 2]), s.variable("emb/Adagrad", [5, 2])
    lr = s.scalar("learning_rate", 0.1)
    values = s.placeholder("gradients/emb/values", [3, 2])
    indices = s.placeholder("gradients/emb/indices", [3], proto.DT_INT32)
    update = s.node("Adagrad/update_emb/ResourceSparseApplyAdagrad", "ResourceSparseApplyAdagrad",
                    [emb, accum, lr, values, indices], device=DEVICE, T=_type(F), Tindices=_type(proto.DT_INT32),
                    use_locking=_bool(False), update_slots=_bool(True))
    s.train_op(update)
    return s.graph


def selected(graph: proto.GraphDef, spec_text: str) -> tuple[GraphEditor, list[SiteState]]:
    """The graph's editor and one state per update site, selected by the spec, as the driver builds them."""
    g = GraphEditor(graph)
    found = find_update_sites(g)
    assert not found.skips, found.skips
    spec = parse_spec(spec_text)
    spec.bind({s.variable: s.rank for s in found.sites}, {}, {s.variable: s.dtype_name for s in found.sites})
    rules = passes.rules(spec)
    return g, [SiteState.start(passes.select(site, site.variable, rules)) for site in found.sites]


def run_only(p: FormatPass[GraphEditor, SiteState], g: GraphEditor, states: Sequence[SiteState]) -> PassResult:
    """Run one pass on the states that selected it (for a "step" pass, all of them at once)."""
    result = p.run(g, [st for st in states if st.selection.has(p.name)])
    g.lint()
    return result


def state_of(states: Sequence[SiteState], variable: str) -> SiteState:
    return next(st for st in states if st.site.variable == variable)


def emitted(g: GraphEditor, scopes: Mapping[str, str] | None = None) -> str:
    """The golden text: the nodes the pass added, then the input nodes it changed."""
    return tf_text([g.node(n) for n in g.added], [g.graph.node[i] for i in sorted(g.changed)], scopes=scopes)


def check_golden(g: GraphEditor, name: str, **scopes: str) -> None:
    """The emitted text must equal golden/<name>.txt; ``scopes`` name the scopes it abbreviates ($name)."""
    assert_golden(emitted(g, {f"${k}": v for k, v in scopes.items()}), GOLDEN / f"{name}.txt")


def ancestors(g: GraphEditor, name: str) -> set[str]:
    """``name`` and every node it depends on, through data and control inputs."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(node_of(i) for i in g.node(n).input)
    return seen
