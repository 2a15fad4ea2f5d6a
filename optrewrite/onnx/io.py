"""Reading and writing ONNX models: the one module of the ONNX path that parses or serializes.

Weights stored in external files are never read: the model is parsed with its external-data
references as they are. When the output goes to another directory, each referenced data
file is copied beside it (streamed by the OS, never held in memory, by the run's
:class:`~optrewrite.writeplan.WritePlan`), because onnxruntime and the onnx checker refuse
data paths that leave the model's directory, and the checker also refuses data files with
more than one hard link. A location that cannot name such a file (empty, a NUL byte, outside
the directory) and external data inside local functions are input errors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from optrewrite.errors import InputError, quoted

FORMAT_NAME = "ONNX"
# The newest IR version onnxruntime 1.31 loads; newer inputs are written with this one.
MAX_IR_VERSION = 13
MIN_IR_VERSION = 4  # initializers need not be graph inputs from IR 4 on


@dataclass
class OnnxFile:
    path: Path
    raw: bytes
    model: onnx.ModelProto
    format_name: str = FORMAT_NAME
    external: list[tuple[str, Path]] | None = field(default=None, repr=False, compare=False)  # see data_files


def load(path: Path, raw: bytes) -> OnnxFile:
    """Parse ``raw`` as a ModelProto; every problem is an InputError naming ``path``."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InputError(f"{path}: not an ONNX model: cannot parse ModelProto ({exc})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise InputError(f"{path}: not an ONNX model: no graph or no opset_import")
    newest = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > newest:
            raise InputError(
                f"{path}: the model imports ai.onnx opset {imp.version}; the newest this onnx "
                f"{onnx.__version__} knows is {newest}"
            )
    if model.ir_version < MIN_IR_VERSION:
        raise InputError(
            f"{path}: IR version {model.ir_version} is older than {MIN_IR_VERSION}; "
            "re-export the model with a newer exporter"
        )
    return OnnxFile(path=path, raw=raw, model=model)


def serialize(model: onnx.ModelProto) -> bytes:
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    return model.SerializeToString(deterministic=True)


def _attribute_tensors(attr: onnx.AttributeProto):
    if attr.type == onnx.AttributeProto.TENSOR:
        yield attr.t
    elif attr.type == onnx.AttributeProto.TENSORS:
        yield from attr.tensors
    elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
        yield attr.sparse_tensor.values
        yield attr.sparse_tensor.indices
    elif attr.type == onnx.AttributeProto.SPARSE_TENSORS:
        for sparse in attr.sparse_tensors:
            yield sparse.values
            yield sparse.indices
    elif attr.type == onnx.AttributeProto.GRAPH:
        yield from _external_tensors(attr.g)
    elif attr.type == onnx.AttributeProto.GRAPHS:
        for sub in attr.graphs:
            yield from _external_tensors(sub)


