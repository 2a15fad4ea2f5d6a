"""ONNX models (``.onnx``, training steps with ai.onnx.preview.training ops or in plain ops)
as an optrewrite format.

Nothing is imported at module level beyond the standard library: onnx loads when a model is
read, onnxruntime only when one is verified.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from optrewrite.formats import SingleFile

if TYPE_CHECKING:
    from optrewrite.core import Analysis, Outcome
    from optrewrite.spec import Spec
    from optrewrite.writeplan import WritePlan


class OnnxFormat(SingleFile):
    name = "ONNX"
    article = "an ONNX model"

    def claims(self, path: Path) -> bool:
        return path.suffix.lower() == ".onnx"

    def check_output(self, src: Path, out: Path) -> None:
        """An output named as a TensorFlow graph is refused before anything is read."""
        from optrewrite.errors import InputError  # noqa: PLC0415
        if out.suffix.lower() in (".pb", ".pbtxt", ".pbtext", ".prototxt", ".meta", ".graphdef"):
            raise InputError(f"{out}: names a TensorFlow graph; write an ONNX model as .onnx")
        super().check_output(src, out)

    def check_request(self, path: Path, spec: Spec | None, *, lower: bool) -> None:
        """Everything a spec asks applies to ONNX models."""

    def rewrite(self, path: Path, raw: bytes, spec: Spec, *, lower: bool) -> Outcome:
        from optrewrite.onnx import io  # noqa: PLC0415
        from optrewrite.onnx.rewrite import rewrite_onnx  # noqa: PLC0415

        return rewrite_onnx(io.load(path, raw), spec, lower=lower)

    def serialize(self, outcome: Outcome) -> bytes:
        from optrewrite.onnx.rewrite import serialize  # noqa: PLC0415

        return serialize(outcome.graph)

    def save(self, outcome: Outcome, out: Path, *, check: Callable[[Path], None] | None = None,
             plan: WritePlan | None = None) -> None:
        """Stage the model beside ``out`` and check it with the onnx checker (then ``check``)
        before it replaces anything. When it goes to another directory, the external data
        files it references are copied beside it first (the checker and ``check`` need them
        there); every target is checked against what the run reads and writes before
        anything is written. With ``plan`` the caller commits (or aborts) it; without, the
        model is in place when this returns, or nothing is."""
        from contextlib import nullcontext  # noqa: PLC0415

        from optrewrite.errors import InputError  # noqa: PLC0415
        from optrewrite.onnx import io  # noqa: PLC0415
        from optrewrite.writeplan import WritePlan  # noqa: PLC0415

        own = plan is None
        with WritePlan() if plan is None else nullcontext(plan) as plan:
            loaded = outcome.graph.loaded
            src = loaded.path
            plan.read(src, "the input graph")
            plan.write(out, "the output graph")
            copies = io.external_copies(loaded, out.parent)
            for source, target, location in copies:
                plan.read(source, io.data_role(location))
                plan.write(target, io.copy_role(location), make_dirs=True)
            needed = [(source, target) for source, target, _ in copies if not io.reusable_copy(target, source)]
            data = self.serialize(outcome)
            for source, target in needed:
                plan.publish(plan.stage_copy(source, target))
            tmp = plan.stage(out, data)
            try:
                io.check_written(tmp)
            except io.CheckFailed as exc:
                try:
                    io.check_written(src)
                except io.CheckFailed as bad_input:
                    raise InputError(f"{src}: not a valid ONNX model: {bad_input}") from None
                raise AssertionError(f"the rewritten model fails the onnx checker: {exc}") from None
            if check is not None:
                check(tmp)
            if own:
                plan.commit()

    def analyse(self, path: Path, raw: bytes, spec: Spec | None, *, lower: bool) -> Analysis:
        from optrewrite.onnx.explain import analyse  # noqa: PLC0415

        return analyse(path, raw, spec, lower=lower)

    def diff(self, a: Path, a_raw: bytes, b: Path, b_raw: bytes) -> list[str]:
        from optrewrite.onnx.diff import diff_graphs  # noqa: PLC0415

        return diff_graphs(a, a_raw, b, b_raw)

    def verify(self, path: Path, like: Path, raw: bytes, *, seed: int, timeout_s: float) -> str:
        from optrewrite.onnx.verify import verify_graph  # noqa: PLC0415

        return verify_graph(path, like, raw, seed=seed, timeout_s=timeout_s)

    def encode_as(self, actual: Path, raw: bytes, expected: Path) -> bytes:
        """A model is stored as it is, whatever the name."""
        return raw


ONNX = OnnxFormat()
