"""Fuzzing the rewrite path: seed graphs, random specs, corruptions, and the promise one run keeps.

The promise: for any input graph and spec, ``optrewrite INPUT --spec SPEC -o OUT [--verify]``
either writes a graph that loads (exit 0), or exits 2 with one short line on stderr
(``optrewrite: error: ...``) and leaves nothing behind. It never prints a traceback, never
exits 3 (internal error), never writes an invalid graph, never changes the input.

A case is drawn through a :class:`Chooser`, so the same building blocks serve hypothesis
(:func:`cases`, tests/test_fuzz.py) and a seeded ``random.Random`` (:func:`case_at`,
tools/fuzz.py):

1. a seed graph (:func:`seeds`): the fixture inputs; small graphs built with tests/tf/model.py
   (several optimizers, dense and sparse gradients, ref and resource variables), written as a
   binary or text GraphDef or as a MetaGraphDef; ONNX training steps from tests/onnx (one
   preview-training node, the whole two-task step, decomposed steps named by ``updates:``);
   TensorFlow 2 SavedModels built with tests/tf2/models.py (a Keras 3 step, a tf.compat.v1
   fused optimizer in a tf.function, a loss-scaled step: :func:`savedmodel_seeds`), a
   directory each; and some of these already rewritten;
2. a spec (:func:`draw_spec`): guard (with its options), clip, global_norm_clip, lower and updates over the
   seed's real variable names and names it lacks, dims in and out of range, odd norms, and
   odd YAML (tags, anchors, deep nesting, huge integers, bytes that are not UTF-8, ...);
3. zero, one or two corruptions (:data:`CORRUPTIONS`) of the seed's proto, then its bytes; a
   SavedModel's corruptions edit a function body (as a GraphDef's), the object graph, the
   signatures, or the directory's other files (:data:`SAVEDMODEL_CORRUPTIONS`).

:func:`run_case` runs one case in-process and lists the promises it broke.

The seed graphs come from the tests' model builders (``tests.tf.model``, ``tests.onnx``), so
this module runs from a checkout with the repository root on ``sys.path``, as pytest and
tools/fuzz.py put it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, TypeVar

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports tensorflow
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
T = TypeVar("T")

MAX_MESSAGE = 300  # characters of the one-line error, path included
PREVIEW_DOMAIN = "ai.onnx.preview.training"


# --------------------------------------------------------------------------- choosing


class Chooser(Protocol):
    """Where a case's decisions come from. The first option of a choice is the plain one,
    so that hypothesis shrinks towards it."""

    def integer(self, lo: int, hi: int) -> int: ...  # lo..hi inclusive

    def chance(self, p: float) -> bool: ...

    def choice(self, options: Sequence[T]) -> T: ...


class RandomChooser:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]


class DrawChooser:
    """Decisions drawn from hypothesis (``draw`` of an ``st.composite``)."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st  # noqa: PLC0415

        self.draw = draw
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def chance(self, p: float) -> bool:
        return self.draw(self.st.integers(0, 999)) >= 1000 - p * 1000  # shrinks to False

    def choice(self, options: Sequence[T]) -> T:
        return options[self.draw(self.st.integers(0, len(options) - 1))]


