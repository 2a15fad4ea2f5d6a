"""Small ONNX training steps, one ``ai.onnx.preview.training`` node each, and the site states a
pass runs on, set up as :func:`optrewrite.onnx.rewrite._rewrite_onnx` sets them up.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from optrewrite import passes
from optrewrite.onnx.graph import PREVIEW_DOMAIN, Editor
from optrewrite.onnx.passes.state import NodeGroup, SiteState, site_states
from optrewrite.onnx.rewrite import applicable
from optrewrite.onnx.sites import STATES, find_update_sites
from optrewrite.passes import FormatPass, PassResult
from optrewrite.spec import parse_spec
from tests.passes_golden import assert_golden, onnx_text

GOLDEN = Path(__file__).resolve().parent / "golden"
OPSET = 17
F = TensorProto.FLOAT
TENSORS = {"W": [2, 3], "B": [3]}
MOMENTUM = {"alpha": 0.9, "beta": 1.0, "mode": "standard", "norm_coefficient": 0.0}
ADAM = {"alpha": 0.9, "beta": 0.999, "epsilon": 1e-6}


def training_step(kind: str, attrs: Mapping[str, object], tensors: Mapping[str, list[int]] = TENSORS,
                  *, opset: int = OPSET) -> onnx.ModelProto:
    """One ``kind`` node "optimizer" over ``tensors`` (name -> shape), float, ai.onnx ``opset``.

    Inputs ``R`` (an initializer, 0.1), ``T``, then per tensor X: ``X``, its gradient ``dX`` and
    its states ``V_X`` (``H_X``); outputs ``X_new`` and ``V_X_new`` (``H_X_new``).
    """
    xs = list(tensors)
    states = [[f"{s}_{x}" for x in xs] for s in STATES[kind]]
    inputs = ["R", "T", *xs, *(f"d{x}" for x in xs), *(n for block in states for n in block)]
    outputs = [f"{x}_new" for x in xs] + [f"{n}_new" for block in states for n in block]
    shape = {x: tensors[x] for x in xs} | {f"d{x}": tensors[x] for x in xs}
    shape |= {n: tensors[x] for block in states for n, x in zip(block, xs)}
    node = helper.make_node(kind, inputs, outputs, name="optimizer", domain=PREVIEW_DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "step",
        [helper.make_tensor_value_info("T", TensorProto.INT64, [])]
        + [helper.make_tensor_value_info(n, F, shape[n]) for n in inputs[2:]],
        [helper.make_tensor_value_info(o, F, shape[o[:-len("_new")]]) for o in outputs],
        initializer=[numpy_helper.from_array(np.array(0.1, np.float32), "R")],
    )
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset),
                                                                 helper.make_opsetid(PREVIEW_DOMAIN, 1)])


@dataclass
class Rewrite:
    """A model under rewrite: its editor, one state per site, the training nodes' groups."""

    model: onnx.ModelProto
    editor: Editor
    states: list[SiteState]
    groups: list[NodeGroup]

    @property
    def touched(self) -> list[SiteState]:
        return [st for st in self.states if st.selection.touched]

    def state(self, variable: str) -> SiteState:
        return next(st for st in self.states if st.site.variable == variable)

    def run_only(self, p: FormatPass[Editor, SiteState]) -> PassResult:
        """Run one pass on the states that selected it (for a "step" pass, all of them at once)."""
        return p.run(self.editor, [st for st in self.states if st.selection.has(p.name)])

    def finish(self) -> onnx.ModelProto:
        """Reassemble each touched training node and write the node list, as the driver does."""
        for group in self.groups:
            if group.touched:
                group.assemble()
        self.editor.finish()
        return self.model


def selected(model: onnx.ModelProto, spec_text: str) -> Rewrite:
    """The states the driver builds for the spec's selection, before any pass ran."""
    spec = parse_spec(spec_text)
    lower = spec.lower
    ed = Editor(model, known_names=False)
    found = find_update_sites(ed, spec, "step.onnx")
    assert not found.skips, found.skips
    spec.bind({s.variable: s.rank for s in found.sites}, {},
              {s.variable: helper.tensor_dtype_to_np_dtype(s.elem_type).name for s in found.sites})
    rules = passes.rules(spec, lower=lower)
    selections = [passes.select(s, s.variable, rules, applies=applicable(s)) for s in found.sites]
    ed.require_opset("step.onnx")
    states, groups = site_states(ed, found.nodes, selections, lower=lower)
    return Rewrite(model, ed, states, groups)


def check_golden(model: onnx.ModelProto, name: str, **scopes: str) -> None:
    """The finished graph (all of it replaces the training node) must equal golden/<name>.txt;
    ``scopes`` name the scopes it abbreviates ($name)."""
    text = onnx_text(model.graph, scopes={f"${k}": v for k, v in scopes.items()})
    assert_golden(text, GOLDEN / f"{name}.txt")


def produced_once(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, int]:
    """How many main-graph nodes produce each of ``names``."""
    return {n: sum(list(node.output).count(n) for node in model.graph.node) for n in names}


def check_model(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def feed(model: onnx.ModelProto, seed: int = 0, **overrides: np.ndarray) -> dict[str, np.ndarray]:
    """Random values for every graph input (T = 3; second moments H_* not negative), some
    replaced by ``overrides``."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == TensorProto.INT64:
            out[vi.name] = np.full(dims, 3, np.int64)
        else:
            value = rng.standard_normal(dims).astype(np.float32)
            out[vi.name] = np.abs(value) if vi.name.startswith("H_") else value
    out.update(overrides)
    return out


def run(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, dict(inputs))))
