"""Graph files: reading, output paths and atomic writes (the format by name: optrewrite.formats)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from optrewrite.errors import InputError


def read_input(path: Path) -> bytes:
    """A graph file's bytes; a file that cannot be read is an InputError naming it."""
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a graph file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def default_output(path: Path) -> Path:
    """``graph.pb`` -> ``graph.rewritten.pb`` beside the input."""
    return path.with_name(f"{path.stem}.rewritten{path.suffix}")


def check_distinct(input_path: Path, output_path: Path, *, what: str = "the input") -> None:
    """Refuse to write ``output_path`` when it is ``input_path`` (by name or by a link)."""
    same = output_path.resolve() == input_path.resolve()
    if not same and output_path.exists():
        try:
            same = os.path.samefile(output_path, input_path)
        except OSError:
            same = False
    if same:
        raise InputError(f"{output_path}: writing it would overwrite {what}; choose another path")


def check_writable(path: Path) -> None:
    """``path`` names a file in an existing directory (checked before anything is written)."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"{path}: the directory {directory} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; name a file")


def write_atomic(path: Path, data: bytes, *, verify: Callable[[Path], None] | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    ``verify`` runs on the complete temporary file, beside ``path``, before it replaces
    anything; when it raises, nothing is written.
    """
    check_writable(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from None
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
    except OSError as exc:
        _remove(tmp)
        raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
