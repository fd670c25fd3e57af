"""Errors a user can act on, and the helpers that raise them.

``UserError`` is bad input (a file, a flag, a config key): the CLI prints its message as one line
and exits with its ``exit_code``, without a traceback (``tempsamp --debug ...`` shows it).
``RunStopped`` is a run that stopped on purpose (a signal, too many skipped steps) after saving
its work; the CLI prints its message and exits non-zero.
"""

from __future__ import annotations

import os
from pathlib import Path


class UserError(ValueError):
    """Bad input: the message names the file and line, or the key, and says what to do.

    A ValueError, so code that already handles bad values handles it too.
    """

    exit_code = 2


class RunStopped(Exception):
    """A run stopped early after saving what it had (the message says where and why)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def ensure_output_dir(path, what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) or raise UserError saying why it cannot be written."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{path}: cannot be the {what}: {parent} is a file, not a folder; choose another path")
        if parent.exists():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{path}: cannot create the {what} ({err.strerror}); choose a writable path") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{path}: the {what} is not writable; choose a writable path")
    return path


def closest(word: str, choices) -> str:
    """' (did you mean X?)' for the closest of ``choices``, or ''."""
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def positive_int(text: str) -> int:
    """argparse type for counts such as --limit and --max-steps: a whole number >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type for counts where 0 means none (e.g. view --frames): a whole number >= 0."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _number(text: str, *, strict: bool) -> float:
    import argparse
    import math

    bound = "> 0" if strict else ">= 0"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type for rates such as --fps: a finite number > 0."""
    return _number(text, strict=True)


def nonnegative_float(text: str) -> float:
    """argparse type for settings where 0 is meaningful, such as --temperature (0: greedy): a finite number >= 0."""
    return _number(text, strict=False)


# The argparse types above: every numeric flag of the CLI uses one (tests/test_errors.py checks).
RANGE_TYPES = (positive_int, nonnegative_int, positive_float, nonnegative_float)


def require_file(path, what: str) -> None:
    """``what`` with its article ("an annotation file"): FileNotFoundError "PATH: annotation file not found",
    or UserError "PATH: is a folder, not an annotation file" for a directory (not "not found")."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what.split(' ', 1)[1]} not found")
