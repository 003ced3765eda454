"""Atomic file writes: a reader sees the old file or the whole new one, never a partial file.

The content goes to a temporary file in the target's folder, is flushed to disk, then renamed over
the target with ``os.replace``. Checkpoints, CSVs and plots all go through here.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[IO], None], binary: bool = True) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename it to ``path``.

    An existing file keeps its permission bits; a new one gets 0o644. On any error (including
    KeyboardInterrupt) the temp file is removed and ``path`` is untouched.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    mode = (target.stat().st_mode & 0o777) if target.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{target.name}.")
    try:
        kwargs = {} if binary else {"newline": "", "encoding": "utf-8"}
        with os.fdopen(fd, "wb" if binary else "w", **kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target
