"""The project's own error types.

Every problem a user can fix (a bad scenario, an unknown preset, a model that does not
fit) is raised as a `MoesimError` whose message is one line naming the field and the
fix. The CLI prints that line and exits with code 2; anything else is a bug.
"""

from __future__ import annotations

import difflib


class MoesimError(Exception):
    """Base class for errors caused by user input, not by a bug in moesim.

    The message is always one line: user text echoed in it (a key, an override) has its
    line breaks shown as escapes.
    """

    def __init__(self, message: str) -> None:
        super().__init__("\\n".join(str(message).splitlines()))


class ScenarioError(MoesimError):
    """A scenario (file, document or override) that cannot be used as written."""


class UnknownPresetError(ScenarioError):
    """A preset name (model or GPU) that moesim does not know."""


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """One line for an unknown name: the closest known one, then all of them."""
    lowered = str(name).lower()
    # a known name that the given one begins ('H100' -> 'H100-SXM') beats the closest spelling ('H800')
    extended = [
        k for k in known if k.lower().startswith(lowered) or lowered.replace("_", "") == k.lower().replace("_", "")
    ]
    close = (
        [extended[0].lower()]
        if lowered and extended
        else difflib.get_close_matches(lowered, [k.lower() for k in known], n=1)
    )
    hint = ""
    if close:
        original = next(k for k in known if k.lower() == close[0])
        hint = f" (did you mean '{original}'?)"
    return f"unknown {kind} '{name}'{hint}; known: {', '.join(known)}"
