"""TF2 SavedModels (a directory with ``saved_model.pb``) as an optrewrite format.

Claims a directory that holds ``saved_model.pb``, or a path named ``saved_model.pb``; reads its
own input (:meth:`SavedModelFormat.read`: the ``saved_model.pb`` bytes, after checking the
directory is a SavedModel) and writes a whole SavedModel directory (:mod:`optrewrite.tf2.io`).
Rewriting imports no TensorFlow; saving loads TensorFlow's fingerprinting extension (not the
whole package) to regenerate ``fingerprint.pb`` — and imports TensorFlow to write a new
checkpoint when the rewrite adds variables (``guard.counters``) — and ``verify`` runs the
output in TensorFlow.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from optrewrite.errors import InputError

if TYPE_CHECKING:
    from optrewrite.core import Analysis, Outcome
    from optrewrite.spec import Spec
    from optrewrite.writeplan import WritePlan


class SavedModelFormat:
    name = "TensorFlow SavedModel"
    article = "a TensorFlow SavedModel"

    def claims(self, path: Path) -> bool:
        if path.name == "saved_model.pb" and not path.is_dir():
            return True
        return path.is_dir() and (path / "saved_model.pb").exists()

    def read(self, path: Path) -> bytes:
        """The ``saved_model.pb`` bytes of the SavedModel ``path`` names."""
        from optrewrite.tf2 import io  # noqa: PLC0415

        return io.read(path)

    def default_output(self, path: Path) -> Path:
        """``export`` -> ``export.rewritten`` beside it (also for ``export/saved_model.pb``);
        ``export.rewritten`` -> ``export.rewritten-2``."""
        from optrewrite.tf2 import io  # noqa: PLC0415

        root = io.export_dir(path)
        from optrewrite.fileio import rewritten_name  # noqa: PLC0415

        return root.with_name(rewritten_name(root.name))

    def check_output(self, src: Path, out: Path) -> None:
        """Refuse an output that is, or lies inside, the input SavedModel (before anything is read)."""
        from optrewrite.tf2 import io  # noqa: PLC0415

        io.check_output(src, out)

    def sealed(self, path: Path, raw: bytes, spec: Spec, *, lower: bool) -> str | None:
        """The report's format name when ``raw`` (a ``saved_model.pb``) is what this spec's
        rewrite wrote, by its seal (:mod:`optrewrite.seal`; nothing is parsed); None otherwise.
        The seal covers ``saved_model.pb``, where the rewrite lies, not ``variables/``."""
        from optrewrite import seal  # noqa: PLC0415
        from optrewrite.tf2.rewrite import FORMAT_NAME, SEAL_MARKER  # noqa: PLC0415

        return FORMAT_NAME if not lower and seal.holds(raw, SEAL_MARKER, seal.spec_key(spec)) else None

    def check_request(self, path: Path, spec: Spec | None, *, lower: bool) -> None:
        if lower or (spec is not None and spec.lower):
            raise InputError(f"{path}: lowering applies to ONNX models only")
        if spec is not None and spec.updates:
            raise InputError(f"{spec.source}: updates: names update sites of ONNX models only; "
                             f"{path} is a TensorFlow SavedModel")

    def rewrite(self, path: Path, raw: bytes, spec: Spec, *, lower: bool) -> Outcome:
        self.check_request(path, spec, lower=lower)
        from optrewrite.tf2 import io  # noqa: PLC0415
        from optrewrite.tf2.rewrite import rewrite_savedmodel  # noqa: PLC0415

        return rewrite_savedmodel(io.load(path, raw), spec)

    def serialize(self, outcome: Outcome) -> bytes:
        """The rewritten ``saved_model.pb`` (without the directory around it)."""
        from optrewrite.tf2.rewrite import serialize  # noqa: PLC0415

        return serialize(outcome.graph)

    def save(self, outcome: Outcome, out: Path, *, check: Callable[[Path], None] | None = None,
             plan: WritePlan | None = None) -> None:
        """Build the whole SavedModel directory ``out`` beside it; ``check`` runs on the
        complete temporary directory. With ``plan`` the caller commits (or aborts) it;
        without, the directory is in place when this returns, or nothing is. Notes in the
        report when no fingerprint was written."""
        from contextlib import nullcontext  # noqa: PLC0415

        from optrewrite.tf2 import io  # noqa: PLC0415
        from optrewrite.writeplan import WritePlan  # noqa: PLC0415

        own = plan is None
        with WritePlan() if plan is None else nullcontext(plan) as plan:
            loaded = outcome.graph.loaded
            io.check_output(loaded.path, out)
            for path, role in io.data_reads(loaded.root):
                plan.read(path, role)
            plan.write(out, "the output graph", check=False)
            tmp = plan.stage_dir(out)
            try:
                fingerprinted = io.fill_savedmodel(loaded.root, tmp, self.serialize(outcome), outcome.graph.edit)
            except OSError as exc:
                raise InputError(f"{out}: cannot write: {exc.strerror or exc}") from None
            if not fingerprinted:
                note = "fingerprint.pb left out (TensorFlow is not importable to regenerate it)"
                outcome.report.note = f"{outcome.report.note}; {note}" if outcome.report.note else note
            if check is not None:
                check(tmp)
            if own:
                plan.commit()

    def analyse(self, path: Path, raw: bytes, spec: Spec | None, *, lower: bool) -> Analysis:
        self.check_request(path, spec, lower=lower)
        from optrewrite.tf2.explain import analyse  # noqa: PLC0415

        return analyse(path, raw, spec)

    def diff(self, a: Path, a_raw: bytes, b: Path, b_raw: bytes) -> list[str]:
        from optrewrite.tf2.diff import diff_savedmodels  # noqa: PLC0415

        return diff_savedmodels(a, a_raw, b, b_raw)

    def verify(self, path: Path, like: Path, raw: bytes, *, seed: int, timeout_s: float) -> str:
        from optrewrite.tf2.verify import verify_savedmodel  # noqa: PLC0415

        return verify_savedmodel(path, raw, seed=seed, timeout_s=timeout_s)

    def encode_as(self, actual: Path, raw: bytes, expected: Path) -> bytes:
        """A SavedModel's golden file is its ``saved_model.pb``, as it is."""
        return raw


SAVEDMODEL = SavedModelFormat()
