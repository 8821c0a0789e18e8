"""One error hierarchy: user errors carry a hint; the CLI turns them into one line and exit 2."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
# `optadvise recommend`: the report is complete, and no plan fits (its JSON says
# "fits": false, "verdict": "nothing-fits"; the suggestions say what would).
EXIT_NOTHING_FITS = 3


class AdvisorError(Exception):
    """Base of every error the advisor raises on purpose."""


class UserError(AdvisorError):
    """Bad input from the user: a flag, a file, a profile name.

    Args:
        message: what is wrong, in one line.
        hint: how to fix it, in one line.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class DataError(UserError):
    """A YAML data file (rule, taxonomy, profile) that does not validate.

    Carries every problem found, each as ``file:line: id: field: message``.
    """

    def __init__(self, problems: list[str], hint: str = "") -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "invalid data"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more, hint or "fix the file(s) named above")
