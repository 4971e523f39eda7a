"""The one exception type that reaches the user as a one-line message instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unusable environment: the CLI prints `error: <message>` and exits `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def close_matches_hint(name: str, choices: list[str], limit: int = 3) -> str:
    """' (did you mean: a, b?)' for a misspelt choice, or '' when nothing is close."""
    import difflib

    lowered = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=limit, cutoff=0.6)
    return f" (did you mean: {', '.join(lowered[f] for f in found)}?)" if found else ""
