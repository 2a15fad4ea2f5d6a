"""The TensorFlow protobuf schema, without importing TensorFlow.

tensorboard ships TensorFlow's framework protos as plain generated modules (wire-compatible,
importing in milliseconds). Where tensorboard is absent we fall back to TensorFlow's own
modules, which pulls in the whole TensorFlow import.
"""
from __future__ import annotations

try:
    from tensorboard.compat.proto import (
        attr_value_pb2,
        graph_pb2,
        meta_graph_pb2,
        node_def_pb2,
        tensor_pb2,
        tensor_shape_pb2,
        types_pb2,
    )
except ImportError:  # pragma: no cover - depends on the installation
    try:
        from tensorflow.core.framework import (  # type: ignore[no-redef]
            attr_value_pb2,
            graph_pb2,
            node_def_pb2,
            tensor_pb2,
            tensor_shape_pb2,
            types_pb2,
        )
        from tensorflow.core.protobuf import meta_graph_pb2  # type: ignore[no-redef]
    except ImportError as exc:
        from optrewrite.errors import InputError

        raise InputError(
            "reading TensorFlow graphs needs the GraphDef schema: pip install tensorflow-cpu (in a checkout: pip install '.[tf]')"
        ) from exc

AttrValue = attr_value_pb2.AttrValue
GraphDef = graph_pb2.GraphDef
MetaGraphDef = meta_graph_pb2.MetaGraphDef
NodeDef = node_def_pb2.NodeDef
TensorProto = tensor_pb2.TensorProto
TensorShapeProto = tensor_shape_pb2.TensorShapeProto

DT_FLOAT = types_pb2.DT_FLOAT
DT_DOUBLE = types_pb2.DT_DOUBLE
DT_HALF = types_pb2.DT_HALF
DT_BFLOAT16 = types_pb2.DT_BFLOAT16
DT_INT32 = types_pb2.DT_INT32
DT_INT64 = types_pb2.DT_INT64
DT_BOOL = types_pb2.DT_BOOL
DT_RESOURCE = types_pb2.DT_RESOURCE
FLOAT_TYPES = frozenset({DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16})
FLOAT_NAMES = {DT_FLOAT: "float32", DT_DOUBLE: "float64", DT_HALF: "float16", DT_BFLOAT16: "bfloat16"}


def dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)[3:].lower() if dtype in types_pb2.DataType.values() else str(dtype)

# TF2 SavedModel pieces (optrewrite.tf2): the function library and the object graph.
try:
    from tensorboard.compat.proto import function_pb2, saved_object_graph_pb2
except ImportError:  # pragma: no cover - depends on the installation
    from tensorflow.core.framework import function_pb2  # type: ignore[no-redef]
    from tensorflow.core.protobuf import saved_object_graph_pb2  # type: ignore[no-redef]

FunctionDef = function_pb2.FunctionDef
FunctionDefLibrary = function_pb2.FunctionDefLibrary
SavedObjectGraph = saved_object_graph_pb2.SavedObjectGraph
SavedObject = saved_object_graph_pb2.SavedObject
CollectionDef = meta_graph_pb2.CollectionDef
