"""Variables the rewrite adds to a SavedModel: the guard's skip counters.

A pass asks a function body for a new variable's handle with
:meth:`~optrewrite.tf2.functions.FunctionEditor.capture` (an input arg it names). This module
then makes the variables real, everywhere a SavedModel keeps state:

1. **Threading.** Each body that uses a new variable gets a ``DT_RESOURCE`` input arg for it
   (appended, after the captures it had), and so does every function that calls such a body
   (``StatefulPartitionedCall`` / ``PartitionedCall`` and direct calls), up the call chain;
   the branches of one ``If`` / ``Case`` get the same args (they take the same inputs). Each
   call node passes its own arg on (``Tin`` grows to match). A ``While`` / ``StatelessWhile``
   takes the handle as a new loop variable, after the ones it had: its ``T``,
   ``output_shapes`` (a handle is a scalar) and ``_output_shapes`` / ``_num_original_outputs``
   grow; its condition gets the arg, and its body gets the arg and returns it unchanged as a
   new output (a loop variable a body passes on is the same variable in every iteration).
   Another function-valued attr on the way is refused (an InputError), as is a loop body
   that some other node also calls (its outputs would change under that caller).
2. **Object graph.** A ``trackable_dict_wrapper`` node under the root, ``optrewrite_counters``,
   holds one ``SavedVariable`` per counter (int64 scalar, not trainable), keyed by the
   counter's name: ``tf.saved_model.load(...).optrewrite_counters["w/optrewrite_skipped_zero"]``.
   Every concrete function that now takes new args lists the counters' nodes at the end of
   its ``bound_inputs``: the loader binds a concrete function's trailing args to those
   objects, as it does for the captures it had.
3. **Reading signature.** ``optrewrite_counters`` returns every counter by name (a new
   function of ``ReadVariableOp`` s, its concrete function, a ``signature_map`` child and a
   ``SignatureDef``), where the SavedModel has signatures.
4. **Graph.** The MetaGraphDef's own graph (what TensorFlow 1 style loaders import) gets a
   ``VarHandleOp`` per counter, passed to every graph node that calls a threaded function,
   and assigned 0 by the ``__saved_model_init_op`` NoOp: such a loader runs it after
   restoring, so its counts start at 0 each time the model is loaded.
5. **Checkpoint.** ``variables/`` gets every tensor it had (same values), plus each counter
   at 0, under its object-graph key, and the checkpoint's own object graph
   (``_CHECKPOINTABLE_OBJECT_GRAPH``) gets the same nodes: :func:`write_checkpoint`, which
   uses TensorFlow (only a rewrite that adds counters imports it).

Everything edited is recorded in a :class:`MetaEdit`, from which :mod:`optrewrite.tf2.io`
splices the output: every other byte of ``saved_model.pb`` stays as it was.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError

from optrewrite.errors import InputError
from optrewrite.tf import proto
from optrewrite.tf.graph import TAG_ATTR
from optrewrite.tf2.io import quiet_stderr
from optrewrite.tf2.functions import BRANCH_OPS, LOOP_OPS, LibraryEditor, branches

CONTAINER = "optrewrite_counters"  # the root's child that holds the counters
SIGNATURE = "optrewrite_counters"  # the signature that reads them
CALL_OPS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})
_VARIABLE_VALUE = "VARIABLE_VALUE"
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
TAG = "guard"


@dataclass
class NewVariable:
    """A variable the rewrite adds (an int64 scalar): its name (also its key in the
    container), its SavedObject node, and its checkpoint key."""

    name: str
    node_id: int
    checkpoint_key: str


@dataclass
class MetaEdit:
    """What the rewrite changed in the MetaGraphDef, beyond function bodies. The parts
    themselves are read from the (edited) parsed MetaGraphDef when serializing."""

    functions: set[str] = field(default_factory=set)  # library functions re-serialized (the rewrite sets it)
    new_functions: int = 0  # functions appended to the library
    nodes: set[int] = field(default_factory=set)  # graph_def.node indices re-serialized
    new_nodes: int = 0  # nodes appended to graph_def
    objects: set[int] = field(default_factory=set)  # object graph nodes re-serialized
    new_objects: int = 0  # object graph nodes appended
    concrete: set[str] = field(default_factory=set)  # concrete_functions entries re-serialized or added
    signatures: set[str] = field(default_factory=set)  # signature_def entries added
    variables: list[NewVariable] = field(default_factory=list)
    container_local: str = CONTAINER  # the root's child that holds the new variables


def _escape(local_name: str) -> str:
    """A local name as a checkpoint key spells it (TensorFlow's ``escape_local_name``)."""
    return local_name.replace(".", "..").replace("/", ".S")


def _calls(node: proto.NodeDef, functions: set[str]) -> tuple[str, list[str]]:
    """How ``node`` runs library functions: ("call", [f]), ("branch", branches), ("loop",
    [body, cond]), ("other", [names]) for any other function-valued attr, or ("", [])."""
    if node.op in CALL_OPS and "f" in node.attr:
        return "call", [node.attr["f"].func.name]
    if node.op in functions:
        return "call", [node.op]
    if node.op in BRANCH_OPS:
        return "branch", branches(node)
    if node.op in LOOP_OPS and "body" in node.attr and "cond" in node.attr:
        return "loop", [node.attr["body"].func.name, node.attr["cond"].func.name]
    names = [v.func.name for v in node.attr.values() if v.HasField("func")]
    names += [f.name for v in node.attr.values() if v.HasField("list") for f in v.list.func]
    return ("other", names) if names else ("", [])


def thread(meta: proto.MetaGraphDef, library: LibraryEditor, keys: list[str]) -> MetaEdit:
    """Make the captures the passes asked for (``keys``, in order) real: see the module
    docstring, steps 1 to 4. ``meta`` is edited in place; the checkpoint is left to
    :func:`write_checkpoint`."""
    edit = MetaEdit()
    if not keys:
        return edit
    order = {k: i for i, k in enumerate(keys)}
    names = set(library.functions)
    needs: dict[str, set[str]] = {name: set(e.captures) for name, e in library.editors.items() if e.captures}
    calls = {name: [(n.name, *_calls(n, names)) for n in fn.node_def] for name, fn in library.functions.items()}
    changed = True
    while changed:
        changed = False
        for caller, found in calls.items():
            for node, kind, callees in found:
                want = set().union(*(needs.get(c, set()) for c in callees)) if callees else set()
                if not want:
                    continue
                if kind == "other":
                    raise InputError(f"guard.counters: {caller}/{node} runs a function that updates a counted "
                                     "variable through a function-valued attr the counter's handle cannot be "
                                     "passed to")
                targets = [caller, *callees] if kind in ("branch", "loop") else [caller]
                for t in targets:
                    if not want <= needs.setdefault(t, set()):
                        needs[t] |= want
                        changed = True

    def ordered(name: str) -> list[str]:
        return sorted(needs.get(name, ()), key=order.__getitem__)

    loop_bodies = {callees[0] for found in calls.values() for _, kind, callees in found
                   if kind == "loop" and needs.get(callees[0])}
    graph_calls = [("the graph", n.name, *_calls(n, names)) for n in meta.graph_def.node]
    for caller, node, kind, callees in [*((c, *f) for c, found in calls.items() for f in found), *graph_calls]:
        shared = sorted(loop_bodies.intersection(callees))
        if kind != "loop" and shared:
            raise InputError(f"guard.counters: {caller}/{node} runs {shared[0]}, the body of a loop that updates "
                             "a counted variable: the body's new output would change that call")

    # 1. args, then the call nodes inside functions
    for name in library.functions:
        if not needs.get(name):
            continue
        editor = library.function(name)
        fn = editor.fn
        for key in ordered(name):
            arg = editor.capture(key)
            index = len(fn.signature.input_arg)
            a = fn.signature.input_arg.add(name=arg, type=proto.DT_RESOURCE)
            a.handle_data.add(dtype=proto.DT_INT64).shape.CopyFrom(proto.TensorShapeProto())
            fn.arg_attr[index].attr["_user_specified_name"].s = arg.encode()
            if "_input_shapes" in fn.attr:
                fn.attr["_input_shapes"].list.shape.add()
            if name in loop_bodies:  # the loop variable passes on unchanged
                taken = {a.name for a in fn.signature.input_arg} | {a.name for a in fn.signature.output_arg}
                out = _unique(taken, f"{arg}_out")
                fn.signature.output_arg.add(name=out, type=proto.DT_RESOURCE).handle_data.add(
                    dtype=proto.DT_INT64).shape.CopyFrom(proto.TensorShapeProto())
                fn.ret[out] = arg
    for caller, found in calls.items():
        for node, kind, callees in found:
            want = ordered(callees[0]) if callees and kind in ("call", "branch", "loop") else []
            if not want:
                continue
            editor = library.function(caller)
            editor.add_inputs(node, [editor.capture(k) for k in want])
            _grow_call(editor.node(node), kind, len(want))

    # 2. object graph: the container and the counters, bound to the concrete functions
    graph = meta.object_graph_def
    if not graph.nodes:
        raise InputError("guard.counters: the SavedModel's object graph is empty: there is no root to hold the "
                         "counters")
    root = graph.nodes[0]
    taken = {c.local_name for c in root.children}
    local = CONTAINER
    k = 1
    while local in taken:
        local, k = f"{CONTAINER}_{k}", k + 1
    edit.container_local = local
    first = len(graph.nodes)
    container = graph.nodes.add()
    container.user_object.identifier = "trackable_dict_wrapper"
    container.user_object.version.producer = 1
    container.user_object.version.min_consumer = 1
    root.children.add(node_id=first, local_name=local)
    edit.objects.add(0)
    for key in keys:
        node_id = len(graph.nodes)
        obj = graph.nodes.add()
        obj.variable.dtype = proto.DT_INT64
        obj.variable.shape.CopyFrom(proto.TensorShapeProto())
        obj.variable.trainable = False
        obj.variable.name = key
        container.children.add(node_id=node_id, local_name=key)
        edit.variables.append(NewVariable(key, node_id, f"{local}/{_escape(key)}/.ATTRIBUTES/{_VARIABLE_VALUE}"))
    ids = {v.name: v.node_id for v in edit.variables}
    for name in list(graph.concrete_functions):
        if needs.get(name):
            graph.concrete_functions[name].bound_inputs.extend(ids[k] for k in ordered(name))
            edit.concrete.add(name)

    # 3. graph: a VarHandleOp per counter, set to 0 by the init op, passed to callers
    top = meta.graph_def
    taken_nodes = {n.name for n in top.node}
    first_node = len(top.node)
    handles: dict[str, str] = {}
    for key in keys:
        handles[key] = _var_handle(top, taken_nodes, key)
    init = _init_op(meta)
    for i, node in enumerate(list(top.node)[:first_node]):
        kind, callees = _calls(node, names)
        want = ordered(callees[0]) if callees and kind in ("call", "branch", "loop") else []
        if kind == "other" and any(needs.get(c) for c in callees):
            raise InputError(f"guard.counters: the graph node {node.name} runs a function that updates a counted "
                             "variable through a function-valued attr the counter's handle cannot be passed to")
        if want:
            inputs = list(node.input)
            at = next((j for j, x in enumerate(inputs) if x.startswith("^")), len(inputs))
            del node.input[:]
            node.input.extend([*inputs[:at], *(handles[k] for k in want), *inputs[at:]])
            _grow_call(node, kind, len(want))
            edit.nodes.add(i)
    if init is not None:
        for key in keys:
            zero = _unique(taken_nodes, f"{handles[key]}/Initializer/zeros")
            top.node.add().CopyFrom(_const_int64(zero))
            assign = _unique(taken_nodes, f"{handles[key]}/Assign")
            a = top.node.add(name=assign, op="AssignVariableOp", input=[handles[key], zero])
            a.attr["dtype"].type = proto.DT_INT64
            a.attr[TAG_ATTR].s = TAG.encode()
            index = next(j for j, n in enumerate(top.node) if n.name == init)
            top.node[index].input.append(f"^{assign}")
            if index < first_node:
                edit.nodes.add(index)

    # 4. the reading signature
    _reading_signature(meta, library, edit, handles, taken_nodes)
    edit.new_nodes = len(top.node) - first_node
    edit.new_objects = len(graph.nodes) - first
    return edit


def _grow_call(node: proto.NodeDef, kind: str, count: int) -> None:
    """The attrs of a node that now passes ``count`` more resource handles: a call's ``Tin``;
    a loop's ``T`` and the shapes of its outputs, which are its loop variables."""
    if kind != "loop":
        if "Tin" in node.attr:
            node.attr["Tin"].list.type.extend([proto.DT_RESOURCE] * count)
        return
    node.attr["T"].list.type.extend([proto.DT_RESOURCE] * count)
    for key in ("output_shapes", "_output_shapes"):
        if key in node.attr:
            for _ in range(count):
                node.attr[key].list.shape.add()
    if "_num_original_outputs" in node.attr:
        node.attr["_num_original_outputs"].i += count


def _unique(taken: set[str], name: str) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate


def _var_handle(top: proto.GraphDef, taken: set[str], key: str) -> str:
    name = _unique(taken, re.sub(r"[^A-Za-z0-9_.\-/]", "_", key).lstrip("_-/") or "counter")
    node = top.node.add(name=name, op="VarHandleOp")
    node.attr["dtype"].type = proto.DT_INT64
    node.attr["shape"].shape.CopyFrom(proto.TensorShapeProto())
    node.attr["shared_name"].s = name.encode()
    node.attr["container"].s = b""
    node.attr["allowed_devices"].list.SetInParent()
    node.attr[TAG_ATTR].s = TAG.encode()
    return name


def _const_int64(name: str) -> proto.NodeDef:
    node = proto.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = proto.DT_INT64
    node.attr["value"].tensor.dtype = proto.DT_INT64
    node.attr["value"].tensor.int64_val.append(0)
    node.attr["value"].tensor.tensor_shape.SetInParent()
    node.attr[TAG_ATTR].s = TAG.encode()
    return node


def _init_op(meta: proto.MetaGraphDef) -> str | None:
    """The node the ``__saved_model_init_op`` signature names (a TensorFlow 1 style loader
    runs it after restoring), or None."""
    sig = meta.signature_def.get("__saved_model_init_op")
    if sig is None or "__saved_model_init_op" not in sig.outputs:
        return None
    name = sig.outputs["__saved_model_init_op"].name.split(":")[0].lstrip("^")
    return name if any(n.name == name for n in meta.graph_def.node) else None


def _reading_signature(meta: proto.MetaGraphDef, library: LibraryEditor, edit: MetaEdit,
                       handles: dict[str, str], taken_nodes: set[str]) -> None:
    """The ``optrewrite_counters`` signature (module docstring, step 3), where the root has a
    ``signature_map`` child and no signature of that name exists."""
    graph = meta.object_graph_def
    at = next((c.node_id for c in graph.nodes[0].children if c.local_name == "signatures"
               and 0 <= c.node_id < len(graph.nodes)
               and graph.nodes[c.node_id].WhichOneof("kind") == "user_object"
               and graph.nodes[c.node_id].user_object.identifier == "signature_map"), None)
    if at is None:
        return
    sig_map = graph.nodes[at]
    if SIGNATURE in meta.signature_def or any(c.local_name == SIGNATURE for c in sig_map.children):
        return
    keys = sorted(v.name for v in edit.variables)  # a dict's outputs, flattened in key order
    ids = {v.name: v.node_id for v in edit.variables}
    # TensorFlow wants a traced function's name to end in a number unique in the library
    number = 1 + max((int(m.group(1)) for f in library.functions if (m := re.search(r"_(\d+)$", f))), default=0)
    fname = f"__inference_signature_wrapper_{SIGNATURE}_{number}"
    fn = meta.graph_def.library.function.add()
    fn.signature.name = fname
    fn.signature.is_stateful = True
    fn.attr["_construction_context"].s = b"kEagerRuntime"
    for k, key in enumerate(keys):
        arg = f"counter_{k}"
        a = fn.signature.input_arg.add(name=arg, type=proto.DT_RESOURCE)
        a.handle_data.add(dtype=proto.DT_INT64).shape.CopyFrom(proto.TensorShapeProto())
        fn.arg_attr[k].attr["_user_specified_name"].s = arg.encode()
        fn.attr["_input_shapes"].list.shape.add()
        out = f"identity_{k}" if k else "identity"
        fn.signature.output_arg.add(name=out, type=proto.DT_INT64)
        read = fn.node_def.add(name=f"ReadVariableOp_{k}" if k else "ReadVariableOp", op="ReadVariableOp", input=[arg])
        read.attr["dtype"].type = proto.DT_INT64
        ident = fn.node_def.add(name=f"Identity_{k}" if k else "Identity", op="Identity", input=[f"{read.name}:value:0"])
        ident.attr["T"].type = proto.DT_INT64
        fn.ret[out] = f"{ident.name}:output:0"
        fn.signature.control_output.append(read.name)
        fn.control_ret[read.name] = read.name
    library.functions[fname] = fn
    edit.new_functions = 1

    concrete = graph.concrete_functions[fname]
    concrete.bound_inputs.extend(ids[k] for k in keys)
    concrete.canonicalized_input_signature.tuple_value.values.add().tuple_value.SetInParent()
    concrete.canonicalized_input_signature.tuple_value.values.add().dict_value.SetInParent()
    for key in keys:
        spec = concrete.output_signature.dict_value.fields[key].tensor_spec_value
        spec.name = key
        spec.shape.SetInParent()
        spec.dtype = proto.DT_INT64
    edit.concrete.add(fname)

    node_id = len(graph.nodes)
    obj = graph.nodes.add()
    bare = obj.bare_concrete_function
    bare.concrete_function_name = fname
    argspec = bare.function_spec.fullargspec.named_tuple_value
    argspec.name = "FullArgSpec"
    for field_name, kind in (("args", "list"), ("varargs", "none"), ("varkw", "none"), ("defaults", "none"),
                             ("kwonlyargs", "list"), ("kwonlydefaults", "none"), ("annotations", "dict")):
        value = argspec.values.add(key=field_name).value
        getattr(value, f"{kind}_value").SetInParent()
    bare.function_spec.input_signature.tuple_value.SetInParent()
    sig_map.children.add(node_id=node_id, local_name=SIGNATURE)
    edit.objects.add(at)

    call = _unique(taken_nodes, "StatefulPartitionedCall")
    node = meta.graph_def.node.add(name=call, op="StatefulPartitionedCall", input=[handles[k] for k in keys])
    node.attr["f"].func.name = fname
    node.attr["Tin"].list.type.extend([proto.DT_RESOURCE] * len(keys))
    node.attr["Tout"].list.type.extend([proto.DT_INT64] * len(keys))
    node.attr["_read_only_resource_inputs"].list.i.extend(range(len(keys)))
    node.attr["_collective_manager_ids"].list.SetInParent()
    node.attr["config"].s = b""
    node.attr["config_proto"].s = b""
    node.attr["executor_type"].s = b""
    node.attr[TAG_ATTR].s = TAG.encode()
    sig = meta.signature_def[SIGNATURE]
    sig.method_name = "tensorflow/serving/predict"
    for k, key in enumerate(keys):
        info = sig.outputs[key]
        info.name = f"{call}:{k}"
        info.dtype = proto.DT_INT64
        info.tensor_shape.SetInParent()
    edit.signatures.add(SIGNATURE)


def _first_line(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def write_checkpoint(src: Path, dst: Path, edit: MetaEdit) -> None:
    """Write ``dst/variables/`` (``dst`` being the output directory, whose ``variables/`` was
    copied from ``src``): every tensor of ``src/variables/variables`` as it was, each new
    variable at 0, and the checkpoint's object graph with the nodes :func:`thread` added to
    the SavedModel's (the container under the root, its counters with their keys)."""
    with quiet_stderr():
        import tensorflow as tf  # noqa: PLC0415
        from tensorflow.core.protobuf import trackable_object_graph_pb2  # noqa: PLC0415

    prefix = str(src / "variables" / "variables")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as exc:
        raise InputError(f"{src}: cannot read its checkpoint variables/variables: {_first_line(exc)}") from None
    dtypes = reader.get_variable_to_dtype_map()
    if _OBJECT_GRAPH_KEY not in dtypes:
        raise InputError(f"{src}: its checkpoint has no object graph ({_OBJECT_GRAPH_KEY}); a counter could not be "
                         "restored by name")
    try:
        graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
    except (DecodeError, TypeError, ValueError, IndexError, RuntimeError, tf.errors.OpError):
        graph = None
    if graph is None or not graph.nodes:
        raise InputError(f"{src}: its checkpoint's object graph ({_OBJECT_GRAPH_KEY}) is not readable")
    first = len(graph.nodes)
    container = graph.nodes.add()
    container.has_checkpoint_values.value = True
    graph.nodes[0].children.add(node_id=first, local_name=edit.container_local)
    tensors: dict[str, object] = {}
    for v in edit.variables:
        node_id = len(graph.nodes)
        node = graph.nodes.add()
        node.attributes.add(name=_VARIABLE_VALUE, full_name=v.name, checkpoint_key=v.checkpoint_key)
        node.has_checkpoint_values.value = True
        container.children.add(node_id=node_id, local_name=v.name)
        if v.checkpoint_key in dtypes:
            raise InputError(f"{src}: its checkpoint already holds {v.checkpoint_key!r}")
        tensors[v.checkpoint_key] = tf.constant(0, tf.int64)
    for name in dtypes:
        if name != _OBJECT_GRAPH_KEY:
            try:
                tensors[name] = tf.constant(reader.get_tensor(name), dtypes[name])
            except (tf.errors.OpError, TypeError, ValueError, IndexError, RuntimeError) as exc:
                raise InputError(f"{src}: cannot read {name!r} from its checkpoint: {_first_line(exc)}") from None
    tensors[_OBJECT_GRAPH_KEY] = tf.constant(graph.SerializeToString(deterministic=True))
    out = dst / "variables"
    for old in out.iterdir():
        old.unlink()
    names = sorted(tensors)
    with tf.device("CPU"):
        tf.raw_ops.SaveV2(prefix=str(out / "variables"), tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[tensors[n] for n in names])
