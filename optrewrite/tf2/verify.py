"""``--verify`` for SavedModels: load the output in TensorFlow and run its training signature once.

**In this process, before anything runs** (no TensorFlow): the SavedModel is parsed
(:func:`optrewrite.tf2.io.load`) and its **training signatures** are chosen: the
signatures whose function reaches (through calls, branches and loop bodies) a function
holding an optimizer update (:func:`optrewrite.tf2.rewrite.discover`). Everything loading
the SavedModel and calling those signatures may run is then checked against the TensorFlow
allow-list (:func:`optrewrite.tf.verify.check_ops`): the graph's top-level nodes (the
signatures' calls, the variables, the ``__saved_model_init_op``) with every function they
may call, and every other function of the library (``tf.saved_model.load`` itself runs
resource initializers and saveable restore functions), except the functions only the
MetaGraphDef's ``saver_def`` calls (its checkpoint save and restore: TF2 loading restores
variables with its own code, never through them). An op off the list refuses the graph
before anything runs (:class:`optrewrite.verify.OpNotAllowed`).

**In the child** (:func:`optrewrite.verify.run_isolated`: memory, time and file-size limits):
``tf.saved_model.load`` the directory, and for each training signature generate its inputs
(:func:`optrewrite.verify.generate`; an unknown dimension is 2), call it once, and count the
signature's variables whose values changed. The summary names the signature that changed the
most; no signature changing any variable is a failure. Errors name the node and op, the
error's class and a phrase of ours (:func:`optrewrite.tf.verify._error`), never the
runtime's text: it may hold values.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from optrewrite.errors import InputError, quoted
from optrewrite.tf import proto
from optrewrite.verify import Budget, VerificationFailed, failed, generate, run_isolated


def verify_savedmodel(path: Path, raw: bytes, *, seed: int, timeout_s: float) -> str:
    """Run the training signatures of the SavedModel ``path`` (its ``saved_model.pb`` is
    ``raw``) once each on generated inputs; a one-line summary."""
    from optrewrite.tf.verify import check_ops  # noqa: PLC0415
    from optrewrite.tf2 import io  # noqa: PLC0415

    try:
        loaded = io.load(path, raw)
    except InputError as exc:
        raise failed(f"cannot load the SavedModel: {exc}") from None
    meta = loaded.meta
    signatures = training_signatures(loaded)
    if not signatures:
        raise VerificationFailed("no signature of the SavedModel reaches an optimizer update")
    library = meta.graph_def.library
    saver_nodes, saver = saver_only(meta)
    check_ops([*(n for n in meta.graph_def.node if n.name not in saver_nodes),
               *_calls(f.signature.name for f in library.function if f.signature.name not in saver)],
              _without(library, saver))
    if importlib.util.find_spec("tensorflow") is None:
        raise InputError("verifying a SavedModel needs TensorFlow: pip install tensorflow-cpu (in a checkout: pip install '.[tf]')")
    names = {n.name: n.op for n in meta.graph_def.node}
    for function in library.function:
        names.update((n.name, n.op) for n in function.node_def)
    request = {"dir": str(loaded.root.resolve()), "signatures": signatures, "names": names, "seed": seed}
    return str(run_isolated(__name__, "run_signatures", request, timeout_s=timeout_s))


def training_signatures(loaded: Any) -> list[str]:
    """The signatures whose call reaches a function holding an optimizer update, by name."""
    from optrewrite.tf2.rewrite import discover  # noqa: PLC0415

    meta = loaded.meta
    found = discover(loaded)
    updating = {s.function for s in found.sites} | {s.update.split("/", 1)[0] for s in found.skips}
    functions = {f.signature.name: f for f in meta.graph_def.library.function}
    top = {n.name: n for n in meta.graph_def.node}

    def calls(node: proto.NodeDef) -> list[str]:
        """Every function ``node`` may run: a call, branches, a loop's body and condition, ..."""
        out = [node.op] if node.op in functions else []
        for value in node.attr.values():
            kind = value.WhichOneof("value")
            if kind == "func":
                out.append(value.func.name)
            elif kind == "list":
                out += [f.name for f in value.list.func]
        return out

    def reaches(start: list[str]) -> bool:
        seen: set[str] = set()
        todo = list(start)
        while todo:
            name = todo.pop()
            if name in seen or name not in functions:
                continue
            if name in updating:
                return True
            seen.add(name)
            for node in functions[name].node_def:
                todo += calls(node)
        return False

    chosen = []
    for key in sorted(meta.signature_def):
        if key.startswith("__"):
            continue
        starts: list[str] = []
        for tensor in meta.signature_def[key].outputs.values():
            node = top.get(tensor.name.split(":")[0].lstrip("^"))
            if node is not None:
                starts += calls(node)
        if reaches(starts):
            chosen.append(key)
    return chosen