def _external_tensors(graph: onnx.GraphProto):
    """Every TensorProto of ``graph`` and its subgraphs that may hold external data."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in _TENSOR_ATTRS:
                yield from _attribute_tensors(attr)


_TENSOR_ATTRS = frozenset({onnx.AttributeProto.TENSOR, onnx.AttributeProto.TENSORS, onnx.AttributeProto.SPARSE_TENSOR,
                           onnx.AttributeProto.SPARSE_TENSORS, onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS})


def may_have_external_data(raw: bytes) -> bool:
    """False when the serialized model cannot hold an external tensor (no ``location`` key)."""
    return b"location" in raw


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_files(model: onnx.ModelProto) -> dict[str, str]:
    """The data files the model's external tensors name, relative to its directory, each
    with the name of the first tensor that names it. External data inside a local function
    is an InputError (onnx's own loaders never resolve it)."""
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                for tensor in _attribute_tensors(attr):
                    if _is_external(tensor):
                        raise InputError(f"tensor {quoted(tensor.name)} of local function {quoted(function.name)}: "
                                         "external data inside a local function is not supported; store it in the model")
    files: dict[str, str] = {}
    for tensor in _external_tensors(model.graph):
        if _is_external(tensor):
            entries = {e.key: e.value for e in tensor.external_data}
            if "location" not in entries:
                raise InputError(f"tensor {quoted(tensor.name)}: external data without a location")
            files.setdefault(entries["location"], tensor.name)
    return files


def _location_problem(location: str) -> str | None:
    """Why ``location`` cannot name a data file beside the model, or None."""
    if not location:
        return "is empty"
    if "\0" in location:
        return "holds a NUL byte"
    raw = os.fsencode(location)
    if len(raw) > 4095 or any(len(part) > 255 for part in raw.split(b"/")):
        return "is too long for a file name"
    return None


def external_data(model: onnx.ModelProto, src_dir: Path, source: Path) -> list[tuple[str, Path]]:
    """Each external data file as (location, resolved path); each must be a regular file
    inside the model's directory. Every problem is an InputError naming ``source`` and a
    tensor that names the file."""
    out = []
    root = src_dir.resolve()
    for location, tensor in external_files(model).items():
        where = f"{source}: tensor {quoted(tensor)}: external data {quoted(location)}"
        problem = _location_problem(location)
        if problem is not None:
            raise InputError(f"{where} {problem}")
        try:
            path = (src_dir / location).resolve()
            inside = root in path.parents
            regular = inside and path.is_file()
        except (OSError, ValueError, RuntimeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InputError(f"{where} is not a usable path: {detail}") from None
        if not inside:
            raise InputError(f"{source}: external data {quoted(location)} lies outside the model's directory")
        if not regular:
            what = "is missing" if not path.exists() else "is not a regular file"
            raise InputError(f"{source}: external data file {quoted(location)} {what}")
        out.append((location, path))
    return out


def check_external_files(model: onnx.ModelProto, src_dir: Path, source: Path) -> list[Path]:
    """Resolve the external data files; each must be a file inside the model's directory."""
    return [path for _, path in external_data(model, src_dir, source)]


def data_files(loaded: OnnxFile) -> list[tuple[str, Path]]:
    """:func:`external_data` of a loaded model, worked out once per load."""
    if loaded.external is None:
        loaded.external = (external_data(loaded.model, loaded.path.parent, loaded.path)
                           if may_have_external_data(loaded.raw) else [])
    return loaded.external


def data_reads(path: Path, raw: bytes, outcome: object = None) -> list[tuple[Path, str]]:
    """The external data files the model at ``path`` reads, with their roles, for a write
    plan (:func:`optrewrite.writeplan.graph_reads`); the model an ``outcome`` of its rewrite
    holds spares parsing ``raw`` again."""
    if not may_have_external_data(raw):
        return []
    loaded = getattr(getattr(outcome, "graph", None), "loaded", None)
    if not isinstance(loaded, OnnxFile):
        loaded = load(path, raw)
    return [(file, data_role(location)) for location, file in data_files(loaded)]


def data_role(location: str) -> str:
    return f"the external data {quoted(location)} of the input graph"


def copy_role(location: str) -> str:
    return f"the copy of the external data {quoted(location)}"


def external_copies(loaded: OnnxFile, dst_dir: Path) -> list[tuple[Path, Path, str]]:
    """The data files an output written to ``dst_dir`` needs beside it, as (source file,
    target, location): none when it goes to the model's own directory."""
    files = data_files(loaded)
    if not files or loaded.path.parent.resolve() == dst_dir.resolve():
        return []
    return [(path, dst_dir / location, location) for location, path in files]


def reusable_copy(target: Path, source: Path) -> bool:
    """Whether ``target`` (in the output directory) already holds ``source``'s bytes; False
    when it does not exist; an InputError when it is another file."""
    if not os.path.lexists(target):
        return False
    try:
        if target.is_file() and (os.path.samefile(target, source) or _same_bytes(target, source)):
            return True
    except OSError:
        pass
    raise InputError(f"{target}: a different file of that name is in the output directory; "
                     "it would be needed for the model's external data")


def _same_bytes(a: Path, b: Path, chunk: int = 1 << 20) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


class CheckFailed(Exception):
    """The onnx checker rejected a model; the message is the checker's first line."""


def check_written(path: Path) -> None:
    """The onnx checker on a written model file (external data resolved beside it)."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise CheckFailed(str(exc).strip().splitlines()[0]) from None
    except UnicodeDecodeError:  # the checker's message quotes a name that is not UTF-8
        raise CheckFailed("the model holds a name that is not UTF-8 text") from None
