"""Output paths and atomic writes."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from optrewrite.errors import InputError


def default_output(path: Path) -> Path:
    """``graph.pb`` -> ``graph.rewritten.pb`` beside the input."""
    return path.with_name(f"{path.stem}.rewritten{path.suffix}")


def check_distinct(input_path: Path, output_path: Path) -> None:
    same = output_path.resolve() == input_path.resolve()
    if not same and output_path.exists():
        try:
            same = os.path.samefile(output_path, input_path)
        except OSError:
            same = False
    if same:
        raise InputError(f"{output_path}: the output would overwrite the input; choose another -o")


def write_atomic(path: Path, data: bytes, *, verify: Callable[[Path], None] | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    ``verify`` runs on the complete temporary file, beside ``path``, before it replaces
    anything; when it raises, nothing is written.
    """
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"{path}: the output directory does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
