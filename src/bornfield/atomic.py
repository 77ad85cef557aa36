"""Atomic file output: every file bornfield writes goes through here.

The data is written to a fresh temporary file beside the target and renamed
onto it, so a reader (or a Snakemake job after a crash) never sees a
half-written file under the final name, and a failed write leaves nothing
behind. The temporary file is created like any new file, so the result has the
permissions the umask gives (0644 under umask 022, 0664 under 002) -- unlike
``tempfile.mkstemp``, which makes 0600 files the group cannot read.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a not-yet-existing temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the suffix of ``path`` (writers that choose the format by
    the suffix, e.g. matplotlib, work unchanged) and starts with a dot. The caller's
    writer creates the file. If the block raises, the temporary file is removed and
    ``path`` is untouched. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer of {path} created no file")
        with open(tmp, "rb") as handle:  # on disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes | Callable[[Any], Any]) -> Path:
    """Write ``data`` (bytes, or a callable given the open binary handle) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "xb") as handle:
        if callable(data):
            data(handle)
        else:
            handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, *, indent: int | None = 1, sort_keys: bool = False,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``data`` as JSON (numpy arrays and scalars as lists and numbers) atomically."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default or json_default)
    return write_text(path, text + "\n")


def json_default(value: Any) -> Any:
    """JSON form of numpy arrays/scalars and paths; anything else is an error."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
