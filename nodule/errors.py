"""Ordinary user errors, input warnings and the exit codes of the ``nodule`` command.

An *ordinary user error* is a problem with what the user gave: a missing file, a bad
value, an unreadable study, a refused output path. The command (:func:`nodule.cli.main`)
prints it as one line, ``nodule: error: <message>``, and exits with status 1; ``nodule
--debug ...`` (or ``NODULE_DEBUG=1``) shows the traceback instead. What counts as one
(:func:`is_user_error`): a ``ValueError`` (this includes
:class:`~nodule.io.VolumeReadError`, :class:`~nodule.data.luna16.Luna16FormatError`,
:class:`~nodule.paths.OutputPathError`, :class:`~nodule.lung.NoLungFoundError`, a
fingerprint mismatch), an ``OSError`` (missing file, permission denied, ...) and
:class:`UserError` for anything else. Every other exception is taken for a bug and keeps
its traceback. A subcommand takes part by raising one of these with a message that
names the file and the problem; it has nothing to register.

Input accepted with a decision the user should know about warns with
:class:`InputWarning` (:class:`~nodule.io.VolumeReadWarning` is one); the command prints
those as ``nodule: warning: <message>``.

Batch commands end with :func:`batch_exit_code`.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import TextIO


class UserError(Exception):
    """An ordinary user error that is neither a ``ValueError`` nor an ``OSError``."""


class InputWarning(UserWarning):
    """The input was accepted, but something about it needed a decision (stated in the message)."""


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, UserError)
"""Exception types the command reports as one line (see the module docstring)."""

EXIT_OK = 0
EXIT_FAILED = 1
"""A user error, or a batch whose studies all failed (or any failed, with ``--strict``)."""
EXIT_USAGE = 2
"""Bad command-line arguments (as argparse)."""


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an ordinary user error (one line, no traceback)."""
    return isinstance(exc, USER_ERRORS)


def error_line(exc: BaseException) -> str:
    """The one-line text of an error: its message with line breaks folded.

    ``OSError`` s raised by the system (``[Errno 2] No such file or directory: 'x'``) are
    rewritten as ``x: no such file or directory``.
    """
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        text = f"{where}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
    else:
        text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


def batch_exit_code(n_ok: int, n_failed: int, strict: bool) -> int:
    """The exit status of a batch command.

    Non-zero (1) when no study succeeded, whatever ``strict`` (this includes a batch
    that found no study at all: an input that yields no study is a failed row), or when
    any study failed and ``strict`` is set; else 0.

    Args:
        n_ok: studies processed.
        n_failed: studies (or inputs without a study) that failed.
        strict: fail the batch when any study failed (``--strict``).

    Returns:
        0 or 1.
    """
    if n_ok < 0 or n_failed < 0:
        raise ValueError(f"counts must be >= 0, got n_ok={n_ok}, n_failed={n_failed}")
    if n_ok == 0 or (strict and n_failed > 0):
        return EXIT_FAILED
    return EXIT_OK


@contextlib.contextmanager
def input_warnings_as_lines() -> Iterator[None]:
    """Within the block, :class:`InputWarning` s (:class:`~nodule.io.VolumeReadWarning` is one)
    print as one line on stderr, ``nodule: warning: <message>``; other warnings keep Python's
    format."""
    default = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, InputWarning):
            text = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
            print(f"nodule: warning: {text}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default
