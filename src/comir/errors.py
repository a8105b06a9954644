"""User-facing errors and warnings.

Every problem caused by the user's input (a file, a folder, an option) is raised as
:class:`ComirError` with a one-line message that names the culprit and the fix. The CLI
prints the message and exits with status 2; library callers can catch it.

Things worth knowing but not fatal are issued with :func:`warn` as :class:`ComirWarning`:
one line, naming the file or option and the likely fix. The CLI prints them in its own
voice (``comir train: warning: ...``); Python code sees ordinary warnings it can filter.
"""

from __future__ import annotations

import warnings


class ComirError(Exception):
    """An input problem the user can fix; ``str(err)`` is a one-line message."""

    exit_code = 2


class ComirWarning(UserWarning):
    """A one-line, user-fixable concern (see :func:`warn`)."""


def warn(message: str) -> None:
    """Issue ``message`` (one line, no command prefix) as a :class:`ComirWarning`."""
    warnings.warn(message, ComirWarning, stacklevel=2)