# --------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    """A valid input graph to start from.

    ``kind`` is "graphdef", "metagraph" (``data`` is the binary message), "onnx" or
    "savedmodel" (``data`` is ``saved_model.pb``, ``files`` the directory's other files);
    ``variables`` are (name, rank) of the tensors a spec may select, updated or not;
    ``updates`` the spec entries naming a decomposed ONNX step's update sites.
    """

    name: str
    kind: str
    data: bytes
    variables: tuple[tuple[str, int | None], ...]
    updates: tuple[dict[str, Any], ...] = ()
    preview: bool = False  # holds ai.onnx.preview.training nodes (can be lowered)
    files: tuple[tuple[str, bytes], ...] = ()  # a SavedModel's other files by relative path; "x/": a folder


def _tf_variables(graph: Any) -> tuple[tuple[str, int | None], ...]:
    from optrewrite.tf.sites import VARIABLE_OPS  # noqa: PLC0415

    out = []
    for node in graph.node:
        if node.op in VARIABLE_OPS:
            shape = node.attr["shape"].shape if "shape" in node.attr else None
            rank = None if shape is None or shape.unknown_rank else len(shape.dim)
            out.append((node.name, rank))
    return tuple(out)


def _tf_seed(name: str, message: Any) -> Seed:
    from optrewrite.tf import proto  # noqa: PLC0415

    meta = isinstance(message, proto.MetaGraphDef)
    graph = message.graph_def if meta else message
    return Seed(name, "metagraph" if meta else "graphdef", message.SerializeToString(deterministic=True),
                _tf_variables(graph))


def _onnx_seed(name: str, model: Any, updates: Sequence[dict[str, Any]] = ()) -> Seed:
    ranks: dict[str, int | None] = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        ranks[vi.name] = len(t.shape.dim) if t.HasField("shape") else None
    for init in model.graph.initializer:
        ranks[init.name] = len(init.dims)
    names: list[str] = []
    preview = False
    for node in model.graph.node:
        if node.domain == PREVIEW_DOMAIN:
            preview = True
            n = (len(node.input) - 2) // {"Adam": 4, "Adagrad": 3, "Momentum": 3}[node.op_type]
            names += node.input[2:2 + n]
            names += node.input[:1]  # R: a graph input that is no variable
    names += [u["variable"] for u in updates]
    names += [next(iter(ranks), "x")]
    variables = tuple((n, ranks.get(n)) for n in dict.fromkeys(names))
    return Seed(name, "onnx", model.SerializeToString(deterministic=True), variables, tuple(updates), preview)


def fixture_seeds() -> list[Seed]:
    import onnx  # noqa: PLC0415
    from google.protobuf import text_format  # noqa: PLC0415

    from optrewrite.tf import proto  # noqa: PLC0415

    out = []
    for case in sorted(FIXTURES.iterdir()):
        src = next(case.glob("input.*"), None)
        if src is None:
            continue
        name = f"fixture:{case.name}"
        if src.suffix == ".onnx":
            spec = yaml.safe_load((case / "spec.yaml").read_text())
            out.append(_onnx_seed(name, onnx.load_from_string(src.read_bytes()), spec.get("updates", ())))
        elif src.suffix == ".meta":
            meta = proto.MetaGraphDef()
            meta.ParseFromString(src.read_bytes())
            out.append(_tf_seed(name, meta))
        else:
            graph = proto.GraphDef()
            if src.suffix == ".pbtxt":
                text_format.Parse(src.read_text(), graph)
            else:
                graph.ParseFromString(src.read_bytes())
            out.append(_tf_seed(name, graph))
    return out


# (optimizer, resource variables, sparse gradient): Apply ops, decomposed groups, ref and resource.
TF_BUILDS = (
    ("Adam", False, False), ("Adam", True, True), ("Adam", False, True), ("Momentum", False, True),
    ("GradientDescent", False, True), ("GradientDescent", True, True), ("Adagrad", True, False),
    ("Ftrl", False, True), ("RMSProp", True, True),
)  # fmt: skip


def tf_seeds() -> list[Seed]:
    """Graphs of tests/tf/model.py; none when TensorFlow is not installed."""
    try:
        import tensorflow  # noqa: F401, PLC0415
    except ImportError:
        return []
    from tests.tf import model  # noqa: PLC0415
    from optrewrite.tf import proto  # noqa: PLC0415

    out = []
    for optimizer, resource, sparse in TF_BUILDS:
        built = model.build(optimizer, resource=resource, sparse=sparse)
        graph = proto.GraphDef()
        graph.ParseFromString(built.graph_def.SerializeToString(deterministic=True))
        name = f"tf:{optimizer}:{'resource' if resource else 'ref'}:{'sparse' if sparse else 'dense'}"
        out.append(_tf_seed(name, graph))
        if optimizer == "Momentum":
            meta = proto.MetaGraphDef()
            meta.meta_info_def.tags.append("train")
            meta.graph_def.CopyFrom(graph)
            out.append(_tf_seed(f"{name}:meta", meta))
    return out


def onnx_seeds() -> list[Seed]:
    """Training steps of tests/onnx: one preview node, the two-task step, decomposed steps."""
    import numpy as np  # noqa: PLC0415

    from tests.onnx import models  # noqa: PLC0415
    from tests.onnx.preview import Step  # noqa: PLC0415

    out = []
    for optimizer, dtype, opset in (("Adam", np.float32, 17), ("Adagrad", np.float64, 13),
                                    ("Momentum", np.float32, 21), ("Nesterov", np.float32, 17)):
        step = models.training_step(optimizer, dtype, opset=opset)
        out.append(_onnx_seed(f"onnx:{optimizer}:{np.dtype(dtype).name}:opset{opset}", step.model))
    for optimizer, opset in (("Adam", 18), ("Momentum", 21)):
        step = models.training_step(optimizer, decomposed=True, opset=opset)
        out.append(_onnx_seed(f"onnx:decomposed:{optimizer}:opset{opset}", step.model, step.updates()))
    rng = np.random.default_rng(5)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    one_node = (
        Step("adagrad_one", "Adagrad", {"epsilon": 1e-5, "decay_factor": 0.1, "norm_coefficient": 0.001},
             np.array(0.1, np.float32), np.array(0, np.int64), (f32(2, 3),), (f32(2, 3),), ((f32(2, 3),),)),
        Step("adam_two", "Adam", {"alpha": 0.9, "beta": 0.999, "epsilon": 1e-7},
             np.array(0.01, np.float32), np.array(3, np.int64), (f32(4), f32(2, 2, 2)), (f32(4), f32(2, 2, 2)),
             ((f32(4), f32(2, 2, 2)), (f32(4) ** 2, f32(2, 2, 2) ** 2))),
        Step("momentum_scalar", "Momentum", {"alpha": 0.9, "beta": 0.1, "mode": "standard",
                                             "norm_coefficient": 0.0},
             np.array(0.1, np.float32), np.array(1, np.int64), (f32(),), (f32(),), ((f32(),),)),
    )  # fmt: skip
    out += [_onnx_seed(f"onnx:preview:{s.name}", s.model()) for s in one_node]
    return out


# (tests/tf2/models.py builder, case): Keras 3 assign updates with an embedding, fused
# ResourceApply ops in a tf.function, updates in the branch of a loss scale's If.
SAVEDMODEL_BUILDS = (("keras", "Adam"), ("v1", "Adam"), ("loss_scaled", "keras-LossScaleOptimizer-Adam"))


def savedmodel_seeds() -> list[Seed]:
    """SavedModels of tests/tf2/models.py; none when TensorFlow is not installed."""
    try:
        import tensorflow  # noqa: F401, PLC0415
    except ImportError:
        return []
    from tests.tf2 import models  # noqa: PLC0415

    out = []
    with tempfile.TemporaryDirectory(prefix="optrewrite-fuzz-seed-") as tmp:
        for kind, case in SAVEDMODEL_BUILDS:
            root = models.save(models.BUILDERS[kind](case), Path(tmp) / "model")
            files = tuple((f"{p.relative_to(root).as_posix()}/", b"") if p.is_dir() else
                          (p.relative_to(root).as_posix(), p.read_bytes())
                          for p in sorted(root.rglob("*")) if p.name != "saved_model.pb")
            data = (root / "saved_model.pb").read_bytes()
            out.append(Seed(f"savedmodel:{kind}:{case}", "savedmodel", data, _savedmodel_variables(data),
                            files=files))
            shutil.rmtree(root)
    return out


def _savedmodel_meta(data: bytes) -> Any:
    """The MetaGraphDef of a seed's ``saved_model.pb``."""
    from optrewrite.tf2 import io as tf2_io  # noqa: PLC0415

    return tf2_io.load(Path("saved_model.pb"), data).meta


def _savedmodel_bytes(meta: Any) -> bytes:
    """``saved_model.pb`` holding ``meta``: schema version 1, then the one MetaGraphDef."""
    return b"\x08\x01" + _field(2, meta.SerializeToString())


def _savedmodel_variables(data: bytes) -> tuple[tuple[str, int | None], ...]:
    from optrewrite.tf2.sites import variables  # noqa: PLC0415

    found = variables(_savedmodel_meta(data).object_graph_def).values()
    return tuple((v.path, None if v.shape is None else len(v.shape)) for v in found)


REWRITE_SPEC = "version: 1\nguard: {}\nclip:\n  - variables: ['*']\n    max_norm: 1.5\n"


def rewritten_seeds(base: Sequence[Seed]) -> list[Seed]:
    """A few seeds already rewritten (guarded and clipped), as a second run would read them."""
    import onnx  # noqa: PLC0415

    from optrewrite.api import rewrite_bytes  # noqa: PLC0415
    from optrewrite.spec import parse_spec  # noqa: PLC0415
    from optrewrite.tf import proto  # noqa: PLC0415

    out = []
    for seed in base:
        if seed.name not in ("fixture:momentum_ref_dense", "fixture:gd_ref_sparse_meta",
                             "fixture:adam_preview_lowered", "fixture:decomposed_momentum"):
            continue
        text = REWRITE_SPEC
        if seed.updates:
            text += yaml.safe_dump({"updates": list(seed.updates)})
        if seed.preview:
            text += "lower: true\n"
        suffix = {"graphdef": ".pb", "metagraph": ".meta", "onnx": ".onnx"}[seed.kind]
        data, _ = rewrite_bytes(Path(f"seed{suffix}"), seed.data, parse_spec(text))
        name = f"{seed.name}:rewritten"
        if seed.kind == "onnx":
            again = _onnx_seed(name, onnx.load_from_string(data), seed.updates)
        else:
            message = proto.MetaGraphDef() if seed.kind == "metagraph" else proto.GraphDef()
            message.ParseFromString(data)
            again = _tf_seed(name, message)
        out.append(replace(again, variables=seed.variables))  # lowered, it has no training node left
    return out


@functools.cache
def seeds() -> tuple[Seed, ...]:
    base = [*fixture_seeds(), *tf_seeds(), *onnx_seeds()]
    return tuple(base + rewritten_seeds(base) + savedmodel_seeds())


# --------------------------------------------------------------------------- specs

EXTRA_NAMES = ("global_step", "beta1_power", "nothing", "x", "kernel", "dense", "emb/part_0", "W", "R",
               "ëmb", "a b", "update_emb", "optrewrite/plan")
NORMS: tuple[Any, ...] = (1.0, 0.5, 2, 1e-3, 3.0e38, 1e39, 1e308, 1e-46, 5e-324, 65504.0, 70000.0,
                          0, -1, "1.0", True, None, float("inf"), float("nan"), [1.0])


def draw_pattern(c: Chooser, names: Sequence[str], wild: bool) -> Any:
    name = c.choice(names)
    kind = c.integer(0, 13 if wild else 8)
    if kind <= 2:
        return name
    if kind == 3:
        return "*"
    if kind == 4:
        return name[: c.integer(0, len(name))] + "*"
    if kind == 5:
        return "re:" + "".join("\\" + ch if not ch.isalnum() else ch for ch in name)
    if kind == 6:
        return "re:.*" + name.rsplit("/", 1)[-1]
    if kind == 7:
        return "".join("?" if c.chance(0.2) else ch for ch in name)
    if kind == 8:
        return c.choice(["[!a]*", "*/*", "*kernel*", "[a-z]*", "re:(?i)EMB.*", "re:.*", "re:a|b"])
    if kind == 9:
        return c.choice(["no_such_variable", "re:^zzz$", name + "_x", "kernel", "ëmb*", "a b"])
    if kind == 10:
        return c.choice(["re:[", "re:(?P<", "re:a{2,1}", "re:*", "re:(?<=a+)b", "[", "re:\\",
                         "re:" + "(" * 3000 + ")" * 3000, "re:a{99999999999}"])
    if kind == 11:
        return c.choice(["", "re:", 3, None, [name], {"a": 1}, True, 1.5])
    if kind == 12:
        return c.choice(names) + c.choice(["", "*", ":0", "/read"])
    return c.choice(EXTRA_NAMES)


def draw_selector(c: Chooser, names: Sequence[str], wild: bool) -> Any:
    if wild and c.chance(0.03):
        return c.choice(["*", 1, None, {"a": "b"}])
    if wild and c.chance(0.03):
        return []
    return [draw_pattern(c, names, wild) for _ in range(c.integer(1, 3))]


def draw_dims(c: Chooser, rank: int | None, wild: bool) -> Any:
    r = rank if rank is not None else c.integer(0, 3)
    kind = c.integer(0, 9 if wild else 4)
    if kind <= 2 and r > 0:
        dims = sorted({c.integer(0, r - 1) for _ in range(c.integer(1, r))})
        return [d - r if c.chance(0.3) else d for d in dims]
    if kind == 3:
        return list(range(r))
    if kind == 5:
        return c.choice([[r], [-r - 1], [2**40], [-5], [0, 0], [0, -r] if r else [0], [2**70]])
    if kind == 6:
        return c.choice([[], ["1"], [1.5], [True], [None], 1, "0", [[0]]])
    return None


def draw_norm(c: Chooser, wild: bool) -> Any:
    return c.choice(NORMS) if wild and c.chance(0.5) else c.choice(NORMS[:4])


def draw_group(c: Chooser, names: Sequence[str], ranks: dict[str, int | None], wild: bool) -> Any:
    group: dict[str, Any] = {}
    if not wild or c.chance(0.95):
        group["variables"] = draw_selector(c, names, wild)
    if c.chance(0.15):
        group["exclude"] = draw_selector(c, names, wild)
    if c.chance(0.6):
        first = group.get("variables")
        target = first[0] if isinstance(first, list) and first and isinstance(first[0], str) else ""
        dims = draw_dims(c, ranks.get(target, c.choice(list(ranks.values()) or [None])), wild)
        if dims is not None or wild and c.chance(0.1):
            group["dims"] = dims
    if not wild or c.chance(0.95):
        group["max_norm"] = draw_norm(c, wild)
    if c.chance(0.2):
        group["colocate_with_variable"] = c.choice([True, False, "yes", 1] if wild else [True, False])
    if c.chance(0.2):
        group["use_locking"] = c.choice([True, False, "no", None] if wild else [True, False])
    if c.chance(0.25):
        group["formula"] = c.choice(["seed", "exact", "Exact", 1] if wild else ["seed", "exact"])
    if c.chance(0.15):  # false needs a guard: a spec without one is refused
        group["on_skipped_steps"] = c.choice([True, False, "no"] if wild else [True, False])
    if wild and c.chance(0.02):
        group["unknown"] = 1
    return group


def draw_guard_options(c: Chooser, guard: dict[str, Any], wild: bool) -> None:
    """The guard's options beyond its selector: when, scope, granularity, counters."""
    if c.chance(0.3):
        guard["when"] = c.choice(["zero", "nonfinite", "zero_or_nonfinite", "nan", None] if wild
                                 else ["zero", "nonfinite", "zero_or_nonfinite"])
    if c.chance(0.15):  # step needs a non-finite test
        guard["scope"] = c.choice(["variable", "step", "steps"] if wild else ["variable", "step"])
    if c.chance(0.25):
        guard["granularity"] = c.choice(["tensor", "row", "element", "rows", 0] if wild else ["tensor", "row", "element"])
    if c.chance(0.1):  # TF graphs need an init op, SavedModels refuse them
        guard["counters"] = c.choice([True, False, "yes"] if wild else [True, False])
        if c.chance(0.3):
            guard["init_op"] = c.choice(["init", "no_such_op", ""] if wild else ["init", "no_such_op"])


def draw_updates(c: Chooser, seed: Seed, names: Sequence[str], wild: bool) -> Any:
    entries = [dict(u) for u in seed.updates]
    if not entries or wild and c.chance(0.1):
        entries.append({"variable": c.choice(names), "gradient": "dW", "updated": "W_new"})
    for _ in range(c.integer(0, 2) if wild and c.chance(0.3) else 0):
        entry = c.choice(entries)
        key = c.choice(["variable", "gradient", "updated", "state"])
        entry[key] = c.choice([c.choice(names), "no_such_tensor", "", None, [["a", "b"]], [["a"]],
                               entry.get("updated", "x"), entry.get("variable", "x")])
        if c.chance(0.1):
            entries.append(dict(entry))  # names the same site twice
    if wild and c.chance(0.05):
        return c.choice([{}, "W", [1]])
    return entries


def draw_spec(c: Chooser, seed: Seed) -> bytes:
    """A spec for ``seed`` as YAML text: half of them plain (valid, over the seed's names),
    half wild (any value in any field, odd YAML)."""
    wild = c.chance(0.5)
    ranks = dict(seed.variables)
    names = [*ranks] or ["x"]
    doc: dict[str, Any] = {}
    if not wild or c.chance(0.97):
        doc["version"] = 1 if not wild or c.chance(0.95) else c.choice([2, 0, "1", 1.0, None, True, -1])
    wants = c.integer(0 if wild else 1, 15)
    if wants & 1 or (wild and c.chance(0.1)):
        if c.chance(0.3):
            doc["guard"] = c.choice([{}, None, "yes", [1]] if wild and c.chance(0.2) else [{}, None])
        else:
            doc["guard"] = {"variables": draw_selector(c, names, wild)}
            if c.chance(0.25):
                doc["guard"]["exclude"] = draw_selector(c, names, wild)
            draw_guard_options(c, doc["guard"], wild)
    if wants & 2:
        doc["clip"] = [draw_group(c, names, ranks, wild) for _ in range(c.integer(1, 3 if wild else 2))]
        if wild and c.chance(0.03):
            doc["clip"] = doc["clip"][0]
    if wants & 4 and c.chance(0.5):
        gnc: dict[str, Any] = {"clip_norm": draw_norm(c, wild)}
        if c.chance(0.5):
            gnc["variables"] = draw_selector(c, names, wild)
        doc["global_norm_clip"] = gnc
    if wants == 8 and not wild:
        doc["guard"] = {}
    if seed.preview and c.chance(0.3) or wild and c.chance(0.03):
        doc["lower"] = True if not wild or c.chance(0.9) else c.choice([False, "yes", 1])
    if seed.updates and (not wild or c.chance(0.9)) or wild and c.chance(0.03):
        doc["updates"] = draw_updates(c, seed, names, wild)
    if wild and c.chance(0.01):
        doc[c.choice(["extra", "Guard", "clips"])] = {}
    flow = c.choice([False, None, True])
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=flow, allow_unicode=c.chance(0.5))
    if wild and c.chance(0.25):
        return odd_yaml(c, text, names)
    return text.encode("utf-8")


