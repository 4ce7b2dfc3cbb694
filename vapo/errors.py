"""The project's exception type: every error says what went wrong, where, and how to fix it.

The CLI catches :class:`VapoError` and prints it in one or two lines (no traceback) with exit
code 2. Library code raises it for bad input (configs, files, arguments, shapes).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VapoError(Exception):
    """An error a user can act on.

    Args:
        what: what went wrong, in one sentence.
        where: where it happened (file and line, config field, function argument).
        fix: how to fix it.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head}\n  fix: {self.fix}" if self.fix else head


class ConfigError(VapoError):
    """A configuration value, key or file is invalid."""


class DataError(VapoError):
    """An input file or dataset is malformed."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f' Did you mean "{close[0]}"?' if close else ""


def unknown_name_error(kind: str, name: str, choices: Iterable[str], *, where: str | None = None) -> VapoError:
    """A uniform error for an unknown registry name (estimator, loss, task, model size...)."""
    choices = sorted(choices)
    return VapoError(
        f"unknown {kind} {name!r}.{did_you_mean(name, choices)}",
        where=where,
        fix=f"use one of: {', '.join(choices)}",
    )
