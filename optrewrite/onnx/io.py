"""Reading and writing ONNX models: the one module of the ONNX path that parses or serializes.

Weights stored in external files are never read: the model is parsed with its external-data
references as they are. When the output goes to another directory, each referenced data
file is copied beside it (streamed by the OS, never held in memory), because onnxruntime and
the onnx checker refuse data paths that leave the model's directory, and the checker also
refuses data files with more than one hard link.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from optrewrite.errors import InputError

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


def _external_tensors(graph: onnx.GraphProto):
    """Every TensorProto of ``graph`` and its subgraphs that may hold external data."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _external_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _external_tensors(sub)


def may_have_external_data(raw: bytes) -> bool:
    """False when the serialized model cannot hold an external tensor (no ``location`` key)."""
    return b"location" in raw


def external_files(model: onnx.ModelProto) -> list[str]:
    """The data files the model's external tensors name, relative to its directory."""
    files: dict[str, None] = {}
    for tensor in _external_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            if "location" not in entries:
                raise InputError(f"tensor {tensor.name!r}: external data without a location")
            files[entries["location"]] = None
    return list(files)


def check_external_files(model: onnx.ModelProto, src_dir: Path, source: Path) -> list[Path]:
    """Resolve the external data files; each must be a file inside the model's directory."""
    out = []
    root = src_dir.resolve()
    for location in external_files(model):
        path = (src_dir / location).resolve()
        if root not in path.parents:
            raise InputError(f"{source}: external data {location!r} lies outside the model's directory")
        if not path.is_file():
            raise InputError(f"{source}: external data file {location!r} is missing")
        out.append(path)
    return out


def place_external_files(model: onnx.ModelProto, src_dir: Path, dst_dir: Path, source: Path) -> list[Path]:
    """Make the model's external data available beside an output written to ``dst_dir``.

    Returns the files it created (for the caller to remove if the write fails).
    """
    files = check_external_files(model, src_dir, source)
    if not files or src_dir.resolve() == dst_dir.resolve():
        return []
    root = src_dir.resolve()
    created = []
    for path in files:
        target = dst_dir / path.relative_to(root)
        if target.exists():
            if os.path.samefile(target, path) or _same_bytes(target, path):
                continue
            raise InputError(
                f"{target}: a different file of that name is in the output directory; "
                "it would be needed for the model's external data"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
            created.append(target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return created


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
