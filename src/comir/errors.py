"""User-facing errors.

Every problem caused by the user's input (a file, a folder, an option) is raised as
:class:`ComirError` with a one-line message that names the culprit and the fix. The CLI
prints the message and exits with status 2; library callers can catch it.
"""

from __future__ import annotations


class ComirError(Exception):
    """An input problem the user can fix; ``str(err)`` is a one-line message."""

    exit_code = 2
