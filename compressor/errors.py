"""Errors a user can cause, with messages written for people.

Every mistake in a schedule file surfaces as one ``ScheduleError`` whose text names the file, the
line, the key path, what was wrong and what would be valid. Components raise ``ComponentArgError``
(a plain ``ValueError`` naming the offending argument) and the builder turns it into a
``ScheduleError`` located in the file.
"""
from __future__ import annotations

import difflib
import errno
from typing import Any, Iterable, Optional


class CompressorError(Exception):
    """Base class of every error this library raises on purpose."""


class ScheduleError(CompressorError, ValueError):
    """A schedule (YAML file or dict) is wrong; the message says where and how to fix it."""

    def __init__(self, message: str, path: Optional[str] = None, line: Optional[int] = None,
                 key: Optional[str] = None):
        self.path, self.line, self.key, self.reason = path, line, key, message
        where = ""
        if path:
            where = f"{path}:{line}" if line else path
        if key:
            where = f"{where} {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message)


class ComponentArgError(CompressorError, ValueError):
    """A component's constructor argument is invalid. ``key`` is the argument (dotted for nesting)."""

    def __init__(self, key: str, message: str):
        self.key, self.reason = key, message
        super().__init__(f"{key}: {message}")


class CheckpointError(CompressorError, ValueError):
    """A checkpoint file is missing, damaged, unsafe or does not fit the model."""


class OptimizerMismatchError(CheckpointError):
    """The checkpoint's optimizer state is for another optimizer class than the one given."""

    def __init__(self, path: str, saved: str, given: str):
        self.path, self.saved, self.given = path, saved, given
        super().__init__(f"{path}: optimizer state is for {saved}, not {given}; restore without an "
                         f"optimizer (or with a new one) to start afresh")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist; also a ``FileNotFoundError``, as Distiller raised."""

    def __init__(self, path: str):
        super().__init__(f"{path}: checkpoint file not found")
        self.errno, self.strerror, self.filename = errno.ENOENT, "checkpoint file not found", path

    def __str__(self) -> str:   # OSError would print "[Errno 2] ..."; keep the one-line message
        return f"{self.filename}: checkpoint file not found"


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, no permission); the previous file is intact.

    Also an ``OSError`` with the original ``errno``, so callers that handled the raw error still do.
    """

    def __init__(self, path: str, cause: OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(f"{path}: could not write the checkpoint ({reason}); the previous "
                         f"checkpoint there, if any, is unchanged and no partial file was left")
        self.errno, self.strerror, self.filename = cause.errno, reason, path

    def __str__(self) -> str:   # OSError would print "[Errno 28] ..."; keep the one-line message
        return self.args[0]


class NonFiniteLossError(CompressorError, FloatingPointError):
    """The training loss became NaN or infinite; training stops before stepping on it."""


class ThinningError(CompressorError, ValueError):
    """The network cannot be thinned as asked; nothing was changed."""


def suggest(name: str, valid: Iterable[str], n: int = 2) -> str:
    """' (did you mean X?)' for the closest valid names, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting a user's value in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def listing(valid: Iterable[str], limit: int = 12) -> str:
    """A short, sorted, comma-separated list of valid names, elided past ``limit``."""
    items = sorted(set(str(v) for v in valid))
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items) - limit} more)"
    return shown