def saver_only(meta: proto.MetaGraphDef) -> tuple[set[str], set[str]]:
    """The ``saver_def``'s save and restore nodes, and the functions only they call (and are
    no saveable object's functions, which loading runs)."""
    saver = meta.saver_def
    ends = {t.split(":")[0] for t in (saver.save_tensor_name, saver.restore_op_name) if t}
    top = {n.name: n for n in meta.graph_def.node}
    named = {n.attr["f"].func.name for name, n in top.items() if name in ends and "f" in n.attr}
    for name, n in top.items():
        if name not in ends and "f" in n.attr:
            named.discard(n.attr["f"].func.name)
    for obj in meta.object_graph_def.nodes:
        for saveable in obj.saveable_objects.values():
            named.discard(saveable.save_function)
            named.discard(saveable.restore_function)
    return ends, named


def _calls(functions: Iterable[str]) -> list[proto.NodeDef]:
    """A node calling each function: how the allow-list checks a function nothing calls."""
    out = []
    for name in functions:
        node = proto.NodeDef(name=f"(function {name})", op="PartitionedCall")
        node.attr["f"].func.name = name
        out.append(node)
    return out


def _without(library: proto.FunctionDefLibrary, names: set[str]) -> proto.FunctionDefLibrary:
    out = proto.FunctionDefLibrary()
    out.function.extend(f for f in library.function if f.signature.name not in names)
    out.gradient.extend(g for g in library.gradient if g.function_name not in names)
    return out


# ------------------------------------------------------------------ in the verification process


def prepare() -> str:
    """Import TensorFlow as :func:`optrewrite.tf.verify.prepare` does, and the loader."""
    from optrewrite.tf.verify import _import_tf, prepare  # noqa: PLC0415

    runtime = prepare()
    tf = _import_tf()
    assert tf.saved_model.load is not None
    return runtime


def run_signatures(request: dict[str, Any]) -> str:
    """Load the SavedModel and call each training signature once; the summary."""
    from optrewrite.tf.verify import _error, _import_tf  # noqa: PLC0415

    tf = _import_tf()
    runtime = f"TensorFlow {tf.__version__}"
    names = request["names"]
    try:
        loaded = tf.saved_model.load(request["dir"])
    except Exception as exc:  # noqa: BLE001 - whatever the runtime rejects is the finding
        raise _error(f"{runtime} cannot load the SavedModel", exc, names) from None
    rng = np.random.default_rng(request["seed"])
    budget = Budget()
    best: tuple[int, int, str] | None = None
    for name in request["signatures"]:
        fn = loaded.signatures.get(name)
        if fn is None:
            raise failed(f"{runtime} does not load the signature {quoted(name)}")
        variables = list(getattr(fn, "variables", ()))
        before = [v.numpy().copy() for v in variables]
        kwargs: dict[str, Any] = {}
        for key, spec in fn.structured_input_signature[1].items():
            shape = budget.take(key, [2 if d is None else d for d in spec.shape.as_list()])
            dtype = spec.dtype
            value = generate(rng, shape, np.dtype(dtype.as_numpy_dtype)) if dtype.is_numpy_compatible else None
            if value is None:
                raise failed(f"signature {quoted(name)}: cannot generate input {quoted(key)} of type {dtype.name}")
            kwargs[key] = value
        try:
            fn(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _error(f"{runtime}: signature {quoted(name)} failed", exc, names) from None
        changed = sum(1 for v, b in zip(variables, before) if not np.array_equal(v.numpy(), b, equal_nan=True))
        if best is None or changed > best[0]:
            best = (changed, len(variables), name)
    if best is None or best[0] == 0:
        raise VerificationFailed("no training signature of the SavedModel changed a variable")
    return f"ran one step ({best[2]!r}) in {runtime}: {best[0]} of {best[1]} variables changed"