def odd_yaml(c: Chooser, text: str, names: Sequence[str]) -> bytes:
    """YAML that a hand-written spec, an editor or an attacker might produce."""
    name = json.dumps(c.choice(names))
    kind = c.integer(0, 17)
    if kind == 0:
        return ("\ufeff" + text).encode("utf-8")
    if kind == 1:
        return ("# spec\n" + text.replace("\n", "  # note\n", 1) + "\n# end\n").encode("utf-8")
    if kind == 2:
        return ("---\n" + text + "...\n").encode("utf-8")
    if kind == 3:
        return (text + "---\n" + text).encode("utf-8")
    if kind == 4:
        return text.replace("\n  ", "\n\t", 1).encode("utf-8")
    if kind == 5:
        return c.choice([
            f"version: 1\nguard: &sel\n  variables: [{name}]\nglobal_norm_clip:\n  <<: *sel\n  clip_norm: 1\n",
            f"version: 1\nguard:\n  variables: &v [{name}]\nclip:\n  - variables: *v\n    max_norm: 1\n",
            "version: 1\nguard:\n  variables: &a [*a]\n",
            f"version: &v 1\nguard: {{variables: [{name}]}}\nclip: [{{variables: [{name}], max_norm: *v}}]\n",
        ]).encode("utf-8")
    if kind == 6:
        tagged = c.choice(["!!binary AAAA", "!!binary '@@@'", "!foo x", "!!int 'abc'", "!!float 'x'",
                           "!!int 0x1F", "!!timestamp 2001-12-14", "!!null ''", "!!str 1", "!!set {a}",
                           "!!python/object/apply:os.system ['true']", "!!omap [a: 1]", "!!bool maybe",
                           "!!int '1_000'", "!!float '1e999'", "!<tag:yaml.org,2002:int> '7'"])
        where = c.choice(["version: {t}\nguard: {{}}\n", "version: 1\nguard:\n  variables: [{t}]\n",
                          "version: 1\nclip:\n  - variables: ['*']\n    max_norm: {t}\n",
                          "version: 1\nclip:\n  - variables: ['*']\n    max_norm: 1\n    dims: [{t}]\n",
                          "version: 1\nguard: {{}}\nlower: {t}\n", "{t}\n"])
        return where.format(t=tagged).encode("utf-8")
    if kind == 7:
        n = c.choice([60, 2000, 100_000])
        return ("version: 1\nguard:\n  variables: " + "[" * n + "]" * n + "\n").encode("utf-8")
    if kind == 8:
        digits = "9" * c.choice([20, 5000])
        return c.choice([f"version: {digits}\nguard: {{}}\n",
                         f"version: 1\nclip:\n  - variables: ['*']\n    max_norm: 1\n    dims: [{digits}]\n",
                         f"version: 1\nclip:\n  - variables: ['*']\n    max_norm: {digits}\n",
                         f"version: 1\nglobal_norm_clip:\n  clip_norm: 0.{digits}\n"]).encode("utf-8")
    if kind == 9:
        raw = text.encode("utf-8")
        at = c.integer(0, len(raw))
        return raw[:at] + c.choice([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + raw[at:]
    if kind == 10:
        return c.choice(["", "~", "42", "[]", "- a\n", "version\n", "'x'\n", "{}\n", "...\n", "---\n"]).encode()
    if kind == 11:
        return ("version: 1\n" + text).encode("utf-8")
    if kind == 12:
        return ("? [a, b]\n: 1\n" + text).encode("utf-8")
    if kind == 13:
        return f"version: 1\nguard:\n  variables: [{'a' * c.choice([300, 100_000])}]\n".encode()
    if kind == 14:
        return text.replace("\n", "\r\n").encode("utf-8")
    if kind == 15:
        return "version: 1\nguard: {variables: ['\\x00', '\\ud800', \"\\U0001F600\"]}\n".encode()
    if kind == 16:
        return ("%YAML 1.1\n%TAG ! tag:example.com,2000:\n---\n" + text).encode("utf-8")
    return ("version: 1\n" + "guard: {}\n" * c.integer(2, 3)).encode("utf-8")


# --------------------------------------------------------------------------- corruptions


def _pick(c: Chooser, items: Sequence[T], focus: Sequence[T] = ()) -> T | None:
    if focus and c.chance(0.7):
        return c.choice(focus)
    return c.choice(items) if items else None


# TensorFlow ------------------------------------------------------------------


class _TfGraph:
    """A GraphDef under corruption, with the nodes worth corrupting first."""

    def __init__(self, graph: Any) -> None:
        from optrewrite.tf.sites import UPDATE_OPS, VARIABLE_OPS, WRITE_OPS  # noqa: PLC0415

        self.graph = graph
        self.nodes = list(graph.node)
        core = [n for n in self.nodes if n.op in UPDATE_OPS or n.op in WRITE_OPS or n.op in VARIABLE_OPS
                or "update_" in n.name or n.op == "NoOp"]
        names = {i.lstrip("^").split(":")[0] for n in core for i in n.input}
        self.focus = core + [n for n in self.nodes if n.name in names and n not in core]


TF_DTYPES = (1, 2, 3, 9, 7, 10, 19, 14, 20, 21, 0, 101, 999)  # float, double, int32, int64, string, bool,
# half, bfloat16, resource, variant, invalid, float_ref, unknown


def tf_drop_input(c: Chooser, g: _TfGraph) -> bool:
    node = _pick(c, [n for n in g.nodes if n.input], [n for n in g.focus if n.input])
    if node is None:
        return False
    del node.input[c.integer(0, len(node.input) - 1)]
    return True


def tf_dangle_input(c: Chooser, g: _TfGraph) -> bool:
    node = _pick(c, [n for n in g.nodes if n.input], [n for n in g.focus if n.input])
    if node is None:
        return False
    i = c.integer(0, len(node.input) - 1)
    src = node.input[i].lstrip("^").split(":")[0]
    node.input[i] = c.choice(["no_such_node", "^no_such_node", f"{src}:{c.choice([1, 7, 2**31])}",
                              f"{src}:x", f"{src}:-1", f"{src}:", "^", ":0", f"{src}:0:1", f"^{src}:0"])
    return True


def tf_wrong_dtype(c: Chooser, g: _TfGraph) -> bool:
    typed = [(n, k) for n in g.nodes for k, v in n.attr.items() if v.WhichOneof("value") == "type"]
    focus = [(n, k) for n, k in typed if n in g.focus]
    picked = _pick(c, typed, focus)
    if picked is None:
        return False
    node, key = picked
    node.attr[key].type = c.choice(TF_DTYPES)
    return True


def tf_cycle(c: Chooser, g: _TfGraph) -> bool:
    index = {n.name: n for n in g.nodes}
    edges = [(n, index[i.lstrip("^").split(":")[0]]) for n in g.nodes for i in n.input
             if i.lstrip("^").split(":")[0] in index]
    focus = [(a, b) for a, b in edges if a in g.focus]
    picked = _pick(c, edges, focus)
    if picked is None:
        return False
    consumer, producer = picked
    if c.chance(0.2):
        producer = consumer  # a self-loop
    ctl = c.chance(0.5)
    producer.input.append(f"^{consumer.name}" if ctl else consumer.name)
    return True


def tf_duplicate_name(c: Chooser, g: _TfGraph) -> bool:
    if len(g.nodes) < 2:
        return False
    a = _pick(c, g.nodes, g.focus)
    b = c.choice(g.nodes)
    assert a is not None
    if a is b or c.chance(0.3):
        copy = g.graph.node.add()
        copy.CopyFrom(a)
        return True
    a.name = b.name
    return True


def _huge_shape(c: Chooser, shape: Any) -> None:
    if shape.dim and c.chance(0.7):
        shape.dim[c.integer(0, len(shape.dim) - 1)].size = c.choice([2**40, -5, 2**62, 2**63 - 1, -1])
    else:
        shape.unknown_rank = False
        for _ in range(c.choice([1, 40])):
            shape.dim.add(size=c.choice([2**40, 3, -5]))


def tf_huge_dims(c: Chooser, g: _TfGraph) -> bool:
    shaped = [(n, k) for n in g.nodes for k, v in n.attr.items() if v.WhichOneof("value") in ("shape", "tensor")]
    focus = [(n, k) for n, k in shaped if n in g.focus]
    picked = _pick(c, shaped, focus)
    if picked is None:
        return False
    node, key = picked
    value = node.attr[key]
    _huge_shape(c, value.shape if value.WhichOneof("value") == "shape" else value.tensor.tensor_shape)
    return True


def tf_remove_attr(c: Chooser, g: _TfGraph) -> bool:
    node = _pick(c, [n for n in g.nodes if n.attr], [n for n in g.focus if n.attr])
    if node is None:
        return False
    del node.attr[c.choice(sorted(node.attr))]
    return True


def tf_empty_graph(c: Chooser, g: _TfGraph) -> bool:
    if c.chance(0.5):
        del g.graph.node[:]
    else:
        g.graph.Clear()
    return True


TF_OPS = ("ApplyAdam", "ResourceApplyAdam", "ApplyGradientDescent", "ResourceSparseApplyAdagrad",
          "SparseApplyFtrl", "ScatterSub", "ResourceScatterAdd", "Assign", "AssignSub", "AssignVariableOp",
          "VariableV2", "VarHandleOp", "Identity", "NoOp", "Const", "Switch", "Merge", "NextIteration",
          "Foo", "Unique")


def tf_wrong_op(c: Chooser, g: _TfGraph) -> bool:
    node = _pick(c, g.nodes, g.focus)
    if node is None:
        return False
    node.op = c.choice(TF_OPS) if c.chance(0.9) else c.choice(["", "apply adam", "ÄpplyAdam"])
    return True


def tf_swap_inputs(c: Chooser, g: _TfGraph) -> bool:
    node = _pick(c, [n for n in g.nodes if len(n.input) > 1], [n for n in g.focus if len(n.input) > 1])
    if node is None:
        return False
    i, j = c.integer(0, len(node.input) - 1), c.integer(0, len(node.input) - 1)
    node.input[i], node.input[j] = node.input[j], node.input[i]
    return True


def tf_attr_kind(c: Chooser, g: _TfGraph) -> bool:
    from optrewrite.tf import proto  # noqa: PLC0415

    node = _pick(c, [n for n in g.nodes if n.attr], [n for n in g.focus if n.attr])
    if node is None:
        return False
    key = c.choice(sorted(node.attr))
    value = c.choice([proto.AttrValue(s=b"float"), proto.AttrValue(i=1), proto.AttrValue(f=1.0),
                      proto.AttrValue(b=True), proto.AttrValue(placeholder="T"), proto.AttrValue(),
                      proto.AttrValue(list=proto.AttrValue.ListValue(type=[1, 1])),
                      proto.AttrValue(s=b"\xff\xfe")])
    node.attr[key].CopyFrom(value)
    return True


TF_CORRUPTIONS: dict[str, Callable[[Chooser, _TfGraph], bool]] = {
    "drop_input": tf_drop_input, "dangle_input": tf_dangle_input, "wrong_dtype": tf_wrong_dtype,
    "cycle": tf_cycle, "duplicate_name": tf_duplicate_name, "huge_dims": tf_huge_dims,
    "remove_attr": tf_remove_attr, "empty_graph": tf_empty_graph, "wrong_op": tf_wrong_op,
    "swap_inputs": tf_swap_inputs, "attr_kind": tf_attr_kind,
}  # fmt: skip


# TensorFlow 2 SavedModels ----------------------------------------------------


class _FunctionBody:
    """A FunctionDef seen as a GraphDef (its ``node_def`` as ``node``), for the TF corruptions."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    @property
    def node(self) -> Any:
        return self.fn.node_def

    def Clear(self) -> None:  # noqa: N802 - the protobuf method it stands for
        self.fn.Clear()


class _SavedModel:
    """A SavedModel under corruption: its MetaGraphDef, its other files and symbolic links."""

    def __init__(self, meta: Any, files: Sequence[tuple[str, bytes]]) -> None:
        self.meta = meta
        self.files = dict(files)
        self.links: dict[str, str] = {}
        self.functions = list(meta.graph_def.library.function)
        # the step's functions first: those that write variables
        self.focus = [f for f in self.functions if any("Assign" in n.op or "Apply" in n.op for n in f.node_def)]


def sm_function_body(c: Chooser, m: _SavedModel) -> bool:
    """One of the GraphDef corruptions, in one function body."""
    fn = _pick(c, m.functions, m.focus)
    if fn is None or not fn.node_def:
        return False
    corrupt = c.choice([f for k, f in TF_CORRUPTIONS.items() if k != "empty_graph" or c.chance(0.2)])
    return corrupt(c, _TfGraph(_FunctionBody(fn)))


def sm_signature(c: Chooser, m: _SavedModel) -> bool:
    """A function's signature or returns: an arg dropped or retyped, a return naming another tensor."""
    fn = _pick(c, m.functions, m.focus)
    if fn is None:
        return False
    sig = fn.signature
    what = c.integer(0, 3)
    if what == 0 and sig.input_arg:
        del sig.input_arg[c.integer(0, len(sig.input_arg) - 1)]
    elif what == 1 and sig.input_arg:
        sig.input_arg[c.integer(0, len(sig.input_arg) - 1)].type = c.choice(TF_DTYPES)
    elif what == 2 and fn.ret:
        key = c.choice(sorted(fn.ret))
        refs = [a.name for a in sig.input_arg] + [f"{n.name}:output:0" for n in fn.node_def[:20]]
        fn.ret[key] = c.choice([*refs, "no_such:output:0", "", "^x"])
    elif what == 3:
        sig.name = c.choice([f.signature.name for f in m.functions] + ["", "renamed"])
    else:
        return False
    return True


def sm_object_graph(c: Chooser, m: _SavedModel) -> bool:
    """The object graph: a child, a slot or a bound input naming another node (or none), a
    variable renamed, retyped or reshaped, a node dropped."""
    og = m.meta.object_graph_def
    if not og.nodes:
        return False
    bad_ids = [-1, -5, 2**31 - 1, 10**6, len(og.nodes), c.integer(0, len(og.nodes) - 1)]
    what = c.integer(0, 5)
    node = c.choice(og.nodes)
    variables = [n for n in og.nodes if n.WhichOneof("kind") == "variable"]
    if what == 0 and node.children:
        c.choice(node.children).node_id = c.choice(bad_ids)
    elif what == 1:
        node.slot_variables.add(original_variable_node_id=c.choice(bad_ids), slot_name=c.choice(["m", ""]),
                                slot_variable_node_id=c.choice(bad_ids))
    elif what == 2 and og.concrete_functions:
        cf = og.concrete_functions[c.choice(sorted(og.concrete_functions))]
        if cf.bound_inputs and c.chance(0.7):
            cf.bound_inputs[c.integer(0, len(cf.bound_inputs) - 1)] = c.choice(bad_ids)
        else:
            cf.bound_inputs.append(c.choice(bad_ids))
    elif what == 3 and variables:
        v = c.choice(variables).variable
        choice = c.integer(0, 2)
        if choice == 0:
            v.name = c.choice(["", "a/b", "net/head_a/kernel", "\x1b[2J", "x" * 5000])
        elif choice == 1:
            v.dtype = c.choice(TF_DTYPES)
        else:
            _huge_shape(c, v.shape)
    elif what == 4 and len(og.nodes) > 1:
        del og.nodes[c.integer(1, len(og.nodes) - 1)]
    elif what == 5:
        node.Clear()
    else:
        return False
    return True


def sm_signature_def(c: Chooser, m: _SavedModel) -> bool:
    """A SignatureDef: gone, or naming a tensor or method that is not there."""
    sigs = m.meta.signature_def
    if not sigs:
        return False
    key = c.choice(sorted(sigs))
    if c.chance(0.3):
        del sigs[key]
    elif c.chance(0.5):
        sigs[key].method_name = c.choice(["", "tensorflow/serving/train", "x"])
    else:
        for info in list(sigs[key].inputs.values())[:1]:
            info.name = c.choice(["no_such:0", "", "train_x:7"])
    return True


def sm_files(c: Chooser, m: _SavedModel) -> bool:
    """The directory: variables/ or its index gone, a data file cut short, fingerprint.pb
    garbage, a symbolic link or a folder where a file was."""
    names = sorted(n for n in m.files if not n.endswith("/"))
    what = c.integer(0, 5)
    if what == 0:
        for name in [n for n in m.files if n.startswith("variables/")]:
            del m.files[name]
    elif what == 1 and "variables/variables.index" in m.files:
        del m.files["variables/variables.index"]
    elif what == 2 and names:
        name = c.choice(names)
        m.files[name] = m.files[name][: c.integer(0, len(m.files[name]))]
    elif what == 3:
        m.files["fingerprint.pb"] = c.choice([b"", b"\xff" * 7, b"\x08\x01"])
    elif what == 4 and names:
        name = c.choice(["assets/link", names[0] + ".link", "variables/variables.index"])
        m.files.pop(name, None)
        m.links[name] = c.choice(["/etc/passwd", "../spec.yaml", "variables.data-00000-of-00001"])
    elif what == 5:
        name = c.choice(["variables/variables.index", "assets/sub"])
        m.files.pop(name, None)
        m.files[f"{name}/"] = b""
    else:
        return False
    return True


SAVEDMODEL_CORRUPTIONS: dict[str, Callable[[Chooser, _SavedModel], bool]] = {
    "function_body": sm_function_body, "function_signature": sm_signature, "object_graph": sm_object_graph,
    "signature_def": sm_signature_def, "savedmodel_files": sm_files,
}  # fmt: skip


# ONNX ------------------------------------------------------------------------


class _OnnxModel:
    def __init__(self, model: Any) -> None:
        self.model = model
        self.graph = model.graph
        self.nodes = list(model.graph.node)
        core = [n for n in self.nodes if n.domain not in ("", "ai.onnx")]
        wanted = {i for n in core for i in n.input}
        graph_inputs = {i.name for i in model.graph.input}
        self.focus = core + [n for n in self.nodes if n not in core
                             and (wanted.intersection(n.output) or graph_inputs.intersection(n.input))]


ONNX_ELEM_TYPES = (1, 11, 7, 8, 10, 16, 9, 0, 99, 6)  # float, double, int64, string, float16, bfloat16,
# bool, undefined, unknown, int32


def onnx_drop_input(c: Chooser, m: _OnnxModel) -> bool:
    node = _pick(c, [n for n in m.nodes if n.input], [n for n in m.focus if n.input])
    if node is None:
        return False
    del node.input[c.integer(0, len(node.input) - 1)]
    return True


def onnx_dangle_input(c: Chooser, m: _OnnxModel) -> bool:
    node = _pick(c, [n for n in m.nodes if n.input], [n for n in m.focus if n.input])
    if node is None:
        if m.graph.output and c.chance(0.5):
            m.graph.output[0].name = "no_such_tensor"
            return True
        return False
    node.input[c.integer(0, len(node.input) - 1)] = c.choice(["no_such_tensor", "", "optrewrite/const"])
    return True


def onnx_wrong_dtype(c: Chooser, m: _OnnxModel) -> bool:
    where = c.integer(0, 3)
    values = [*m.graph.input, *m.graph.value_info, *m.graph.output]
    if where <= 1 and values:
        vi = c.choice(values)
        vi.type.tensor_type.elem_type = c.choice(ONNX_ELEM_TYPES)
        return True
    if where == 2 and m.graph.initializer:
        c.choice(m.graph.initializer).data_type = c.choice(ONNX_ELEM_TYPES)
        return True
    casts = [a for n in m.nodes for a in n.attribute if a.name == "to"]
    if casts:
        c.choice(casts).i = c.choice(ONNX_ELEM_TYPES)
        return True
    return False


def onnx_cycle(c: Chooser, m: _OnnxModel) -> bool:
    producer = {o: n for n in m.nodes for o in n.output}
    edges = [(n, producer[i]) for n in m.nodes for i in n.input if i in producer]
    focus = [(a, b) for a, b in edges if a in m.focus]
    picked = _pick(c, edges, focus)
    if picked is None:
        node = _pick(c, m.nodes, m.focus)
        if node is None or not node.output:
            return False
        node.input.append(node.output[0])  # a self-loop
        return True
    consumer, source = picked
    if c.chance(0.5) and source.input:
        source.input[c.integer(0, len(source.input) - 1)] = consumer.output[0]
    else:
        source.input.append(consumer.output[0])
    return True


def onnx_duplicate_name(c: Chooser, m: _OnnxModel) -> bool:
    kind = c.integer(0, 3)
    if kind <= 1 and len(m.nodes) > 1:
        a, b = _pick(c, m.nodes, m.focus), c.choice(m.nodes)
        assert a is not None
        if a is not b and a.output and b.output:
            a.output[c.integer(0, len(a.output) - 1)] = c.choice(b.output)
            return True
    if kind == 2 and m.graph.input:
        m.graph.input.add().CopyFrom(c.choice(m.graph.input))
        return True
    if m.nodes:
        copy = m.graph.node.add()
        copy.CopyFrom(c.choice(m.nodes))
        return True
    return False


def onnx_huge_dims(c: Chooser, m: _OnnxModel) -> bool:
    values = [*m.graph.input, *m.graph.value_info, *m.graph.output]
    if values and c.chance(0.7):
        shape = c.choice(values).type.tensor_type.shape
        if shape.dim and c.chance(0.7):
            dim = shape.dim[c.integer(0, len(shape.dim) - 1)]
            dim.dim_value = c.choice([2**40, -5, 2**62, 0])
        else:
            for _ in range(c.choice([1, 40])):
                shape.dim.add(dim_value=c.choice([2**40, 2]))
        return True
    if m.graph.initializer:
        init = c.choice(m.graph.initializer)
        if init.dims and c.chance(0.5):
            init.dims[0] = c.choice([2**40, -5])
        else:
            init.dims.append(2**40)
        return True
    return False


def onnx_remove_attr(c: Chooser, m: _OnnxModel) -> bool:
    node = _pick(c, [n for n in m.nodes if n.attribute], [n for n in m.focus if n.attribute])
    if node is None:
        return False
    del node.attribute[c.integer(0, len(node.attribute) - 1)]
    return True


def onnx_empty_graph(c: Chooser, m: _OnnxModel) -> bool:
    kind = c.integer(0, 3)
    if kind == 0:
        del m.graph.node[:]
    elif kind == 1:
        m.model.ClearField("graph")
    elif kind == 2:
        del m.graph.input[:]
        del m.graph.initializer[:]
    else:
        del m.model.opset_import[:]
    return True


ONNX_OPS = (("Adam", PREVIEW_DOMAIN), ("Adagrad", PREVIEW_DOMAIN), ("Momentum", PREVIEW_DOMAIN),
            ("Adam", ""), ("Foo", ""), ("If", ""), ("Loop", ""), ("Identity", ""), ("Add", ""),
            ("AdamWOptimizer", "com.microsoft"), ("Adam", "com.microsoft"), ("Sub", PREVIEW_DOMAIN),
            ("Constant", ""), ("", ""))


def onnx_wrong_op(c: Chooser, m: _OnnxModel) -> bool:
    kind = c.integer(0, 4)
    if kind == 0:  # the opset or IR version, not a node
        if c.chance(0.5) and m.model.opset_import:
            c.choice(m.model.opset_import).version = c.choice([1, 12, 13, 21, 26, 10**6, -1])
        else:
            m.model.ir_version = c.choice([0, 3, 4, 14, 2**40, -1])
        return True
    node = _pick(c, m.nodes, m.focus)
    if node is None:
        return False
    node.op_type, node.domain = c.choice(ONNX_OPS)
    return True


def onnx_swap_inputs(c: Chooser, m: _OnnxModel) -> bool:
    node = _pick(c, [n for n in m.nodes if len(n.input) > 1], [n for n in m.focus if len(n.input) > 1])
    if node is None:
        return False
    i, j = c.integer(0, len(node.input) - 1), c.integer(0, len(node.input) - 1)
    node.input[i], node.input[j] = node.input[j], node.input[i]
    return True


def onnx_attr_kind(c: Chooser, m: _OnnxModel) -> bool:
    from onnx import AttributeProto, helper  # noqa: PLC0415

    node = _pick(c, [n for n in m.nodes if n.attribute], [n for n in m.focus if n.attribute])
    if node is None:
        node = _pick(c, m.nodes, m.focus)
        if node is None:
            return False
        node.attribute.append(helper.make_attribute(c.choice(["alpha", "bogus", "then_branch"]), 0.5))
        return True
    attr = c.choice(node.attribute)
    kind = c.integer(0, 4)
    if kind == 0:
        new = helper.make_attribute(attr.name, c.choice(["0.9", b"\xff", "nesterov"]))
    elif kind == 1:
        new = helper.make_attribute(attr.name, c.choice([1, -1, 2**62]))
    elif kind == 2:
        new = helper.make_attribute(attr.name, c.choice([[0.5, 0.5], [1, 2], float("nan"), 1e39]))
    elif kind == 3:
        kinds = [AttributeProto.FLOAT, AttributeProto.GRAPH, AttributeProto.TENSOR]
        new = AttributeProto(name=attr.name, type=c.choice(kinds))  # the type without its value
    else:
        new = helper.make_attribute(attr.name, helper.make_graph([], "empty", [], []))
    attr.CopyFrom(new)
    return True


def onnx_external_data(c: Chooser, m: _OnnxModel) -> bool:
    from onnx import TensorProto  # noqa: PLC0415

    if not m.graph.initializer:
        return False
    init = c.choice(m.graph.initializer)
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    if c.chance(0.8):
        init.external_data.add(key="location", value=c.choice(["weights.bin", "../x.bin", "/etc/hostname",
                                                               "spec.yaml", "", "sub/w.bin"]))
    if c.chance(0.3):
        init.external_data.add(key="length", value=c.choice(["4", "-1", str(2**40), "x"]))
    return True


ONNX_CORRUPTIONS: dict[str, Callable[[Chooser, _OnnxModel], bool]] = {
    "drop_input": onnx_drop_input, "dangle_input": onnx_dangle_input, "wrong_dtype": onnx_wrong_dtype,
    "cycle": onnx_cycle, "duplicate_name": onnx_duplicate_name, "huge_dims": onnx_huge_dims,
    "remove_attr": onnx_remove_attr, "empty_graph": onnx_empty_graph, "wrong_op": onnx_wrong_op,
    "swap_inputs": onnx_swap_inputs, "attr_kind": onnx_attr_kind, "external_data": onnx_external_data,
}  # fmt: skip

BYTE_CORRUPTIONS = ("truncate", "flip_bytes", "other_format", "deep_nesting")
CORRUPTIONS = tuple(sorted({*TF_CORRUPTIONS, *ONNX_CORRUPTIONS, *SAVEDMODEL_CORRUPTIONS, *BYTE_CORRUPTIONS}))


def _corrupt_bytes(c: Chooser, kind: str, data: bytes, seed: Seed, other: Seed | None) -> bytes:
    if kind == "truncate":
        return data[: c.integer(0, max(len(data) - 1, 0))]
    if kind == "flip_bytes":
        raw = bytearray(data)
        for _ in range(c.choice([1, 1, 2, 8])):
            if raw:
                at = c.integer(0, len(raw) - 1)
                raw[at] = raw[at] ^ (1 << c.integer(0, 7)) if c.chance(0.7) else c.integer(0, 255)
        return bytes(raw)
    if kind == "deep_nesting":
        return _deep(c, onnx=seed.kind == "onnx")
    return other.data if other is not None else b"\x0a\x03abc"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (the number is below 16, the tag one byte)."""
    size = len(payload)
    varint = bytearray()
    while True:
        varint.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            break
    return bytes([number << 3 | 2]) + bytes(varint) + payload


def _deep(c: Chooser, *, onnx: bool) -> bytes:
    """A message nested ``depth`` times: text AttrValue funcs for TF, If subgraphs for ONNX."""
    depth = c.choice([20, 150, 3000])
    if not onnx:
        inner = 'attr { key: "k" value { func { name: "f" '
        return ('node { name: "a" op: "NoOp" attr { key: "f" value { func { name: "f" '
                + inner * depth + "} } }" * depth + " } } } }\n").encode()
    graph = b""
    for _ in range(depth):
        attribute = _field(1, b"then_branch") + b"\xa0\x01\x05" + _field(6, graph)  # type GRAPH, g
        graph = _field(1, _field(4, b"If") + _field(5, attribute))  # node { op_type, attribute }
    return b"\x08\x08" + _field(8, b"\x10\x11") + _field(7, graph)  # ir_version, opset_import, graph


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True, repr=False)
class Case:
    """One run: the input file's name suffix and bytes, the spec's bytes, and the flags."""

    seed: str
    suffix: str
    data: bytes
    spec: bytes
    corruptions: tuple[str, ...] = ()
    lower: bool = False  # pass --lower
    report: bool = False  # pass --report
    verify: bool = False  # pass --verify
    explain: bool = False  # also run ``optrewrite explain`` on it
    path: str = "plain"  # one of PATH_FAULTS: where -o and --report point
    # a SavedModel: ``data`` is its saved_model.pb, these its other files ("x/": a folder)
    # and symbolic links (path, target); the input and output are directories
    files: tuple[tuple[str, bytes], ...] | None = None
    links: tuple[tuple[str, str], ...] = ()
    by_pb: bool = False  # the command line names the SavedModel by its saved_model.pb

    @property
    def directory(self) -> bool:
        return self.files is not None

    @property
    def kind(self) -> str:
        return "+".join(self.corruptions) or "none"

    def __repr__(self) -> str:
        return f"Case({self.seed!r}, {self.input_name}, {len(self.data)} bytes, {self.kind}, {self.flags()})"

    @property
    def input_name(self) -> str:
        return "input/saved_model.pb" if self.directory else f"input{self.suffix}"

    def describe(self) -> str:
        spec = self.spec.decode("utf-8", "replace")
        return (f"seed {self.seed}, {self.input_name} ({len(self.data)} bytes), corruptions {self.kind}, "
                f"flags {self.flags()}, paths {self.path}{', then explain' if self.explain else ''}\nspec:\n{spec[:2000]}")

    def flags(self) -> list[str]:
        return [*(["--lower"] if self.lower else []), *(["--verify"] if self.verify else [])]


# Careless paths: what -o and --report name. Each but "plain" must be exit 2 with the input,
# the spec and whatever the names point to unchanged, and nothing else left behind.
PATH_FAULTS = (
    "output_is_input",        # -o names the input file
    "output_is_spec",         # -o names the spec
    "report_is_input",        # --report names the input file
    "report_is_output",       # --report and -o name one file
    "output_links_to_input",  # -o names a symbolic link to the input
    "output_hardlinks_spec",  # -o names a hard link of the spec
    "report_in_a_file",       # --report's folder is a file
)


# (suffix, text encoding): the extension decides, or the content; a GraphDef named .meta now and then.
GRAPHDEF_SUFFIXES = ((".pb", False), (".pbtxt", True), (".pb", True), (".graphdef", False), (".txt", True),
                     ("", False), ("", True), (".pb", False), (".pbtxt", True), (".meta", False))


def _encode_tf(message: Any, text: bool) -> bytes:
    from google.protobuf import text_format  # noqa: PLC0415

    if text:
        return text_format.MessageToString(message).encode("utf-8")
    return message.SerializeToString(deterministic=True)


def draw_case(c: Chooser, pool: Sequence[Seed] | None = None, *, verify: bool = False) -> Case:
    """A case from ``pool`` (default: :func:`seeds`)."""
    pool = pool or seeds()
    seed = c.choice(pool)
    spec = draw_spec(c, seed)
    count = c.choice([1, 1, 1, 0, 2]) if c.chance(0.85) else 0
    if seed.kind == "savedmodel":
        return _draw_savedmodel_case(c, seed, spec, count, verify=verify)
    onnx_seed = seed.kind == "onnx"
    table: dict[str, Callable[..., bool]] = dict(ONNX_CORRUPTIONS if onnx_seed else TF_CORRUPTIONS)
    kinds = [c.choice([*table, *BYTE_CORRUPTIONS]) for _ in range(count)]
    applied: list[str] = []
    text = False
    if onnx_seed:
        import onnx  # noqa: PLC0415

        suffix = ".onnx"
        message: Any = onnx.ModelProto()
        message.ParseFromString(seed.data)
        target: Any = _OnnxModel(message) if any(k in table for k in kinds) else None
    else:
        from optrewrite.tf import proto  # noqa: PLC0415

        if seed.kind == "metagraph":
            suffix, text = ".meta", c.chance(0.2)
            message = proto.MetaGraphDef()
        else:
            suffix, text = c.choice(GRAPHDEF_SUFFIXES)
            message = proto.GraphDef()
        message.ParseFromString(seed.data)
        graph = message.graph_def if seed.kind == "metagraph" else message
        target = _TfGraph(graph) if any(k in table for k in kinds) else None
    for kind in kinds:
        if kind in table and table[kind](c, target):
            applied.append(kind)
    data = message.SerializeToString() if onnx_seed else _encode_tf(message, text)
    for kind in kinds:
        if kind in BYTE_CORRUPTIONS:
            others = [s for s in pool if (s.kind == "onnx") != onnx_seed]
            data = _corrupt_bytes(c, kind, data, seed, c.choice(others) if others else None)
            applied.append(kind)
    path = c.choice(PATH_FAULTS) if c.chance(0.1) else "plain"
    return Case(seed=seed.name, suffix=suffix, data=data, spec=spec, corruptions=tuple(applied),
                lower=c.chance(0.1) if onnx_seed else c.chance(0.01), report=c.chance(0.2), verify=verify,
                explain=c.chance(0.15), path=path)


def _draw_savedmodel_case(c: Chooser, seed: Seed, spec: bytes, count: int, *, verify: bool) -> Case:
    kinds = [c.choice([*SAVEDMODEL_CORRUPTIONS, *BYTE_CORRUPTIONS]) for _ in range(count)]
    target = _SavedModel(_savedmodel_meta(seed.data), seed.files)
    applied = [k for k in kinds if k in SAVEDMODEL_CORRUPTIONS and SAVEDMODEL_CORRUPTIONS[k](c, target)]
    data = _savedmodel_bytes(target.meta)
    for kind in kinds:
        if kind in BYTE_CORRUPTIONS:
            data = _corrupt_bytes(c, kind, data, seed, None)
            applied.append(kind)
    path = c.choice(PATH_FAULTS) if c.chance(0.1) else "plain"
    # --verify loads the SavedModel in TensorFlow in a child process (seconds): one case in ten
    return Case(seed=seed.name, suffix="", data=data, spec=spec, corruptions=tuple(applied), report=c.chance(0.2),
                verify=verify and c.chance(0.1), explain=c.chance(0.15), path=path,
                files=tuple(sorted(target.files.items())), links=tuple(sorted(target.links.items())),
                by_pb=c.chance(0.2))


def case_at(seed: int, index: int, pool: Sequence[Seed] | None = None, *, verify: bool = False) -> Case:
    """Case ``index`` of the run with ``seed``: the same case on every machine."""
    return draw_case(RandomChooser(random.Random(f"optrewrite-fuzz:{seed}:{index}")), pool, verify=verify)


def cases(*, verify: bool | None = None) -> Any:
    """A hypothesis strategy of cases; ``verify=None`` draws whether to pass --verify."""
    from hypothesis import strategies as st  # noqa: PLC0415

    @st.composite
    def strategy(draw: Callable[[Any], Any]) -> Case:
        c = DrawChooser(draw)
        flag = c.chance(0.4) if verify is None else verify
        return draw_case(c, verify=flag)

    return strategy()


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    rc: int | None  # None: the case did not return (a timeout or an exception out of main)
    stderr: str
    seconds: float
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


class CaseTimeout(BaseException):
    """Raised in the running case when it takes longer than its limit (not caught by main)."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):  # type: ignore[no-untyped-def]
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_output(path: Path, suffix: str, case: Case | None = None) -> str | None:
    """Why the written output does not load, or None; a SavedModel also has every file of the
    input but ``fingerprint.pb`` with the same bytes (and those of ``variables/`` where the
    rewrite added counters to the checkpoint)."""
    try:
        if case is not None and case.directory:
            from optrewrite.tf2 import io as tf2_io  # noqa: PLC0415

            loaded = tf2_io.load(path, (path / "saved_model.pb").read_bytes())
            counters = any(c.local_name.startswith("optrewrite_counters")
                           for c in loaded.meta.object_graph_def.nodes[0].children)
            for name, data in case.files or ():
                kept = name != "fingerprint.pb" and not name.endswith("/")
                if kept and not (counters and name.startswith("variables/")) and (path / name).read_bytes() != data:
                    return f"{name} was not carried over byte for byte"
        elif suffix == ".onnx":
            import onnx  # noqa: PLC0415

            onnx.checker.check_model(str(path))
        else:
            from optrewrite.tf import io as tf_io  # noqa: PLC0415

            tf_io.load(path, path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return None


def argv_for(case: Case, directory: Path) -> list[str]:
    """The command line of ``case`` in ``directory``, after making the links its path fault needs."""
    src, spec = directory / f"input{case.suffix}", directory / "spec.yaml"
    out, report = directory / f"output{case.suffix}", directory / "report.json" if case.report else None
    if case.by_pb:
        src = src / "saved_model.pb"  # the SavedModel named by its saved_model.pb
    fault = case.path
    if fault == "output_is_input":
        out = src
    elif fault == "output_is_spec":
        out = spec
    elif fault == "report_is_input":
        report = src
    elif fault == "report_is_output":
        report = out
    elif fault == "output_links_to_input":
        out = directory / "link-to-input"
        out.symlink_to(src.name)
    elif fault == "output_hardlinks_spec":
        out = directory / "link-to-spec"
        os.link(spec, out)
    elif fault == "report_in_a_file":
        report = spec / "report.json"
    argv = [str(src), "--spec", str(spec), "-o", str(out)]
    if report is not None:
        argv += ["--report", str(report)]
    return argv + case.flags()


def _main(argv: list[str], timeout: float | None, problems: list[str]) -> tuple[int | None, str]:
    """``optrewrite.cli.main(argv)`` with stdout and stderr captured: (exit code, stderr)."""
    from optrewrite.cli import main  # noqa: PLC0415

    err = io.StringIO()
    try:
        with _time_limit(timeout), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return main(argv), err.getvalue()
    except CaseTimeout as exc:
        problems.append(f"timeout: {exc}")
    except BaseException as exc:  # noqa: BLE001 - main must not raise at all
        problems.append(f"main raised {type(exc).__name__}: {str(exc)[:200]}")
    return None, err.getvalue()


def _check_exit(what: str, rc: int | None, stderr: str, problems: list[str]) -> None:
    """Exit 0, or 2 with one short ``optrewrite: error:`` line; never a traceback."""
    if rc is not None and rc not in (0, 2):
        problems.append(f"{what}exit {rc}: {stderr.strip()[:500]}")
    if "Traceback" in stderr:
        problems.append(f"{what}a traceback on stderr")
    if rc == 2:
        if stderr.count("\n") != 1 or not stderr.endswith("\n"):
            problems.append(f"{what}exit 2 with {stderr.count(chr(10))} lines on stderr: {stderr[:300]!r}")
        if not stderr.startswith("optrewrite: error: "):
            problems.append(f"{what}exit 2 without 'optrewrite: error:': {stderr[:300]!r}")
        if len(stderr.rstrip("\n")) > MAX_MESSAGE:
            problems.append(f"{what}exit 2 message of {len(stderr.rstrip())} characters: {stderr[:200]!r}...")


def run_case(case: Case, *, timeout: float | None = 120.0) -> Outcome:
    """Run ``optrewrite`` on ``case`` in-process, in a fresh directory, and check the promise.

    With ``case.explain``, ``optrewrite explain INPUT --spec SPEC`` runs first: exit 0 or 2
    (one line), nothing written.
    """
    with tempfile.TemporaryDirectory(prefix="optrewrite-fuzz-") as tmp:
        d = Path(tmp)
        src, out = write_input(case, d), d / f"output{case.suffix}"
        before = digest(src)
        problems: list[str] = []
        command = argv_for(case, d)  # makes the links a path fault needs
        spec_before = (d / "spec.yaml").read_bytes()
        setup = sorted(p.name for p in d.iterdir())
        start = time.perf_counter()
        if case.explain:
            argv = ["explain", str(src), "--spec", str(d / "spec.yaml"), *(["--lower"] if case.lower else [])]
            rc, stderr = _main(argv, timeout, problems)
            _check_exit("explain: ", rc, stderr, problems)
            if sorted(p.name for p in d.iterdir()) != setup:
                problems.append("explain: wrote files")
        rc, stderr = _main(command, timeout, problems)
        seconds = time.perf_counter() - start
        _check_exit("", rc, stderr, problems)
        if digest(src) != before:
            problems.append("the input changed")
        if (d / "spec.yaml").read_bytes() != spec_before:
            problems.append("the spec changed")
        left = sorted(p.name for p in d.iterdir())
        if case.path != "plain" and rc != 2:
            problems.append(f"path fault {case.path}: exit {rc}, not 2")
        if rc == 2:
            if left != setup:
                problems.append(f"exit 2 left files behind: {left}")
        elif rc == 0:
            allowed = {src.name, "spec.yaml", out.name, "report.json"}
            if not out.exists():
                problems.append("exit 0 without an output")
            else:
                why = _check_output(out, case.suffix, case)
                if why:
                    problems.append(f"exit 0 with an output that does not load: {why}")
            if set(left) - allowed:
                problems.append(f"exit 0 left other files: {sorted(set(left) - allowed)}")
            if case.report:
                try:
                    json.loads((d / "report.json").read_text())
                except (OSError, ValueError) as exc:
                    problems.append(f"exit 0 without a readable report: {exc}")
        return Outcome(rc=rc, stderr=stderr, seconds=seconds, violations=problems)


def write_input(case: Case, directory: Path) -> Path:
    """Write the case's input (a file, or a SavedModel's directory) and ``spec.yaml`` into
    ``directory``; the input's path."""
    src = directory / f"input{case.suffix}"
    if case.directory:
        _write_savedmodel(src, case)
    else:
        src.write_bytes(case.data)
    (directory / "spec.yaml").write_bytes(case.spec)
    return src


def _write_savedmodel(root: Path, case: Case) -> None:
    root.mkdir()
    (root / "saved_model.pb").write_bytes(case.data)
    for name, data in case.files or ():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(exist_ok=True)
        else:
            path.write_bytes(data)
    for name, target in case.links:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)


def digest(path: Path) -> str:
    """The bytes of a file, or of every entry under a directory (links by their target)."""
    h = hashlib.sha256()
    if not path.is_dir() or path.is_symlink():
        h.update(path.read_bytes() if path.exists() else b"<gone>")
        return h.hexdigest()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode() + b"\0")
        if p.is_symlink():
            h.update(b"link:" + os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def save_seeds(path: Path) -> None:
    """Write :func:`seeds` for worker processes that should not rebuild them (tools/fuzz.py)."""
    import pickle  # noqa: PLC0415

    path.write_bytes(pickle.dumps(seeds()))


def load_seeds(path: Path) -> tuple[Seed, ...]:
    import pickle  # noqa: PLC0415

    return tuple(pickle.loads(path.read_bytes()))

