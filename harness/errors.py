"""The one base class of the mistakes a user can make at the command line.

An error that derives from `UserError` means "the input asked for something impossible or missing" (an
unknown recipe, a malformed TOML, a bad window, a port in use, an engine that never became healthy, ...): the
CLI prints its message as ONE line on stderr and exits with code 2, never with a traceback. Anything else
that escapes a command is a bug and keeps its traceback. Each module raises its own subclass (RecipeError,
WorkloadError, ProfileError, ...) so that callers inside the harness can still tell them apart; several also
derive from ValueError or RuntimeError, as they did before this base class existed.

Nothing here imports anything: every module may import it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave (one readable line naming the problem and the fix)."""


class ReproduceError(UserError, RuntimeError):
    """A user-facing problem with a sweep, a run or a results directory (one line)."""


__all__ = ["ReproduceError", "UserError"]
